"""NVIDIA TensorRT backend: TensorRT-ready ONNX, engine build (strongly typed network), engine runtime.

What it does
------------
``compile()`` takes the ONNX the recipe's passes produced (``int8-trt``: explicit symmetric S8 QDQ with per-channel
weights; ``fp16-trt``: FP16 weights and casts, float32 IO) and

1. makes it TensorRT-ready (``prepare_trt_onnx``: int32 bias DequantizeLinear nodes, which TensorRT cannot import,
   are folded into float32 initializers - the same arithmetic ONNX Runtime did, so the validated numerics hold);
2. checks the layout TensorRT 10/11 strongly typed networks need (``check_trt_qdq`` / ``check_trt_model``) and
   refuses with the list of problems otherwise;
3. derives one optimization profile (min/opt/max per input, ``derive_profiles``);
4. writes ``trtexec.sh`` and ``build_engine.txt`` with the exact engine-build command (``build_command``) and the
   equivalent optkit call (``build_engine``);
5. where TensorRT and a CUDA GPU are present, builds ``engine.plan`` for real through the TensorRT Python API
   (ONNX parser, strongly typed network, profile, workspace pool, timing cache reused from and saved to both
   ``compiled/timing.cache`` and a shared cache dir). Where they are absent it says so in the returned dict
   (``"engine": None, "engine_built": False, "reason": ...``): there is no fake engine.

``load()`` runs an engine (``execute_async_v3`` with ``set_tensor_address``; device buffers from torch CUDA tensors,
else cuda-python) and raises ``BackendUnavailable`` with the reason where TensorRT or a GPU is missing.

Profiles (backend option ``profiles``)
--------------------------------------
``profiles: {input: "1x3x224x224,8x3x224x224,32x3x224x224"}`` gives MIN,OPT,MAX for an input (one shape alone
means min = opt = max). An input not named there gets: opt = its ``--shape`` / data shape (else the model's dims
with a symbolic leading dim set to 1); for each symbolic dim min = 1; max = opt x ``max_batch_multiple`` on axis 0
and max = opt on other symbolic axes (a sequence length given is taken as the longest). Static dims are fixed.
Only inputs with symbolic dims get a profile entry (trtexec's --minShapes/--optShapes/--maxShapes).

TensorRT 10 vs 11 differences are handled by feature checks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
present or weak typing gone, ``BuilderFlag.TF32``, ``builder_optimization_level``, parser error ``node_name``),
never by version strings. No precision builder flags are used: the ONNX carries the types (TensorRT 11 removed
``--fp16``/``--int8`` and the INT8 calibrator).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import BackendUnavailable, InputError, OptkitError, RecipeError
from ..model import TensorSpec, load_model, opsets, save_model, sha256_of, signature
from ..config import PassConfig, option
from . import Backend

ENGINE_FILE = "engine.plan"
TIMING_CACHE_FILE = "timing.cache"
TRT_ONNX_FILE = "model.trt.onnx"
SCRIPT_FILE = "trtexec.sh"
README_FILE = "build_engine.txt"
PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = ("use a machine with an NVIDIA GPU and TensorRT >= 10 (pip install 'optkit[tensorrt]'); an artifact's "
                "compiled/trtexec.sh has the engine-build command")


class TrtError(OptkitError):
    """The model is not TensorRT-ready, or TensorRT failed to parse/build/run it."""

    exit_code = 3


# ---------------------------------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrtOptions(PassConfig):
    profiles: dict[str, str] = option({}, "optimization profile per input: {name: 'MIN,OPT,MAX'} with shapes like "
                                      "1x3x224x224 (one shape = static); unnamed inputs: min 1 / opt = --shape or data / "
                                      "max = opt x max_batch_multiple on a symbolic axis 0")
    max_batch_multiple: int = option(4, "max of a symbolic batch (axis 0) = opt batch x this, for inputs not in profiles")
    workspace_mb: int = option(1024, "workspace memory pool limit (MiB) for the builder's tactics")
    builder_optimization_level: int = option(3, "TensorRT builder optimization level 0-5 (higher: longer build, maybe faster)")
    tf32: bool = option(False, "let float32 layers use TF32 (faster on Ampere+, but not the FP32 numerics ONNX Runtime validated)")
    timing_cache: bool = option(True, "reuse and update a timing cache: compiled/timing.cache and one in cache_dir")
    cache_dir: str = option("", "shared timing-cache and engine-cache directory; empty = $OPTKIT_CACHE_DIR/trt or ~/.cache/optkit/trt")
    require_engine: bool = option(False, "fail when TensorRT or a GPU is missing, instead of writing the build command only")

    def check(self) -> str | None:
        if self.max_batch_multiple < 1:
            return f"option 'max_batch_multiple' must be >= 1, got {self.max_batch_multiple}"
        if self.workspace_mb < 1:
            return f"option 'workspace_mb' must be >= 1, got {self.workspace_mb}"
        if not 0 <= self.builder_optimization_level <= 5:
            return f"option 'builder_optimization_level' must be in 0-5, got {self.builder_optimization_level}"
        for name, spec in self.profiles.items():
            try:
                parse_profile(spec, name)
            except RecipeError as e:
                return e.what
        return None


# ---------------------------------------------------------------------------------------------------------------
# optimization profiles
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """min/opt/max shape of one input; ``dynamic_axes``: the axes that are symbolic in the ONNX."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    dynamic_axes: tuple[int, ...] = ()

    @property
    def dynamic(self) -> bool:
        return bool(self.dynamic_axes)

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max), "dynamic_axes": list(self.dynamic_axes)}


def _dims(d) -> str:
    return "x".join(str(int(v)) for v in d)


def parse_shape(text: str, where: str = "shape") -> tuple[int, ...]:
    """``'1x3x224x224'`` -> (1, 3, 224, 224). Dims are separated by 'x' only (',' separates MIN,OPT,MAX)."""
    t = str(text).strip().lower()
    try:
        dims = tuple(int(p) for p in t.split("x"))
    except ValueError:
        raise RecipeError(f"{where}: bad shape {text!r}", "write dims separated by 'x', e.g. 1x3x224x224") from None
    if not dims or min(dims) < 1:
        raise RecipeError(f"{where}: bad shape {text!r} (dims must be >= 1)", "write dims separated by 'x', e.g. 1x3x224x224")
    return dims


