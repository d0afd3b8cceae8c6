"""A metric that fits each output: what "still accurate" means for class scores, embeddings, maps and sequences.

The auto rules (``--metric auto``), decided per output from its dtype, rank, name and values, and from the model's
inputs (an integer ``*mask*`` input marks token states):

| output                                                           | kind        | judged by                               |
|------------------------------------------------------------------|-------------|-----------------------------------------|
| integer / bool                                                   | exact       | fraction of equal values                |
| float [batch, C>1]: probabilities, a class-like name, or labels  | classes     | argmax agreement (top-1 vs labels when  |
|   given, or C <= 1000 without an embedding-like name             |             | the data has them) and per-example      |
|                                                                  |             | cosine, minimum over examples           |

Every cosine-judged kind (classes, embedding, pooled, cosine) also bounds the per-example relative L2 error by
sqrt(2 t), the error a cosine of 1 - t allows at equal norms: cosine alone cannot see an output scaled down by 40%
(seen: U8S8 saturation on a CPU without VNNI).

| float [batch, D] otherwise (embeddings; with a mask input, any   | embedding   | per-example cosine, minimum             |
|   D >= 64 without a class-like name: a pooled sentence vector)   |             |                                         |
| float [batch, T, H] with a mask input                            | pooled      | per-example cosine of the states mean-  |
|                                                                  |             | pooled over the mask, minimum           |
| float rank 3 named like a state/hidden/embedding                 | cosine      | per-feed cosine, minimum                |
| float rank 3 in [0, 1] whose rows are not softmax (multi-label)  | map         | IoU thresholded at 0.5                  |
| float rank 3 otherwise (CTC / seq2seq scores)                    | sequence    | per-step argmax agreement               |
| float rank >= 4 with values in [0, 1] (probability maps)         | map         | IoU of the map thresholded at 0.5       |
| float rank >= 4 otherwise                                        | cosine      | per-feed cosine, minimum                |
| scalars, [batch] or [batch, 1]                                   | values      | max-abs relative to the output's range  |

A relative tolerance t turns each agreement/cosine/IoU into "at least 1 - t" (top-1 vs labels: at least the
reference's top-1 times 1 - t), and max-abs into "at most t times the range"; ``abs:t`` is an absolute drop. Every
output is judged; the candidate passes only when each one does. ``--metric NAME=KIND,...`` overrides per output
(``ignore`` leaves one out); a plain ``--metric KIND`` applies to every output.
"""
from __future__ import annotations

import re

import numpy as np

KINDS = ("exact", "classes", "top1", "agreement", "embedding", "pooled", "sequence", "map", "cosine", "values", "ignore")
# names accepted by --metric for every output, and what each means per output; top1 / agreement judge the argmax
# alone (top-1 vs labels when there are labels), 'classes' adds the per-example cosine
ALIASES = {"max_abs": "values", "iou": "map", "step_agreement": "sequence"}
_CLASS_NAME = re.compile(r"logit|prob|score|class|label|pred|softmax|output_?\d*$|^y$|^out$", re.I)
_EMBED_NAME = re.compile(r"embed|pool|sentence|feature|hidden|vector|encod|state", re.I)


def mask_input(model) -> str | None:
    """The integer input that masks token positions (``attention_mask``), if the model has one."""
    from .model import signature

    inputs, _ = signature(model)
    for s in inputs:
        if "mask" in s.name.lower() and np.dtype(s.dtype).kind in "iub" and len(s.shape) == 2:
            return s.name
    return None


