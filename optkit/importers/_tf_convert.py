"""tf2onnx conversion for the TensorFlow importer (optkit.importers.tf): freeze a ConcreteFunction, convert it with
tf2onnx's common converter, turn unsupported ops and failed nodes into one ExportError, and name the graph's dims."""
from __future__ import annotations

from ..errors import ExportError
from ._tf_env import _Capture, _first_line, _mute_fd2, _quiet

DEFAULT_OPSET = 17


def _convert(tf, concrete, trackable, input_names, dims, output_names, opset, description):
    """Freeze ``concrete`` and convert it; returns (onnx.ModelProto, opset used)."""
    import onnx
    from tf2onnx import constants, tf_loader
    from tf2onnx import convert as tfconv

    opset = DEFAULT_OPSET if opset is None else int(opset)
    max_opset = max(constants.OPSET_TO_IR_VERSION)
    if opset > max_opset or opset < 7:
        raise ExportError(f"tf2onnx cannot write ONNX opset {opset} (it supports 7 to {max_opset})",
                          f"pass --opset {min(max(opset, 7), max_opset)}")

    n_in = len(input_names)
    placeholders = [t.name for t in concrete.inputs[:n_in]]
    outputs = [t.name for t in concrete.outputs if t.dtype != tf.resource]
    if len(outputs) != len(output_names):
        raise ExportError(f"{description} returns {len(outputs)} tensors but {len(output_names)} named outputs",
                          "return a flat dict or list of tensors from the signature")
    rename = dict(zip(placeholders, input_names))
    for t, name in zip(outputs, output_names):
        if t in rename:  # an output that is an input unchanged
            raise ExportError(f"output {name} of {description} is its input {rename[t]} unchanged",
                              "drop that output or compute it in the model")
        rename[t] = name

    capture = _Capture()
    try:
        with _quiet(capture), _mute_fd2(), tf.device("/cpu:0"):
            frozen, tables = tf_loader.from_trackable(trackable, concrete, placeholders, outputs, False)
    except Exception as e:
        msg = _first_line(e)
        if "2GB" in msg or "too long" in msg:
            raise ExportError(f"{description} is over protobuf's 2 GB limit for tf2onnx", "shrink the model or "
                              "convert it with python -m tf2onnx.convert --large_model") from e
        raise ExportError(f"TensorFlow could not freeze {description} ({type(e).__name__}: {msg})",
                          "check that the model runs in TensorFlow and uses no stateful/unsupported resources") from e
    try:
        with _quiet(capture), _mute_fd2(), tf.device("/cpu:0"):
            model, _ = tfconv._convert_common(
                frozen, name=description, continue_on_error=False, opset=opset, input_names=placeholders,
                output_names=outputs, tensors_to_rename=rename, initialized_tables=tables)
    except Exception as e:
        node = _failed_node(capture)
        raise ExportError(f"tf2onnx failed to convert {node or description} at opset {opset} "
                          f"({type(e).__name__}: {_first_line(e)})",
                          "try another --opset (up to 18) or rewrite that op in the model") from e

    bad = _unsupported(model, capture)
    if bad:
        raise ExportError(f"TensorFlow op(s) {', '.join(bad)} have no ONNX conversion in tf2onnx at opset {opset}",
                          "try another --opset (up to 18) or rewrite the model without those ops")
    _set_input_dims(model, dims)
    _name_output_dims(model)
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ExportError(f"tf2onnx produced an invalid ONNX model for {description}: {_first_line(e)}",
                          "try another --opset or report the failing op") from e
    used = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), opset)
    return model, used


def _failed_node(capture: _Capture) -> str | None:
    """'node NAME (op OP)' from tf2onnx's "Failed to convert node %r (fct=%r)\\n%r" record (summary has OP=...)."""
    try:
        for r in capture.records:
            if str(r.msg).startswith("Failed to convert node") and r.args:
                summary = str(r.args[2]) if len(r.args) > 2 else ""
                op = summary.split("OP=", 1)[1].split()[0].strip("'\"") if "OP=" in summary else ""
                return f"node {r.args[0]!r}" + (f" (op {op})" if op else "")
    except Exception:
        pass
    return None


def _unsupported(model, capture: _Capture) -> list[str]:
    import onnx

    ops = []
    for r in capture.records:  # "Tensorflow op [%s: %s] is not supported"
        if "is not supported" in r.msg and r.args and len(r.args) >= 2:
            ops.append(str(r.args[1]))
    graphs = [model.graph]
    while graphs:
        g = graphs.pop()
        for node in g.node:
            domain = node.domain or ""
            if domain in ("", "ai.onnx", "ai.onnx.ml") and not onnx.defs.has(node.op_type, domain):
                ops.append(node.op_type)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)
    return sorted(set(ops))


def _name_output_dims(model) -> None:
    """Replace tf2onnx's 'unk__N' output dims by the input dim names ONNX shape inference carries through (e.g.
    'batch'), else by '<output>_dim<i>'."""
    import onnx

    inferred = {}
    try:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        del probe.graph.value_info[:]
        for vi in probe.graph.output:
            for dim in vi.type.tensor_type.shape.dim:
                if dim.HasField("dim_param"):
                    dim.Clear()
        probe = onnx.shape_inference.infer_shapes(probe, strict_mode=False)
        inferred = {vi.name: vi for vi in probe.graph.output}
    except Exception:
        pass
    for vi in model.graph.output:
        if not vi.type.HasField("tensor_type"):
            continue
        got = inferred.get(vi.name)
        got_dims = list(got.type.tensor_type.shape.dim) if got is not None else []
        for i, dim in enumerate(vi.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") or (dim.HasField("dim_param") and not dim.dim_param.startswith("unk__")):
                continue
            new = got_dims[i] if len(got_dims) == len(vi.type.tensor_type.shape.dim) else None
            if new is not None and new.HasField("dim_param") and not new.dim_param.startswith("unk__"):
                dim.dim_param = new.dim_param
            elif new is not None and new.HasField("dim_value"):
                dim.dim_value = new.dim_value
            else:
                dim.dim_param = f"{vi.name}_dim{i}"


def _set_input_dims(model, dims: dict[str, tuple]) -> None:
    """Write our dims (ints, or names for unknown axes) on the graph inputs, replacing tf2onnx's 'unk__N'."""
    for vi in model.graph.input:
        want = dims.get(vi.name)
        if want is None or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        if len(shape.dim) != len(want):
            continue
        for dim, d in zip(shape.dim, want):
            if isinstance(d, int):
                dim.dim_value = d
            else:
                dim.dim_param = str(d)
