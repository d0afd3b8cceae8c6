"""Structured pruning (``prune``) that physically shrinks tensors, and magnitude sparsification (``sparsify``).

``prune`` removes whole output channels / features, so every later kernel gets smaller and ONNX Runtime (or
any dense backend) actually runs faster:

* Conv (and ConvTranspose, group=1) output channels, chosen by the L1/L2 norm of each filter (times the
  scale of a BatchNormalization that directly follows, which is what the filter is worth once ORT fuses the
  two). The removed channels are followed through the graph and every consumer is rewritten to match: the
  Conv bias; BatchNormalization / InstanceNormalization parameters; channel-preserving elementwise ops
  (Relu, LeakyRelu, Clip, Sigmoid, HardSwish, Gelu, Erf, Tanh, ..., and Add/Sub/Mul/Div/PRelu/Pow with a
  constant that is scalar or per-channel: per-channel constants are sliced too; binary ops whose two inputs
  both carry the same channels, e.g. SiLU ``x * sigmoid(x)``); Max/Average/Global pools, Pad, Resize,
  Reduce* over other axes, Squeeze/Unsqueeze; depthwise Convs (their channels are sliced too); the next
  Conv's input channels (weight axis 1, group=1); Flatten / Reshape to [batch, C*H*W] (static H*W) feeding a
  Gemm/MatMul, whose weight rows are sliced in blocks (transB honoured).
* Gemm/MatMul output features (constant 2-D weight) followed, optionally through a bias Add and an
  activation (Relu, Gelu op, the erf-GELU subgraph torch exports, tanh-GELU, Sigmoid, Tanh, ...), by another
  MatMul/Gemm with a constant weight: MLP hidden layers and transformer FFN neurons.

Anything the tracer cannot follow safely (a residual Add of two activations, Concat, grouped convs, a graph
output, a Reshape that mixes channels with other dims, LayerNorm/Softmax over the channels, subgraphs, ...)
leaves that layer unpruned, and the notes say why. Attention-head pruning is not implemented.

With real samples (``--data``; synthetic ones are not used) two things use measured activations:
bias compensation (on by default) adds the mean contribution of every removed channel to the bias of the layer
that read it, so only its variance is lost (on the bundled digits CNN, 20% pruning kept 94% top-1 with it and
37% without); ``importance: activation`` ranks channels by that lost variance times the weights reading them
(82% vs 66% at 30%). Without fine-tuning, pruning costs accuracy: tune per-layer ratios with ``layers``.

Layer names are node names (the first output's name for unnamed nodes); :func:`prunable_layers` lists them.

``sparsify`` zeroes weights (unstructured magnitude or 2:4) without changing shapes: dense CPU kernels gain
nothing from that; it is for sparse-capable backends (TensorRT sparse tactics on Ampere+).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import PassError
from ..model import EXTERNAL_DATA_THRESHOLD, layer_name, param_count, tensor_bytes, toposort
from ..model import node_attr as _attr
from . import Context, Pass, PassConfig, PassResult, option, register_pass

# ---------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PruneConfig(PassConfig):
    ratio: float = option(0.3, "fraction of output channels/features removed per layer (0 = no-op)")
    importance: str = option("l1", "how a filter/neuron is ranked: L1 or L2 norm of its weights, or activation: the "
                                   "output error of removing it, from its activation variance on --data and the weights "
                                   "reading it (needs real samples)", choices=("l1", "l2", "activation"))
    scope: str = option("layer", "layer: remove `ratio` of every layer; global: one threshold over all layers' "
                                 "normalized importances (still honouring min_channels)", choices=("layer", "global"))
    min_channels: int = option(8, "never keep fewer channels/features than this in a layer")
    multiple_of: int = option(1, "round kept counts up to a multiple of this (e.g. 8 or 16 for SIMD/tensor cores)")
    skip: list[str] = option([], "layer (node) names never pruned")
    layers: dict[str, float] = option({}, "per-layer ratio overrides by node name (used by the accuracy tuner)")
    compensate: bool = option(True, "fold the mean activation of each removed channel into the next layer's bias "
                                    "(measured on real samples from --data; skipped for synthetic samples or none)")
    max_samples: int = option(16, "sample feeds used to measure those means")

    def check(self) -> str | None:
        if not 0.0 <= self.ratio < 1.0:
            return f"option 'ratio' must be in [0, 1), got {self.ratio}"
        if self.min_channels < 1:
            return f"option 'min_channels' must be >= 1, got {self.min_channels}"
        if self.multiple_of < 1:
            return f"option 'multiple_of' must be >= 1, got {self.multiple_of}"
        if self.max_samples < 1:
            return f"option 'max_samples' must be >= 1, got {self.max_samples}"
        bad = {k: v for k, v in self.layers.items() if not 0.0 <= v < 1.0}
        if bad:
            return f"option 'layers' needs ratios in [0, 1), got {bad}"
        return None


# ---------------------------------------------------------------------------------------------------------------
# graph facts
# ---------------------------------------------------------------------------------------------------------------

_STD = ("", "ai.onnx")

# ops that map each element to one element of the same shape (channels pass through unchanged)
_UNARY = {"Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu", "Celu", "Softplus",
          "Softsign", "Gelu", "Mish", "Erf", "Identity", "Abs", "Neg", "Exp", "Log", "Sqrt", "Reciprocal",
          "ThresholdedRelu", "Floor", "Ceil", "Round", "Sign", "Cos", "Sin", "Cast", "Clip", "Dropout", "Swish"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Pow", "PRelu", "Max", "Min", "Sum", "Mean"}
_POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
_REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare",
           "ReduceProd", "ReduceLogSumExp", "ReduceLogSum"}


def _subgraph_refs(graph: onnx.GraphProto, out: set) -> None:
    for n in graph.node:
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else \
                list(a.graphs) if a.type == onnx.AttributeProto.GRAPHS else []
            for g in subs:
                for m in g.node:
                    out.update(m.input)
                _subgraph_refs(g, out)


class _Graph:
    """A topologically sorted copy of the model plus the lookups the tracer needs."""

    def __init__(self, model: onnx.ModelProto, shapes: dict | None = None):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        toposort(m)
        self.model = m
        g = m.graph
        self.nodes = list(g.node)
        self.init = {t.name: t for t in g.initializer}
        self.graph_inputs = {v.name for v in g.input}
        self.outputs = {v.name for v in g.output}
        self.consts: dict[str, np.ndarray] = {}
        self.const_node: dict[str, int] = {}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[tuple[int, int]]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for j, name in enumerate(n.input):
                if name:
                    self.consumers.setdefault(name, []).append((i, j))
            if n.op_type == "Constant" and n.domain in _STD and n.output:
                t = _attr(n, "value")
                if isinstance(t, onnx.TensorProto):
                    self.const_node[n.output[0]] = i
        self.sub_refs: set = set()
        _subgraph_refs(g, self.sub_refs)
        self.names = [layer_name(n) for n in self.nodes]
        self._shapes = None
        self._shape_src = shapes or {}

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer (not overridable as a graph input) or Constant node output."""
        if not name:
            return None
        if name in self.consts:
            return self.consts[name]
        v = None
        if name in self.init and name not in self.graph_inputs:
            v = numpy_helper.to_array(self.init[name])
        elif name in self.const_node:
            v = numpy_helper.to_array(_attr(self.nodes[self.const_node[name]], "value"))
        if v is not None:
            self.consts[name] = v
        return v

    def shape(self, name: str) -> tuple | None:
        """Inferred shape (ints, or None for unknown dims); None when the rank is unknown."""
        if self._shapes is None:
            self._shapes = _infer_shapes(self.model, self._shape_src)
        if name in self._shapes:
            return self._shapes[name]
        c = self.const(name)
        return tuple(c.shape) if c is not None else None


