"""How the tolerance search talks to a pass: typed protocols, checked with ``isinstance`` (no pass-name switch).

A pass that implements neither is run as written and judged by the pipeline's numerics check."""
from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Configurable(Protocol):
    """Searched by configuration (INT8 static / dynamic): ``optkit.search.quant``."""

    def search_space(self) -> list:
        """Configurations to try, the pass's own first, without duplicates."""

    def restrict(self, nodes: list[str]):
        """This pass with ``nodes`` left as they are (kept in float)."""

    def alternative(self):
        """Another pass to try when no configuration holds (static -> dynamic INT8), or None."""


@runtime_checkable
class Layered(Protocol):
    """Searched layer by layer (prune, lowrank): ``optkit.search.layers``."""

    def layer_candidates(self, model) -> list[str]:
        """Layers the search may compress or leave."""

    def layer_errors(self, result) -> dict[str, float] | None:
        """Per layer, the error this result's compression put into it (lower = more tolerant), or None."""

    def only(self, layers: list[str], among: list[str]):
        """This pass compressing ``layers`` only, leaving the rest of ``among`` as they are."""
