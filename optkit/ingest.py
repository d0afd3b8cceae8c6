"""Ingestion: normalize what exporters write before any pass runs, then check that nothing changed numerically.

Public exporters write graphs that are valid ONNX but trip the passes and onnxruntime.quantization:

- IR 3 (initializers also listed as graph inputs) and opset 8/9 (classic zoo ResNet/DenseNet/SqueezeNet);
- ``dim_value: -1`` / ``0`` meaning "any size" (Paddle);
- weights produced by ``Constant`` nodes, or reached through ``Identity`` / ``Cast`` (float16 weights cast to
  float), which the quantizer does not see as initializers ("Expected conv2d_394.w_0 to be an initializer");
- empty or duplicate node names (passes and ``exclude_nodes`` address nodes by name);
- model-local functions; ``If``/``Loop``/``Scan`` subgraphs (normalized recursively).

``normalize(model)`` returns the normalized model and one note per step that changed something;
``check(before, after, feeds)`` runs both in onnxruntime and requires the exactness the pipeline asks of its exact
passes; ``ingest(...)`` does both and returns the pass-log entry ``{"pass": "ingest", "exact": true, ...}``.
A construct optkit cannot handle raises one ``InputError`` line naming the construct and the node.
"""
from __future__ import annotations

import collections
import time

import numpy as np
import onnx

from .errors import InputError, PassError
from .model import float16_compute, model_bytes, opsets

# The quantizer's per-channel Q/DQ (axis attribute) and the fusion rule sets need opset >= 13.
MIN_OPSET = 13
_CONTROL_FLOW = ("If", "Loop", "Scan")
_FOLDABLE_CASTS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}


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


def _drop_initializer_inputs(model: onnx.ModelProto, notes: list[str]) -> None:
    """The IR-3 step alone, on the proto (the fallback when onnx_ir cannot read the model)."""
    inits = {t.name for t in model.graph.initializer}
    keep = [vi for vi in model.graph.input if vi.name not in inits]
    if len(keep) != len(model.graph.input):
        notes.append(f"{len(model.graph.input) - len(keep)} initializer(s) were also listed as graph inputs: removed "
                     "from the inputs")
        del model.graph.input[:]
        model.graph.input.extend(keep)


