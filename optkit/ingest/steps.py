"""The normalization steps of ingest, on the proto and on onnx_ir; each records a note and a step fact
(``Notes.add``). ``optkit.ingest`` runs them in order (``normalize``) and checks the numerics."""
from __future__ import annotations

import collections

import numpy as np
import onnx

from ..errors import InputError
from ..model import opsets

# The quantizer's per-channel Q/DQ (axis attribute) and the fusion rule sets need opset >= 13.
MIN_OPSET = 13
_CONTROL_FLOW = ("If", "Loop", "Scan")
_FOLDABLE_CASTS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


class Notes(list):
    """One note per step that changed something (what people read), and ``steps``: the same steps as facts,
    ``{"step": "symbolic_dims" | "initializer_inputs_dropped" | "opset_upgrade" | ..., "count": n, ...}``."""

    def __init__(self, *args):
        super().__init__(*args)
        self.steps: list[dict] = []

    def add(self, note: str, step: str, **facts) -> None:
        self.append(note)
        self.steps.append({"step": step, **facts})


# ---------------------------------------------------------------------------------------------------------------
# walking every graph (main + subgraphs)
# ---------------------------------------------------------------------------------------------------------------
def _graphs(graph: onnx.GraphProto):
    """The graph and every subgraph below it (If branches, Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _all_nodes(model: onnx.ModelProto):
    for g in _graphs(model.graph):
        yield from g.node


def _control_flow(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in _all_nodes(model) if n.op_type in _CONTROL_FLOW and n.domain in ("", "ai.onnx")]


# ---------------------------------------------------------------------------------------------------------------
# steps on the proto
# ---------------------------------------------------------------------------------------------------------------
def _check_value_types(model: onnx.ModelProto) -> None:
    """optkit feeds and compares tensors: sequence/map/optional graph inputs or outputs are refused up front."""
    g = model.graph
    inits = {t.name for t in g.initializer}
    for kind, vis in (("input", [v for v in g.input if v.name not in inits]), ("output", list(g.output))):
        for vi in vis:
            which = vi.type.WhichOneof("value")
            if which not in ("tensor_type", None):
                raise InputError(f"graph {kind} {vi.name!r} is a {which.replace('_type', '')}, not a tensor: optkit "
                                 "optimizes models with tensor inputs and outputs only",
                                 "wrap the model so that its inputs/outputs are tensors, or re-export it")


def _fix_nonpositive_dims(model: onnx.ModelProto) -> int:
    """``dim_value`` <= 0 (-1 or 0 for "any size") -> a symbolic dim (``dim_param``); returns how many."""
    count = 0
    for g in _graphs(model.graph):
        inits = {t.name for t in g.initializer}
        for kind, vis in (("in", g.input), ("out", g.output), ("vi", g.value_info)):
            for vi in vis:
                if vi.name in inits or not vi.type.HasField("tensor_type"):
                    continue
                for i, d in enumerate(vi.type.tensor_type.shape.dim):
                    if d.HasField("dim_value") and d.dim_value <= 0:
                        d.Clear()
                        # axis 0 of a graph input is the batch dim by convention (1 when nothing says otherwise)
                        d.dim_param = "batch" if (kind == "in" and i == 0 and g is model.graph) else f"{vi.name}_dim{i}"
                        count += 1
    return count


def _replace_image_scaler(model: onnx.ModelProto) -> int:
    """``ImageScaler`` (experimental, gone after opset 9, no version-converter schema; in zoo models such as
    tiny-YOLOv2) -> ``Mul`` by its scale and ``Add`` of its per-channel bias, the op's definition."""
    g, count = model.graph, 0
    new_nodes = []
    for n in g.node:
        if n.op_type != "ImageScaler" or n.domain not in ("", "ai.onnx"):
            new_nodes.append(n)
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        base = n.name or n.output[0]
        scale = np.array(attrs.get("scale", 1.0), np.float32)
        bias = np.asarray(attrs.get("bias", [0.0]), np.float32).reshape(1, -1, 1, 1)
        s_name, b_name, mid = f"{base}__scale", f"{base}__bias", f"{base}__scaled"
        g.initializer.extend([onnx.numpy_helper.from_array(scale, s_name), onnx.numpy_helper.from_array(bias, b_name)])
        new_nodes += [onnx.helper.make_node("Mul", [n.input[0], s_name], [mid], name=f"{base}__mul"),
                      onnx.helper.make_node("Add", [mid, b_name], [n.output[0]], name=f"{base}__add")]
        count += 1
    if count:
        del g.node[:]
        g.node.extend(new_nodes)
    return count


