"""Task metrics of a variant vs the FP32 model on the eval set (both run in onnxruntime, 1 thread).

Each returns {"metric": name, "score": primary (1.0 = same as FP32), ...details}. `ref` and `var` are lists (one
per eval feed) of output lists in the model's output order.
"""
from __future__ import annotations

import numpy as np


def _f(x):
    return float(np.round(float(x), 6))


def _argmax_rows(outs, i=0):
    return np.concatenate([np.asarray(o[i]).reshape(-1, np.asarray(o[i]).shape[-1]).argmax(-1) for o in outs])


def top1_agree(ref, var, feeds, labels=None, **_):
    a, b = _argmax_rows(ref), _argmax_rows(var)
    r = {"metric": "top-1 agreement with FP32", "score": _f((a == b).mean())}
    if labels is not None:
        lab = np.asarray(labels).reshape(-1)
        r["top1_fp32"] = _f((a == lab).mean())
        r["top1"] = _f((b == lab).mean())
    return r


def prob_agree(ref, var, feeds, **kw):
    r = top1_agree(ref, var, feeds, **kw)
    d = max(float(np.abs(np.asarray(x[0], np.float64) - np.asarray(y[0], np.float64)).max()) for x, y in zip(ref, var))
    r["max_abs_prob"] = _f(d)
    return r


def seq_agree(ref, var, feeds, **_):
    """Per-step argmax agreement (int outputs are already argmax'd); plus whole-sequence agreement after CTC collapse."""
    steps, same, seq_same = 0, 0, 0
    for x, y in zip(ref, var):
        a, b = np.asarray(x[0]), np.asarray(y[0])
        if a.dtype.kind == "f":
            a, b = a.argmax(-1), b.argmax(-1)
        steps += a.size
        same += int((a == b).sum())

        def ctc(s):
            s = s.reshape(-1)
            return [int(v) for j, v in enumerate(s) if v != 0 and (j == 0 or v != s[j - 1])]

        seq_same += int(ctc(a) == ctc(b))
    return {"metric": "per-step argmax agreement", "score": _f(same / max(steps, 1)), "sequence_agreement": _f(seq_same / len(ref))}


def _iou(a, b):
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else float(np.logical_and(a, b).sum() / u)


def det_iou(ref, var, feeds, thr=0.3, **_):
    ious = [_iou(np.asarray(x[0]) > thr, np.asarray(y[0]) > thr) for x, y in zip(ref, var)]
    return {"metric": f"IoU of probability map > {thr}", "score": _f(np.mean(ious)), "min": _f(np.min(ious)),
            "positive_fraction_fp32": _f(np.mean([(np.asarray(x[0]) > thr).mean() for x in ref]))}


def anchor_iou(ref, var, feeds, thr=0.1, **_):
    """YOLOX output [1, A, 5 + C]: anchors whose objectness x class score > thr (ddddocr's NMS threshold), IoU of the sets."""
    def pos(o):
        o = np.asarray(o[0])[0]
        return (o[:, 4:5] * o[:, 5:]).max(-1) > thr

    ious = [_iou(pos(x), pos(y)) for x, y in zip(ref, var)]
    return {"metric": f"IoU of anchor sets with score > {thr}", "score": _f(np.mean(ious)), "min": _f(np.min(ious)),
            "positives_fp32": _f(np.mean([pos(x).sum() for x in ref]))}


def _pooled(outs, feeds):
    vecs = []
    for o, f in zip(outs, feeds):
        mask = np.asarray(f["attention_mask"], np.float64)
        hid = next((np.asarray(t, np.float64) for t in o if np.asarray(t).ndim == 3), None)
        if hid is None:
            vecs.append(np.asarray(o[0], np.float64).reshape(-1))
            continue
        vecs.append(((hid * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)).reshape(-1))
    return vecs


def embed_cos(ref, var, feeds, **_):
    """Cosine of the mean-pooled (over the attention mask) token embeddings, per sentence: mean and min."""
    a, b = _pooled(ref, feeds), _pooled(var, feeds)
    cos = [float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12)) for x, y in zip(a, b)]
    return {"metric": "cosine of mean-pooled embeddings", "score": _f(np.mean(cos)), "min": _f(np.min(cos))}


def notes_iou(ref, var, feeds, thr=0.5, **_):
    """basic-pitch: the two 88-bin posteriorgrams (note, onset) thresholded at 0.5, IoU with FP32; contour cosine."""
    idx = [i for i, t in enumerate(ref[0]) if np.asarray(t).shape[-1] == 88]
    ious = {i: [_iou(np.asarray(x[i]) > thr, np.asarray(y[i]) > thr) for x, y in zip(ref, var)] for i in idx}
    r = {"metric": f"IoU of 88-bin note/onset maps > {thr}", "score": _f(np.mean([np.mean(v) for v in ious.values()])),
         "min": _f(min(np.min(v) for v in ious.values()))}
    c = [i for i, t in enumerate(ref[0]) if np.asarray(t).shape[-1] == 264]
    if c:
        x = np.concatenate([np.asarray(o[c[0]]).ravel() for o in ref]).astype(np.float64)
        y = np.concatenate([np.asarray(o[c[0]]).ravel() for o in var]).astype(np.float64)
        r["contour_cosine"] = _f(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12))
    return r


def vad(ref, var, feeds, **_):
    a = np.array([float(np.asarray(o[0]).ravel()[0]) for o in ref])
    b = np.array([float(np.asarray(o[0]).ravel()[0]) for o in var])
    return {"metric": "speech decision (p > 0.5) agreement", "score": _f(((a > 0.5) == (b > 0.5)).mean()),
            "max_abs_prob": _f(np.abs(a - b).max()), "speech_fraction_fp32": _f((a > 0.5).mean())}


METRICS = {f.__name__: f for f in (top1_agree, prob_agree, seq_agree, det_iou, anchor_iou, embed_cos, notes_iou, vad)}
