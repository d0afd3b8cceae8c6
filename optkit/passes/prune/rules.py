"""Channel propagation: one small rule per op family, in a table (``RULES``), and the tracer that applies them.

A rule gets the node that reads a tensor carrying the layer's channels and either records what must change
(``_Plan``) and where the channels go next (``t.set_out``), or raises ``_Fail`` with the reason the layer cannot be
pruned safely (a sentence for the notes, a reason code and the node for the ``skipped`` metrics). An op with no rule stops the trace. Rules are grouped by op family (``FAMILIES``, names shared with
the fx tracer of ``optkit.torch.prune``); to teach the pruner a new op, add it to a family or give it a rule in
``RULES``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx

from ...model import layer_name
from ...model import node_attr as _attr
from .channels import _axes, _Chan, _const_broadcast, _dynamic_flatten_shape, _Fail, _Plan, _shape_readers_ok
from .graph import _STD, _Graph

# ops that map each element to one element of the same shape (channels pass through unchanged)
UNARY = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
         "Softsign", "Gelu", "Mish", "Erf", "Identity", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
         "ThresholdedRelu", "Floor", "Ceil", "Round", "Sign", "Cos", "Sin", "Cast", "Clip", "Dropout", "Swish"}
BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Max", "Min", "Sum", "Mean"}
POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare",
          "ReduceProd", "ReduceLogSumExp", "ReduceLogSum"}


@dataclass
class _Trace:
    """The state of one layer's trace: the graph, the plan so far, and which tensors carry the channels."""

    gr: _Graph
    plan: _Plan
    L0: int  # the layer's channel count
    chan: dict

    def set_out(self, node: onnx.NodeProto, c: _Chan, k: int = 0) -> None:
        """Output ``k`` of ``node`` carries the channels as ``c``; its other outputs must be unused."""
        gr = self.gr
        for extra in list(node.output)[k + 1:]:
            if extra and (gr.consumers.get(extra) or extra in gr.outputs):
                raise _Fail(f"extra output {extra} of {node.op_type} {layer_name(node)} is used", "extra_output", node)
        o = node.output[k]
        if o in gr.outputs:
            raise _Fail(f"channels reach graph output {o}", "graph_output", node)
        if o in gr.sub_refs:
            raise _Fail(f"channels reach {o}, used inside a subgraph", "subgraph", node)
        self.chan[o] = c


Rule = Callable[[_Trace, int, onnx.NodeProto, list, _Chan], None]


