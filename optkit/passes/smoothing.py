"""SmoothQuant-style activation smoothing for dynamic INT8: per-channel scales migrated from a MatMul's input into
its constant weight, so that the per-tensor activation range that ``DynamicQuantizeLinear`` computes at run time is
not set by a few outlier channels.

Why (measured on all-MiniLM-L6-v2, seq 32, 1 thread, AVX2 without VNNI; benchmarks/results/minilm_dynamic-*.md):
dynamic INT8 quantizes each MatMul input per tensor to uint8. In a BERT encoder the LayerNorm outputs that feed the
FFN reach 28 in one channel (median channel max 1.5) and the post-GELU FFN activations 25 (median 0.9), so most
channels get a handful of levels: activation quantization alone cost min pooled cosine 0.992, the 7-bit per-channel
weights that AVX2 without VNNI needs (reduce_range) 0.997, together 0.987. Dividing input channel j by
s_j = max|X_j|^a / max|W_j|^(1-a) and multiplying weight row j by s_j is exact in float; at a = 0.75 the same
quantization kept min pooled cosine 0.996 (L6) / 0.997 (L3), at 0.98x [0.97, 1.01] the unsmoothed model's speed.

The scales come from the pass's samples (``--data``); one ``Mul`` per smoothed input is inserted (a LayerNorm output
also feeds the residual, so it cannot be folded upstream). Each group is smoothed only when a simulation of the
quantization on its sampled rows (uint8 per-tensor activations, the pass's weight format) shows a smaller output
error than without, so graphs without outlier channels are left as they were.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MAX_FEEDS = 64  # feeds run to collect activation statistics (channel maxima: more feeds, steadier scales)
ROWS = 512  # sampled activation rows per group for the error simulation
GAIN = 0.8  # smooth a group only when its simulated error drops below GAIN x the unsmoothed error: on MiniLM the
# smoothed groups reached 0.14-0.6x (L6: 21 of 24 groups), on ppocr-rec (no outlier channels) 0.82-0.9x, where it moved
# per-step agreement 0.998 -> 0.996 and is now left alone


def _trans_b(n: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i for a in n.attribute)


def smoothing_groups(model: onnx.ModelProto, exclude: set[str]) -> dict[str, list[int]]:
    """Input tensor -> indices of the MatMul / Gemm (transA=0) nodes that read it with a 2-D float32 constant weight
    used by no other node (nodes named in ``exclude`` stay as they are: they are kept in float)."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    groups: dict[str, list] = {}
    for k, n in enumerate(model.graph.node):
        if n.op_type not in ("MatMul", "Gemm") or (n.name and n.name in exclude) or len(n.input) < 2:
            continue
        if n.op_type == "Gemm" and any(a.name == "transA" and a.i for a in n.attribute):
            continue
        a, b = n.input[:2]
        w = inits.get(b)
        if w is None or a in inits or len(w.dims) != 2 or w.data_type != onnx.TensorProto.FLOAT or uses.get(b) != 1:
            continue
        groups.setdefault(a, []).append(k)
    return groups


def _weight(n: onnx.NodeProto, t: onnx.TensorProto) -> np.ndarray:
    """The weight as [K in, N out] (a Gemm with transB=1 stores it [N, K])."""
    w = numpy_helper.to_array(t).astype(np.float32)
    return w.T if _trans_b(n) else w