def _infer_shapes(model: onnx.ModelProto, user: dict) -> dict:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        given = user.get(vi.name)
        if given is None:
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == len(given):
            for d, v in zip(dims, given):
                d.Clear()
                d.dim_value = int(v)
    for t in m.graph.initializer:  # shapes only: do not copy weights through inference
        if t.ByteSize() > 1 << 16:
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.ClearField("double_data")
            t.ClearField("int32_data")
            t.ClearField("int64_data")
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        return {}
    out = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        out[vi.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in tt.shape.dim)
    return out


# ---------------------------------------------------------------------------------------------------------------
# tracing a layer's channels through its consumers
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chan:
    """A tensor whose axis ``axis`` (negative, from the end) holds the layer's channels, each ``block`` long."""

    axis: int
    rank: int | None
    block: int = 1

    def pos(self) -> int | None:
        return None if self.rank is None else self.rank + self.axis


@dataclass
class _Plan:
    """Edits that keep the graph consistent when a layer keeps a subset of its channels."""

    slices: list = field(default_factory=list)  # (node index, input index, axis in that tensor, block)
    reshapes: list = field(default_factory=list)  # (node index, input index, position, inner)
    groups: list = field(default_factory=list)  # node indices whose `group` becomes the kept count
    terminals: list = field(default_factory=list)  # (node index, input tensor, _Chan): layers reading the channels


class _Fail(Exception):
    pass


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
    """(weight input index, output axis in the weight, rank of the output or None, channel axis) or a reason."""
    n = gr.nodes[i]
    if n.domain not in _STD:
        return None
    if n.op_type in ("Conv", "ConvTranspose"):
        w = gr.const(n.input[1]) if len(n.input) > 1 else None
        if w is None:
            return "weight is not a constant" + (" (an initializer that is also a graph input can be replaced at run "
                                                 "time; re-export without keep_initializers_as_inputs)"
                                                 if len(n.input) > 1 and n.input[1] in gr.init else "")
        if w.ndim < 3:
            return f"weight rank {w.ndim} is not a conv weight"
        g = int(_attr(n, "group", 1))
        if g != 1:
            return f"grouped/depthwise conv (group={g}): its output channels are tied to its input channels"
        if len(n.input) > 2 and n.input[2] and gr.const(n.input[2]) is None:
            return "bias is not a constant"
        return (1, 0 if n.op_type == "Conv" else 1, w.ndim, -(w.ndim - 1))
    if n.op_type == "Gemm":
        w = gr.const(n.input[1]) if len(n.input) > 1 else None
        if w is None or w.ndim != 2:
            return None  # activation x activation: not a layer
        if len(n.input) > 2 and n.input[2] and gr.const(n.input[2]) is None:
            return "bias is not a constant"
        return (1, 0 if _attr(n, "transB", 0) else 1, 2, -1)
    if n.op_type == "MatMul":
        w = gr.const(n.input[1]) if len(n.input) > 1 else None
        if w is None or w.ndim != 2:
            return None
        a = gr.shape(n.input[0])
        return (1, 1, None if a is None else max(len(a), 1), -1)
    return None


def _const_broadcast(gr: _Graph, plan: _Plan, i: int, j: int, c: _Chan, L: int) -> None:
    """Input j of node i is a constant broadcast against a channel tensor: slice it if it is per-channel."""
    v = gr.const(gr.nodes[i].input[j])
    p = v.ndim + c.axis
    if p < 0 or v.shape[p] == 1:
        return
    if v.shape[p] != L:
        raise _Fail(f"constant {gr.nodes[i].input[j]} of {gr.nodes[i].op_type} does not broadcast per channel")
    plan.slices.append((i, j, p, c.block))


def _axes(gr: _Graph, node: onnx.NodeProto, input_index: int):
    a = _attr(node, "axes")
    if a is not None:
        return [int(x) for x in a]
    if len(node.input) > input_index and node.input[input_index]:
        v = gr.const(node.input[input_index])
        if v is None:
            raise _Fail(f"{node.op_type} {layer_name(node)} has run-time axes")
        return [int(x) for x in np.atleast_1d(v)]
    return None


