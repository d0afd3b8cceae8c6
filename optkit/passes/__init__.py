"""The pass contract: ``Pass.run(model, ctx) -> PassResult``, typed frozen configs, and a registry by name.

A pass knows nothing about backends. Heavy libraries are imported inside ``run``.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import onnx

from ..config import PassConfig, option  # noqa: F401  (re-exported: the pass API)
from ..errors import PassError, RecipeError


@dataclass
class PassResult:
    """What a pass returns: the new model, whether it changed anything, and notes for the pass log."""

    model: onnx.ModelProto
    modified: bool = True
    notes: list[str] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)


class Progress:
    """A progress sink for long steps (calibration); the CLI passes a rich-backed one."""

    def start(self, description: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def stop(self) -> None: ...


@dataclass
class Context:
    """Settings every pass may read (TVM's PassContext idea): samples, shapes, host facts, progress."""

    samples: Any = None  # optkit.data.Samples
    shapes: dict = field(default_factory=dict)  # user-given --shape values
    threads: int = 1
    seed: int = 0
    progress: Progress = field(default_factory=Progress)
    cpu: dict = field(default_factory=dict)
    warn: Callable[[str], None] = lambda msg: None
    # runs a model the way the artifact will be served (optkit.evaluate.Evaluator), injected by the pipeline: a pass
    # that needs outputs asks it instead of opening a backend itself
    evaluator: Any = None
    # content-addressed pass cache (optkit.cache.PassCache) or None: the pipeline and the tolerance search run passes
    # through optkit.cache.run_pass, which answers from it when the model, config, samples and versions match
    cache: Any = None

    def evaluate(self, model: onnx.ModelProto, feeds: list[dict]) -> list[dict]:
        """Outputs of ``model`` on ``feeds`` as the deployed backend computes them: the one evaluation seam a pass
        uses (it never opens a backend itself)."""
        if self.evaluator is None:
            raise PassError("this pass runs the model on samples and needs the deployed evaluator (ctx.evaluator)",
                            "run it through optkit.optimize or a Pipeline, or give Context(evaluator=Evaluator())")
        return self.evaluator.run(model, feeds)


class Pass:
    """Subclass, set ``name``/``Config``/``exact``, implement ``run``; register with ``@register_pass``.

    ``exact`` passes (simplify, fuse) must keep numerics within tolerance, or the pipeline fails them.
    """

    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    Config: ClassVar[type[PassConfig]] = PassConfig
    exact: ClassVar[bool] = True
    # How --tolerance searches a pass: the protocols in optkit.search.protocols (Configurable: search_space /
    # restrict / alternative; Layered: layer_candidates / layer_errors / only). A pass in neither is run as written.

    # whether the output depends on ctx.samples (then the feeds' bytes are part of the pass-cache key)
    reads_samples: ClassVar[bool] = True

    def __init__(self, config: PassConfig | dict | None = None):
        if config is None or isinstance(config, dict):
            config = self.Config.from_dict(config, where=f"pass {self.name!r}: ")
        elif not isinstance(config, self.Config):
            raise RecipeError(f"pass {self.name!r} takes a {self.Config.__name__}, got a {type(config).__name__}",
                              f"build it with {self.Config.__name__}(...) or pass the options as a dict")
        self.config = config

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError


_REGISTRY: dict[str, type[Pass]] = {}
# Pass modules are imported on first lookup, so `import optkit` stays light.
_MODULES = ("simplify", "fuse", "fp16", "quantize", "lowrank", "prune", "trt_qdq")


def register_pass(cls: type[Pass]) -> type[Pass]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(f"{__name__}.{mod}")


def get_pass(name: str) -> type[Pass]:
    _load_all()
    if name not in _REGISTRY:
        raise RecipeError(f"unknown pass {name!r}", f"available passes: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def list_passes() -> list[dict]:
    _load_all()
    """Every pass with its options; each option's ``range`` ('[0, 1)', '>= 1', '' for none) and ``bounds``
    ({'min'|'max'|'gt'|'lt': value}) come from ``option(...)``."""
    return [{"name": n, "doc": c.doc, "exact": c.exact, "options": c.Config.describe()}
            for n, c in sorted(_REGISTRY.items())]