def _drop_initializer_inputs(model: onnx.ModelProto, notes: Notes) -> None:
    """The IR-3 step alone, on the proto (the fallback when onnx_ir cannot read the model)."""
    inits = {t.name for t in model.graph.initializer}
    keep = [vi for vi in model.graph.input if vi.name not in inits]
    if len(keep) != len(model.graph.input):
        n = len(model.graph.input) - len(keep)
        notes.add(f"{n} initializer(s) were also listed as graph inputs: removed from the inputs",
                  "initializer_inputs_dropped", count=n)
        del model.graph.input[:]
        model.graph.input.extend(keep)


def _upgrade_opset(model: onnx.ModelProto, notes: Notes) -> onnx.ModelProto:
    opset = opsets(model).get("ai.onnx")
    if opset is None or opset >= MIN_OPSET:
        return model
    from onnx import version_converter

    scalers = _replace_image_scaler(model)
    if scalers:
        notes.add(f"ImageScaler (removed after opset 9) -> Mul+Add: {scalers}", "image_scaler", count=scalers)

    try:
        out = version_converter.convert_version(model, MIN_OPSET)
        onnx.checker.check_model(out)
    except Exception as e:
        text = str(e)
        ops = {n.op_type: n for n in _all_nodes(model)}
        culprit = next((op for op in sorted(ops, key=len, reverse=True) if op in text), None)
        first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
        where = (f"its {culprit} node {ops[culprit].name or ops[culprit].output[0]!r} has no opset {opset} -> "
                 f"{MIN_OPSET} conversion" if culprit else f"the converter failed: {first}")
        raise InputError(f"opset {opset} model cannot be upgraded to opset {MIN_OPSET} (what quantization and fusion "
                         f"need): {where}", f"re-export the model with opset >= {MIN_OPSET}") from e
    notes.add(f"opset {opset} -> {MIN_OPSET} (onnx.version_converter): quantization (per-channel Q/DQ) and the "
              "fusion rules need it", "opset_upgrade", before=opset, after=MIN_OPSET)
    return out


def _refresh_ir_version(model: onnx.ModelProto, notes: Notes, before: int) -> None:
    need = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.ir_version < max(4, need):
        model.ir_version = max(4, need)
    if model.ir_version != before:
        notes.add(f"IR version {before} -> {model.ir_version}", "ir_upgrade", before=before, after=int(model.ir_version))


# ---------------------------------------------------------------------------------------------------------------
# steps on onnx_ir (the maintained passes where they exist)
# ---------------------------------------------------------------------------------------------------------------
def _count_ops(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in _all_nodes(model))


def _bad_names(model: onnx.ModelProto) -> tuple[int, int]:
    names = [n.name for n in _all_nodes(model)]
    empty = sum(1 for n in names if not n)
    dup = sum(c - 1 for n, c in collections.Counter(n for n in names if n).items() if c > 1)
    return empty, dup


def _unique_node_names(model: onnx.ModelProto) -> None:
    """Every node (subgraphs included) gets a model-wide unique name: passes, ``exclude_nodes`` and the quantizer
    address nodes by name. (onnx_ir's NameFixPass makes them unique per graph scope only.) Empty names become
    ``<op_type>_<n>``, a repeated name gets ``_<n>``."""
    nodes = list(_all_nodes(model))
    used = {n.name for n in nodes if n.name}
    seen: set[str] = set()
    counter: collections.Counter = collections.Counter()

    def fresh(base: str) -> str:
        while True:
            counter[base] += 1
            cand = f"{base}_{counter[base]}"
            if cand not in used:
                used.add(cand)
                return cand

    for n in nodes:
        if not n.name:
            n.name = fresh(n.op_type)
        elif n.name in seen:
            n.name = fresh(n.name)
        seen.add(n.name)