def _upgrade_opset(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    opset = opsets(model).get("ai.onnx")
    if opset is None or opset >= MIN_OPSET:
        return model
    from onnx import version_converter

    scalers = _replace_image_scaler(model)
    if scalers:
        notes.append(f"ImageScaler (removed after opset 9) -> Mul+Add: {scalers}")

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
    notes.append(f"opset {opset} -> {MIN_OPSET} (onnx.version_converter): quantization (per-channel Q/DQ) and the "
                 "fusion rules need it")
    return out


def _refresh_ir_version(model: onnx.ModelProto, notes: list[str], before: int) -> None:
    need = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    if model.ir_version < max(4, need):
        model.ir_version = max(4, need)
    if model.ir_version != before:
        notes.append(f"IR version {before} -> {model.ir_version}")


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


def _ir_steps(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """The onnx_ir steps; ``notes`` gets their lines only when all of them went through."""
    mine: list[str] = []
    out = _ir_steps_inner(model, mine)
    notes.extend(mine)
    return out


def _ir_steps_inner(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    import onnx_ir as ir
    from onnx_ir.passes import common as P

    ops_before = _count_ops(model)
    empty, dup = _bad_names(model)
    init_inputs = len({t.name for t in model.graph.initializer} & {i.name for i in model.graph.input})
    n_funcs = len(model.functions)
    irm = ir.from_proto(model)
    if init_inputs:
        P.RemoveInitializersFromInputsPass()(irm)
        notes.append(f"{init_inputs} initializer(s) were also listed as graph inputs (IR {model.ir_version} style): "
                     "removed from the inputs, they are weights, not feeds")
    if n_funcs:
        P.InlinePass()(irm)
        P.RemoveUnusedFunctionsPass()(irm)
        notes.append(f"inlined {n_funcs} model-local function(s)")
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
    if lifted or ops_after["Constant"] < ops_before["Constant"]:
        notes.append(f"Constant nodes -> initializers: {ops_before['Constant'] - ops_after['Constant']} "
                     "(the quantizer only sees initializers as weights)")
    if ops_after["Identity"] < ops_before["Identity"]:
        notes.append(f"Identity nodes removed: {ops_before['Identity'] - ops_after['Identity']} "
                     "(weights behind an Identity are now initializers)")
    if folded:
        notes.append(f"Cast of float initializers folded: {folded} (e.g. float16 weights cast to float32 are now "
                     "float32 initializers)")
    if empty or dup:
        e2, d2 = _bad_names(out)
        notes.append(f"node names made unique: {empty} empty, {dup} duplicate" + (f" ({e2 + d2} left)" if e2 + d2 else ""))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the public entry points
# ---------------------------------------------------------------------------------------------------------------
def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A normalized copy of ``model`` and one note per step that changed something (empty: nothing to do)."""
    notes: list[str] = []
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _check_value_types(m)
    ir_before = int(m.ir_version)
    dims = _fix_nonpositive_dims(m)
    if dims:
        notes.append(f"{dims} dim(s) written as dim_value -1/0 -> symbolic dims (any size)")
    try:
        m = _ir_steps(m, notes)
    except Exception as e:  # onnx_ir cannot read something exotic: go on without these steps, and say so
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        notes.append(f"skipped the initializer/Constant/Identity/Cast/name steps: onnx_ir could not read the model "
                     f"({type(e).__name__}: {first})")
        _drop_initializer_inputs(m, notes)
        if any(_bad_names(m)):
            _unique_node_names(m)
            notes.append("node names made unique")
    if m.ir_version < 4:
        m.ir_version = 4  # IR 3's "initializers are inputs" rule is gone; the opset upgrade below needs IR >= 4
    m = _upgrade_opset(m, notes)
    _refresh_ir_version(m, notes, ir_before)
    flow = _control_flow(m)
    if flow:
        kinds = collections.Counter(n.op_type for n in flow)
        notes.append("control flow " + ", ".join(f"{k}x{v}" for k, v in sorted(kinds.items()))
                     + ": names, constants and dims normalized inside the subgraphs too; INT8, prune and low-rank "
                     "rewrite the main graph only and leave subgraph bodies in float (fp16 converts them too)")
    fp16 = float16_compute(m)
    if fp16:
        notes.append(f"float16 weights used directly by {len(fp16)} node(s) (e.g. {fp16[0]}): int8 passes refuse "
                     "this model, fp32/fp16 passes keep it")
    return m, notes


def check(before: onnx.ModelProto, after: onnx.ModelProto, feeds: list[dict], threads: int = 1) -> dict:
    """Run both models in onnxruntime on ``feeds`` and require the exact passes' closeness (pipeline constants)."""
    from .backends.ort import OrtSession
    from .metrics import compare, within
    from .pipeline import EXACT_ATOL, EXACT_MIN_COSINE, EXACT_RTOL, without_outputs

    def run(m):
        with OrtSession(m, threads=threads, level="basic") as s:
            return [s.run(f) for f in feeds]

    new = run(after)  # the normalized model must run: an InputError here names what ORT rejects
    try:
        old = run(before)
    except Exception as e:  # the raw export may not load in ORT at all (that is one reason to normalize it)
        return {"checked": False, "note": f"the input model as written does not run in onnxruntime "
                                          f"({str(e).splitlines()[0][:160]}); the normalized model does"}
    diff = compare(old, new)
    if not within(diff, EXACT_RTOL, EXACT_ATOL, EXACT_MIN_COSINE):
        raise PassError(f"ingest changed the model's numerics (max-abs {diff['max_abs']:.3g}, cosine {diff['cosine']:.6f})"
                        " (first step)", "report the model; pass an already normalized export to continue")
    return {"checked": True, "diff": without_outputs(diff)}


def _fix_output_declarations(model: onnx.ModelProto, feed: dict, threads: int = 1) -> list[str]:
    """Graph outputs whose declared shape disagrees with what the model returns (seen: ddddocr declares [1, seqlen]
    and returns [seqlen, 1, 8210]) lose the declaration: shape-trusting passes (onnxsim, onnxslim) would otherwise
    reshape the output to the wrong declaration. The returned shape is what the notes record."""
    from .backends.ort import OrtSession

    try:
        with OrtSession(model, threads=threads, level="basic") as s:
            got = s.run(feed)
    except Exception:  # a model that does not run here is reported by the numerics check, not by this step
        return []
    notes = []
    for o in model.graph.output:
        tt = o.type.tensor_type if o.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape") or o.name not in got:
            continue
        declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        shape = list(got[o.name].shape)
        if len(declared) != len(shape) or any(isinstance(d, int) and d != g for d, g in zip(declared, shape)):
            tt.ClearField("shape")
            notes.append(f"output {o.name!r} is declared {declared} but the model returns {shape}: the declaration "
                         "was dropped (passes that trust it would reshape the output)")
    return notes


def ingest(model: onnx.ModelProto, feeds_for, threads: int = 1, source_files: list | None = None,
           max_feeds: int = 8) -> tuple[onnx.ModelProto, dict]:
    """Normalize, then check numerics on ``feeds_for(normalized_model)`` (the sample feeds, built from the normalized
    signature). Returns the model and the pass-log entry."""
    t0 = time.perf_counter()
    out, notes = normalize(model)
    if source_files and len(source_files) > 1:
        ext = sum(f.stat().st_size for f in source_files[1:] if f.exists())
        notes.append(f"weights loaded from external data: {len(source_files) - 1} file(s), {ext:,} bytes "
                     "(counted in the model size)")
    all_feeds = feeds_for(out)[:max_feeds]
    if all_feeds:
        notes += _fix_output_declarations(out, all_feeds[0], threads)
    modified = bool(notes) and not all(n.startswith("weights loaded") for n in notes)
    entry = {"pass": "ingest", "config": {}, "exact": True, "nodes_before": len(model.graph.node),
             "bytes_before": model_bytes(model), "modified": modified}
    feeds = all_feeds if modified else []
    if feeds:
        checked = check(model, out, feeds, threads)
        if checked["checked"]:
            entry["vs_previous"] = entry["vs_input"] = checked["diff"]
            notes.append(f"numerics: exact on {len(feeds)} feed(s) (max-abs {checked['diff']['max_abs']:.3g})")
        else:
            notes.append(checked["note"])
    entry.update({"nodes_after": len(out.graph.node), "bytes_after": model_bytes(out), "notes": notes or
                  ["nothing to normalize"], "seconds": round(time.perf_counter() - t0, 3), "status": "ok"})
    return out, entry
