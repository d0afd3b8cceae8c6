"""Output comparison (max-abs, cosine, top-1 agreement) and label accuracy."""
from __future__ import annotations

import numpy as np


def _is_logits(a: np.ndarray) -> bool:
    return a.ndim == 2 and a.shape[-1] > 1 and a.dtype.kind == "f"


def compare(ref: list[dict[str, np.ndarray]], new: list[dict[str, np.ndarray]]) -> dict:
    """Compare two runs over the same feeds. Worst case over outputs: max-abs (max), cosine (min)."""
    if not ref:
        return {}
    per_output = {}
    for name in ref[0]:
        r = np.concatenate([np.asarray(o[name], np.float64).ravel() for o in ref])
        n = np.concatenate([np.asarray(o[name], np.float64).ravel() for o in new])
        if r.shape != n.shape or any(np.shape(a[name]) != np.shape(b[name]) for a, b in zip(ref, new)):
            # same numbers in another shape still break whoever reads the output (e.g. a CTC decoder)
            per_output[name] = {"max_abs": float("inf"), "cosine": 0.0, "shape_mismatch": True}
            continue
        finite = np.isfinite(r) & np.isfinite(n)
        diff = np.abs(r - n)
        nr, nn = np.linalg.norm(r[finite]), np.linalg.norm(n[finite])
        cos = 1.0 if nr == 0 and nn == 0 else float(np.dot(r[finite], n[finite]) / (nr * nn)) if nr and nn else 0.0
        entry = {"max_abs": float(diff.max()) if diff.size else 0.0,
                 "mean_abs": float(diff.mean()) if diff.size else 0.0,
                 "ref_max_abs": float(np.abs(r).max()) if r.size else 0.0,
                 "cosine": cos,
                 "nonfinite": int((~finite).sum())}
        if _is_logits(np.asarray(ref[0][name])):
            ra = np.concatenate([o[name].argmax(-1) for o in ref])
            na = np.concatenate([o[name].argmax(-1) for o in new])
            entry["top1_agreement"] = float((ra == na).mean())
        per_output[name] = entry
    out = {"max_abs": max(v["max_abs"] for v in per_output.values()),
           "cosine": min(v["cosine"] for v in per_output.values()),
           "outputs": per_output}
    agree = [v["top1_agreement"] for v in per_output.values() if "top1_agreement" in v]
    if agree:
        out["top1_agreement"] = min(agree)
    return out


def top1(outputs: list[dict[str, np.ndarray]], labels: list[np.ndarray] | None) -> float | None:
    """Top-1 accuracy of the first logits-like output against labels (None when not applicable)."""
    if not labels or not outputs:
        return None
    name = next((k for k, v in outputs[0].items() if _is_logits(np.asarray(v))), None)
    if name is None:
        return None
    pred = np.concatenate([o[name].argmax(-1).ravel() for o in outputs])
    lab = np.concatenate([np.asarray(l).ravel() for l in labels])
    if pred.shape != lab.shape:
        return None
    return float((pred == lab).mean())


def within(diff: dict, rtol: float, atol: float, min_cosine: float) -> bool:
    """Exactness check for 'exact' passes: every output within atol + rtol*|ref| and cosine above the floor. The floor
    applies only where some element differs by more than atol: outputs that agree element by element to atol are
    equal, whatever the cosine of two near-zero vectors says (a pruned text detector's map of ~1e-7 values differed
    by 1.5e-7 after simplify, cosine 0.91)."""
    for v in diff.get("outputs", {}).values():
        if v.get("shape_mismatch") or v.get("nonfinite"):
            return False
        if v["max_abs"] > atol + rtol * v["ref_max_abs"] or (v["max_abs"] > atol and v["cosine"] < min_cosine):
            return False
    return True
