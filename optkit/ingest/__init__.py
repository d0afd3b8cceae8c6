"""Ingestion: normalize what exporters write before any pass runs, then check that nothing changed numerically.

Public exporters write graphs that are valid ONNX but trip the passes and onnxruntime.quantization:

- IR 3 (initializers also listed as graph inputs) and opset 8/9 (classic zoo ResNet/DenseNet/SqueezeNet);
- ``dim_value: -1`` / ``0`` meaning "any size" (Paddle);
- weights produced by ``Constant`` nodes, or reached through ``Identity`` / ``Cast`` (float16 weights cast to
  float), which the quantizer does not see as initializers ("Expected conv2d_394.w_0 to be an initializer");
- empty or duplicate node names (passes and ``exclude_nodes`` address nodes by name);
- model-local functions; ``If``/``Loop``/``Scan`` subgraphs (normalized recursively).

``normalize(model)`` returns the normalized model and one note per step that changed something (a ``Notes`` list,
whose ``steps`` say the same as facts: ``{"step": code, "count": n, ...}``, for programs and tests);
``check(before, after, feeds)`` runs both in onnxruntime and requires the exactness the pipeline asks of its exact
passes; ``ingest(...)`` does both and returns the pass-log entry ``{"pass": "ingest", "exact": true, ...}``.
A construct optkit cannot handle raises one ``InputError`` line naming the construct and the node.
"""
from __future__ import annotations

import collections
import time

import onnx

from ..errors import PassError
from ..model import float16_compute, model_bytes
from .steps import (MIN_OPSET, Notes, _all_nodes, _bad_names, _check_value_types, _control_flow,  # noqa: F401
                    _drop_initializer_inputs, _fix_nonpositive_dims, _graphs, _ir_steps, _refresh_ir_version,
                    _unique_node_names, _upgrade_opset)


# ---------------------------------------------------------------------------------------------------------------
# the public entry points
# ---------------------------------------------------------------------------------------------------------------
def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Notes]:
    """A normalized copy of ``model`` and one note per step that changed something (empty: nothing to do); the
    notes' ``steps`` are the same steps as facts."""
    notes = Notes()
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _check_value_types(m)
    ir_before = int(m.ir_version)
    dims = _fix_nonpositive_dims(m)
    if dims:
        notes.add(f"{dims} dim(s) written as dim_value -1/0 -> symbolic dims (any size)", "symbolic_dims", count=dims)
    try:
        m = _ir_steps(m, notes)
    except Exception as e:  # onnx_ir cannot read something exotic: go on without these steps, and say so
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        notes.add(f"skipped the initializer/Constant/Identity/Cast/name steps: onnx_ir could not read the model "
                  f"({type(e).__name__}: {first})", "ir_steps_skipped", error=type(e).__name__)
        _drop_initializer_inputs(m, notes)
        empty, dup = _bad_names(m)
        if empty or dup:
            _unique_node_names(m)
            notes.add("node names made unique", "unique_names", empty=empty, duplicate=dup, left=sum(_bad_names(m)))
    if m.ir_version < 4:
        m.ir_version = 4  # IR 3's "initializers are inputs" rule is gone; the opset upgrade below needs IR >= 4
    m = _upgrade_opset(m, notes)
    _refresh_ir_version(m, notes, ir_before)
    flow = _control_flow(m)
    if flow:
        kinds = collections.Counter(n.op_type for n in flow)
        notes.add("control flow " + ", ".join(f"{k}x{v}" for k, v in sorted(kinds.items()))
                  + ": names, constants and dims normalized inside the subgraphs too; INT8, prune and low-rank "
                  "rewrite the main graph only and leave subgraph bodies in float (fp16 converts them too)",
                  "control_flow", ops=dict(sorted(kinds.items())))
    fp16 = float16_compute(m)
    if fp16:
        notes.add(f"float16 weights used directly by {len(fp16)} node(s) (e.g. {fp16[0]}): int8 passes refuse "
                  "this model, fp32/fp16 passes keep it", "fp16_weights", count=len(fp16))
    return m, notes


def check(before: onnx.ModelProto, after: onnx.ModelProto, feeds: list[dict], threads: int = 1) -> dict:
    """Run both models in onnxruntime on ``feeds`` and require the exact passes' closeness (pipeline constants)."""
    from ..backends.ort import OrtSession
    from ..metrics import compare, within
    from ..pipeline import EXACT_ATOL, EXACT_MIN_COSINE, EXACT_RTOL, without_outputs

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


def _fix_output_declarations(model: onnx.ModelProto, feed: dict, notes: Notes, threads: int = 1) -> None:
    """Graph outputs whose declared shape disagrees with what the model returns (seen: ddddocr declares [1, seqlen]
    and returns [seqlen, 1, 8210]) lose the declaration: shape-trusting passes (onnxsim, onnxslim) would otherwise
    reshape the output to the wrong declaration. The returned shape is what the notes record."""
    from ..backends.ort import OrtSession

    try:
        with OrtSession(model, threads=threads, level="basic") as s:
            got = s.run(feed)
    except Exception:  # a model that does not run here is reported by the numerics check, not by this step
        return
    for o in model.graph.output:
        tt = o.type.tensor_type if o.type.HasField("tensor_type") else None
        if tt is None or not tt.HasField("shape") or o.name not in got:
            continue
        declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        shape = list(got[o.name].shape)
        if len(declared) != len(shape) or any(isinstance(d, int) and d != g for d, g in zip(declared, shape)):
            tt.ClearField("shape")
            notes.add(f"output {o.name!r} is declared {declared} but the model returns {shape}: the declaration "
                      "was dropped (passes that trust it would reshape the output)", "output_declaration_dropped",
                      output=o.name, declared=declared, returned=shape)


def ingest(model: onnx.ModelProto, feeds_for, threads: int = 1, source_files: list | None = None,
           max_feeds: int = 8) -> tuple[onnx.ModelProto, dict]:
    """Normalize, then check numerics on ``feeds_for(normalized_model)`` (the sample feeds, built from the normalized
    signature). Returns the model and the pass-log entry."""
    t0 = time.perf_counter()
    out, notes = normalize(model)
    if source_files and len(source_files) > 1:
        ext = sum(f.stat().st_size for f in source_files[1:] if f.exists())
        notes.add(f"weights loaded from external data: {len(source_files) - 1} file(s), {ext:,} bytes "
                  "(counted in the model size)", "external_data", files=len(source_files) - 1, bytes=ext)
    all_feeds = feeds_for(out)[:max_feeds]
    if all_feeds:
        _fix_output_declarations(out, all_feeds[0], notes, threads)
    modified = any(step["step"] != "external_data" for step in notes.steps)
    entry = {"pass": "ingest", "config": {}, "exact": True, "nodes_before": len(model.graph.node),
             "bytes_before": model_bytes(model), "modified": modified}
    feeds = all_feeds if modified else []
    if feeds:
        checked = check(model, out, feeds, threads)
        if checked["checked"]:
            entry["vs_previous"] = entry["vs_input"] = checked["diff"]
            notes.add(f"numerics: exact on {len(feeds)} feed(s) (max-abs {checked['diff']['max_abs']:.3g})",
                      "numerics", checked=True, feeds=len(feeds))
        else:
            notes.add(checked["note"], "numerics", checked=False, reason="input_does_not_run")
    entry.update({"nodes_after": len(out.graph.node), "bytes_after": model_bytes(out), "notes": list(notes) or
                  ["nothing to normalize"], "steps": notes.steps, "seconds": round(time.perf_counter() - t0, 3),
                  "status": "ok"})
    return out, entry