def _shape_readers_ok(gr: _Graph, i: int, p: int | None) -> bool:
    """A Shape node on a channel tensor is fine if nothing downstream reads the channel dim."""
    n = gr.nodes[i]
    if p is None:
        return False
    start, end = int(_attr(n, "start", 0)), _attr(n, "end")
    if start < 0 or (end is not None and int(end) < 0):
        return False  # would need the rank
    lo, hi = start, (int(end) if end is not None else 1 << 30)
    if not lo <= p < hi:
        return True
    for ci, cj in gr.consumers.get(n.output[0], []):
        m = gr.nodes[ci]
        if m.op_type != "Gather" or cj != 0 or int(_attr(m, "axis", 0)) != 0:
            return False
        idx = gr.const(m.input[1])
        if idx is None or any(int(x) + lo == p or int(x) < 0 for x in np.atleast_1d(idx)):
            return False
    if n.output[0] in gr.outputs:
        return False
    return True


def _dynamic_flatten_shape(gr: _Graph, name: str) -> bool:
    """Is ``name`` a run-time [batch, -1] shape: Concat(Unsqueeze(Gather(Shape(x), 0)), [-1])?"""
    if name not in gr.producer:
        return False
    cat = gr.nodes[gr.producer[name]]
    if cat.op_type != "Concat" or len(cat.input) != 2:
        return False
    last = gr.const(cat.input[1])
    if last is None or last.size != 1 or int(last.reshape(-1)[0]) != -1:
        return False
    src = cat.input[0]
    for _ in range(4):  # through Unsqueeze/Cast/Reshape
        if src not in gr.producer:
            return False
        m = gr.nodes[gr.producer[src]]
        if m.op_type == "Gather":
            idx = gr.const(m.input[1])
            shp = gr.nodes[gr.producer[m.input[0]]] if m.input[0] in gr.producer else None
            return (idx is not None and idx.size == 1 and int(idx.reshape(-1)[0]) == 0 and shp is not None
                    and shp.op_type == "Shape" and int(_attr(shp, "start", 0)) == 0)
        if m.op_type not in ("Unsqueeze", "Cast", "Reshape", "Identity"):
            return False
        src = m.input[0]
    return False