def _fold_casts(model) -> int:
    """``Cast`` of a float initializer to another float type (float16 weights cast to float32) -> an initializer
    of the target type. Exact: float16 -> float32 is lossless; the result is checked numerically anyway."""
    import onnx_ir as ir

    count = 0
    for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or not node.inputs or node.inputs[0] is None:
            continue
        x, y, graph = node.inputs[0], node.outputs[0], node.graph
        to = node.attributes.get("to")
        if (x.const_value is None or not x.is_initializer() or x.graph is not graph or y.is_graph_output()
                or to is None or to.as_int() not in _FOLDABLE_CASTS or x.const_value.dtype.value not in _FOLDABLE_CASTS):
            continue
        dtype = ir.DataType(to.as_int())
        arr = np.asarray(x.const_value.numpy()).astype(dtype.numpy())
        name = y.name
        new = ir.Value(name=f"{name}__optkit_folded", shape=ir.Shape(arr.shape), type=ir.TensorType(dtype),
                       const_value=ir.tensor(arr, dtype=dtype, name=name))
        graph.register_initializer(new)
        y.replace_all_uses_with(new)
        graph.remove(node, safe=True)
        graph.initializers.pop(new.name)
        new.name = name
        new.const_value.name = name
        graph.register_initializer(new)
        if not x.uses() and not x.is_graph_output():
            graph.initializers.pop(x.name)
        count += 1
    return count


def _ir_steps(model: onnx.ModelProto, notes: Notes) -> onnx.ModelProto:
    """The onnx_ir steps; ``notes`` gets their lines (and steps) only when all of them went through."""
    mine = Notes()
    out = _ir_steps_inner(model, mine)
    notes.extend(mine)
    notes.steps.extend(mine.steps)
    return out


def _ir_steps_inner(model: onnx.ModelProto, notes: Notes) -> onnx.ModelProto:
    import onnx_ir as ir
    from onnx_ir.passes import common as P

    ops_before = _count_ops(model)
    empty, dup = _bad_names(model)
    init_inputs = len({t.name for t in model.graph.initializer} & {i.name for i in model.graph.input})
    n_funcs = len(model.functions)
    irm = ir.from_proto(model)
    if init_inputs:
        P.RemoveInitializersFromInputsPass()(irm)
        notes.add(f"{init_inputs} initializer(s) were also listed as graph inputs (IR {model.ir_version} style): "
                  "removed from the inputs, they are weights, not feeds", "initializer_inputs_dropped", count=init_inputs)
    if n_funcs:
        P.InlinePass()(irm)
        P.RemoveUnusedFunctionsPass()(irm)
        notes.add(f"inlined {n_funcs} model-local function(s)", "functions_inlined", count=n_funcs)
    lifted = P.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(irm).modified
    P.IdentityEliminationPass()(irm)
    folded = _fold_casts(irm)
    if folded:  # a Cast may have hidden an Identity/Constant chain
        P.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(irm)
        P.IdentityEliminationPass()(irm)
    out = ir.to_proto(irm)
    if empty or dup:
        _unique_node_names(out)
    ops_after = _count_ops(out)
    consts, idents = ops_before["Constant"] - ops_after["Constant"], ops_before["Identity"] - ops_after["Identity"]
    if lifted or consts > 0:
        notes.add(f"Constant nodes -> initializers: {consts} (the quantizer only sees initializers as weights)",
                  "constant_weights", count=consts)
    if idents > 0:
        notes.add(f"Identity nodes removed: {idents} (weights behind an Identity are now initializers)",
                  "identity_removed", count=idents)
    if folded:
        notes.add(f"Cast of float initializers folded: {folded} (e.g. float16 weights cast to float32 are now "
                  "float32 initializers)", "casts_folded", count=folded)
    if empty or dup:
        e2, d2 = _bad_names(out)
        notes.add(f"node names made unique: {empty} empty, {dup} duplicate" + (f" ({e2 + d2} left)" if e2 + d2 else ""),
                  "unique_names", empty=empty, duplicate=dup, left=e2 + d2)
    return out
