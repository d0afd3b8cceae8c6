"""The explicit-QDQ layout TensorRT 10/11 strongly typed networks take: the checks (``check_trt_qdq``,
``check_trt_model``) and the one rewrite (``fold_int32_bias_dq``), plus ``model_precision``.

Neutral ground (it imports neither passes nor backends): the ``trt-qdq-layout`` pass (optkit.passes.trt_qdq) runs
the rewrite in a recipe's pipeline, and the trt backend verifies with the checks and applies the same exact, idempotent
rewrite to a model that did not go through the pass (an older artifact, a QDQ model loaded directly).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .model import opsets

QDQ = ("QuantizeLinear", "DequantizeLinear")
QOPERATOR = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QAttention", "QLinearAdd",
             "QLinearMul", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QLinearWhere",
             "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearReduceMean", "MatMulIntegerToFloat",
             "DynamicQuantizeMatMul", "QEmbedLayerNormalization", "DynamicQuantizeLSTM"}
# quantized tensor types a TensorRT Q/DQ layer takes (FP8/INT4 are valid TensorRT too, just not this int8 layout)
_TRT_QTYPES = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4}
# weight input index -> the output-channel axis a per-channel scale must use
_WEIGHT_AXIS = {"Conv": (1, 0), "ConvTranspose": (1, 1)}


def _label(node: onnx.NodeProto, idx: int) -> str:
    return f"{node.op_type} '{node.name}'" if node.name else f"{node.op_type} #{idx}"


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    out = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            v = _attr(n, "value")
            if isinstance(v, onnx.TensorProto):
                out[n.output[0]] = v
    return out


def _dtype_name(dt: int) -> str:
    return TensorProto.DataType.Name(dt).lower()


class _Graph:
    """What the checks look up: nodes, constants, producers, consumers and node positions."""

    def __init__(self, model: onnx.ModelProto):
        self.nodes = list(model.graph.node)
        self.consts = _constants(model)
        self.producers = {o: n for n in self.nodes for o in n.output}
        self.position = {id(n): i for i, n in enumerate(self.nodes)}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for n in self.nodes:
            for i, name in enumerate(n.input):
                self.consumers.setdefault(name, []).append((n, i))


def _format_problems(nodes: list[onnx.NodeProto]) -> list[str]:
    problems = []
    for idx, n in enumerate(nodes):
        if n.op_type in QOPERATOR:
            problems.append(f"{_label(n, idx)}: QOperator-format op; TensorRT reads only QuantizeLinear/DequantizeLinear "
                            "pairs - use int8-static with format: qdq")
        elif n.op_type == "DynamicQuantizeLinear":
            problems.append(f"{_label(n, idx)}: dynamic (run-time) quantization; TensorRT needs static, calibrated "
                            "Q/DQ - use int8-static, not int8-dynamic")
    return problems


def _scale_problems(g: _Graph, n: onnx.NodeProto, lab: str, weight: bool) -> tuple[list[str], np.ndarray | None]:
    """Scale: constant, positive, finite; per tensor for activations. -> (problems, the scale or None)."""
    scale_t = g.consts.get(n.input[1]) if len(n.input) > 1 else None
    if scale_t is None:
        return [f"{lab}: scale '{n.input[1] if len(n.input) > 1 else ''}' is computed at run time; "
                "TensorRT needs constant (initializer) scales"], None
    problems = []
    scale = numpy_helper.to_array(scale_t).astype(np.float64)
    if scale.size == 0 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        problems.append(f"{lab}: scale has zero, negative or non-finite values; TensorRT needs positive scales")
    if not weight and scale.size > 1:
        problems.append(f"{lab}: per-channel activation quantization ({scale.size} scales); TensorRT quantizes "
                        "activations per tensor")
    return problems, scale


def _type_problems(g: _Graph, n: onnx.NodeProto, lab: str, x_const) -> list[str]:
    """Quantized type int8 (or fp8/int4) and zero points 0 (symmetric)."""
    is_q = n.op_type == "QuantizeLinear"
    problems = []
    zp_t = g.consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
    has_zp = len(n.input) > 2 and bool(n.input[2])
    if has_zp and zp_t is None:
        problems.append(f"{lab}: zero point '{n.input[2]}' is computed at run time; TensorRT needs a constant 0")
    if zp_t is not None:
        qtype = zp_t.data_type
    elif is_q:
        qtype = _attr(n, "output_dtype", 0) or TensorProto.UINT8  # ONNX: no zero point -> uint8
    elif x_const is not None:
        qtype = x_const.data_type
    else:
        qtype = None  # an activation DQ: its type comes from the Q above, checked there
    if qtype == TensorProto.UINT8:
        if is_q and not has_zp and not _attr(n, "output_dtype", 0):
            problems.append(f"{lab}: no zero point, so ONNX quantizes to uint8 (negative values clip to 0) while "
                            "TensorRT would use int8 - give an int8 zero point of 0")
        else:
            problems.append(f"{lab}: uint8 quantization (asymmetric U8); TensorRT quantizes to int8 only - set "
                            "activation_type and weight_type: int8")
    elif qtype == TensorProto.INT32:
        problems.append(f"{lab}: int32 input (a quantized bias); TensorRT dequantizes only int8/fp8/int4 tensors "
                        "- keep biases in float (the trt-qdq-layout pass and the trt backend fold these: fold_int32_bias_dq)")
    elif qtype is not None and qtype not in _TRT_QTYPES:
        problems.append(f"{lab}: {_dtype_name(qtype)} quantization; TensorRT quantizes to int8 (or fp8/int4)")
    if zp_t is not None and qtype not in (TensorProto.FLOAT8E4M3FN,):
        zp = numpy_helper.to_array(zp_t)
        if zp.size and np.any(zp != 0):
            problems.append(f"{lab}: zero point(s) not 0 (max |zp| = {int(np.abs(zp.astype(np.int64)).max())}): "
                            "asymmetric quantization; TensorRT supports symmetric only - set symmetric_activations "
                            "and symmetric_weights: true")
    return problems


def _weight_problems(g: _Graph, n: onnx.NodeProto, lab: str, x_const, scale) -> list[str]:
    """A weight's DequantizeLinear: values in [-127, 127] and the per-channel axis its consumer needs."""
    problems = []
    if x_const is not None and x_const.data_type == TensorProto.INT8:
        w = numpy_helper.to_array(x_const)
        if w.size and int(w.min()) == -128:
            problems.append(f"{lab}: int8 weight value -128; TensorRT INT8 weights use [-127, 127] - use "
                            "symmetric_weights: true")
    w_shape = tuple(x_const.dims) if x_const is not None else tuple(g.consts[g.producers[n.input[0]].input[0]].dims)
    rank = len(w_shape)
    axis = int(_attr(n, "axis", 1))
    axis = axis + rank if axis < 0 else axis
    per_channel = scale is not None and scale.size > 1
    for c, slot in g.consumers.get(n.output[0], []):
        want = _WEIGHT_AXIS.get(c.op_type)
        if c.op_type == "Gemm" and slot == 1:
            want = (1, 0 if _attr(c, "transB", 0) else 1)
        elif c.op_type == "MatMul" and slot == 1:
            want = (1, rank - 1)
        if want is None or slot != want[0] or scale is None:
            continue
        cl = _label(c, g.position[id(c)])
        if not per_channel:
            if c.op_type in _WEIGHT_AXIS:
                problems.append(f"{cl}: per-tensor weight scale ({lab}); TensorRT INT8 convolutions take per-channel "
                                f"weights on axis {want[1]} - set per_channel: true")
            continue
        if axis != want[1]:
            problems.append(f"{cl}: weights quantized per channel on axis {axis} ({lab}); TensorRT expects axis "
                            f"{want[1]} (the output channels)")
        elif rank and scale.size != w_shape[axis]:
            problems.append(f"{cl}: {scale.size} weight scales for {w_shape[axis]} output channels ({lab})")
    return problems