def _trace(gr: _Graph, pi: int, spec) -> _Plan:
    """Follow the layer's output channels forward; raise _Fail(reason) where that is not safe."""
    prod = gr.nodes[pi]
    widx, waxis, rank, axis = spec
    w = gr.const(prod.input[widx])
    L0 = int(w.shape[waxis])
    plan = _Plan()
    plan.slices.append((pi, widx, waxis, 1))
    if len(prod.input) > 2 and prod.input[2]:
        if prod.op_type == "Gemm":
            _const_broadcast(gr, plan, pi, 2, _Chan(-1, 2), L0)
        else:
            plan.slices.append((pi, 2, 0, 1))
    out = prod.output[0]
    if out in gr.sub_refs:
        raise _Fail(f"output {out} is used inside a subgraph")
    chan: dict[str, _Chan] = {out: _Chan(axis, rank)}
    if out in gr.outputs:
        raise _Fail(f"output {out} is a graph output")

    def set_out(node: onnx.NodeProto, c: _Chan, k: int = 0) -> None:
        for extra in list(node.output)[k + 1:]:
            if extra and (gr.consumers.get(extra) or extra in gr.outputs):
                raise _Fail(f"extra output {extra} of {node.op_type} {layer_name(node)} is used")
        o = node.output[k]
        if o in gr.outputs:
            raise _Fail(f"channels reach graph output {o}")
        if o in gr.sub_refs:
            raise _Fail(f"channels reach {o}, used inside a subgraph")
        chan[o] = c

    for i in range(pi + 1, len(gr.nodes)):
        n = gr.nodes[i]
        hits = [j for j, name in enumerate(n.input) if name in chan]
        if not hits:
            continue
        op, nm = n.op_type, layer_name(n)
        if n.domain not in _STD:
            raise _Fail(f"output feeds {n.domain}.{op} {nm}")
        c = chan[n.input[hits[0]]]
        if any(chan[n.input[j]] != c for j in hits):
            raise _Fail(f"output reaches {op} {nm} twice with different layouts")
        L, p = L0 * c.block, c.pos()

        if op in _UNARY:
            if hits != [0]:
                raise _Fail(f"output feeds a parameter input of {op} {nm}")
            set_out(n, c)
        elif op in _BINARY:
            if op in ("Pow", "PRelu") and hits != [0]:
                raise _Fail(f"output feeds the {'exponent' if op == 'Pow' else 'slope'} of {op} {nm}")
            rank_out = c.rank
            for j, name in enumerate(n.input):
                if not name or j in hits:
                    continue
                v = gr.const(name)
                if v is not None:
                    _const_broadcast(gr, plan, i, j, c, L)
                    if rank_out is not None:
                        rank_out = max(rank_out, v.ndim)
                    continue
                s = gr.shape(name)
                if s is not None and (c.rank is None or len(s) <= c.rank) and (len(s) + c.axis < 0 or s[len(s) + c.axis] == 1):
                    continue  # broadcasts along the channels (e.g. a [N,1,H,W] spatial map)
                if op in ("Add", "Sum", "Sub"):
                    raise _Fail(f"output feeds {op} with another activation (residual) at node {nm!r}")
                raise _Fail(f"output feeds {op} {nm!r} together with another activation")
            s_out = gr.shape(n.output[0])
            set_out(n, _Chan(c.axis, len(s_out) if s_out is not None else rank_out, c.block))
        elif op in _POOLS:
            if hits != [0] or p != 1 or c.block != 1:
                raise _Fail(f"output feeds {op} {nm} along another axis")
            set_out(n, c)
        elif op in ("BatchNormalization", "InstanceNormalization"):
            if hits != [0] or p != 1 or c.block != 1:
                raise _Fail(f"output feeds {op} {nm} on another axis")
            for j in range(1, 5 if op == "BatchNormalization" else 3):
                v = gr.const(n.input[j]) if len(n.input) > j else None
                if v is None or v.shape != (L,):
                    raise _Fail(f"{op} {nm} has non-constant or non-per-channel parameters")
                plan.slices.append((i, j, 0, 1))
            set_out(n, c)
        elif op in ("Conv", "ConvTranspose"):
            if hits != [0] or p != 1 or c.block != 1:
                raise _Fail(f"output feeds {op} {nm} as weight/bias or on another axis")
            w2 = gr.const(n.input[1]) if len(n.input) > 1 else None
            if w2 is None:
                raise _Fail(f"output feeds {op} {nm} whose weight is not a constant")
            g = int(_attr(n, "group", 1))
            if g == 1:
                if w2.shape[1 if op == "Conv" else 0] != L:
                    raise _Fail(f"{op} {nm} weight does not match the channel count")
                plan.slices.append((i, 1, 1 if op == "Conv" else 0, 1))
                plan.terminals.append((i, n.input[0], c))
            elif op == "Conv" and g == L and w2.shape[0] == L and w2.shape[1] == 1:
                plan.slices.append((i, 1, 0, 1))  # depthwise: its channels are ours
                if len(n.input) > 2 and n.input[2]:
                    if gr.const(n.input[2]) is None:
                        raise _Fail(f"depthwise conv {nm} bias is not a constant")
                    plan.slices.append((i, 2, 0, 1))
                plan.groups.append(i)
                set_out(n, c)
            else:
                raise _Fail(f"output feeds grouped conv {nm} (group={g})")
        elif op == "Gemm":
            w2 = gr.const(n.input[1])
            if hits != [0] or int(_attr(n, "transA", 0)) or c.axis != -1 or w2 is None or w2.ndim != 2:
                raise _Fail(f"output feeds Gemm {nm} other than as A with a constant B")
            a = 1 if int(_attr(n, "transB", 0)) else 0
            if w2.shape[a] != L:
                raise _Fail(f"Gemm {nm} weight does not match the feature count")
            plan.slices.append((i, 1, a, c.block))
            plan.terminals.append((i, n.input[0], c))
        elif op == "MatMul":
            w2 = gr.const(n.input[1]) if len(n.input) > 1 else None
            if hits != [0] or c.axis != -1 or w2 is None or w2.ndim != 2:
                raise _Fail(f"output feeds MatMul {nm} other than as the input of a constant 2-D weight")
            if w2.shape[0] != L:
                raise _Fail(f"MatMul {nm} weight does not match the feature count")
            plan.slices.append((i, 1, 0, c.block))
            plan.terminals.append((i, n.input[0], c))
        elif op in ("Flatten", "Reshape"):
            if hits != [0]:
                raise _Fail(f"output feeds the shape input of {op} {nm}")
            s = gr.shape(n.input[0])
            r = c.rank if c.rank is not None else (len(s) if s is not None else None)
            p = None if r is None else r + c.axis
            if op == "Flatten":
                a = int(_attr(n, "axis", 1))
                if r is None or (a + r if a < 0 else a) != p:
                    raise _Fail(f"output feeds Flatten {nm} that mixes channels with other dims")
            inner = 1
            if p is not None and r is not None and p + 1 < r:
                tail = s[p + 1:] if s is not None and len(s) == r else None
                if tail is None or any(d is None for d in tail):
                    raise _Fail(f"output feeds {op} {nm} and the size after the channel axis is unknown "
                                "(pass --shape to fix the input size)")
                inner = int(np.prod(tail))
            if op == "Flatten":
                set_out(n, _Chan(-1, 2, c.block * inner))
                continue
            t = gr.const(n.input[1]) if len(n.input) > 1 else None
            t = [int(x) for x in t.reshape(-1)] if t is not None and t.ndim == 1 else None
            batch = s[0] if s is not None and s else None
            if t is not None and c.axis == -1 and t and t[-1] == L:
                plan.reshapes.append((i, 1, len(t) - 1, c.block))  # channels stay the last axis
                set_out(n, _Chan(-1, len(t), c.block))
            elif t is not None and len(t) == 2 and p == 1 and t[1] == -1 and (t[0] == 0 or (batch and t[0] == batch)):
                set_out(n, _Chan(-1, 2, c.block * inner))  # [batch, -1]
            elif t is not None and len(t) == 2 and p == 1 and t[1] == L * inner and t[0] in (0, -1, batch):
                plan.reshapes.append((i, 1, 1, c.block * inner))  # [batch, C*H*W]
                set_out(n, _Chan(-1, 2, c.block * inner))
            elif t is None and p == 1 and _dynamic_flatten_shape(gr, n.input[1]):
                set_out(n, _Chan(-1, 2, c.block * inner))  # torch's x.view(x.size(0), -1)
            else:
                raise _Fail(f"output feeds Reshape {nm} that mixes channels with other dims")
        elif op in ("Squeeze", "Unsqueeze"):
            if hits != [0] or c.rank is None:
                raise _Fail(f"output feeds {op} {nm} with unknown rank")
            axes = _axes(gr, n, 1)
            if axes is None:
                raise _Fail(f"output feeds {op} {nm} without axes")
            p = c.pos()
            if op == "Squeeze":
                ax = sorted({a + c.rank if a < 0 else a for a in axes})
                if p in ax:
                    raise _Fail(f"Squeeze {nm} removes the channel axis")
                new_rank = c.rank - len(ax)
                new_p = p - sum(1 for a in ax if a < p)
            else:
                new_rank = c.rank + len(axes)
                ax = sorted({a + new_rank if a < 0 else a for a in axes})
                keep_dims = [d for d in range(new_rank) if d not in ax]
                new_p = keep_dims[p]
            set_out(n, _Chan(new_p - new_rank, new_rank, c.block))
        elif op == "Shape":
            if not _shape_readers_ok(gr, i, c.pos()):
                raise _Fail(f"the shape of the channels is read by {nm} (channel count used at run time)")
        elif op in ("Resize", "Upsample"):
            if hits != [0] or p != 1 or c.block != 1:
                raise _Fail(f"output feeds {op} {nm} on another axis")
            sc_idx = 2 if op == "Resize" and len(n.input) > 2 else 1
            sizes = n.input[3] if op == "Resize" and len(n.input) > 3 else ""
            sc = gr.const(n.input[sc_idx]) if len(n.input) > sc_idx and n.input[sc_idx] else None
            if sizes or sc is None or sc.size <= 1 or float(sc.reshape(-1)[1]) != 1.0:
                raise _Fail(f"output feeds {op} {nm} that sets the channel count")
            set_out(n, c)
        elif op == "Pad":
            if hits != [0] or c.rank is None:
                raise _Fail(f"output feeds Pad {nm} with unknown rank")
            pads = _attr(n, "pads")
            if pads is None:
                pads = gr.const(n.input[1]) if len(n.input) > 1 else None
            if pads is None or (len(n.input) > 3 and n.input[3]):
                raise _Fail(f"Pad {nm} has run-time pads or axes")
            pads = [int(x) for x in np.atleast_1d(pads)]
            if len(pads) != 2 * c.rank or pads[p] != 0 or pads[p + c.rank] != 0:
                raise _Fail(f"Pad {nm} pads the channel axis")
            set_out(n, c)
        elif op in _REDUCE:
            if hits != [0] or c.rank is None or c.block != 1:
                raise _Fail(f"output feeds {op} {nm} with unknown rank")
            axes = _axes(gr, n, 1)
            if not axes:
                raise _Fail(f"{op} {nm} reduces over every axis")
            ax = sorted({a + c.rank if a < 0 else a for a in axes})
            if p in ax:
                raise _Fail(f"{op} {nm} reduces over the channels")
            if int(_attr(n, "keepdims", 1)):
                set_out(n, c)
            else:
                new_rank = c.rank - len(ax)
                set_out(n, _Chan(p - sum(1 for a in ax if a < p) - new_rank, new_rank))
        else:
            raise _Fail(f"output feeds {op} {nm!r}")
    return plan


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