def parse_profile(spec, name: str = "input") -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``'1x3x8x8,4x3x8x8,8x3x8x8'`` -> (min, opt, max); one shape -> (s, s, s). Ranks must agree, min <= opt <= max."""
    where = f"profiles[{name!r}]"
    parts = [str(p).strip() for p in spec] if isinstance(spec, (list, tuple)) else [p.strip() for p in str(spec).split(",")]
    if len(parts) == 1:
        s = parse_shape(parts[0], where)
        return s, s, s
    if len(parts) != 3:
        raise RecipeError(f"{where}: {spec!r} has {len(parts)} shapes, expected one shape or MIN,OPT,MAX",
                          "write e.g. '1x3x224x224,8x3x224x224,32x3x224x224'")
    mn, opt, mx = (parse_shape(p, where) for p in parts)
    if not len(mn) == len(opt) == len(mx):
        raise RecipeError(f"{where}: MIN,OPT,MAX have different ranks ({_dims(mn)}, {_dims(opt)}, {_dims(mx)})",
                          "give the same number of dims in all three shapes")
    for i, (a, b, c) in enumerate(zip(mn, opt, mx)):
        if not a <= b <= c:
            raise RecipeError(f"{where}: axis {i} needs min <= opt <= max, got {a}, {b}, {c}",
                              "order the shapes MIN,OPT,MAX")
    return mn, opt, mx


def derive_profiles(inputs: list[TensorSpec], shapes: dict | None = None, profiles: dict | None = None,
                    max_batch_multiple: int = 4) -> dict[str, Profile]:
    """One Profile per graph input (see the module doc for the rules). Errors name the input and what to write."""
    from ..data import resolve_shapes

    shapes = {k: tuple(int(x) for x in v) for k, v in (shapes or {}).items()}
    profiles = dict(profiles or {})
    names = [s.name for s in inputs]
    for label, given in (("backend option profiles", profiles), ("--shape", shapes)):
        for n in given:
            if n not in names:
                raise InputError(f"{label} names unknown input {n!r}", f"the model's inputs are {names}")
    out: dict[str, Profile] = {}
    for s in inputs:
        dyn = tuple(i for i, d in enumerate(s.shape) if not isinstance(d, int))
        model_dims = "[" + ", ".join(str(d) for d in s.shape) + "]"
        if s.name in profiles:
            mn, opt, mx = parse_profile(profiles[s.name], s.name)
            if len(opt) != len(s.shape):
                raise InputError(f"profiles[{s.name!r}] has rank {len(opt)}, the model's input is {model_dims}",
                                 "give one value per dimension")
            for i, d in enumerate(s.shape):
                if isinstance(d, int) and not mn[i] == opt[i] == mx[i] == d:
                    raise InputError(f"profiles[{s.name!r}] varies axis {i}, which the model fixes to {d} {model_dims}",
                                     f"keep axis {i} at {d} in MIN, OPT and MAX")
            out[s.name] = Profile(s.name, mn, opt, mx, dyn)
            continue
        opt = resolve_shapes([s], {s.name: shapes[s.name]} if s.name in shapes else None)[s.name]
        mn = tuple(1 if i in dyn else v for i, v in enumerate(opt))
        mx = tuple(v * max_batch_multiple if (i in dyn and i == 0) else v for i, v in enumerate(opt))
        out[s.name] = Profile(s.name, mn, tuple(opt), mx, dyn)
    return out


def _profiles_from_json(data: dict) -> dict[str, Profile]:
    return {n: Profile(n, tuple(p["min"]), tuple(p["opt"]), tuple(p["max"]), tuple(p.get("dynamic_axes", ())))
            for n, p in data.items()}


def _as_profiles(profiles) -> dict[str, Profile]:
    """Profile objects from {name: Profile | (min, opt, max) | 'MIN,OPT,MAX' | {'min':..}} (for build_engine/build_command)."""
    out = {}
    for n, p in (profiles or {}).items():
        if isinstance(p, Profile):
            out[n] = p
        elif isinstance(p, dict):
            out[n] = _profiles_from_json({n: p})[n]
        else:
            if isinstance(p, (list, tuple)) and len(p) == 3 and not isinstance(p[0], (int, np.integer)):
                mn, opt, mx = (parse_shape(x, f"profiles[{n!r}]") if isinstance(x, str) else tuple(int(v) for v in x)
                               for x in p)
            else:
                mn, opt, mx = parse_profile(p, n)
            dyn = tuple(i for i, (a, c) in enumerate(zip(mn, mx)) if a != c)
            out[n] = Profile(n, mn, opt, mx, dyn)
    return out


# ---------------------------------------------------------------------------------------------------------------
# TensorRT-ready ONNX: layout rules and the one rewrite
# ---------------------------------------------------------------------------------------------------------------

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_QOPERATOR = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QAttention", "QLinearAdd",
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


def check_trt_qdq(model: onnx.ModelProto) -> list[str]:
    """Problems (one line each, naming the node) that keep ``model`` from being the quantized layout TensorRT 10/11
    strongly typed networks take: explicit QuantizeLinear/DequantizeLinear (no QOperator or dynamic quantization),
    int8 with zero points 0 (symmetric) for activations and weights, constant positive scales, per-tensor
    activations, per-channel Conv weights on the output-channel axis (0; 1 for ConvTranspose), weights in
    [-127, 127], no int32 (bias) dequantization, opset >= 13. An empty list means the layout is fine (a model
    with no Q/DQ at all, e.g. FP16, passes)."""
    problems: list[str] = []
    nodes = list(model.graph.node)
    consts = _constants(model)
    producers = {o: n for n in nodes for o in n.output}
    position = {id(n): i for i, n in enumerate(nodes)}
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for n in nodes:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))

    for idx, n in enumerate(nodes):
        if n.op_type in _QOPERATOR:
            problems.append(f"{_label(n, idx)}: QOperator-format op; TensorRT reads only QuantizeLinear/DequantizeLinear "
                            "pairs - use int8-static with format: qdq")
        elif n.op_type == "DynamicQuantizeLinear":
            problems.append(f"{_label(n, idx)}: dynamic (run-time) quantization; TensorRT needs static, calibrated "
                            "Q/DQ - use int8-static, not int8-dynamic")
    qdq = [(i, n) for i, n in enumerate(nodes) if n.op_type in _QDQ and n.domain in ("", "ai.onnx")]
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
        x_const = consts.get(data)
        # a weight: a constant under the DQ, or a float constant under the Q of a Q->DQ pair on a weight
        if x_const is None and not is_q and data in producers and producers[data].op_type == "QuantizeLinear":
            weight = producers[data].input[0] in consts
        else:
            weight = x_const is not None

        # scale: constant, positive, finite; per tensor for activations
        scale_t = consts.get(n.input[1]) if len(n.input) > 1 else None
        scale = None
        if scale_t is None:
            problems.append(f"{lab}: scale '{n.input[1] if len(n.input) > 1 else ''}' is computed at run time; "
                            "TensorRT needs constant (initializer) scales")
        else:
            scale = numpy_helper.to_array(scale_t).astype(np.float64)
            if scale.size == 0 or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
                problems.append(f"{lab}: scale has zero, negative or non-finite values; TensorRT needs positive scales")
            if not weight and scale.size > 1:
                problems.append(f"{lab}: per-channel activation quantization ({scale.size} scales); TensorRT quantizes "
                                "activations per tensor")

        # quantized type and zero point
        zp_t = consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
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
                            "- keep biases in float (the trt backend folds these at compile: prepare_trt_onnx)")
        elif qtype is not None and qtype not in _TRT_QTYPES:
            problems.append(f"{lab}: {_dtype_name(qtype)} quantization; TensorRT quantizes to int8 (or fp8/int4)")
        if zp_t is not None and qtype not in (TensorProto.FLOAT8E4M3FN,):
            zp = numpy_helper.to_array(zp_t)
            if zp.size and np.any(zp != 0):
                problems.append(f"{lab}: zero point(s) not 0 (max |zp| = {int(np.abs(zp.astype(np.int64)).max())}): "
                                "asymmetric quantization; TensorRT supports symmetric only - set symmetric_activations "
                                "and symmetric_weights: true")

        # weights (checked at their DequantizeLinear): values in [-127, 127] and the per-channel axis
        if not weight or is_q:
            continue
        if x_const is not None and x_const.data_type == TensorProto.INT8:
            w = numpy_helper.to_array(x_const)
            if w.size and int(w.min()) == -128:
                problems.append(f"{lab}: int8 weight value -128; TensorRT INT8 weights use [-127, 127] - use "
                                "symmetric_weights: true")
        w_shape = tuple(x_const.dims) if x_const is not None else tuple(consts[producers[data].input[0]].dims)
        rank = len(w_shape)
        axis = int(_attr(n, "axis", 1))
        axis = axis + rank if axis < 0 else axis
        per_channel = scale is not None and scale.size > 1
        for c, slot in consumers.get(n.output[0], []):
            want = _WEIGHT_AXIS.get(c.op_type)
            if c.op_type == "Gemm" and slot == 1:
                want = (1, 0 if _attr(c, "transB", 0) else 1)
            elif c.op_type == "MatMul" and slot == 1:
                want = (1, rank - 1)
            if want is None or slot != want[0] or scale is None:
                continue
            cl = _label(c, position[id(c)])
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


def check_trt_model(model: onnx.ModelProto) -> list[str]:
    """``check_trt_qdq`` plus what TensorRT's ONNX parser cannot import at all (ONNX Runtime contrib ops)."""
    problems = check_trt_qdq(model)
    for idx, n in enumerate(model.graph.node):
        if n.domain.startswith("com.microsoft") and n.op_type not in _QOPERATOR:
            problems.append(f"{n.domain}.{_label(n, idx)}: ONNX Runtime contrib op; TensorRT's ONNX parser has no "
                            "importer for it - drop ORT-specific fusions (fuse pass) from a -trt recipe")
    return problems