def _activations(model: onnx.ModelProto, names: list[str], feeds: list[dict], seed: int) -> dict[str, tuple]:
    """Per tensor: (channel-wise max |x| over every row of every feed, up to ROWS sampled rows [n, C])."""
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=t))
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = 1, 1, 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    rng = np.random.default_rng(seed)
    amax: dict[str, np.ndarray] = {}
    rows: dict[str, list] = {t: [] for t in names}
    per_feed = max(1, ROWS // max(len(feeds), 1))
    for f in feeds:
        got = dict(zip(outs, sess.run(None, f)))
        for t in names:
            x = np.asarray(got[t], np.float32)
            if x.ndim < 2:
                continue
            x = x.reshape(-1, x.shape[-1])
            a = np.abs(x).max(0)
            amax[t] = a if t not in amax else np.maximum(amax[t], a)
            rows[t].append(x[rng.choice(len(x), min(per_feed, len(x)), replace=False)])
    return {t: (amax[t], np.concatenate(rows[t])) for t in names if t in amax}


def _fake_quant_act(x: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear then dequantize: uint8, per tensor, the range widened to include 0."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255 or 1.0
    zp = np.clip(np.round(-lo / scale), 0, 255)
    return (np.clip(np.round(x / scale) + zp, 0, 255) - zp) * scale


def _fake_quant_weight(w: np.ndarray, per_channel: bool, qmax: int) -> np.ndarray:
    """Symmetric weights (what quantize_dynamic writes for int8 weights), per output column or per tensor."""
    m = np.abs(w).max(0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.maximum(m, 1e-12) / qmax
    return np.clip(np.round(w / scale), -qmax, qmax) * scale


def _error(x: np.ndarray, weights: list[np.ndarray], s: np.ndarray, per_channel: bool, qmax: int) -> float:
    xq = _fake_quant_act(x / s)
    err = 0.0
    for w in weights:
        ref = x @ w
        den = float((ref ** 2).sum()) or 1.0
        err += float(((ref - xq @ _fake_quant_weight(w * s[:, None], per_channel, qmax)) ** 2).sum()) / den
    return err


def smooth_scales(amax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (1 where a channel is all zero), clipped to [1e-2, 1e2]."""
    wmax = np.max([np.abs(w).max(1) for w in weights], 0)
    ok = (amax > 0) & (wmax > 0)
    s = np.where(ok, np.maximum(amax, 1e-12) ** alpha / np.maximum(wmax, 1e-12) ** (1 - alpha), 1.0)
    return np.clip(s, 1e-2, 1e2).astype(np.float32)


def smooth_model(model: onnx.ModelProto, feeds: list[dict], alpha: float, *, per_channel: bool, qmax: int,
                 exclude: set[str] = frozenset(), seed: int = 0) -> tuple[onnx.ModelProto, int, int]:
    """A copy of ``model`` with the groups whose simulated INT8 error drops smoothed; (model, smoothed, groups)."""
    groups = smoothing_groups(model, set(exclude))
    if not groups or not feeds:
        return model, 0, len(groups)
    stats = _activations(model, list(groups), feeds[:MAX_FEEDS], seed)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    taken = {x for n in out.graph.node for x in (n.name, *n.output)} | set(inits)
    tag = next(f"optkit_smooth{j or ''}" for j in range(len(taken) + 1)
               if not any(x.startswith(f"optkit_smooth{j or ''}_") for x in taken))
    muls = []  # (index of the first consumer, Mul node)
    for i, (t, members) in enumerate(groups.items()):
        if t not in stats:
            continue
        amax, x = stats[t]
        nodes = [out.graph.node[k] for k in members]
        ws = [_weight(n, inits[n.input[1]]) for n in nodes]
        if any(w.shape[0] != amax.shape[0] for w in ws):
            continue
        s = smooth_scales(amax, ws, alpha)
        if _error(x, ws, s, per_channel, qmax) >= GAIN * _error(x, ws, np.ones_like(s), per_channel, qmax):
            continue
        inv = f"{tag}_{i}_inv"
        out.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv))
        mul = helper.make_node("Mul", [t, inv], [f"{tag}_{i}_out"], name=f"{tag}_{i}")
        for n, w in zip(nodes, ws):
            scaled = (w * s[:, None]).astype(np.float32)
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(scaled.T.copy() if _trans_b(n) else scaled, n.input[1]))
            n.input[0] = mul.output[0]
        muls.append((min(members), mul))
    for k, mul in sorted(muls, key=lambda km: -km[0]):  # from the back: earlier indices stay valid
        out.graph.node.insert(k, mul)
    return out, len(muls), len(groups)


def smooth_for_dynamic(model: onnx.ModelProto, cfg, ctx, wt: str, rr: bool, ops: list[str],
                       notes: list[str]) -> onnx.ModelProto:
    """Activation smoothing before dynamic INT8 (optkit.passes.smoothing), when asked for and samples exist."""
    if cfg.smooth_alpha <= 0 or not {"MatMul", "Gemm"} & set(ops):
        return model
    samples = getattr(ctx, "samples", None)
    if samples is None or not len(samples):
        notes.append("activation smoothing skipped: no samples (pass --data)")
        return model
    qmax = 64 if (wt == "int8" and rr) else 127
    try:
        out, done, groups = smooth_model(model, samples.feeds, cfg.smooth_alpha, per_channel=cfg.per_channel, qmax=qmax,
                                         exclude=set(cfg.exclude_nodes), seed=getattr(ctx, "seed", 0))
    except Exception as e:  # statistics need one run of the model: a model ORT cannot run here is quantized as it is
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        notes.append(f"activation smoothing skipped: {type(e).__name__}: {first}")
        return model
    if groups:
        notes.append(f"activation smoothing (alpha {cfg.smooth_alpha:g}): {done} of {groups} MatMul/Gemm input(s), scales from "
                     f"{min(len(samples), MAX_FEEDS)} feed(s) of {samples.source}"
                     + (" - SYNTHETIC, not representative" if samples.synthetic else ""))
    return out