def _analyze(gr: _Graph) -> tuple[list[_Layer], dict[str, str]]:
    layers, skipped = [], {}
    for i, n in enumerate(gr.nodes):
        spec = _producer_spec(gr, i)
        if spec is None:
            continue
        name = gr.names[i]
        if isinstance(spec, str):
            skipped[name] = spec
            continue
        try:
            plan = _trace(gr, i, spec)
        except _Fail as e:
            skipped[name] = str(e)
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


# ---------------------------------------------------------------------------------------------------------------
# choosing what to keep and rewriting
# ---------------------------------------------------------------------------------------------------------------


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


def _expand(keep: np.ndarray, block: int) -> np.ndarray:
    if block == 1:
        return keep
    return (keep[:, None] * block + np.arange(block)[None, :]).reshape(-1)


def _unique(name: str, taken: set) -> str:
    k, cand = 0, f"{name}_pruned"
    while cand in taken:
        k += 1
        cand = f"{name}_pruned{k}"
    taken.add(cand)
    return cand


def _channel_stats(gr: _Graph, tensors: dict[str, _Chan], samples, max_samples: int, threads: int) -> dict:
    """(mean, variance) of every channel/feature of ``tensors`` over the sample feeds (other axes pooled)."""
    from ..backends.ort import OrtSession

    m = onnx.ModelProto()
    m.CopyFrom(gr.model)
    have = {o.name for o in m.graph.output}
    for name in tensors:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
    del m.graph.value_info[:]
    s1: dict[str, np.ndarray] = {}
    s2: dict[str, np.ndarray] = {}
    n = 0
    with OrtSession(m, threads=threads, level="basic") as sess:
        for feed in samples.feeds[:max_samples]:
            out = sess.run(feed)
            for name, c in tensors.items():
                x = np.moveaxis(np.asarray(out[name], dtype=np.float64), c.axis, -1)
                x = x.reshape(-1, x.shape[-1])
                s1[name] = s1.get(name, 0) + x.mean(axis=0)
                s2[name] = s2.get(name, 0) + (x * x).mean(axis=0)
            n += 1
    n = max(n, 1)
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


@dataclass
class _Comp:
    edits: dict = field(default_factory=dict)  # (node, input) -> [("add", delta) | ("replace", value)]
    new_inputs: list = field(default_factory=list)  # (node, input index, value): a bias the node did not have
    inserts: list = field(default_factory=list)  # (node, value): Add(value) inserted after a MatMul
    layers: int = 0


