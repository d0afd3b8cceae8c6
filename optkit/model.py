"""Load/save ONNX (external data for >2 GB models), signatures, op statistics, parameter and FLOP counts."""
from __future__ import annotations

import collections
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import InputError

# protobuf cannot serialize a message over 2 GiB; above this optkit writes weights as external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output: name, numpy dtype name, and dims (int, a symbolic name, or None)."""

    name: str
    dtype: str
    shape: tuple

    @property
    def symbolic(self) -> list[tuple[int, str]]:
        return [(i, d if isinstance(d, str) else "?") for i, d in enumerate(self.shape) if not isinstance(d, int)]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def load_model(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Read an ONNX file (and its external data). Bad files raise one clear InputError."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"model file not found: {p}", "check the path")
    if p.is_dir():
        raise InputError(f"{p} is a directory, not an ONNX file", "pass the path of a .onnx file")
    if p.stat().st_size == 0:
        raise InputError(f"{p} is empty", "re-export the model")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except Exception as e:  # protobuf DecodeError, missing external data, ...
        raise InputError(f"{p} is not a readable ONNX model ({type(e).__name__}: {_first_line(e)})",
                         "check that the file is a complete .onnx export (truncated or wrong file?)") from e
    if model.ir_version <= 0 or not model.graph.node:
        raise InputError(f"{p} is not an ONNX model (no graph nodes or IR version)",
                         "pass a .onnx file exported from your framework")
    from .checks import check_opsets

    check_opsets(model, p)  # named plainly here, not as ORT's C++ error later
    if check:
        try:
            onnx.checker.check_model(str(p))
        except Exception as e:
            raise InputError(f"{p} fails the ONNX checker: {_first_line(e)}",
                             "re-export the model or fix the reported node") from e
    return model


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by initializers (works for models too large to serialize)."""
    total = 0
    for t in _all_initializers(model):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            total += next((int(e.value) for e in t.external_data if e.key == "length"), 0)
        elif t.raw_data:
            total += len(t.raw_data)
        else:
            total += int(np.prod(t.dims, dtype=np.int64)) * _itemsize(t.data_type)
    return total


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size (initializer bytes plus the graph) without serializing huge models."""
    weights = tensor_bytes(model)
    if weights < EXTERNAL_DATA_THRESHOLD:
        return model.ByteSize()
    return weights + 1024 * len(model.graph.node)


def _itemsize(data_type: int) -> int:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except Exception:
        return 4


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write a model; weights go to ``<name>.data`` beside it when the model is too big for protobuf."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
        # onnx.save_model turns the given proto's tensors into external references: save a copy
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        onnx.save_model(copy, str(p), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=p.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(p))
    return p


def model_files(path: str | os.PathLike) -> list[Path]:
    """The .onnx file plus any external-data files it references."""
    p = Path(path)
    files = [p]
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception:
        return files
    for t in _all_initializers(m):
        for e in t.external_data:
            if e.key == "location":
                f = p.parent / e.value
                if f not in files:
                    files.append(f)
    return files


def _update(h, path) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of one file's bytes (sha256_file also covers a model's external data)."""
    h = hashlib.sha256()
    _update(h, path)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    for f in model_files(path):
        _update(h, f)
    return h.hexdigest()


def _all_initializers(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def _spec(vi: onnx.ValueInfoProto) -> TensorSpec:
    tt = vi.type.tensor_type
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_value"):  # -1 / 0 written by some exporters (Paddle) for "any size": symbolic
            dims.append(None)
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    except Exception:
        dtype = onnx.TensorProto.DataType.Name(tt.elem_type).lower()
    return TensorSpec(vi.name, dtype, tuple(dims))


def signature(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs (initializers excluded) and outputs."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in inits]
    outputs = [_spec(v) for v in model.graph.output]
    return inputs, outputs


def float16_compute(model: onnx.ModelProto) -> list[str]:
    """Main-graph nodes that compute on float16 weights directly (not through a Cast): what INT8 passes refuse."""
    fp16 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    return [f"{n.op_type} {n.name or n.output[0]!r}" for n in model.graph.node
            if n.op_type != "Cast" and any(i in fp16 for i in n.input)]


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    c = collections.Counter(
        (n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}") for n in model.graph.node)
    return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def param_count(model: onnx.ModelProto) -> int:
    """Elements in float/int initializers of rank >= 1 (weights), scalars and shape constants excluded."""
    n = 0
    for t in model.graph.initializer:
        if len(t.dims) >= 1 and t.data_type not in (onnx.TensorProto.INT64,):
            n += int(np.prod(t.dims, dtype=np.int64))
    return n


def opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}


def fix_dims(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy whose graph inputs have the given static shapes (symbolic dims without a shape become 1)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        given = shapes.get(vi.name)
        for i, d in enumerate(dims):
            value = given[i] if given is not None and i < len(given) else (
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1)
            d.Clear()
            d.dim_value = int(value)
    return m


def infer_value_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, tuple]:
    """Static shapes of every value after fixing the inputs (best effort; unknown values are absent)."""
    m = fix_dims(model, shapes or {})
    # value_info / outputs left by the exporter keep the symbolic dims (seq, ...) and onnx shape inference does
    # not override them: drop them so the fixed input dims propagate (else FLOPs of an encoder read as 0)
    static = [vi for vi in m.graph.value_info if _is_static(vi)]
    del m.graph.value_info[:]
    m.graph.value_info.extend(static)
    for vi in m.graph.output:
        if vi.type.HasField("tensor_type") and not _is_static(vi):
            vi.type.tensor_type.ClearField("shape")
    if tensor_bytes(m) >= EXTERNAL_DATA_THRESHOLD:  # shape inference needs a serializable proto
        for t in m.graph.initializer:
            t.ClearField("raw_data")
    try:
        m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:
        pass
    out: dict[str, tuple] = {}
    for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
        spec = _spec(vi)
        if spec.shape and all(isinstance(d, int) for d in spec.shape):
            out[vi.name] = spec.shape
    for t in m.graph.initializer:
        out[t.name] = tuple(int(d) for d in t.dims)
    return out


def _is_static(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape") and all(
        d.HasField("dim_value") and d.dim_value > 0 for d in vi.type.tensor_type.shape.dim)


_MATMUL_LIKE = {"MatMul", "MatMulInteger", "QLinearMatMul", "com.microsoft.MatMulIntegerToFloat",
                "com.microsoft.DynamicQuantizeMatMul", "com.microsoft.FusedMatMul"}
_CONV_LIKE = {"Conv", "ConvInteger", "QLinearConv", "com.microsoft.FusedConv", "ConvTranspose"}


def flops(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Multiply-accumulate FLOPs (2 per MAC) of Conv/Gemm/MatMul-family nodes for the given input shapes."""
    vs = infer_value_shapes(model, shapes)
    total, by_op, unknown = 0, collections.Counter(), 0
    for n in model.graph.node:
        op = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
        f = None
        out = vs.get(n.output[0]) if n.output else None
        if op in _CONV_LIKE and out is not None:
            w_idx = 3 if op == "QLinearConv" else 1
            w = vs.get(n.input[w_idx]) if len(n.input) > w_idx else None
            if w is not None and len(w) >= 3:
                # weight (Cout, Cin/g, k...): each output element costs prod(w[1:]) MACs
                if op == "ConvTranspose":
                    x = vs.get(n.input[0])
                    f = 2 * int(np.prod(x)) * int(np.prod(w[1:])) if x else None
                else:
                    f = 2 * int(np.prod(out)) * int(np.prod(w[1:]))
        elif op == "Gemm" and out is not None:
            a = vs.get(n.input[0])
            trans_a = next((at.i for at in n.attribute if at.name == "transA"), 0)
            if a is not None and len(a) == 2:
                f = 2 * int(np.prod(out)) * int(a[0] if trans_a else a[1])
        elif op in _MATMUL_LIKE and out is not None:
            a_idx = 0
            a = vs.get(n.input[a_idx])
            if a is not None and len(a) >= 1:
                f = 2 * int(np.prod(out)) * int(a[-1])
        if f is None:
            if op in _CONV_LIKE or op == "Gemm" or op in _MATMUL_LIKE:
                unknown += 1
            continue
        total += f
        by_op[op] += f
    out = {"total": int(total), "by_op": dict(by_op), "nodes_without_shape": unknown}
    if unknown:  # never a silent undercount (or a silent 0)
        out["note"] = f"{unknown} Conv/Gemm/MatMul node(s) have no static shape and are not counted"
    return out