def prepare_trt_onnx(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
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
    if ops & set(_QDQ):
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer) or any(
            n.op_type == "Cast" and _attr(n, "to") == TensorProto.FLOAT16 for n in model.graph.node):
        return "fp16"
    return "fp32"


# ---------------------------------------------------------------------------------------------------------------
# the engine-build command
# ---------------------------------------------------------------------------------------------------------------


def _trtexec_name(name: str) -> str:
    return f"'{name}'" if any(c in name for c in ":,*") else name


def _shape_flag(profiles: dict[str, Profile], which: str) -> str:
    return ",".join(f"{_trtexec_name(p.name)}:{_dims(getattr(p, which))}" for p in profiles.values() if p.dynamic)


def build_command(onnx_path, engine_path, profiles, precision: str = "fp32", workspace_mb: int = 1024,
                  timing_cache=TIMING_CACHE_FILE, *, builder_optimization_level: int | None = 3, tf32: bool = False,
                  skip_inference: bool = True) -> list[str]:
    """The ``trtexec`` argv that builds ``engine_path`` from ``onnx_path`` the way ``build_engine`` does.

    ``profiles``: {input: Profile | (min, opt, max) | 'MIN,OPT,MAX'}; only inputs with a varying dim get
    --minShapes/--optShapes/--maxShapes. ``precision`` (fp32|fp16|int8) must match what the ONNX holds; it adds no
    flag: the network is strongly typed and takes its types from the graph (TensorRT 11 removed --fp16/--int8;
    --stronglyTyped is required on 10.x and a no-op on 11.x). ``tf32=False`` adds --noTF32 so float32 layers keep
    the FP32 numerics ONNX Runtime validated. ``timing_cache`` None leaves the timing cache out."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if workspace_mb < 1:
        raise ValueError(f"workspace_mb must be >= 1, got {workspace_mb}")
    profs = _as_profiles(profiles)
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped"]
    if any(p.dynamic for p in profs.values()):
        cmd += [f"--minShapes={_shape_flag(profs, 'min')}", f"--optShapes={_shape_flag(profs, 'opt')}",
                f"--maxShapes={_shape_flag(profs, 'max')}"]
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    if builder_optimization_level is not None:
        cmd.append(f"--builderOptimizationLevel={int(builder_optimization_level)}")
    if not tf32:
        cmd.append("--noTF32")
    if skip_inference:
        cmd.append("--skipInference")
    return cmd


def _python_call(onnx_path: str, profiles: dict[str, Profile], precision: str, opts: TrtOptions) -> str:
    prof = {n: [_dims(p.min), _dims(p.opt), _dims(p.max)] for n, p in profiles.items() if p.dynamic}
    q = json.dumps  # double-quoted literals, so the shell line needs only one pair of single quotes
    cache = q(TIMING_CACHE_FILE) if opts.timing_cache else "None"
    code = (f"from optkit.backends.trt import build_engine; build_engine({q(onnx_path)}, {q(ENGINE_FILE)}, "
            f"profiles={q(prof)}, precision={q(precision)}, workspace_mb={opts.workspace_mb}, timing_cache={cache}, "
            f"builder_optimization_level={opts.builder_optimization_level}, tf32={opts.tf32})")
    return "python -c " + shlex.quote(code)


def _write_text(path: Path, text: str, mode: int | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_build_files(out_dir: Path, cmd: list[str], python_call: str, profiles: dict[str, Profile], precision: str,
                       status_line: str, notes: list[str]) -> list[str]:
    body = " \\\n  ".join(shlex.quote(a) for a in cmd[1:])
    script = ("#!/bin/sh\n"
              "# Builds the TensorRT engine (engine.plan) of this optkit artifact: a strongly typed network, so the\n"
              "# precision comes from the ONNX (no --fp16/--int8). Needs TensorRT >= 10 (trtexec) and an NVIDIA GPU.\n"
              "# Paths are relative to this folder; set TRTEXEC=/path/to/trtexec if it is not on PATH.\n"
              "set -e\n"
              'cd "$(dirname "$0")"\n'
              f'exec "${{TRTEXEC:-trtexec}}" \\\n  {body}\n')
    _write_text(out_dir / SCRIPT_FILE, script, 0o755)
    rows = [f"  {p.name}: {_dims(p.min)} / {_dims(p.opt)} / {_dims(p.max)}"
            + (f"  (dynamic axes {list(p.dynamic_axes)})" if p.dynamic else "  (static)") for p in profiles.values()]
    text = "\n".join([
        "TensorRT engine build for this optkit artifact (backend trt)",
        "",
        status_line,
        "",
        "Build the engine on a machine with TensorRT >= 10 and an NVIDIA GPU, from this folder (compiled/):",
        "",
        "  " + " ".join(shlex.quote(a) for a in cmd),
        "",
        "(or run ./trtexec.sh). The same build through the TensorRT Python API, with optkit installed:",
        "",
        "  " + python_call,
        "",
        "or let optkit build it when it benchmarks the artifact there (the engine is built on load and cached):",
        "",
        "  optkit bench <artifact> --backend trt",
        "",
        "input profiles (min / opt / max):",
        *rows,
        f"precision: {precision} (from the ONNX: strongly typed network)",
        *(f"note: {n}" for n in notes),
        "",
    ])
    _write_text(out_dir / README_FILE, text)
    return [SCRIPT_FILE, README_FILE]


# ---------------------------------------------------------------------------------------------------------------
# what this machine has: TensorRT, a GPU, a CUDA API for device buffers
# ---------------------------------------------------------------------------------------------------------------

_GPU_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/proc/driver/nvidia/version")


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _find_gpu() -> tuple[str | None, str | None, str | None]:
    """(gpu name, CUDA API for buffers 'torch'|'cuda-python', reason when there is no usable GPU)."""
    if not any(os.path.exists(p) for p in _GPU_NODES):
        return None, None, "there is no CUDA GPU (no NVIDIA driver or device: /dev/nvidia0, /proc/driver/nvidia)"
    why = []
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0), "torch", None
            why.append(f"torch {torch.__version__} sees no CUDA device")
        except Exception as e:  # a broken torch install must not break compile
            why.append(f"torch failed: {type(e).__name__}")
    try:
        cudart = _import_cudart()
    except Exception:
        why.append("cuda-python is not installed")
    else:
        try:
            err, count = cudart.cudaGetDeviceCount()
            if int(err) == 0 and count > 0:
                err, prop = cudart.cudaGetDeviceProperties(0)
                raw = prop.name if int(err) == 0 else b"CUDA device 0"
                name = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).rstrip("\x00")
                return name, "cuda-python", None
            why.append(f"cudaGetDeviceCount: {err}, {count} device(s)")
        except Exception as e:
            why.append(f"cuda-python failed: {type(e).__name__}: {e}")
    return None, None, "no usable CUDA GPU (" + "; ".join(why) + "; pip install cuda-python, or torch with CUDA)"


def _trt_features(trt) -> str | None:
    """What this TensorRT lacks for optkit (feature checks, not version strings), or None."""
    missing = [a for a, obj in (("OnnxParser", trt), ("Runtime", trt), ("IExecutionContext.execute_async_v3",
                                                                            getattr(trt, "IExecutionContext", None)),
                                 ("ICudaEngine.num_io_tensors", getattr(trt, "ICudaEngine", None)))
               if obj is None or not hasattr(obj, a.split(".")[-1])]
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly_typed = hasattr(flags, "STRONGLY_TYPED") or not hasattr(getattr(trt, "BuilderFlag", None), "FP16")
    if not strongly_typed:
        missing.append("strongly typed networks")
    if missing:
        return (f"TensorRT {getattr(trt, '__version__', '?')} lacks {', '.join(missing)} "
                "(optkit needs TensorRT >= 10)")
    return None


def runtime_status() -> dict:
    """{'ok', 'reason', 'tensorrt' (version), 'gpu' (name), 'cuda_api'}: can this machine build and run engines?"""
    out = {"ok": False, "reason": None, "tensorrt": None, "gpu": None, "cuda_api": None}
    reasons = []
    if importlib.util.find_spec("tensorrt") is None:
        reasons.append("TensorRT is not installed (no 'tensorrt' Python module)")
    else:
        try:
            trt = importlib.import_module("tensorrt")
            out["tensorrt"] = getattr(trt, "__version__", "?")
            lack = _trt_features(trt)
            if lack:
                reasons.append(lack)
        except Exception as e:  # e.g. the pip stub without libnvinfer
            reasons.append(f"TensorRT cannot be imported ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
    gpu, api, why = _find_gpu()
    out.update(gpu=gpu, cuda_api=api)
    if why:
        reasons.append(why)
    out["ok"] = not reasons
    out["reason"] = "; ".join(reasons) if reasons else None
    return out


def _require_runtime() -> dict:
    st = runtime_status()
    if not st["ok"]:
        raise BackendUnavailable(f"backend 'trt' cannot build or run TensorRT engines here: {st['reason']}", INSTALL_HINT)
    return st


def default_cache_dir(cache_dir: str = "") -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("OPTKIT_CACHE_DIR")
    return Path(base).expanduser() / "trt" if base else Path.home() / ".cache" / "optkit" / "trt"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "gpu"


def shared_timing_cache(trt_version: str, gpu: str, cache_dir: str = "") -> Path:
    """Timing caches are specific to the device and the TensorRT version: one shared file per pair."""
    return default_cache_dir(cache_dir) / f"timing-trt{trt_version}-{_slug(gpu)}.cache"


# ---------------------------------------------------------------------------------------------------------------
# engine build (TensorRT Python API)
# ---------------------------------------------------------------------------------------------------------------


def _logger(trt):
    class _Log(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(f"{str(severity).split('.')[-1]}: {msg}")

    return _Log()


def _parse_errors(parser, model: onnx.ModelProto | None) -> list[str]:
    nodes = list(model.graph.node) if model is not None else []
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        idx = e.node() if hasattr(e, "node") else -1
        name = e.node_name() if hasattr(e, "node_name") else ""  # TensorRT 10+
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        if (not name or not op) and 0 <= idx < len(nodes):
            name, op = name or nodes[idx].name, op or nodes[idx].op_type
        where = f"node '{name}' ({op}, #{idx})" if name or op else (f"node #{idx}" if idx >= 0 else "the model")
        out.append(f"{where}: {str(e.desc()).strip()}")
    return out


def build_engine(onnx_path, engine_path, profiles=None, *, precision: str | None = None, workspace_mb: int = 1024,
                 timing_cache=TIMING_CACHE_FILE, shared_cache=None, builder_optimization_level: int = 3,
                 tf32: bool = False) -> dict:
    """Build and serialize a TensorRT engine from an ONNX file (strongly typed network, one optimization profile).

    ``profiles``: {input: Profile | (min, opt, max) | 'MIN,OPT,MAX'} for inputs with symbolic dims (required
    for them). ``timing_cache``: a file read before and written after the build (None: no cache);
    ``shared_cache``: a second file (device/version keyed, see ``shared_timing_cache``) read first and updated.
    ``precision`` is only checked against the ONNX. Raises TrtError with the parser's errors (node names) or the
    builder's log; BackendUnavailable where TensorRT or a GPU is missing."""
    st = _require_runtime()
    import tensorrt as trt

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    profs = _as_profiles(profiles)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    if precision is not None and precision != model_precision(proto):
        raise TrtError(f"{onnx_path.name} holds {model_precision(proto)} compute, not {precision}",
                       "a strongly typed engine takes its precision from the ONNX: run the matching -trt recipe")
    log = _logger(trt)
    t0 = time.perf_counter()
    builder = trt.Builder(log)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))  # no flag: strongly typed is the only mode
    parser = trt.OnnxParser(network, log)
    if not parser.parse_from_file(str(onnx_path)):
        errs = _parse_errors(parser, proto)
        raise TrtError(f"TensorRT's ONNX parser rejected {onnx_path.name}: " + "; ".join(errs[:5])
                       + (f"; and {len(errs) - 5} more" if len(errs) > 5 else ""),
                       "fix or exclude the named node (optkit inspect shows the graph)")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if hasattr(config, "builder_optimization_level"):
        config.builder_optimization_level = int(builder_optimization_level)
    tf32_flag = getattr(trt.BuilderFlag, "TF32", None)
    if tf32_flag is not None and not tf32:
        config.clear_flag(tf32_flag)

    dynamic = {}
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if any(int(d) < 0 for d in t.shape):
            dynamic[t.name] = tuple(int(d) for d in t.shape)
    missing = sorted(set(dynamic) - set(profs))
    if missing:
        raise TrtError(f"inputs {missing} have dynamic dims {[list(dynamic[m]) for m in missing]} and no profile",
                       "give profiles {name: 'MIN,OPT,MAX'}")
    if dynamic:
        profile = builder.create_optimization_profile()
        for name in dynamic:
            p = profs[name]
            profile.set_shape(name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)

    cache_info = None
    cache_files = [Path(p) for p in (shared_cache, timing_cache) if p]
    if cache_files:
        blob, source = b"", None
        for f in cache_files:
            if f.is_file() and f.stat().st_size:
                blob, source = f.read_bytes(), f
                break
        cache = config.create_timing_cache(blob)
        if not config.set_timing_cache(cache, False):  # from another device or TensorRT version: start afresh
            cache, source = config.create_timing_cache(b""), None
            config.set_timing_cache(cache, False)
        cache_info = {"reused": str(source) if source else None, "files": [str(f) for f in cache_files]}

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        errs = [m for m in log.messages if m.startswith(("ERROR", "INTERNAL_ERROR"))] or log.messages[-5:]
        raise TrtError(f"TensorRT failed to build the engine for {onnx_path.name}: " + " | ".join(errs[:5]),
                       "see the messages; more workspace_mb or a lower builder_optimization_level can help")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(plan)
    os.replace(tmp, engine_path)
    if cache_files:
        data = bytes(memoryview(config.get_timing_cache().serialize()))
        for f in cache_files:
            try:
                f.parent.mkdir(parents=True, exist_ok=True)
                ftmp = f.with_name(f.name + f".{os.getpid()}.tmp")
                ftmp.write_bytes(data)
                os.replace(ftmp, f)
            except OSError:
                pass  # a read-only shared cache must not fail the build
    return {"engine": str(engine_path), "engine_bytes": engine_path.stat().st_size,
            "build_seconds": round(time.perf_counter() - t0, 3), "tensorrt": trt.__version__, "gpu": st["gpu"],
            "strongly_typed": True, "timing_cache": cache_info,
            "profiles": {n: p.to_dict() for n, p in profs.items() if n in dynamic},
            "warnings": [m for m in log.messages if m.startswith("WARNING")][:20]}