def _compensation(gr: _Graph, chosen: list[tuple[_Layer, np.ndarray]], means: dict) -> _Comp:
    """Per consumer of removed channels: the mean contribution those channels made, added to its bias.

    Removing channel c from a layer's input is replacing it by 0; replacing it by its mean instead keeps the
    first moment of every output, and that constant folds into the bias."""
    comp = _Comp()
    own = {layer.index: keep for layer, keep in chosen}  # a consumer may itself lose output channels

    def own_slice(i: int, v: np.ndarray) -> np.ndarray:
        return v[..., own[i]] if i in own else v

    for layer, keep in chosen:
        removed = np.setdiff1d(np.arange(layer.n), keep)
        for i, tensor, c in layer.plan.terminals:
            mu = means.get(tensor)
            if mu is None:
                continue
            rem = _expand(removed, c.block)
            node = gr.nodes[i]
            w = gr.const(node.input[1]).astype(np.float64)
            op = node.op_type
            if op == "Conv":
                delta = w.sum(axis=tuple(range(2, w.ndim)))[:, rem] @ mu[rem]
            elif op == "ConvTranspose":
                strides = _attr(node, "strides") or [1] * (w.ndim - 2)
                delta = mu[rem] @ w.sum(axis=tuple(range(2, w.ndim)))[rem] / float(np.prod(strides))
            elif op == "Gemm":
                wb = w.T if int(_attr(node, "transB", 0)) else w
                beta = float(_attr(node, "beta", 1.0))
                if beta == 0:
                    continue
                delta = float(_attr(node, "alpha", 1.0)) * (mu[rem] @ wb[rem]) / beta
            else:  # MatMul
                delta = mu[rem] @ w[rem]
            comp.layers += 1
            n_out = delta.shape[0]
            if op in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
                b = gr.const(node.input[2])
                if b.ndim >= 1 and b.shape[-1] == n_out:
                    comp.edits.setdefault((i, 2), []).append(("add", delta))
                else:  # a scalar/row-broadcast Gemm C: write it out whole
                    comp.edits.setdefault((i, 2), []).append(("replace", own_slice(i, np.asarray(b + delta))))
            elif op in ("Conv", "ConvTranspose", "Gemm"):
                comp.new_inputs.append((i, 2, own_slice(i, delta)))
            else:
                cons = gr.consumers.get(node.output[0], [])
                add = gr.nodes[cons[0][0]] if len(cons) == 1 else None
                j = 1 - cons[0][1] if add is not None else None
                is_add = add is not None and add.op_type == "Add" and node.output[0] not in gr.outputs
                b = gr.const(add.input[j]) if is_add else None
                if b is not None and b.ndim >= 1 and b.shape[-1] == n_out:
                    comp.edits.setdefault((cons[0][0], j), []).append(("add", delta))
                else:
                    comp.inserts.append((i, own_slice(i, delta)))
    return comp