def model_info(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Everything `optkit inspect` shows: signature, opsets, op histogram, params, FLOPs, size."""
    inputs, outputs = signature(model)
    return {
        "ir_version": int(model.ir_version),
        "opsets": opsets(model),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": [s.to_dict() for s in inputs],
        "outputs": [s.to_dict() for s in outputs],
        "nodes": len(model.graph.node),
        "ops": op_histogram(model),
        "params": param_count(model),
        "bytes": model_bytes(model),
        "flops": flops(model, shapes),
    }


def toposort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Reorder the main graph's nodes topologically (some converters append nodes at the end); a node with
    subgraphs comes after the producers of the outer-scope values its subgraphs read."""
    g = model.graph
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    needs = {id(n): set(n.input) | _outer_refs(n) for n in pending}
    ordered = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in needs[id(n)]):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle or a dangling input (e.g. from a subgraph): keep the rest as is
            ordered.extend(rest)
            break
        pending = rest
    nodes = [onnx.NodeProto() for _ in ordered]
    for dst, src in zip(nodes, ordered):
        dst.CopyFrom(src)
    del g.node[:]
    g.node.extend(nodes)
    return model


def _outer_refs(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs (If branches, Loop/Scan bodies) read from the enclosing scope."""
    refs: set[str] = set()
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for sub in graphs:
            local = {i.name for i in sub.input} | {t.name for t in sub.initializer} | {""}
            for n in sub.node:
                refs |= {i for i in set(n.input) | _outer_refs(n) if i not in local}
                local |= set(n.output)
    return refs


def node_attr(node: onnx.NodeProto, name: str, default=None):
    """The value of a node attribute, or ``default``."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def layer_name(node: onnx.NodeProto) -> str:
    """How passes and recipes name a layer: the node name, else its first output."""
    return node.name or (node.output[0] if node.output else node.op_type)


def model_digest(model: onnx.ModelProto) -> str:
    """sha256 of the model's deterministic serialization (the pass cache and calibration keys)."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()
