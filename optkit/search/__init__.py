"""Accuracy-aware search (``--tolerance``): what to search in a pass, and which candidate of an auto recipe to keep.

- ``criterion``: what "still accurate" means (``Criterion``, ``make_criterion``, ``parse_tolerance``).
- ``trials``: one trial = build, run as served, judge (``Judge``), the search's settings (``Tuning``), ``pick``.
- ``quant``: configuration-searchable passes (INT8): configurations, then the fewest sensitive nodes kept in float
  (per-node attribution measured once, gallop + bisect), then the pass's alternative.
- ``layers``: layer-wise passes (prune, lowrank): rank once, binary-search how many layers fit.
- ``protocols``: how a pass takes part (``Configurable``, ``Layered``); the search never switches on a pass's name.

The pipeline calls ``tune_pass``; nothing here imports a backend or the pipeline: models run through
``ctx.evaluator``. Which candidate of an auto recipe to keep is ``optkit.candidates`` (above the pipeline).
"""
from __future__ import annotations

import dataclasses

from .criterion import Criterion, make_criterion, parse_budget, parse_tolerance
from .protocols import Configurable, Layered
from .trials import Judge, Outcome, Tuning, pick

__all__ = ["Criterion", "make_criterion", "parse_budget", "parse_tolerance", "Configurable", "Layered", "Judge",
           "Outcome", "Tuning", "pick", "tune_pass"]


def tune_pass(p, judge: Judge, later_lossy: list[str]) -> Outcome | None:
    """The searched outcome of pass ``p``, or None when there is nothing to search (no criterion or feeds, an exact
    pass, a pass in neither protocol, or the layer search turned off by --force)."""
    t = judge.tuning
    if t is None or t.criterion is None or not judge.feeds or p.exact:
        return None
    if isinstance(p, Configurable):
        from .quant import tune_quantization

        return tune_quantization(p, judge)
    if not isinstance(p, Layered) or not t.layer_search:
        return None
    from .layers import tune_layers

    layers = p.layer_candidates(judge.model)
    if not later_lossy:
        return tune_layers(p, layers, judge)
    # leave half of the tolerance to the lossy passes after this one (e.g. INT8 after pruning): pruning to the full
    # 1% left static INT8 nothing on the encoder, and the pipeline missed the tolerance
    half = dataclasses.replace(t, criterion=dataclasses.replace(t.criterion, tolerance=t.criterion.tolerance / 2))
    out = tune_layers(p, layers, judge.with_tuning(half))
    out.result.notes.append(f"searched within half the tolerance, leaving the rest to {', '.join(later_lossy)}")
    t.trials_run = half.trials_run  # the copy counted the trials
    return out