# ---------------------------------------------------------------------------------------------------------------
# runtime: device buffers (torch CUDA tensors, else cuda-python), execute_async_v3, CUDA-event timing
# ---------------------------------------------------------------------------------------------------------------


class _TorchCuda:
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.handle = int(self.stream.cuda_stream)

    def empty(self, shape, dtype: np.dtype):
        t = self.torch
        table = {np.dtype(np.float32): t.float32, np.dtype(np.float16): t.float16, np.dtype(np.int8): t.int8,
                 np.dtype(np.uint8): t.uint8, np.dtype(np.int32): t.int32, np.dtype(np.int64): t.int64,
                 np.dtype(np.bool_): t.bool}
        if dtype not in table:
            raise TrtError(f"engine IO type {dtype} has no torch equivalent", "use float32/float16/int IO")
        return t.empty(tuple(int(d) for d in shape), dtype=table[dtype], device="cuda")

    @staticmethod
    def ptr(buf) -> int:
        return int(buf.data_ptr())

    def upload(self, buf, arr: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.copy_(self.torch.from_numpy(np.ascontiguousarray(arr)))

    def download(self, buf, shape, dtype):
        with self.torch.cuda.stream(self.stream):
            out = buf.reshape(tuple(shape)).cpu()  # ordered after the enqueued work on this stream
        return out.numpy().astype(dtype, copy=False)

    def sync(self) -> None:
        self.stream.synchronize()

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, ev) -> None:
        ev.record(self.stream)

    @staticmethod
    def elapsed_ms(start, end) -> float:
        end.synchronize()
        return float(start.elapsed_time(end))

    def free(self, buf) -> None:
        pass

    def close(self) -> None:
        self.stream = None


