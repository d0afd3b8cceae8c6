"""The graph index the prune tracer reads: a topologically sorted copy, producers/consumers, constants, shapes."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from ...model import layer_name, toposort
from ...model import node_attr as _attr

_STD = ("", "ai.onnx")


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