def _unary(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    if hits != [0]:
        raise _Fail(f"output feeds a parameter input of {n.op_type} {layer_name(n)}", "parameter_input", n)
    t.set_out(n, c)


def _binary(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    op, nm, gr = n.op_type, layer_name(n), t.gr
    if op in ("Pow", "PRelu") and hits != [0]:
        raise _Fail(f"output feeds the {'exponent' if op == 'Pow' else 'slope'} of {op} {nm}", "parameter_input", n)
    rank_out = c.rank
    for j, name in enumerate(n.input):
        if not name or j in hits:
            continue
        v = gr.const(name)
        if v is not None:
            _const_broadcast(gr, t.plan, i, j, c, t.L0 * c.block)
            if rank_out is not None:
                rank_out = max(rank_out, v.ndim)
            continue
        s = gr.shape(name)
        if s is not None and (c.rank is None or len(s) <= c.rank) and (len(s) + c.axis < 0 or s[len(s) + c.axis] == 1):
            continue  # broadcasts along the channels (e.g. a [N,1,H,W] spatial map)
        if op in ("Add", "Sum", "Sub"):
            raise _Fail(f"output feeds {op} with another activation (residual) at node {nm!r}", "residual", n)
        raise _Fail(f"output feeds {op} {nm!r} together with another activation", "other_activation", n)
    s_out = gr.shape(n.output[0])
    t.set_out(n, _Chan(c.axis, len(s_out) if s_out is not None else rank_out, c.block))


def _on_channel_axis(n: onnx.NodeProto, hits: list, c: _Chan, what: str) -> None:
    """Ops that read the channels on NCHW axis 1, unblocked, as their data input."""
    if hits != [0] or c.pos() != 1 or c.block != 1:
        raise _Fail(f"output feeds {n.op_type} {layer_name(n)} {what}", "layout", n)


def _pool(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    _on_channel_axis(n, hits, c, "along another axis")
    t.set_out(n, c)


def _norm(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    _on_channel_axis(n, hits, c, "on another axis")
    for j in range(1, 5 if n.op_type == "BatchNormalization" else 3):
        v = t.gr.const(n.input[j]) if len(n.input) > j else None
        if v is None or v.shape != (t.L0,):
            raise _Fail(f"{n.op_type} {layer_name(n)} has non-constant or non-per-channel parameters",
                        "not_per_channel", n)
        t.plan.slices.append((i, j, 0, 1))
    t.set_out(n, c)


def _conv(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    op, nm, gr, L = n.op_type, layer_name(n), t.gr, t.L0
    _on_channel_axis(n, hits, c, "as weight/bias or on another axis")
    w2 = gr.const(n.input[1]) if len(n.input) > 1 else None
    if w2 is None:
        raise _Fail(f"output feeds {op} {nm} whose weight is not a constant", "nonconst_weight", n)
    g = int(_attr(n, "group", 1))
    if g == 1:
        if w2.shape[1 if op == "Conv" else 0] != L:
            raise _Fail(f"{op} {nm} weight does not match the channel count", "weight_mismatch", n)
        t.plan.slices.append((i, 1, 1 if op == "Conv" else 0, 1))
        t.plan.terminals.append((i, n.input[0], c))
    elif op == "Conv" and g == L and w2.shape[0] == L and w2.shape[1] == 1:
        t.plan.slices.append((i, 1, 0, 1))  # depthwise: its channels are ours
        if len(n.input) > 2 and n.input[2]:
            if gr.const(n.input[2]) is None:
                raise _Fail(f"depthwise conv {nm} bias is not a constant", "nonconst_bias", n)
            t.plan.slices.append((i, 2, 0, 1))
        t.plan.groups.append(i)
        t.set_out(n, c)
    else:
        raise _Fail(f"output feeds grouped conv {nm} (group={g})", "grouped_conv", n)


def _gemm(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    nm, L = layer_name(n), t.L0 * c.block
    w2 = t.gr.const(n.input[1])
    if hits != [0] or int(_attr(n, "transA", 0)) or c.axis != -1 or w2 is None or w2.ndim != 2:
        raise _Fail(f"output feeds Gemm {nm} other than as A with a constant B", "layout", n)
    a = 1 if int(_attr(n, "transB", 0)) else 0
    if w2.shape[a] != L:
        raise _Fail(f"Gemm {nm} weight does not match the feature count", "weight_mismatch", n)
    t.plan.slices.append((i, 1, a, c.block))
    t.plan.terminals.append((i, n.input[0], c))


def _matmul(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    nm, L = layer_name(n), t.L0 * c.block
    w2 = t.gr.const(n.input[1]) if len(n.input) > 1 else None
    if hits != [0] or c.axis != -1 or w2 is None or w2.ndim != 2:
        raise _Fail(f"output feeds MatMul {nm} other than as the input of a constant 2-D weight", "layout", n)
    if w2.shape[0] != L:
        raise _Fail(f"MatMul {nm} weight does not match the feature count", "weight_mismatch", n)
    t.plan.slices.append((i, 1, 0, c.block))
    t.plan.terminals.append((i, n.input[0], c))


def _flat_layout(t: _Trace, n: onnx.NodeProto, c: _Chan) -> tuple[tuple | None, int | None, int | None, int]:
    """(input shape, rank, channel position, elements after the channel axis) of a Flatten/Reshape input."""
    s = t.gr.shape(n.input[0])
    r = c.rank if c.rank is not None else (len(s) if s is not None else None)
    p = None if r is None else r + c.axis
    if n.op_type == "Flatten":
        a = int(_attr(n, "axis", 1))
        if r is None or (a + r if a < 0 else a) != p:
            raise _Fail(f"output feeds Flatten {layer_name(n)} that mixes channels with other dims", "mixes_channels", n)
    inner = 1
    if p is not None and r is not None and p + 1 < r:
        tail = s[p + 1:] if s is not None and len(s) == r else None
        if tail is None or any(d is None for d in tail):
            raise _Fail(f"output feeds {n.op_type} {layer_name(n)} and the size after the channel axis is unknown "
                        "(pass --shape to fix the input size)", "unknown_shape", n)
        inner = int(np.prod(tail))
    return s, r, p, inner


def _flatten(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    if hits != [0]:
        raise _Fail(f"output feeds the shape input of Flatten {layer_name(n)}", "shape_input", n)
    _s, _r, _p, inner = _flat_layout(t, n, c)
    t.set_out(n, _Chan(-1, 2, c.block * inner))


def _reshape(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    nm, L = layer_name(n), t.L0 * c.block
    if hits != [0]:
        raise _Fail(f"output feeds the shape input of Reshape {nm}", "shape_input", n)
    s, _r, p, inner = _flat_layout(t, n, c)
    tv = t.gr.const(n.input[1]) if len(n.input) > 1 else None
    tgt = [int(x) for x in tv.reshape(-1)] if tv is not None and tv.ndim == 1 else None
    batch = s[0] if s is not None and s else None
    if tgt is not None and c.axis == -1 and tgt and tgt[-1] == L:
        t.plan.reshapes.append((i, 1, len(tgt) - 1, c.block))  # channels stay the last axis
        t.set_out(n, _Chan(-1, len(tgt), c.block))
    elif tgt is not None and len(tgt) == 2 and p == 1 and tgt[1] == -1 and (tgt[0] == 0 or (batch and tgt[0] == batch)):
        t.set_out(n, _Chan(-1, 2, c.block * inner))  # [batch, -1]
    elif tgt is not None and len(tgt) == 2 and p == 1 and tgt[1] == L * inner and tgt[0] in (0, -1, batch):
        t.plan.reshapes.append((i, 1, 1, c.block * inner))  # [batch, C*H*W]
        t.set_out(n, _Chan(-1, 2, c.block * inner))
    elif tgt is None and p == 1 and _dynamic_flatten_shape(t.gr, n.input[1]):
        t.set_out(n, _Chan(-1, 2, c.block * inner))  # torch's x.view(x.size(0), -1)
    else:
        raise _Fail(f"output feeds Reshape {nm} that mixes channels with other dims", "mixes_channels", n)


def _squeeze(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    op, nm = n.op_type, layer_name(n)
    if hits != [0] or c.rank is None:
        raise _Fail(f"output feeds {op} {nm} with unknown rank", "unknown_shape", n)
    axes = _axes(t.gr, n, 1)
    if axes is None:
        raise _Fail(f"output feeds {op} {nm} without axes", "runtime_params", n)
    p = c.pos()
    if op == "Squeeze":
        ax = sorted({a + c.rank if a < 0 else a for a in axes})
        if p in ax:
            raise _Fail(f"Squeeze {nm} removes the channel axis", "removes_channel_axis", n)
        new_rank = c.rank - len(ax)
        new_p = p - sum(1 for a in ax if a < p)
    else:
        new_rank = c.rank + len(axes)
        ax = sorted({a + new_rank if a < 0 else a for a in axes})
        new_p = [d for d in range(new_rank) if d not in ax][p]
    t.set_out(n, _Chan(new_p - new_rank, new_rank, c.block))


def _shape(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    if not _shape_readers_ok(t.gr, i, c.pos()):
        raise _Fail(f"the shape of the channels is read by {layer_name(n)} (channel count used at run time)",
                    "shape_read", n)


def _resize(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    op = n.op_type
    _on_channel_axis(n, hits, c, "on another axis")
    sc_idx = 2 if op == "Resize" and len(n.input) > 2 else 1
    sizes = n.input[3] if op == "Resize" and len(n.input) > 3 else ""
    sc = t.gr.const(n.input[sc_idx]) if len(n.input) > sc_idx and n.input[sc_idx] else None
    if sizes or sc is None or sc.size <= 1 or float(sc.reshape(-1)[1]) != 1.0:
        raise _Fail(f"output feeds {op} {layer_name(n)} that sets the channel count", "sets_channel_count", n)
    t.set_out(n, c)


def _pad(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    nm = layer_name(n)
    if hits != [0] or c.rank is None:
        raise _Fail(f"output feeds Pad {nm} with unknown rank", "unknown_shape", n)
    pads = _attr(n, "pads")
    if pads is None:
        pads = t.gr.const(n.input[1]) if len(n.input) > 1 else None
    if pads is None or (len(n.input) > 3 and n.input[3]):
        raise _Fail(f"Pad {nm} has run-time pads or axes", "runtime_params", n)
    pads = [int(x) for x in np.atleast_1d(pads)]
    p = c.pos()
    if len(pads) != 2 * c.rank or pads[p] != 0 or pads[p + c.rank] != 0:
        raise _Fail(f"Pad {nm} pads the channel axis", "pads_channel_axis", n)
    t.set_out(n, c)


def _reduce(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    op, nm = n.op_type, layer_name(n)
    if hits != [0] or c.rank is None or c.block != 1:
        raise _Fail(f"output feeds {op} {nm} with unknown rank", "unknown_shape", n)
    axes = _axes(t.gr, n, 1)
    if not axes:
        raise _Fail(f"{op} {nm} reduces over every axis", "reduces_all_axes", n)
    ax = sorted({a + c.rank if a < 0 else a for a in axes})
    p = c.pos()
    if p in ax:
        raise _Fail(f"{op} {nm} reduces over the channels", "reduction_axis", n)
    if int(_attr(n, "keepdims", 1)):
        t.set_out(n, c)
    else:
        new_rank = c.rank - len(ax)
        t.set_out(n, _Chan(p - sum(1 for a in ax if a < p) - new_rank, new_rank))


def _linear(t: _Trace, i: int, n: onnx.NodeProto, hits: list, c: _Chan) -> None:
    (_gemm if n.op_type == "Gemm" else _matmul)(t, i, n, hits, c)


# The op families the tracer follows. The names are shared with optkit.torch's fx tracer (optkit/torch/fx_rules.py),
# which maps torch modules/functions/methods onto the same families with rules of its own over fx nodes.
FAMILIES: dict[str, frozenset] = {
    "unary": frozenset(UNARY), "binary": frozenset(BINARY), "pool": frozenset(POOLS),
    "norm": frozenset({"BatchNormalization", "InstanceNormalization"}), "conv": frozenset({"Conv", "ConvTranspose"}),
    "linear": frozenset({"Gemm", "MatMul"}), "flatten": frozenset({"Flatten"}), "reshape": frozenset({"Reshape"}),
    "squeeze": frozenset({"Squeeze", "Unsqueeze"}), "shape": frozenset({"Shape"}),
    "resize": frozenset({"Resize", "Upsample"}), "pad": frozenset({"Pad"}), "reduce": frozenset(REDUCE),
}
FAMILY_RULES: dict[str, Rule] = {
    "unary": _unary, "binary": _binary, "pool": _pool, "norm": _norm, "conv": _conv, "linear": _linear,
    "flatten": _flatten, "reshape": _reshape, "squeeze": _squeeze, "shape": _shape, "resize": _resize, "pad": _pad,
    "reduce": _reduce,
}
# op type -> rule: what the tracer looks up (add an op type here, or a family above, to follow a new op)
RULES: dict[str, Rule] = {op: FAMILY_RULES[fam] for fam, ops in FAMILIES.items() for op in sorted(ops)}


def _start(gr: _Graph, pi: int, spec) -> _Trace:
    """The producer's own edits (its weight, its bias) and the channels on its output."""
    prod = gr.nodes[pi]
    widx, waxis, rank, axis = spec
    L0 = int(gr.const(prod.input[widx]).shape[waxis])
    plan = _Plan()
    plan.slices.append((pi, widx, waxis, 1))
    if len(prod.input) > 2 and prod.input[2]:
        if prod.op_type == "Gemm":
            _const_broadcast(gr, plan, pi, 2, _Chan(-1, 2), L0)
        else:
            plan.slices.append((pi, 2, 0, 1))
    out = prod.output[0]
    if out in gr.sub_refs:
        raise _Fail(f"output {out} is used inside a subgraph", "subgraph", prod)
    if out in gr.outputs:
        raise _Fail(f"output {out} is a graph output", "graph_output", prod)
    return _Trace(gr, plan, L0, {out: _Chan(axis, rank)})


def trace(gr: _Graph, pi: int, spec) -> _Plan:
    """Follow the layer's output channels forward through ``RULES``; raise _Fail(reason) where that is not safe."""
    t = _start(gr, pi, spec)
    for i in range(pi + 1, len(gr.nodes)):
        n = gr.nodes[i]
        hits = [j for j, name in enumerate(n.input) if name in t.chan]
        if not hits:
            continue
        op, nm = n.op_type, layer_name(n)
        if n.domain not in _STD:
            raise _Fail(f"output feeds {n.domain}.{op} {nm}", "custom_op", n)
        c = t.chan[n.input[hits[0]]]
        if any(t.chan[n.input[j]] != c for j in hits):
            raise _Fail(f"output reaches {op} {nm} twice with different layouts", "layout", n)
        rule = RULES.get(op)
        if rule is None:
            raise _Fail(f"output feeds {op} {nm!r}", "unsupported_op", n)
        rule(t, i, n, hits, c)
    return t.plan