class _CudartCuda:
    name = "cuda-python"

    def __init__(self):
        self.rt = _import_cudart()
        self.stream = self._ck(self.rt.cudaStreamCreate())
        self.handle = int(self.stream)
        self._events = []

    def _ck(self, res):
        err, *vals = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            _, msg = self.rt.cudaGetErrorString(err)
            raise TrtError(f"CUDA error {int(err)}: {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}",
                           "check the GPU and driver (nvidia-smi)")
        return vals[0] if len(vals) == 1 else (tuple(vals) if vals else None)

    def empty(self, shape, dtype: np.dtype):
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        return {"ptr": self._ck(self.rt.cudaMalloc(nbytes)), "nbytes": nbytes}

    @staticmethod
    def ptr(buf) -> int:
        return int(buf["ptr"])

    def upload(self, buf, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ck(self.rt.cudaMemcpyAsync(buf["ptr"], arr.ctypes.data, arr.nbytes, kind, self.stream))
        buf["host"] = arr  # kept alive until the next sync

    def download(self, buf, shape, dtype):
        out = np.empty(tuple(shape), dtype=dtype)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ck(self.rt.cudaMemcpyAsync(out.ctypes.data, buf["ptr"], out.nbytes, kind, self.stream))
        self.sync()
        return out

    def sync(self) -> None:
        self._ck(self.rt.cudaStreamSynchronize(self.stream))

    def event(self):
        ev = self._ck(self.rt.cudaEventCreate())
        self._events.append(ev)
        return ev

    def record(self, ev) -> None:
        self._ck(self.rt.cudaEventRecord(ev, self.stream))

    def elapsed_ms(self, start, end) -> float:
        self._ck(self.rt.cudaEventSynchronize(end))
        return float(self._ck(self.rt.cudaEventElapsedTime(start, end)))

    def free(self, buf) -> None:
        if buf.get("ptr") is not None:
            self.rt.cudaFree(buf["ptr"])
            buf["ptr"] = None

    def close(self) -> None:
        for ev in self._events:
            self.rt.cudaEventDestroy(ev)
        self._events = []
        if self.stream is not None:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None


def _cuda(api: str | None):
    if api == "torch":
        return _TorchCuda()
    if api == "cuda-python":
        return _CudartCuda()
    raise BackendUnavailable("backend 'trt' has no CUDA API for device buffers (torch with CUDA, or cuda-python)",
                             "pip install cuda-python")


class TrtSession:
    """A deserialized engine: ``run(feeds)`` copies inputs to the GPU, ``execute_async_v3``, copies outputs back.

    ``time_ms(feed, runs)`` measures the engine alone (inputs already on the device) with CUDA events."""

    def __init__(self, plan: bytes, source: str = "", api: str | None = None):
        import tensorrt as trt

        self.trt = trt
        self.source = source
        self._log = _logger(trt)
        self.runtime = trt.Runtime(self._log)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise TrtError(f"TensorRT cannot deserialize {source or 'the engine'}: " + " | ".join(self._log.messages[-3:]),
                           "engines are tied to the TensorRT version and GPU that built them: rebuild it here")
        self.context = self.engine.create_execution_context()
        self.cuda = _cuda(api)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._dtypes = {}
        for n in names:
            try:
                self._dtypes[n] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
            except (TypeError, KeyError, ValueError):
                raise TrtError(f"engine tensor {n!r} has type {self.engine.get_tensor_dtype(n)}, which numpy cannot hold",
                               "keep float32/float16/int IO (fp16 pass: keep_io_types: true)") from None
        shape = lambda n: tuple(int(d) if int(d) >= 0 else None for d in self.engine.get_tensor_shape(n))  # noqa: E731
        self.inputs = [TensorSpec(n, self._dtypes[n].name, shape(n)) for n in names if is_in[n]]
        self.outputs = [TensorSpec(n, self._dtypes[n].name, shape(n)) for n in names if not is_in[n]]
        self._profile = {s.name: tuple(tuple(int(v) for v in d) for d in self.engine.get_tensor_profile_shape(s.name, 0))
                         for s in self.inputs if None in s.shape}
        self._bufs: dict[str, tuple[tuple, object]] = {}

    def _buffer(self, name: str, shape: tuple):
        cur = self._bufs.get(name)
        if cur is None or cur[0] != shape:
            if cur is not None:
                self.cuda.free(cur[1])
            cur = (shape, self.cuda.empty(shape, self._dtypes[name]))
            self._bufs[name] = cur
            self.context.set_tensor_address(name, self.cuda.ptr(cur[1]))
        return cur[1]

    def _bind(self, feeds: dict[str, np.ndarray]) -> dict[str, tuple]:
        want = {s.name for s in self.inputs}
        if set(feeds) != want:
            raise InputError(f"TensorRT engine inputs are {sorted(want)}, the feed has {sorted(feeds)}",
                             "name the arrays after the model inputs")
        for s in self.inputs:
            arr = np.ascontiguousarray(feeds[s.name], dtype=self._dtypes[s.name])
            if s.name in self._profile:
                mn, _, mx = self._profile[s.name]
                if len(arr.shape) != len(mn) or any(not a <= d <= c for a, d, c in zip(mn, arr.shape, mx)):
                    raise InputError(f"feed shape {list(arr.shape)} for {s.name!r} is outside the engine's profile "
                                     f"(min {list(mn)}, max {list(mx)})",
                                     "rebuild with backend_options.profiles covering it, or feed a shape in range")
            if not self.context.set_input_shape(s.name, tuple(arr.shape)):
                raise InputError(f"TensorRT rejected shape {list(arr.shape)} for input {s.name!r}",
                                 f"the engine expects {list(s.shape)}")
            self.cuda.upload(self._buffer(s.name, tuple(arr.shape)), arr)
        shapes = {}
        for o in self.outputs:
            shp = tuple(int(d) for d in self.context.get_tensor_shape(o.name))
            if any(d < 0 for d in shp):
                raise TrtError(f"output {o.name!r} has a data-dependent shape {list(shp)}",
                               "optkit's TensorRT runtime needs output shapes known from the input shapes")
            self._buffer(o.name, shp)
            shapes[o.name] = shp
        return shapes

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.cuda.handle):
            raise TrtError("TensorRT execute_async_v3 failed: " + " | ".join(self._log.messages[-3:]),
                           "check the feed shapes and the GPU")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = self._bind(feeds)
        self._execute()
        out = {o.name: self.cuda.download(self._bufs[o.name][1], shapes[o.name], self._dtypes[o.name])
               for o in self.outputs}
        self.cuda.sync()
        return out

    def time_ms(self, feed: dict[str, np.ndarray], runs: int = 100, warmup: int = 10) -> list[float]:
        """Per-run GPU latency (ms) of the engine alone, measured with CUDA events on its stream."""
        self._bind(feed)
        for _ in range(warmup):
            self._execute()
        self.cuda.sync()
        times = []
        for _ in range(runs):
            start, end = self.cuda.event(), self.cuda.event()
            self.cuda.record(start)
            self._execute()
            self.cuda.record(end)
            times.append(self.cuda.elapsed_ms(start, end))
        return times

    def close(self) -> None:
        if getattr(self, "cuda", None) is not None:
            try:
                self.cuda.sync()
            except Exception:
                pass
            for _, buf in self._bufs.values():
                self.cuda.free(buf)
            self._bufs = {}
            self.cuda.close()
            self.cuda = None
        self.context = self.engine = self.runtime = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------------------------------------------


