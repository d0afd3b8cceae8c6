"""How many channels each layer keeps and which: weight-norm or activation importance, per layer or one global
threshold, and the activation statistics (measured through the deployed evaluator, ``ctx.evaluate``)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ...model import node_attr as _attr
from .. import Context
from .channels import _Chan
from .graph import _Graph
from .layers import _Layer

if TYPE_CHECKING:
    from .structured import PruneConfig


def _keep_count(n: int, ratio: float, cfg: PruneConfig) -> int:
    keep = n - int(round(ratio * n))
    return _round_keep(n, keep, cfg)


def _round_keep(n: int, keep: int, cfg: PruneConfig) -> int:
    keep = max(keep, min(n, cfg.min_channels), 1)
    keep = int(math.ceil(keep / cfg.multiple_of) * cfg.multiple_of)
    return min(keep, n)


def keep_counts(active, imp: dict, cfg) -> dict[str, int]:
    """Channels kept per layer: per-layer overrides first, then one global threshold or ``ratio`` per layer
    (shared with optkit.torch.prune, so both keep the same counts)."""
    counts: dict[str, int] = {}
    rest = [layer for layer in active if layer.name not in cfg.layers]
    for layer in active:
        if layer.name in cfg.layers:
            counts[layer.name] = _keep_count(layer.n, cfg.layers[layer.name], cfg)
    if cfg.scope == "global" and rest and cfg.ratio > 0:
        counts.update(_global_counts(rest, imp, cfg.ratio, cfg))
    else:
        for layer in rest:
            counts[layer.name] = _keep_count(layer.n, cfg.ratio, cfg)
    return counts


def _global_counts(layers: list[_Layer], importance: dict, ratio: float, cfg: PruneConfig) -> dict[str, int]:
    scores, floors = [], {}
    for layer in layers:
        imp = importance[layer.name]
        mean = float(imp.mean())
        norm = imp / mean if mean > 0 else np.zeros_like(imp)
        scores.extend((float(s), layer.name, k) for k, s in enumerate(norm))
        floors[layer.name] = min(layer.n, cfg.min_channels)
    target = int(round(ratio * sum(layer.n for layer in layers)))
    removed = {layer.name: 0 for layer in layers}
    total = {layer.name: layer.n for layer in layers}
    done = 0
    for s, name, _k in sorted(scores, key=lambda t: (t[0], t[1], t[2])):
        if done >= target:
            break
        if total[name] - removed[name] > floors[name]:
            removed[name] += 1
            done += 1
    return {name: _round_keep(total[name], total[name] - removed[name], cfg) for name in total}


def _channel_stats(gr: _Graph, tensors: dict[str, _Chan], samples, max_samples: int, ctx: Context) -> dict:
    """(mean, variance) of every channel/feature of ``tensors`` over the sample feeds (other axes pooled), the
    outputs computed by the deployed evaluator (``ctx.evaluate``): a pass opens no backend itself."""
    m = onnx.ModelProto()
    m.CopyFrom(gr.model)
    have = {o.name for o in m.graph.output}
    for name in tensors:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    del m.graph.value_info[:]
    s1: dict[str, np.ndarray] = {}
    s2: dict[str, np.ndarray] = {}
    outs = ctx.evaluate(m, list(samples.feeds[:max_samples]))
    for out in outs:
        for name, c in tensors.items():
            x = np.moveaxis(np.asarray(out[name], dtype=np.float64), c.axis, -1)
            x = x.reshape(-1, x.shape[-1])
            s1[name] = s1.get(name, 0) + x.mean(axis=0)
            s2[name] = s2.get(name, 0) + (x * x).mean(axis=0)
    n = max(len(outs), 1)
    return {k: (s1[k] / n, np.maximum(s2[k] / n - (s1[k] / n) ** 2, 0.0)) for k in s1}


def _activation_importance(gr: _Graph, layer: _Layer, stats: dict) -> np.ndarray | None:
    """sqrt(sum over consumers of Var(x_c) * ||consumer weights reading x_c||^2): the output error of replacing
    channel c by its mean (what bias compensation does), to first order."""
    total = np.zeros(layer.n)
    for i, tensor, c in layer.plan.terminals:
        if tensor not in stats:
            return None
        var = stats[tensor][1]
        node = gr.nodes[i]
        w = gr.const(node.input[1]).astype(np.float64)
        if node.op_type == "Conv":
            wn = (w * w).sum(axis=tuple(a for a in range(w.ndim) if a != 1))
        elif node.op_type == "ConvTranspose":
            wn = (w * w).sum(axis=tuple(range(1, w.ndim)))
        elif node.op_type == "Gemm" and int(_attr(node, "transB", 0)):
            wn = (w * w).sum(axis=0)
        else:
            wn = (w * w).sum(axis=1)
        total += (var * wn).reshape(layer.n, c.block).sum(axis=1)
    return np.sqrt(total) if layer.plan.terminals else None