def check_trt_qdq(model: onnx.ModelProto) -> list[str]:
    """Problems (one line each, naming the node) that keep ``model`` from being the quantized layout TensorRT 10/11
    strongly typed networks take: explicit QuantizeLinear/DequantizeLinear (no QOperator or dynamic quantization),
    int8 with zero points 0 (symmetric) for activations and weights, constant positive scales, per-tensor
    activations, per-channel Conv weights on the output-channel axis (0; 1 for ConvTranspose), weights in
    [-127, 127], no int32 (bias) dequantization, opset >= 13. An empty list means the layout is fine (a model
    with no Q/DQ at all, e.g. FP16, passes)."""
    g = _Graph(model)
    problems = _format_problems(g.nodes)
    qdq = [(i, n) for i, n in enumerate(g.nodes) if n.op_type in QDQ and n.domain in ("", "ai.onnx")]
    if not qdq:
        return problems
    opset = opsets(model).get("ai.onnx", 0)
    if opset < 13:
        problems.append(f"opset {opset}: QuantizeLinear/DequantizeLinear with a per-channel axis need opset >= 13 "
                        "- re-export with opset >= 13")
    for idx, n in qdq:
        lab = _label(n, idx)
        is_q = n.op_type == "QuantizeLinear"
        data = n.input[0]
        x_const = g.consts.get(data)
        # a weight: a constant under the DQ, or a float constant under the Q of a Q->DQ pair on a weight
        if x_const is None and not is_q and data in g.producers and g.producers[data].op_type == "QuantizeLinear":
            weight = g.producers[data].input[0] in g.consts
        else:
            weight = x_const is not None
        found, scale = _scale_problems(g, n, lab, weight)
        problems += found + _type_problems(g, n, lab, x_const)
        if weight and not is_q:
            problems += _weight_problems(g, n, lab, x_const, scale)
    return problems