def infer_kind(name: str, ref: list[np.ndarray], has_mask: bool, labels: bool) -> str:
    """The auto kind of one output from the reference run's values (one array per feed)."""
    a = np.asarray(ref[0])
    if a.dtype.kind in "iub":
        return "exact"
    if a.ndim <= 1 or (a.ndim == 2 and a.shape[-1] == 1):
        return "values"
    if a.ndim == 2:
        rows = np.concatenate([np.asarray(r, np.float64).reshape(-1, a.shape[-1]) for r in ref])
        probs = bool(rows.size and rows.min() >= 0 and np.allclose(rows.sum(-1), 1.0, atol=1e-3))
        unit = bool(rows.size and np.allclose(np.linalg.norm(rows, axis=-1), 1.0, atol=1e-3))
        if labels or probs or (_CLASS_NAME.search(name) and not _EMBED_NAME.search(name)):
            return "classes"
        if unit or _EMBED_NAME.search(name) or a.shape[-1] > 1000:
            return "embedding"
        if has_mask and a.shape[-1] >= 64:
            # a masked encoder's wide unnamed output is a pooled sentence vector, not class scores: argmax over the
            # 384 dims of paraphrase-MiniLM-L3's output '461' flipped on 1 of 48 sentences at cosine 0.998
            return "embedding"
        return "classes"
    vals = np.concatenate([np.asarray(r, np.float64).ravel() for r in ref])
    unit_range = bool(vals.size and vals.min() >= 0 and vals.max() <= 1)
    if a.ndim == 3:
        if has_mask:
            return "pooled"
        if _EMBED_NAME.search(name):  # recurrent states, hidden states: no classes along the last axis
            return "cosine"
        if unit_range:  # softmax rows are per-step classes; independent sigmoids (multi-label frames) are a map
            rows = np.concatenate([np.asarray(r, np.float64).reshape(-1, a.shape[-1]) for r in ref])
            return "sequence" if np.allclose(rows.sum(-1), 1.0, atol=1e-3) else "map"
        return "sequence"
    return "map" if unit_range else "cosine"


def parse_metric(text: str) -> tuple[str | None, dict[str, str]]:
    """'auto' -> (None, {}); 'cosine' -> ('cosine', {}); 'out=iou,prob=classes' -> (None, {...}) (kinds checked)."""
    from .errors import InputError

    s = str(text or "auto").strip()
    allowed = ", ".join(["auto", *ALIASES, *[k for k in KINDS if k not in ALIASES]])
    if "=" not in s:
        if s == "auto":
            return None, {}
        kind = ALIASES.get(s, s)
        if kind not in KINDS or kind == "ignore":
            raise InputError(f"--metric must be one of {allowed}, or OUTPUT=KIND,...; got {text!r}", "pick an allowed metric")
        return s, {}
    per = {}
    for item in s.split(","):
        name, _, kind = item.partition("=")
        kind = ALIASES.get(kind.strip(), kind.strip())
        if not name.strip() or kind not in KINDS:
            raise InputError(f"bad --metric item {item!r}", f"use OUTPUT=KIND with KIND one of {', '.join(KINDS)}")
        per[name.strip()] = kind
    return None, per


