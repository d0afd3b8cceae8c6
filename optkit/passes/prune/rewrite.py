"""Rewriting the graph for the kept channels: every plan's slices, reshapes and group changes, plus the bias
compensation, applied once per tensor (shared weights stay shared), then the node and initializer lists rebuilt."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...model import layer_name
from .channels import _expand
from .compensate import _Comp
from .graph import _Graph


def _unique(name: str, taken: set) -> str:
    k, cand = 0, f"{name}_pruned"
    while cand in taken:
        k += 1
        cand = f"{name}_pruned{k}"
    taken.add(cand)
    return cand


def _collect(chosen: list, comp: _Comp) -> tuple[dict, dict]:
    """(node, input) -> the edits of that input, in order; node -> its new ``group``."""
    edits: dict[tuple[int, int], list] = {}
    groups: dict[int, int] = {}
    for key, es in comp.edits.items():  # bias corrections first: they are in the full (unsliced) output space
        edits.setdefault(key, []).extend((kind, None, v) for kind, v in es)
    for layer, keep in chosen:
        for i, j, axis, block in layer.plan.slices:
            edits.setdefault((i, j), []).append(("slice", axis, _expand(keep, block)))
        for i, j, pos, inner in layer.plan.reshapes:
            edits.setdefault((i, j), []).append(("set", pos, len(keep) * inner))
        for i in layer.plan.groups:
            groups[i] = len(keep)
    return edits, groups


def _edited(arr: np.ndarray, es: list) -> np.ndarray:
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
    return np.ascontiguousarray(arr)


def _write_values(gr: _Graph, edits: dict, taken: set, new_inits: list) -> set:
    """One new value per (tensor, edit list); returns the names of the values replaced."""
    by_src: dict[str, dict] = {}
    for (i, j), es in edits.items():
        key = tuple((e[0], e[1], np.asarray(e[2]).tobytes() if not isinstance(e[2], int) else e[2]) for e in es)
        by_src.setdefault(gr.nodes[i].input[j], {}).setdefault(key, (es, []))[1].append((i, j))
    replaced = set()
    for src, variants in by_src.items():
        base = gr.const(src)
        all_uses = len(gr.consumers.get(src, []))
        in_place = (len(variants) == 1 and src in gr.init and src not in gr.graph_inputs and src not in gr.outputs
                    and src not in gr.sub_refs and len(next(iter(variants.values()))[1]) == all_uses)
        for es, uses in variants.values():
            arr = _edited(base, es)
            name = src if in_place else _unique(src, taken)
            new_inits.append(numpy_helper.from_array(np.asarray(arr).astype(base.dtype, copy=False), name))
            for i, j in uses:
                gr.nodes[i].input[j] = name
        replaced.add(src)  # the old value is dropped later if nothing uses it any more
    return replaced


def _add_biases(gr: _Graph, comp: _Comp, taken: set, new_inits: list) -> dict[int, onnx.NodeProto]:
    """Compensation biases a node did not have (a new input, or an Add inserted after a MatMul)."""
    def dtype_of(i: int):
        return gr.const(gr.nodes[i].input[1]).dtype  # a layer's weight type

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
    return extra_after


def _rebuild(gr: _Graph, extra_after: dict, replaced: set, new_inits: list) -> None:
    """The node list (copies: gr.nodes are references into g.node) and the initializers, dropping dead values."""
    g = gr.model.graph
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
    kept = [t for t in g.initializer if t.name not in new_by_name and not (t.name in replaced and t.name not in used)]
    dropped = {t.name for t in g.initializer} - {t.name for t in kept} - set(new_by_name)
    del g.initializer[:]
    g.initializer.extend(kept + new_inits)
    if dropped:
        ins = [v for v in g.input if v.name not in dropped]
        del g.input[:]
        g.input.extend(ins)
    del g.value_info[:]


def _apply(gr: _Graph, chosen: list, comp: _Comp | None = None) -> onnx.ModelProto:
    """``gr.model`` rewritten so each chosen layer keeps the channels ``keep`` (``chosen``: [(layer, keep)])."""
    comp = comp or _Comp()
    edits, groups = _collect(chosen, comp)
    g = gr.model.graph
    taken = {t.name for t in g.initializer} | set(gr.producer) | gr.graph_inputs
    new_inits: list = []
    replaced = _write_values(gr, edits, taken, new_inits)
    for i, k in groups.items():
        for a in gr.nodes[i].attribute:
            if a.name == "group":
                a.i = k
    extra_after = _add_biases(gr, comp, taken, new_inits)
    _rebuild(gr, extra_after, replaced, new_inits)
    return gr.model
