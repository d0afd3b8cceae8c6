"""The tolerance search of layer-wise passes (prune, lowrank): compress every candidate layer; when that misses, rank
the layers (once, from the pass's own per-layer error when it has one) and binary-search how many of the most
tolerant can be compressed while the criterion holds.

A pass takes part through the ``Layered`` protocol (``optkit.search.protocols``): ``layer_candidates(model)``,
``layer_errors(result)`` and ``only(layers, among)``."""
from __future__ import annotations

from .trials import Judge, Outcome


def tune_layers(p, layers: list[str], judge: Judge) -> Outcome:
    """Compress the most tolerant layers first; binary-search how many can be compressed within tolerance."""
    tuning = judge.tuning
    trials = []
    res, judged, rec = judge.trial(p, {"layers": "all"})
    trials.append(rec)
    if judged is None:
        from ..errors import PassError

        raise PassError(f"{p.name}: {rec['error']}", "fix the pass options or drop the pass")
    if judged["ok"] or not layers:
        rec["chosen"] = True
        res.notes.append(f"tolerance: {tuning.criterion.describe()}: {judged['metric']} {judged['value']:.5g} with every layer compressed")
        return Outcome(res, trials, judged, judged["ok"], rec.get("speedup_vs_before"))
    order = _layer_order(p, res, layers, judge, trials)
    lo, hi, best = 0, len(order), None
    while lo < hi and not tuning.exhausted():
        mid = (lo + hi + 1) // 2
        keep = order[:mid]
        r, j, rec = judge.trial(p.only(keep, layers), {"layers": keep})
        trials.append(rec)
        if j is not None and j["ok"]:
            lo, best = mid, (r, j, rec)
        else:
            hi = mid - 1
    if best is None:
        from ..passes import PassResult

        rec = {"layers": [], "ok": True, "chosen": True, "note": "no layer could be compressed within tolerance"}
        trials.append(rec)
        return Outcome(PassResult(judge.model, modified=False, notes=[
            f"tolerance: {tuning.criterion.describe()}: no layer compressed within tolerance; pass left the model unchanged"]),
            trials, None, True, None)
    r, j, rec = best
    rec["chosen"] = True
    r.notes.append(f"tolerance: {tuning.criterion.describe()}: compressed {len(rec['layers'])} of {len(layers)} layers "
                   f"(most tolerant first), {j['metric']} {j['value']:.5g} (threshold {j['threshold']:.5g})")
    return Outcome(r, trials, j, True, rec.get("speedup_vs_before"))


def _layer_order(p, res_all, layers: list[str], judge: Judge, trials: list) -> list[str]:
    """Layers, most tolerant first. Ranked once without validations when the pass can say what each layer lost in the
    all-layers build (``layer_errors``: e.g. the SVD truncation error of each factorized weight); otherwise each layer
    is compressed alone and judged (one validation per layer)."""
    errors = p.layer_errors(res_all) or {}
    if layers and all(n in errors for n in layers):
        trials[-1]["ranking"] = f"{len(layers)} layers ranked by {p.name}'s per-layer error in this build (no validations)"
        return sorted(layers, key=lambda n: (errors[n], layers.index(n)))
    sens = []
    for name in layers:
        if judge.tuning.exhausted():
            break
        r, j, rec = judge.trial(p.only([name], layers), {"layers": [name], "probe": "sensitivity"})
        trials.append(rec)
        if j is not None:
            sens.append((name, j["margin"]))
    return [n for n, _ in sorted(sens, key=lambda kv: -kv[1])]