def check_trt_model(model: onnx.ModelProto) -> list[str]:
    """``check_trt_qdq`` plus what TensorRT's ONNX parser cannot import at all (ONNX Runtime contrib ops)."""
    problems = check_trt_qdq(model)
    for idx, n in enumerate(model.graph.node):
        if n.domain.startswith("com.microsoft") and n.op_type not in QOPERATOR:
            problems.append(f"{n.domain}.{_label(n, idx)}: ONNX Runtime contrib op; TensorRT's ONNX parser has no "
                            "importer for it - drop ORT-specific fusions (fuse pass) from a -trt recipe")
    return problems


def fold_int32_bias_dq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A TensorRT-ready copy of ``model`` and what changed. The one rewrite: a DequantizeLinear of a constant int32
    tensor (a bias quantized by onnxruntime.quantization) becomes the float32 initializer it computes,
    ``(x - zero_point) * scale`` exactly as ONNX Runtime computed it, so the numerics the pipeline validated hold.
    TensorRT cannot import int32 DequantizeLinear and keeps biases in float anyway."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    consts = {t.name: t for t in g.initializer}
    outputs = {o.name for o in g.output}
    keep, folded = [], 0
    for n in g.node:
        x = consts.get(n.input[0]) if n.op_type == "DequantizeLinear" and n.input else None
        if (x is None or x.data_type != TensorProto.INT32 or n.output[0] in outputs or len(n.input) < 2
                or n.input[1] not in consts or (len(n.input) > 2 and n.input[2] and n.input[2] not in consts)):
            keep.append(n)
            continue
        xv = numpy_helper.to_array(x).astype(np.int64)
        scale = numpy_helper.to_array(consts[n.input[1]]).astype(np.float32)
        zp = numpy_helper.to_array(consts[n.input[2]]).astype(np.int64) if len(n.input) > 2 and n.input[2] else 0
        if scale.size > 1:  # per-axis: broadcast along `axis`
            axis = int(_attr(n, "axis", 1))
            axis = axis + xv.ndim if axis < 0 else axis
            shape = [1] * xv.ndim
            shape[axis] = -1
            scale = scale.reshape(shape)
            zp = np.asarray(zp).reshape(shape) if np.ndim(zp) else zp
        value = ((xv - zp).astype(np.float32) * scale).astype(np.float32)
        g.initializer.append(numpy_helper.from_array(value, n.output[0]))
        folded += 1
    if not folded:
        return m, []
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | outputs
    for sub in (a.g for n in g.node for a in n.attribute if a.type == onnx.AttributeProto.GRAPH):
        used |= {i for n in sub.node for i in n.input}
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)
    return m, [f"folded {folded} int32 bias DequantizeLinear node(s) into float32 initializers (TensorRT dequantizes "
               "only int8/fp8/int4; same arithmetic as ONNX Runtime, numerics unchanged)"]


def model_precision(model: onnx.ModelProto) -> str:
    """'int8' (explicit Q/DQ), 'fp16' (float16 weights or casts), else 'fp32'."""
    ops = {n.op_type for n in model.graph.node}
    if ops & set(QDQ):
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) or any(
            n.op_type == "Cast" and _attr(n, "to") == TensorProto.FLOAT16 for n in model.graph.node):
        return "fp16"
    return "fp32"


__all__ = ["check_trt_qdq", "check_trt_model", "fold_int32_bias_dq", "model_precision", "QDQ", "QOPERATOR"]
