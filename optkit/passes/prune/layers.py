"""The prunable layers of a graph: Conv/ConvTranspose/Gemm/MatMul producers whose channels the rules can follow
to every consumer, each with its weight-norm importance."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ...model import node_attr as _attr
from .channels import _Fail, _Plan
from .graph import _STD, _Graph
from .rules import trace


@dataclass
class _Layer:
    index: int
    name: str
    op: str
    n: int  # output channels / features
    importance_l1: np.ndarray
    importance_l2: np.ndarray
    plan: _Plan


def _producer_spec(gr: _Graph, i: int):
    """(weight input index, output axis in the weight, rank of the output or None, channel axis), or a ``_Fail``
    saying why the layer is not prunable; None for a node that is not a layer."""
    n = gr.nodes[i]
    if n.domain not in _STD:
        return None
    if n.op_type in ("Conv", "ConvTranspose"):
        w = gr.const(n.input[1]) if len(n.input) > 1 else None
        if w is None:
            if len(n.input) > 1 and n.input[1] in gr.init:
                return _Fail("weight is not a constant (an initializer that is also a graph input can be replaced at "
                             "run time; re-export without keep_initializers_as_inputs)", "weight_is_graph_input", n)
            return _Fail("weight is not a constant", "nonconst_weight", n)
        if w.ndim < 3:
            return _Fail(f"weight rank {w.ndim} is not a conv weight", "weight_rank", n)
        g = int(_attr(n, "group", 1))
        if g != 1:
            return _Fail(f"grouped/depthwise conv (group={g}): its output channels are tied to its input channels",
                         "grouped_conv", n, group=g)
        if len(n.input) > 2 and n.input[2] and gr.const(n.input[2]) is None:
            return _Fail("bias is not a constant", "nonconst_bias", n)
        return (1, 0 if n.op_type == "Conv" else 1, w.ndim, -(w.ndim - 1))
    if n.op_type == "Gemm":
        w = gr.const(n.input[1]) if len(n.input) > 1 else None
        if w is None or w.ndim != 2:
            return None  # activation x activation: not a layer
        if len(n.input) > 2 and n.input[2] and gr.const(n.input[2]) is None:
            return _Fail("bias is not a constant", "nonconst_bias", n)
        return (1, 0 if _attr(n, "transB", 0) else 1, 2, -1)
    if n.op_type == "MatMul":
        w = gr.const(n.input[1]) if len(n.input) > 1 else None
        if w is None or w.ndim != 2:
            return None
        a = gr.shape(n.input[0])
        return (1, 1, None if a is None else max(len(a), 1), -1)
    return None


def _importance(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.moveaxis(w.astype(np.float64), axis, 0).reshape(w.shape[axis], -1)
    return np.abs(x).sum(axis=1), np.sqrt((x * x).sum(axis=1))


def _bn_factor(gr: _Graph, pi: int) -> tuple[np.ndarray | None, int | None]:
    """|scale| / sqrt(var + eps) of a BatchNormalization that is the layer's only consumer."""
    cons = gr.consumers.get(gr.nodes[pi].output[0], [])
    if len(cons) != 1:
        return None, None
    i, j = cons[0]
    n = gr.nodes[i]
    if n.op_type != "BatchNormalization" or j != 0:
        return None, None
    scale, var = gr.const(n.input[1]), gr.const(n.input[4])
    if scale is None or var is None:
        return None, None
    eps = float(_attr(n, "epsilon", 1e-5))
    return np.abs(scale.astype(np.float64)) / np.sqrt(var.astype(np.float64) + eps), i


def _analyze(gr: _Graph) -> tuple[list[_Layer], dict[str, _Fail]]:
    """The prunable layers, and for every other Conv/Gemm/MatMul layer the ``_Fail`` saying why not."""
    layers, skipped = [], {}
    for i, n in enumerate(gr.nodes):
        spec = _producer_spec(gr, i)
        if spec is None:
            continue
        name = gr.names[i]
        if isinstance(spec, _Fail):
            skipped[name] = spec
            continue
        try:
            plan = trace(gr, i, spec)
        except _Fail as e:
            skipped[name] = e
            continue
        w = gr.const(n.input[spec[0]])
        l1, l2 = _importance(w, spec[1])
        f, _ = _bn_factor(gr, i) if n.op_type in ("Conv", "ConvTranspose") else (None, None)
        if f is not None and f.shape == l1.shape:
            l1, l2 = l1 * f, l2 * f
        layers.append(_Layer(i, name, n.op_type, int(w.shape[spec[1]]), l1, l2, plan))
    return layers, skipped


def prunable_layers(model: onnx.ModelProto, shapes: dict | None = None) -> list[str]:
    """Names of the layers (Conv/Gemm/MatMul nodes) whose output channels/features ``prune`` can remove.

    ``shapes`` (input name -> static shape) helps where a Flatten/Reshape needs the spatial size."""
    layers, _ = _analyze(_Graph(model, shapes))
    return [layer.name for layer in layers]