class TrtBackend(Backend):
    name = "trt"
    doc = "NVIDIA TensorRT engine (strongly typed network, explicit QDQ INT8 / FP16)"
    Options = TrtOptions

    def check(self) -> None:
        """Never raises: without TensorRT or a GPU, compile() still writes the TensorRT-ready ONNX and the
        engine-build command (and says no engine was built); load() is what refuses. See ``runtime_status``."""

    def status(self) -> dict:
        return runtime_status()

    def compile(self, model_path: Path, out_dir: Path, options: TrtOptions | None = None, threads: int = 1,
                shapes: dict | None = None) -> dict:
        options = options or TrtOptions()
        model_path, out_dir = Path(model_path), Path(out_dir)
        model = load_model(model_path, check=False)
        ready, changes = prepare_trt_onnx(model)
        problems = check_trt_model(ready)
        if problems:
            raise TrtError(f"the model is not TensorRT-ready ({len(problems)} problem(s)): " + "; ".join(problems[:4])
                           + (f"; and {len(problems) - 4} more" if len(problems) > 4 else ""),
                           "use the int8-trt / fp16-trt recipe (symmetric S8 QDQ, per-channel weights, format qdq)")
        inputs, _ = signature(ready)
        profiles = derive_profiles(inputs, shapes, options.profiles, options.max_batch_multiple)
        precision = model_precision(ready)
        out_dir.mkdir(parents=True, exist_ok=True)
        if changes:
            save_model(ready, out_dir / TRT_ONNX_FILE)
            onnx_rel = TRT_ONNX_FILE
        else:
            onnx_rel = os.path.relpath(model_path.resolve(), out_dir.resolve())
        cache = TIMING_CACHE_FILE if options.timing_cache else None
        cmd = build_command(onnx_rel, ENGINE_FILE, profiles, precision, options.workspace_mb, cache,
                            builder_optimization_level=options.builder_optimization_level, tf32=options.tf32)
        st = runtime_status()
        info = {
            "backend": "trt", "onnx": onnx_rel, "onnx_changes": changes, "precision": precision, "strongly_typed": True,
            "layout_check": "passed", "profiles": {n: p.to_dict() for n, p in profiles.items()},
            "command": cmd, "command_line": " ".join(shlex.quote(a) for a in cmd),
            "tensorrt": st["tensorrt"], "gpu": st["gpu"],
            "build": {"onnx": onnx_rel, "engine": ENGINE_FILE, "timing_cache": cache, "workspace_mb": options.workspace_mb,
                      "builder_optimization_level": options.builder_optimization_level, "tf32": options.tf32,
                      "precision": precision},
        }
        if st["ok"]:
            shared = shared_timing_cache(st["tensorrt"], st["gpu"], options.cache_dir) if options.timing_cache else None
            built = build_engine(out_dir / onnx_rel, out_dir / ENGINE_FILE, profiles, precision=precision,
                                 workspace_mb=options.workspace_mb, timing_cache=(out_dir / cache) if cache else None,
                                 shared_cache=shared, builder_optimization_level=options.builder_optimization_level,
                                 tf32=options.tf32)
            info.update({"engine": ENGINE_FILE, "engine_built": True, "reason": None,
                         "engine_bytes": built["engine_bytes"], "build_seconds": built["build_seconds"],
                         "timing_cache": built["timing_cache"], "trt_warnings": built["warnings"]})
            status_line = f"The engine was built here: {ENGINE_FILE} (TensorRT {st['tensorrt']}, {st['gpu']})."
            info["message"] = (f"TensorRT engine built: compiled/{ENGINE_FILE} ({precision}, TensorRT {st['tensorrt']} on "
                               f"{st['gpu']}, {built['build_seconds']:.1f} s)")
        else:
            if options.require_engine:
                raise BackendUnavailable(f"backend 'trt' cannot build the engine here: {st['reason']}", INSTALL_HINT)
            info.update({"engine": None, "engine_built": False, "reason": st["reason"]})
            status_line = f"No engine was built here: {st['reason']}."
            info["message"] = (f"no TensorRT engine was built: {st['reason']}. The TensorRT-ready ONNX and the build "
                               f"command are in compiled/ ({SCRIPT_FILE}, {README_FILE}); run it on a machine with "
                               "TensorRT >= 10 and an NVIDIA GPU")
        py = _python_call(onnx_rel, profiles, precision, options)
        info["files"] = ([TRT_ONNX_FILE] if changes else []) + _write_build_files(
            out_dir, cmd, py, profiles, precision, status_line, changes) + ([ENGINE_FILE] if info["engine_built"] else [])
        info["python_call"] = py
        return info

    def load(self, path: Path, threads: int = 1, options: TrtOptions | None = None,
             shapes: dict | None = None) -> TrtSession:
        """An engine (.plan/.engine), or an ONNX file: an artifact's compiled/engine.plan when it exists, else an
        engine built now (profiles from the artifact's manifest when there is one) and cached in cache_dir."""
        st = _require_runtime()
        options = options or TrtOptions()
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path} not found", "pass an engine (.plan), an ONNX file or an artifact's model.onnx")
        if path.suffix in (".plan", ".engine", ".trt"):
            return TrtSession(path.read_bytes(), str(path), st["cuda_api"])
        spec = self._artifact_spec(path)
        if spec is not None:
            engine = path.parent / "compiled" / (spec.get("engine") or ENGINE_FILE)
            if engine.is_file():
                return TrtSession(engine.read_bytes(), str(engine), st["cuda_api"])
        return self._build_cached(path, spec, options, st)

    @staticmethod
    def _artifact_spec(path: Path) -> dict | None:
        man = path.parent / "manifest.json"
        if not man.is_file():
            return None
        try:
            data = json.loads(man.read_text())
        except (OSError, ValueError):
            return None
        if data.get("output", {}).get("path") != path.name or (data.get("backend") or {}).get("backend") != "trt":
            return None
        return data["backend"]

    def _build_cached(self, path: Path, spec: dict | None, options: TrtOptions, st: dict) -> TrtSession:
        src = path
        if spec is not None and (spec.get("onnx_changes") or []):
            cand = path.parent / "compiled" / spec.get("onnx", TRT_ONNX_FILE)
            if cand.is_file():
                src = cand
        model = load_model(src, check=False)
        ready, changes = prepare_trt_onnx(model)
        problems = check_trt_model(ready)
        if problems:
            raise TrtError(f"{path.name} is not TensorRT-ready: " + "; ".join(problems[:4]),
                           "optimize it with the int8-trt / fp16-trt recipe first")
        inputs, _ = signature(ready)
        if spec is not None and spec.get("profiles"):
            profiles = _profiles_from_json(spec["profiles"])
        else:
            profiles = derive_profiles(inputs, None, options.profiles, options.max_batch_multiple)
        cache_dir = default_cache_dir(options.cache_dir)
        key = hashlib.sha256(json.dumps(
            {"onnx": sha256_of(src), "changes": changes, "profiles": {n: p.to_dict() for n, p in profiles.items()},
             "trt": st["tensorrt"], "gpu": st["gpu"], "ws": options.workspace_mb, "lvl": options.builder_optimization_level,
             "tf32": options.tf32}, sort_keys=True).encode()).hexdigest()[:24]
        engine = cache_dir / "engines" / f"{key}.plan"
        if not engine.is_file():
            with tempfile.TemporaryDirectory(prefix="optkit-trt-") as d:
                onnx_file = src
                if changes:
                    onnx_file = save_model(ready, Path(d) / TRT_ONNX_FILE)
                shared = shared_timing_cache(st["tensorrt"], st["gpu"], options.cache_dir) if options.timing_cache else None
                build_engine(onnx_file, engine, profiles, workspace_mb=options.workspace_mb, timing_cache=None,
                             shared_cache=shared, builder_optimization_level=options.builder_optimization_level,
                             tf32=options.tf32)
        return TrtSession(engine.read_bytes(), str(engine), st["cuda_api"])


__all__ = ["TrtBackend", "TrtOptions", "TrtSession", "TrtError", "Profile", "parse_shape", "parse_profile",
           "derive_profiles", "check_trt_qdq", "check_trt_model", "prepare_trt_onnx", "model_precision",
           "build_command", "build_engine", "runtime_status", "shared_timing_cache", "default_cache_dir"]
