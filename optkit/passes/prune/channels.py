"""What the tracer records: where a layer's channels sit in a tensor (``_Chan``), the edits that keep the graph
consistent when channels go (``_Plan``), and the graph look-ups the propagation rules share."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from ...model import layer_name
from ...model import node_attr as _attr
from .graph import _Graph


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
    """Why a layer cannot be pruned: the sentence the notes show, a reason code (``residual``, ``graph_output``,
    ``unsupported_op``, ...) and the node that stops it; ``facts`` is what the pass's ``skipped`` metrics record."""

    def __init__(self, msg: str, reason: str, node: onnx.NodeProto | None = None, **extra):
        super().__init__(msg)
        self.reason = reason
        self.facts = {"reason": reason, **({"via": layer_name(node), "op": node.op_type} if node is not None else {}),
                      **extra}


def _expand(keep: np.ndarray, block: int) -> np.ndarray:
    if block == 1:
        return keep
    return (keep[:, None] * block + np.arange(block)[None, :]).reshape(-1)


def _const_broadcast(gr: _Graph, plan: _Plan, i: int, j: int, c: _Chan, L: int) -> None:
    """Input j of node i is a constant broadcast against a channel tensor: slice it if it is per-channel."""
    v = gr.const(gr.nodes[i].input[j])
    p = v.ndim + c.axis
    if p < 0 or v.shape[p] == 1:
        return
    if v.shape[p] != L:
        raise _Fail(f"constant {gr.nodes[i].input[j]} of {gr.nodes[i].op_type} does not broadcast per channel",
                    "not_per_channel", gr.nodes[i])
    plan.slices.append((i, j, p, c.block))


def _axes(gr: _Graph, node: onnx.NodeProto, input_index: int):
    a = _attr(node, "axes")
    if a is not None:
        return [int(x) for x in a]
    if len(node.input) > input_index and node.input[input_index]:
        v = gr.const(node.input[input_index])
        if v is None:
            raise _Fail(f"{node.op_type} {layer_name(node)} has run-time axes", "runtime_params", node)
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
