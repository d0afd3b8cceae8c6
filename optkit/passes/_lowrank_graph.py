"""Graph surgery for the lowrank pass (optkit.passes.lowrank): fresh names, the two-node rewrite of one factorized
layer, splicing the rewrites into the graph and dropping the weights nothing reads, and the rows per layer used to
weight FLOPs."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..model import node_attr as _attr

if TYPE_CHECKING:
    from .lowrank import _Layer


class _Names:
    """Fresh value/node/initializer names that collide with nothing in the model."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.used = {t.name for t in g.initializer} | {v.name for v in g.input} | {v.name for v in g.output}
        self.used |= {v.name for v in g.value_info} | {n.name for n in g.node if n.name}
        for n in g.node:
            self.used.update(n.input)
            self.used.update(n.output)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def _subgraph_inputs(model: onnx.ModelProto) -> set[str]:
    """Names read inside If/Loop/Scan bodies (initializers used there must not be removed)."""
    used: set[str] = set()

    def subgraphs(node):
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield a.g
            elif a.type == onnx.AttributeProto.GRAPHS:
                yield from a.graphs

    def walk(graph):
        for n in graph.node:
            used.update(n.input)
            for g in subgraphs(n):
                walk(g)

    for n in model.graph.node:
        for g in subgraphs(n):
            walk(g)
    return used


def _rows(model: onnx.ModelProto, layers: list[_Layer], shapes: dict) -> dict[str, int]:
    """Rows (output elements / n) of each layer for FLOP weighting; {} when any shape is unknown."""
    try:
        from ..model import infer_value_shapes

        vs = infer_value_shapes(model, shapes)
    except Exception:
        return {}
    rows = {}
    for layer in layers:
        out = vs.get(layer.node.output[0])
        if out is None:
            return {}
        rows[layer.name] = max(1, int(np.prod(out, dtype=np.int64)) // layer.n)
    return rows


def _rewrite_layer(layer: _Layer, a: np.ndarray, b: np.ndarray, r: int, key: tuple, inits: dict, fresh: _Names,
                   new_inits: list, factor_cache: dict, opset: int) -> list[onnx.NodeProto]:
    node = layer.node
    x, y = node.input[0], node.output[0]
    mid = fresh(f"{y}_lowrank")
    n1, n2 = fresh(f"{layer.name}_lowrank_A"), fresh(f"{layer.name}_lowrank_B")

    def init(suffix: str, arr: np.ndarray, tag: tuple) -> str:
        ck = (key, r, suffix, tag)
        if ck not in factor_cache:
            nm = fresh(f"{layer.weight}_lowrank_{suffix}")
            new_inits.append(numpy_helper.from_array(arr, nm))
            factor_cache[ck] = nm
        return factor_cache[ck]

    if layer.kind == "MatMul":
        return [helper.make_node("MatMul", [x, init("A", a, ())], [mid], name=n1),
                helper.make_node("MatMul", [mid, init("B", b, ())], [y], name=n2)]

    if layer.kind == "Gemm":
        alpha = float(_attr(node, "alpha", 1.0))
        beta = float(_attr(node, "beta", 1.0))
        a_name = init("A", a, ())
        if _attr(node, "transA", 0):
            first = helper.make_node("Gemm", [x, a_name], [mid], name=n1, transA=1)
        else:
            first = helper.make_node("MatMul", [x, a_name], [mid], name=n1)
        b_name = init("B", (b * b.dtype.type(alpha)) if alpha != 1.0 else b, ("alpha", alpha))
        has_c = len(node.input) > 2 and node.input[2]
        if has_c:
            second = helper.make_node("Gemm", [mid, b_name, node.input[2]], [y], name=n2, beta=beta)
        else:
            second = helper.make_node("MatMul", [mid, b_name], [y], name=n2)
        return [first, second]

    # 1x1 Conv: first conv carries the spatial attributes (strides, pads, dilations) and no bias, so padded
    # borders are zero after it and get only the bias after the second conv, as in the original.
    spatial = len(inits[layer.weight].dims) - 2
    ones = [1] * spatial
    w1 = a.T.reshape([r, layer.k] + ones)  # [r, Cin, 1, ...]
    w2 = b.T.reshape([layer.n, r] + ones)  # [Cout, r, 1, ...]
    attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute if at.name not in ("group", "kernel_shape")}
    first = helper.make_node("Conv", [x, init("A", np.ascontiguousarray(w1), ("conv",))], [mid], name=n1,
                             kernel_shape=ones, **attrs)
    inputs2 = [mid, init("B", np.ascontiguousarray(w2), ("conv",))]
    if len(node.input) > 2 and node.input[2]:
        inputs2.append(node.input[2])
    second = helper.make_node("Conv", inputs2, [y], name=n2, kernel_shape=ones)
    return [first, second]


def _splice(m: onnx.ModelProto, replacements: dict[int, list[onnx.NodeProto]], new_inits: list) -> None:
    """Replace each factorized node in place (keeps topological order), add the factors, drop weights nothing reads."""
    g = m.graph
    nodes = []
    for i, node in enumerate(g.node):
        nodes.extend(replacements.get(i, [node]))
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    used = {x for n in g.node for x in n.input} | _subgraph_inputs(m) | {o.name for o in g.output}
    dead = {t.name for t in g.initializer if t.name not in used}
    if dead:
        keep = [t for t in g.initializer if t.name not in dead]
        del g.initializer[:]
        g.initializer.extend(keep)
        for field in (g.input, g.value_info):
            keep_vi = [v for v in field if v.name not in dead]
            del field[:]
            field.extend(keep_vi)