def _per_example_cosine(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    nr, nc = np.linalg.norm(r, axis=-1), np.linalg.norm(c, axis=-1)
    dot = (r * c).sum(-1)
    both_zero = (nr == 0) & (nc == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, np.where((nr > 0) & (nc > 0), dot / (nr * nc), 0.0))
    return np.nan_to_num(cos, nan=0.0)


def _rel_l2(r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per-example ||c - r|| / ||r||: what cosine cannot see (a model whose outputs shrank by 40% keeps cosine 1)."""
    nr = np.linalg.norm(r, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        e = np.where(nr > 0, np.linalg.norm(c - r, axis=-1) / nr, np.where(np.linalg.norm(c, axis=-1) > 0, np.inf, 0.0))
    return np.nan_to_num(e, nan=np.inf)


def _rows(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float64).reshape(a.shape[0] if a.ndim else 1, -1) for a in arrays])


def measure(kind: str, ref: list[np.ndarray], cand: list[np.ndarray], masks: list[np.ndarray] | None = None) -> dict:
    """The kind's raw measurements on one output: {'value': the judged number, ...details}."""
    if any(np.shape(a) != np.shape(b) for a, b in zip(ref, cand)):
        return {"value": 0.0, "shape_mismatch": True, "higher_is_better": True}
    if kind == "exact":
        r = np.concatenate([np.asarray(a).ravel() for a in ref])
        c = np.concatenate([np.asarray(a).ravel() for a in cand])
        return {"value": float((r == c).mean()) if r.size else 1.0, "higher_is_better": True}
    if kind == "values":
        r = np.concatenate([np.asarray(a, np.float64).ravel() for a in ref])
        c = np.concatenate([np.asarray(a, np.float64).ravel() for a in cand])
        scale = float(np.abs(r).max()) if r.size else 0.0
        d = float(np.abs(r - c).max()) if r.size else 0.0
        if not np.all(np.isfinite(c)):
            d = float("inf")
        return {"value": d / scale if scale > 0 else d, "max_abs": d, "range": scale, "higher_is_better": False}
    if kind in ("classes", "top1", "agreement", "embedding", "cosine"):
        r, c = _rows(ref), _rows(cand)
        cos = _per_example_cosine(r, c)
        out = {"value": float(cos.min()) if cos.size else 1.0, "mean_cosine": float(cos.mean()) if cos.size else 1.0,
               "examples": int(cos.size), "higher_is_better": True,
               "max_rel_l2": float(_rel_l2(r, c).max()) if cos.size else 0.0}
        if kind in ("classes", "top1", "agreement"):
            out["agreement"] = float((r.argmax(-1) == c.argmax(-1)).mean()) if r.size else 1.0
        return out
    if kind == "pooled":
        cos, rel = [], []
        for i, (a, b) in enumerate(zip(ref, cand)):
            a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
            m = np.asarray(masks[i], np.float64)[..., None] if masks is not None else np.ones(a.shape[:2] + (1,))
            if m.shape[:2] != a.shape[:2]:
                m = np.ones(a.shape[:2] + (1,))
            den = np.maximum(m.sum(1), 1e-9)
            pa, pb = (a * m).sum(1) / den, (b * m).sum(1) / den
            cos.append(_per_example_cosine(pa, pb))
            rel.append(_rel_l2(pa, pb))
        cos = np.concatenate(cos) if cos else np.ones(1)
        return {"value": float(cos.min()), "mean_cosine": float(cos.mean()), "examples": int(cos.size),
                "higher_is_better": True, "max_rel_l2": float(np.concatenate(rel).max()) if rel else 0.0}
    if kind == "sequence":
        ra = np.concatenate([np.asarray(a).argmax(-1).ravel() for a in ref])
        ca = np.concatenate([np.asarray(a).argmax(-1).ravel() for a in cand])
        return {"value": float((ra == ca).mean()) if ra.size else 1.0, "steps": int(ra.size), "higher_is_better": True}
    if kind == "map":
        r = np.concatenate([np.asarray(a, np.float64).ravel() for a in ref]) >= 0.5
        c = np.concatenate([np.asarray(a, np.float64).ravel() for a in cand]) >= 0.5
        union = int((r | c).sum())
        return {"value": float((r & c).sum() / union) if union else 1.0, "positives": int(r.sum()),
                "higher_is_better": True}
    raise ValueError(f"unknown output kind {kind!r}")


def judge_output(kind: str, m: dict, tolerance: float, absolute: bool, top1_ref: float | None = None,
                 top1_cand: float | None = None) -> list[dict]:
    """The checks of one output: [{'metric', 'value', 'threshold', 'ok'}] (classes: agreement or top-1, and cosine)."""
    checks = []
    if m.get("shape_mismatch"):
        return [{"metric": "shape", "value": 0.0, "threshold": 1.0, "ok": False, "note": "output shape changed"}]
    if kind == "values":
        thr, val = tolerance, (m["max_abs"] if absolute else m["value"])
        return [{"metric": "max_abs_rel" if not absolute else "max_abs", "value": val, "threshold": thr,
                 "ok": bool(val <= thr + 1e-12)}]
    if kind in ("classes", "top1", "agreement"):
        if top1_ref is not None and top1_cand is not None:
            thr = top1_ref - tolerance if absolute else top1_ref * (1 - tolerance)
            checks.append({"metric": "top1", "value": top1_cand, "reference": top1_ref, "threshold": thr,
                           "ok": bool(top1_cand >= thr - 1e-12)})
        else:
            thr = 1 - tolerance
            checks.append({"metric": "agreement", "value": m["agreement"], "threshold": thr,
                           "ok": bool(m["agreement"] >= thr - 1e-12)})
        if kind != "classes":  # top1 / agreement asked for alone
            return checks
    name = {"classes": "min_cosine", "embedding": "min_cosine", "cosine": "min_cosine", "pooled": "min_pooled_cosine",
            "sequence": "step_agreement", "map": "iou", "exact": "exact_agreement"}[kind]
    checks.append({"metric": name, "value": m["value"], "threshold": 1 - tolerance,
                   "ok": bool(m["value"] >= 1 - tolerance - 1e-12)})
    if "max_rel_l2" in m:
        # the relative error a cosine of 1 - t allows between vectors of equal norm: catches a scaled-down output
        thr = float(np.sqrt(2 * tolerance))
        checks.append({"metric": "max_rel_l2", "value": m["max_rel_l2"], "threshold": thr,
                       "ok": bool(m["max_rel_l2"] <= thr + 1e-12)})
    return checks


def margin(check: dict) -> float:
    """How far a check is inside (> 0) or outside (< 0) its threshold, in the metric's own direction."""
    if check["metric"].startswith("max_"):
        return check["threshold"] - check["value"]
    return check["value"] - check["threshold"]