def _apply(gr: _Graph, chosen: list[tuple[_Layer, np.ndarray]], comp: _Comp | None = None) -> onnx.ModelProto:
    edits: dict[tuple[int, int], list] = {}
    groups: dict[int, int] = {}
    comp = comp or _Comp()
    for key, es in comp.edits.items():  # bias corrections first: they are in the full (unsliced) output space
        edits.setdefault(key, []).extend((kind, None, v) for kind, v in es)
    for layer, keep in chosen:
        for i, j, axis, block in layer.plan.slices:
            edits.setdefault((i, j), []).append(("slice", axis, _expand(keep, block)))
        for i, j, pos, inner in layer.plan.reshapes:
            edits.setdefault((i, j), []).append(("set", pos, len(keep) * inner))
        for i in layer.plan.groups:
            groups[i] = len(keep)
    m = gr.model
    g = m.graph
    # each (tensor, edit list) becomes one new value; edits of one tensor are keyed so shared weights stay shared
    by_src: dict[str, dict] = {}
    for (i, j), es in edits.items():
        key = tuple((e[0], e[1], np.asarray(e[2]).tobytes() if not isinstance(e[2], int) else e[2]) for e in es)
        by_src.setdefault(gr.nodes[i].input[j], {}).setdefault(key, (es, []))[1].append((i, j))
    taken = {t.name for t in g.initializer} | set(gr.producer) | gr.graph_inputs
    replaced = set()
    new_inits = []
    for src, variants in by_src.items():
        base = gr.const(src)
        all_uses = len(gr.consumers.get(src, []))
        in_place = (len(variants) == 1 and src in gr.init and src not in gr.graph_inputs and src not in gr.outputs
                    and src not in gr.sub_refs and len(next(iter(variants.values()))[1]) == all_uses)
        for es, uses in variants.values():
            arr = base
            for kind, a, b in es:
                if kind == "slice":
                    arr = np.take(arr, b, axis=a)
                elif kind == "add":
                    arr = arr + b
                elif kind == "replace":
                    arr = b
                else:
                    arr = arr.copy()
                    arr[a] = b
            arr = np.ascontiguousarray(arr)
            name = src if in_place else _unique(src, taken)
            new_inits.append(numpy_helper.from_array(np.asarray(arr).astype(base.dtype, copy=False), name))
            for i, j in uses:
                gr.nodes[i].input[j] = name
        replaced.add(src)  # the old value is dropped below if nothing uses it any more
    for i, k in groups.items():
        for a in gr.nodes[i].attribute:
            if a.name == "group":
                a.i = k
    dtype_of = lambda i: gr.const(gr.nodes[i].input[1]).dtype  # noqa: E731 - a layer's weight type
    for i, j, v in comp.new_inputs:
        name = _unique(f"{layer_name(gr.nodes[i])}.bias", taken)
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(v.astype(dtype_of(i))), name))
        while len(gr.nodes[i].input) < j:
            gr.nodes[i].input.append("")
        gr.nodes[i].input.append(name)
    extra_after: dict[int, onnx.NodeProto] = {}
    for i, v in comp.inserts:
        node = gr.nodes[i]
        out = node.output[0]
        inner, bias = _unique(f"{out}_uncompensated", taken), _unique(f"{layer_name(node)}.bias", taken)
        new_inits.append(numpy_helper.from_array(np.ascontiguousarray(v.astype(dtype_of(i))), bias))
        node.output[0] = inner
        extra_after[i] = helper.make_node("Add", [inner, bias], [out], name=_unique(f"{layer_name(node)}/bias_add", taken))
    # rebuild the node list (copies first: gr.nodes are references into g.node) and the initializers
    nodes = []
    for i, src in enumerate(gr.nodes):
        nodes.append(onnx.NodeProto())
        nodes[-1].CopyFrom(src)
        if i in extra_after:
            nodes.append(extra_after[i])
    used = set()
    for n in nodes:
        used.update(n.input)
    used |= gr.sub_refs | gr.outputs
    # unused Constant nodes whose value we replaced
    nodes = [n for n in nodes if not (n.op_type == "Constant" and n.output and n.output[0] in replaced
                                      and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(nodes)
    new_by_name = {t.name: t for t in new_inits}
    kept = []
    for t in g.initializer:
        if t.name in new_by_name:
            continue
        if t.name in replaced and t.name not in used:
            continue
        kept.append(t)
    dropped = {t.name for t in g.initializer} - {t.name for t in kept} - set(new_by_name)
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    if dropped:
        ins = [v for v in g.input if v.name not in dropped]
        del g.input[:]
        g.input.extend(ins)
    del g.value_info[:]
    return m


# ---------------------------------------------------------------------------------------------------------------
# the passes
# ---------------------------------------------------------------------------------------------------------------


def _looks_like_attention(gr: _Graph) -> bool:
    for n in gr.nodes:
        if n.op_type == "Attention" or n.op_type == "MultiHeadAttention":
            return True
        if n.op_type == "MatMul" and len(n.input) == 2 and gr.const(n.input[0]) is None and gr.const(n.input[1]) is None:
            return True
    return False


@register_pass
class Prune(Pass):
    name = "prune"
    doc = "Structured pruning: remove low-norm Conv channels and MLP/FFN neurons, shrinking every consumer (not exact)."
    Config = PruneConfig
    exact = False

    # the tolerance search (optkit.search.protocols.Layered)
    def layer_candidates(self, model: onnx.ModelProto) -> list[str]:
        """Layers --tolerance searches over: prunable and not in ``skip``."""
        return [n for n in prunable_layers(model) if n not in self.config.skip]

    def layer_errors(self, result: PassResult) -> dict[str, float] | None:
        """The share of each layer's channel importance that the pruning removed (0 for a layer kept whole)."""
        layers = (result.metrics or {}).get("layers")
        return {n: float(m.get("importance_lost", 0.0)) for n, m in layers.items()} if layers else None

    def only(self, layers: list[str], among: list[str]) -> "Prune":
        cfg = self.config
        return type(self)(dataclasses.replace(cfg, skip=type(cfg.skip)([*cfg.skip, *(n for n in among if n not in layers)])))

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        cfg: PruneConfig = self.config
        before = param_count(model)
        if cfg.ratio == 0 and not any(v > 0 for v in cfg.layers.values()):
            return PassResult(model, modified=False, notes=["ratio 0: nothing pruned"],
                              metrics={"layers": {}, "params_before": before, "params_after": before})
        samples = getattr(ctx, "samples", None)
        real = samples is not None and len(samples) > 0 and not getattr(samples, "synthetic", False)
        if cfg.importance == "activation" and not real:
            raise PassError("prune: importance 'activation' needs real sample inputs"
                            + (" (the samples are synthetic)" if samples is not None and len(samples) else ""),
                            "pass --data with representative inputs, or use importance l1/l2")
        gr = _Graph(model, getattr(ctx, "shapes", None))
        layers, skipped = _analyze(gr)
        notes: list[str] = []
        by_name = {layer.name: layer for layer in layers}
        for name in list(cfg.layers) + list(cfg.skip):
            if name not in by_name and name not in skipped and name not in gr.names:
                notes.append(f"no node named {name!r} (in skip/layers): ignored")
        active = [layer for layer in layers if layer.name not in cfg.skip]

        stats: dict = {}
        want_stats = cfg.importance == "activation" or (cfg.compensate and real)
        tensors = {t: c for layer in active for _i, t, c in layer.plan.terminals}
        if want_stats and tensors:
            try:
                stats = _channel_stats(gr, tensors, samples, cfg.max_samples, ctx.threads)
            except Exception as e:  # e.g. samples that do not fit the model: prune without statistics
                if cfg.importance == "activation":
                    raise PassError(f"prune: measuring activations failed: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200] if str(e) else ''}", "use importance l1/l2") from e
                notes.append(f"bias compensation skipped: measuring activations failed ({type(e).__name__})")
        imp: dict[str, np.ndarray] = {}
        for layer in active:
            v = _activation_importance(gr, layer, stats) if cfg.importance == "activation" else None
            imp[layer.name] = v if v is not None else (layer.importance_l2 if cfg.importance == "l2" else layer.importance_l1)

        counts = keep_counts(active, imp, cfg)

        chosen, metrics_layers, whole = [], {}, []
        for layer in active:
            k = counts[layer.name]
            keep = np.sort(np.argsort(-imp[layer.name], kind="stable")[:k]).astype(np.int64)
            total_imp = float(np.sum(imp[layer.name]))
            lost = 1.0 - float(np.sum(imp[layer.name][keep])) / total_imp if total_imp > 0 else 0.0
            metrics_layers[layer.name] = {"kept": int(k), "total": int(layer.n), "ratio": round(1 - k / layer.n, 4),
                                          "importance_lost": round(lost, 6)}
            if k < layer.n:
                chosen.append((layer, keep))
                notes.append(f"{layer.name} {layer.n}\u2192{k} ({cfg.importance})")
            else:
                whole.append(layer.name)
        if whole:
            notes.append(f"kept whole (min_channels={cfg.min_channels}, multiple_of={cfg.multiple_of} or ratio): "
                         + ", ".join(whole))
        for name in cfg.skip:
            if name in by_name:
                notes.append(f"skipped {name}: in the skip list")
        for name, why in skipped.items():
            notes.append(f"skipped {name}: {why}")
        if _looks_like_attention(gr):
            notes.append("attention-head pruning not implemented (attention MatMuls left as they are)")
        if not chosen:
            notes.append("nothing pruned")
            return PassResult(model, modified=False, notes=notes,
                              metrics={"layers": metrics_layers, "params_before": before, "params_after": before})

        comp = None
        if cfg.compensate and stats:
            comp = _compensation(gr, chosen, {k: v[0] for k, v in stats.items()})
            notes.append(f"bias compensation: the mean of each removed channel folded into {comp.layers} consumer "
                         f"bias(es), measured on {min(len(samples), cfg.max_samples)} feed(s) from {samples.source or 'samples'}")
        elif cfg.compensate and not real:
            notes.append("bias compensation skipped: " + ("the samples are synthetic (their activation means would "
                         "mislead it); pass --data" if samples is not None and len(samples) else "no samples"))
        out = _apply(gr, chosen, comp)
        try:
            if tensor_bytes(out) < EXTERNAL_DATA_THRESHOLD:
                onnx.shape_inference.infer_shapes(out, strict_mode=True)
        except Exception as e:
            try:
                onnx.shape_inference.infer_shapes(model, strict_mode=True)
            except Exception:
                pass  # the input does not pass strict inference either (custom ops): nothing to learn
            else:
                raise PassError(f"prune produced inconsistent shapes: {str(e).splitlines()[0][:300]}",
                                "add the layer named in the message to skip, and report the model") from e
        after = param_count(out)
        if cfg.importance != "activation":
            bn = any(gr.nodes[i].op_type == "BatchNormalization" for layer, _ in chosen for i, *_ in layer.plan.slices)
            notes.append(f"importance: {cfg.importance} norm of each filter/neuron"
                         + (" times the scale of the BatchNormalization after it" if bn else "") + f", scope {cfg.scope}")
        else:
            notes.append(f"importance: activation variance x consumer weight norm on the samples, scope {cfg.scope}")
        notes.append(f"params {before:,} \u2192 {after:,} ({(after - before) / max(before, 1):+.1%})")
        return PassResult(out, modified=True, notes=notes,
                          metrics={"layers": metrics_layers, "params_before": before, "params_after": after})


# ---------------------------------------------------------------------------------------------------------------
# sparsify
# ---------------------------------------------------------------------------------------------------------------

SPARSE_NOTE = ("dense CPU kernels (ONNX Runtime CPU) gain no speed from these zeros; "
               "2:4 helps TensorRT sparse tactics on Ampere+ GPUs")


@dataclass(frozen=True)
class SparsifyConfig(PassConfig):
    sparsity: float = option(0.5, "fraction of each weight zeroed (smallest |w| first); pattern 2:4 is always 50%")
    pattern: str = option("unstructured", "unstructured magnitude, or 2:4 (2 of every 4 consecutive weights along "
                                          "the input/reduction axis: the TensorRT sparse layout)",
                          choices=("unstructured", "2:4"))
    skip: list[str] = option([], "layer (node) names left dense")

    def check(self) -> str | None:
        if not 0.0 <= self.sparsity < 1.0:
            return f"option 'sparsity' must be in [0, 1), got {self.sparsity}"
        return None


def _reduction_axis(node: onnx.NodeProto, w: np.ndarray) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if int(_attr(node, "transB", 0)) else 0
    return w.ndim - 2  # MatMul: X @ W reduces over W's rows


def _two_four(w: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(w, axis, -1)
    shp = x.shape
    g = x.reshape(-1, 4)
    order = np.argsort(np.abs(g), axis=1, kind="stable")  # ascending: the first two are dropped
    mask = np.ones_like(g, dtype=bool)
    np.put_along_axis(mask, order[:, :2], False, axis=1)
    return np.moveaxis(np.where(mask, g, 0).reshape(shp), -1, axis).astype(w.dtype)


def _unstructured(w: np.ndarray, sparsity: float) -> np.ndarray:
    flat = w.reshape(-1).copy()
    k = int(round(sparsity * flat.size))
    if k > 0:
        idx = np.argsort(np.abs(flat), kind="stable")[:k]
        flat[idx] = 0
    return flat.reshape(w.shape)


@register_pass
class Sparsify(Pass):
    name = "sparsify"
    doc = "Magnitude sparsification (unstructured or 2:4) of Conv/Gemm/MatMul weights; shapes unchanged (not exact)."
    Config = SparsifyConfig
    exact = False

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        cfg: SparsifyConfig = self.config
        if cfg.pattern == "unstructured" and cfg.sparsity == 0:
            return PassResult(model, modified=False, notes=["sparsity 0: nothing zeroed"],
                              metrics={"layers": {}, "sparsity": 0.0})
        m = onnx.ModelProto()
        m.CopyFrom(model)
        g = m.graph
        inits = {t.name: t for t in g.initializer}
        graph_inputs = {v.name for v in g.input}
        done: dict[str, np.ndarray] = {}
        layers, notes = {}, []
        zeros = total = 0
        for n in g.node:
            if n.domain not in _STD or n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
                continue
            name, src = layer_name(n), n.input[1]
            if src not in inits or src in graph_inputs:
                continue
            if name in cfg.skip:
                notes.append(f"skipped {name}: in the skip list")
                continue
            w = numpy_helper.to_array(inits[src])
            if w.ndim < 2 or w.dtype.kind != "f":
                continue
            if src not in done:
                if cfg.pattern == "2:4":
                    ax = _reduction_axis(n, w)
                    if w.shape[ax] % 4:
                        notes.append(f"skipped {name}: reduction axis of {w.shape[ax]} is not a multiple of 4")
                        continue
                    new = _two_four(w, ax)
                else:
                    new = _unstructured(w, cfg.sparsity)
                done[src] = new
                inits[src].CopyFrom(numpy_helper.from_array(new, src))
                z, size = int((new == 0).sum()), int(new.size)
                zeros, total = zeros + z, total + size
                layers[name] = {"sparsity": round(z / size, 4), "zeros": z, "total": size}
        overall = zeros / total if total else 0.0
        notes.insert(0, f"{len(layers)} weight(s) sparsified, {cfg.pattern}"
                        + ("" if cfg.pattern == "2:4" else f" {cfg.sparsity:.0%}") + f": {overall:.1%} zeros overall")
        notes.append(SPARSE_NOTE)
        return PassResult(m, modified=bool(layers), notes=notes, metrics={"layers": layers, "sparsity": round(overall, 4)})
