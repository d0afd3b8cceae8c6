"""INT8 quantization through onnxruntime.quantization: dynamic, and static QDQ/QOperator with calibration.

optkit handles what a bare ``quantize_dynamic``/``quantize_static`` call leaves to the user: symbolic shape
inference (torch-exported and ORT-fused transformers otherwise fail type inference), data types chosen for
the host ISA, calibration feeds from ``--data``, and a count of what was actually quantized.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..errors import PassError, Unsupported
from ..hw import int8_choice
from ..model import EXTERNAL_DATA_THRESHOLD, float16_compute, opsets, save_model, tensor_bytes, toposort
from . import Context, Pass, PassConfig, PassResult, option, register_pass

_QTYPES = {"int8": "QInt8", "uint8": "QUInt8"}


def prepare_for_quantization(model: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """Opset >= 13 (per-channel Q/DQ needs the ``axis`` attribute), then shape/type inference that also
    understands com.microsoft fused ops (what quant_pre_process does)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    fp16 = float16_compute(model)
    if fp16:  # onnxruntime.quantization calibrates and quantizes float32 tensors only
        raise Unsupported(f"INT8 quantization needs float32 weights, but {len(fp16)} node(s) compute on float16 weights "
                        f"directly (e.g. {fp16[0]})", "use the fp16-ort or fp32-ort recipe, or export the model in float32")
    flow = [f"{n.op_type} {n.name or n.output[0]!r}" for n in model.graph.node if n.op_type in ("If", "Loop", "Scan")]
    if flow:
        notes.append(f"subgraphs of {', '.join(flow[:3])}{' ...' if len(flow) > 3 else ''} are left in float "
                     "(the main graph is quantized)")
    opset = opsets(model).get("ai.onnx", 13)
    if opset < 13:
        try:
            model = onnx.version_converter.convert_version(model, 13)
        except Exception as e:
            raise PassError(f"opset {opset} model could not be upgraded to opset 13 for quantization ({type(e).__name__})",
                            "re-export the model with opset >= 13") from e
        notes.append(f"upgraded opset {opset} -> 13 (per-channel QuantizeLinear/DequantizeLinear need it)")

    try:
        out = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
        if out is not None:
            notes.append("pre-processing: symbolic shape inference")
            return out
    except Exception as e:
        notes.append(f"pre-processing: symbolic shape inference failed ({type(e).__name__}), used onnx shape inference")
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        notes.append("pre-processing: onnx shape inference failed too; relying on DefaultTensorType=float")
        return model


def resolve_types(activation: str, weight: str, reduce_range: str, ctx: Context) -> tuple[str, str, bool, str]:
    host = int8_choice(ctx.cpu or None)
    act = host["activation"] if activation == "auto" else activation
    wt = host["weight"] if weight == "auto" else weight
    rr = host["reduce_range"] if reduce_range == "auto" else reduce_range == "yes"
    why = host["reason"] if "auto" in (activation, weight, reduce_range) else "set in the recipe"
    return act, wt, rr, why


def quantized_summary(before: onnx.ModelProto, after: onnx.ModelProto) -> str:
    ops = collections.Counter(n.op_type for n in after.graph.node)
    interesting = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                   "QLinearConv", "QLinearMatMul", "DynamicQuantizeMatMul", "QAttention", "QGemm",
                   "MatMulIntegerToFloat", "QLinearAdd")
    parts = [f"{k}x{ops[k]}" for k in interesting if ops.get(k)]
    return "quantized ops: " + (", ".join(parts) if parts else "none (nothing matched op_types)")


@contextlib.contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs 'Please consider pre-processing' on the root logger even after optkit
    ran the pre-processing (it looks for a marker only its own script writes); keep that out of user output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _run_quantizer(fn, model: onnx.ModelProto, **kwargs) -> onnx.ModelProto:
    # entropy/percentile calibrators print progress to stdout, which would corrupt `--format json` output
    # np.errstate: ORT's quant_utils divides by a zero range on constant tensors (its own result is fine) and leaked
    # "RuntimeWarning: invalid value encountered in divide" into every auto-ort run
    with tempfile.TemporaryDirectory(prefix="optkit-q-") as d, _quiet_root_logger(), \
            contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore", invalid="ignore"):
        src, dst = Path(d) / "in.onnx", Path(d) / "out.onnx"
        big = tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD
        save_model(model, src)
        fn(str(src), str(dst), use_external_data_format=big, **kwargs)
        out = onnx.load(str(dst), load_external_data=True)
    # The value_info left by pre-processing (symbolic dims) made ORT pick slower kernels: a MiniLM-shaped
    # dynamic-INT8 encoder ran 15.3 ms with it and 11.9 ms without. ORT re-infers shapes when it loads.
    del out.graph.value_info[:]
    return toposort(out)  # ORT's sort ignores the outer-scope values If/Loop/Scan bodies read


def _unique(configs: list) -> list:
    out = []
    for c in configs:
        if c not in out:
            out.append(c)
    return out


def _with_excluded(p: Pass, nodes: list[str]) -> Pass:
    """The same pass with ``nodes`` added to exclude_nodes (kept in float)."""
    cfg = p.config
    more = [n for n in nodes if n not in cfg.exclude_nodes]
    return type(p)(dataclasses.replace(cfg, exclude_nodes=type(cfg.exclude_nodes)([*cfg.exclude_nodes, *more])))


@dataclass(frozen=True)
class DynamicConfig(PassConfig):
    per_channel: bool = option(True, "per-output-channel weight scales (kept cosine ~0.993 vs ~0.97 per-tensor on MiniLM)")
    weight_type: str = option("auto", "weight INT8 type; auto = chosen for the host ISA", choices=("auto", "int8", "uint8"))
    reduce_range: str = option("auto", "7-bit weights (for non-VNNI x86); auto = chosen for the host", choices=("auto", "yes", "no"))
    op_types: tuple[str, ...] = option((), "op types to quantize; empty = ORT's defaults (MatMul, Attention, Gather, ...) minus skip_op_types")
    skip_op_types: tuple[str, ...] = option(("Conv",), "op types left in float when op_types is empty; dynamic Conv (ConvInteger) "
                                      "ran the digits CNN 4x slower than FP32 here: use int8-static for CNNs")
    exclude_nodes: tuple[str, ...] = option((), "node names kept in float")
    # 0.75 by default: int8-dynamic-ort on all-MiniLM-L6-v2 (AVX2, reduce_range) min pooled cosine 0.987 -> 0.996
    # (0.994 / 0.995 / 0.996 / 0.995 at alpha 0.65 / 0.7 / 0.75 / 0.8, the same order with calibration and eval sets
    # swapped), paraphrase-MiniLM-L3 0.995 -> 0.997 (flat over 0.7-0.8); speed vs unsmoothed 0.98x [0.97, 1.01], a tie
    # (one Mul per smoothed input). A group is smoothed only where it lowers the simulated error.
    # benchmarks/results/minilm_dynamic-2026-12-01-avx2_(no_VNNI).md
    smooth_alpha: float = option(0.75, "SmoothQuant-style migration strength for MatMul inputs with outlier channels, "
                                 "scales from --data (optkit/passes/smoothing.py); 0 = off", min=0, max=1)


def _dynamic_excludes(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """quantize_dynamic first rewrites each Gemm 'G' (alpha = beta = 1, transA = 0) into a MatMul 'G_MatMul' (+ Add) and
    matches nodes_to_exclude against the new names: a Gemm kept in float is named both ways (by its name alone it was
    quantized anyway, so the per-node float fallback had no effect on Gemm graphs such as simplified MiniLM)."""
    gemms = {n.name for n in model.graph.node if n.op_type == "Gemm" and n.name}
    return [x for n in names for x in ((n, f"{n}_MatMul") if n in gemms else (n,))]


def _dynamic_op_types(cfg: DynamicConfig) -> list[str]:
    if cfg.op_types:
        return list(cfg.op_types)
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return [op for op in IntegerOpsRegistry if op not in cfg.skip_op_types]


@register_pass
class Int8Dynamic(Pass):
    name = "int8-dynamic"
    doc = ("Dynamic INT8 (weights INT8 offline, activations quantized at run time); no calibration data needed "
           "(samples, when given, set the activation smoothing of outlier channels).")
    Config = DynamicConfig
    exact = False

    # the tolerance search (optkit.search.protocols.Configurable)
    def search_space(self) -> list[DynamicConfig]:
        """The recipe's configuration; activation smoothing at other strengths (all-MiniLM-L6, AVX2: min pooled cosine
        0.993-0.996 over alpha 0.5-0.85, 0.987 without); U8U8 (8-bit weights without VPMADDUBSW saturation: min
        0.996-0.998 with smoothing on MiniLM but 1.5x instead of 2.05x vs FP32 on AVX2); the other weight
        granularity."""
        base, rep = self.config, dataclasses.replace
        default = type(base)().smooth_alpha
        out = [base] + [rep(base, smooth_alpha=a) for a in ((0.85, 0.5, 0.0) if base.smooth_alpha > 0 else (default,))]
        if base.weight_type != "uint8":
            out.append(rep(base, weight_type="uint8", smooth_alpha=base.smooth_alpha or default))
        out.append(rep(base, per_channel=not base.per_channel))
        return _unique(out)

    def restrict(self, nodes: list[str]) -> "Int8Dynamic":
        return _with_excluded(self, nodes)

    def alternative(self) -> None:
        return None

    @property
    def reads_samples(self) -> bool:  # the smoothing scales come from the samples (part of the pass-cache key then)
        return self.config.smooth_alpha > 0

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        cfg: DynamicConfig = self.config
        notes: list[str] = []
        _, wt, rr, why = resolve_types("auto", cfg.weight_type, cfg.reduce_range, ctx)
        notes.append(f"weights {wt}{' reduce_range' if rr else ''}, per_channel={cfg.per_channel} ({why})")
        ops = _dynamic_op_types(cfg)
        from .smoothing import smooth_for_dynamic

        prepared = prepare_for_quantization(smooth_for_dynamic(model, cfg, ctx, wt, rr, ops, notes), notes)
        try:
            out = _run_quantizer(
                quantize_dynamic, prepared, per_channel=cfg.per_channel, reduce_range=rr,
                weight_type=getattr(QuantType, _QTYPES[wt]), op_types_to_quantize=ops,
                nodes_to_exclude=_dynamic_excludes(prepared, cfg.exclude_nodes) or None,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True})
        except Exception as e:
            raise PassError(f"int8-dynamic: onnxruntime.quantization failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                            "exclude the failing node with exclude_nodes, or report the model") from e
        notes.append(quantized_summary(model, out))
        skipped = sorted({n.op_type for n in model.graph.node} & set(cfg.skip_op_types)) if not cfg.op_types else []
        if skipped:
            notes.append(f"left in float: {', '.join(skipped)} (skip_op_types)")
        return PassResult(out, notes=notes, metrics={"int8": {"pass": self.name, "activation": "uint8 (dynamic)",
                                                              "weight": wt, "reduce_range": rr, "why": why}})


@dataclass(frozen=True)
class StaticConfig(PassConfig):
    format: str = option("qdq", "QDQ (QuantizeLinear/DequantizeLinear pairs, what TensorRT and ORT both read) or QOperator",
                         choices=("qdq", "qoperator"))
    calibration: str = option("minmax", "how activation ranges are set from the calibration data",
                              choices=("minmax", "entropy", "percentile"))
    percentile: float = option(99.999, "percentile for calibration=percentile", gt=0, max=100)
    per_channel: bool = option(True, "per-output-channel weight scales")
    activation_type: str = option("auto", "activation INT8 type; auto = uint8 on x86 (U8S8 fast path)",
                                  choices=("auto", "int8", "uint8"))
    weight_type: str = option("auto", "weight INT8 type; auto = int8", choices=("auto", "int8", "uint8"))
    reduce_range: str = option("auto", "7-bit weights (for non-VNNI x86); auto = chosen for the host", choices=("auto", "yes", "no"))
    symmetric_activations: bool = option(False, "zero-point 0 activations (TensorRT requires symmetric INT8)")
    symmetric_weights: bool = option(True, "zero-point 0 weights")
    max_samples: int = option(128, "calibration feeds used at most", min=1)
    op_types: tuple[str, ...] = option((), "op types to quantize; empty = ORT's defaults")
    exclude_nodes: tuple[str, ...] = option((), "node names kept in float")


_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
CALIB_CHUNK = 16  # feeds per collect_data call: what the calibrator holds in memory at once
_SESSION_CALIB: list = []  # a per-process directory for calibration ranges when no pass cache is configured


def _calib_dir(ctx: Context) -> Path:
    cache = getattr(ctx, "cache", None)
    if cache is not None and getattr(cache, "enabled", False):
        return Path(cache.root) / "calibration"
    if not _SESSION_CALIB:
        import atexit
        import shutil

        d = tempfile.mkdtemp(prefix="optkit-calib-")
        atexit.register(shutil.rmtree, d, True)
        _SESSION_CALIB.append(Path(d))
    return _SESSION_CALIB[0]


def _calib_key(model: onnx.ModelProto, cfg: "StaticConfig", act: str, feeds_digest: str) -> str:
    """What the activation ranges depend on: the model, the method (and percentile), the activation type, the feeds.
    Not per_channel, format, reduce_range, weight type, symmetry, op_types or exclude_nodes: configurations that
    differ only there reuse one calibration (every quantizable tensor is calibrated, a superset of what each uses)."""
    import hashlib
    import json

    import onnxruntime

    from ..model import model_digest

    parts = {"model": model_digest(model), "method": cfg.calibration, "act": act, "feeds": feeds_digest,
             "percentile": cfg.percentile if cfg.calibration == "percentile" else None, "chunk": CALIB_CHUNK,
             "ort": onnxruntime.__version__, "v": 2}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def calibrate(prepared: onnx.ModelProto, cfg: "StaticConfig", feeds, progress, path: Path) -> None:
    """Activation ranges of every quantizable tensor into ``path`` (ORT's calibration-cache JSON), streaming the feeds
    through ``create_calibrator(...).collect_data`` CALIB_CHUNK at a time: the histogram calibrators (entropy,
    percentile) keep every intermediate output of one collect_data call until it ends, so one call over all feeds
    held feeds x activations in memory; per chunk it holds CALIB_CHUNK x activations and merges the histograms."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry) | set(cfg.op_types))
    extra = {"percentile": cfg.percentile} if cfg.calibration == "percentile" else {}
    with tempfile.TemporaryDirectory(prefix="optkit-cal-") as d, _quiet_root_logger(), \
            contextlib.redirect_stdout(io.StringIO()):
        src = Path(d) / "model.onnx"
        big = tensor_bytes(prepared) >= EXTERNAL_DATA_THRESHOLD
        save_model(prepared, src)  # (copies before externalizing a big model's weights: `prepared` is used again)
        calibrator = create_calibrator(src, op_types, augmented_model_path=str(Path(d) / "augmented.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, _METHODS[cfg.calibration]),
                                       use_external_data_format=big, extra_options=extra)
        if cfg.calibration != "minmax":
            calibrator.infer_session = _ClippedSession(calibrator.infer_session)
        chunk: list = []
        seen = 0
        for feed in feeds:
            chunk.append(feed)
            if len(chunk) == CALIB_CHUNK:
                calibrator.collect_data(_ListReader(chunk, progress))
                seen += len(chunk)
                chunk = []
        if chunk:
            calibrator.collect_data(_ListReader(chunk, progress))
            seen += len(chunk)
        if not seen:
            raise PassError("int8-static: no calibration feeds", "pass --data with representative inputs")
        ranges = calibrator.compute_data()
        del calibrator
    save_tensors_data(ranges, path)  # ORT writes a temporary file and renames it: concurrent runs are safe


class _ClippedSession:
    """The calibrator's session with float outputs clipped to +-finfo(float32).max / 4. ORT's histogram collector
    spans (-t, t) with t = max |x|: an additive attention mask of float32 min (-3.4e38, what torch exports) makes that
    span overflow to inf and entropy calibration fail ('Too many bins for data range'). A range that wide is useless
    for INT8 anyway; clipped, the other tensors calibrate normally."""

    LIMIT = float(np.finfo(np.float32).max) / 4

    def __init__(self, sess):
        self._sess = sess

    def __getattr__(self, name):
        return getattr(self._sess, name)

    def run(self, *args, **kwargs):
        return [np.clip(o, -self.LIMIT, self.LIMIT) if isinstance(o, np.ndarray) and o.dtype.kind == "f" else o
                for o in self._sess.run(*args, **kwargs)]


class _ListReader:
    def __init__(self, feeds, progress):
        self._it, self._progress = iter(feeds), progress

    def get_next(self):
        feed = next(self._it, None)
        if feed is not None:
            self._progress.advance()
        return feed


def _usable_ranges(path: Path) -> bool:
    """An earlier calibration's ranges at ``path`` that ORT can read; a corrupt file is removed (and recomputed)."""
    if not path.is_file():
        return False
    from onnxruntime.quantization.calibrate import load_tensors_data

    try:
        load_tensors_data(path)
        return True
    except Exception:
        with contextlib.suppress(OSError):
            path.unlink()
        return False


@register_pass
class Int8Static(Pass):
    name = "int8-static"
    doc = "Static INT8 with calibrated activation ranges (QDQ by default), types chosen for the host ISA."
    Config = StaticConfig
    exact = False

    # the tolerance search (optkit.search.protocols.Configurable)
    def search_space(self) -> list[StaticConfig]:
        """The recipe's configuration first; then compute ops only (Softmax / LayerNorm / residual Add / GELU /
        pooling inputs stay in float, where outlier-heavy graphs such as transformers lose most under static INT8,
        while the MatMul/Conv/Gemm work still runs in INT8), other calibrations, the other weight granularity and the
        other format."""
        base, rep = self.config, dataclasses.replace
        out = [base]
        if not base.op_types:
            out.append(rep(base, op_types=type(base.op_types)(["Conv", "MatMul", "Gemm"])))
        out += [rep(base, calibration="entropy"), rep(base, calibration="percentile", percentile=99.999),
                rep(base, calibration="percentile", percentile=99.99), rep(base, per_channel=not base.per_channel),
                rep(base, format="qoperator" if base.format == "qdq" else "qdq")]
        return _unique(out)

    def restrict(self, nodes: list[str]) -> "Int8Static":
        return _with_excluded(self, nodes)

    def alternative(self) -> Pass:
        """Dynamic INT8 (weights only, activations quantized per run) often holds where static cannot."""
        return Int8Dynamic()

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        cfg: StaticConfig = self.config
        if ctx.samples is None or not len(ctx.samples):
            raise PassError("int8-static needs calibration samples", "pass --data with representative inputs")
        notes: list[str] = []
        act, wt, rr, why = resolve_types(cfg.activation_type, cfg.weight_type, cfg.reduce_range, ctx)
        notes.append(f"activations {act} x weights {wt}{' reduce_range' if rr else ''}, per_channel={cfg.per_channel} ({why})")
        feeds = ctx.samples.feeds[: cfg.max_samples]
        notes.append(f"calibration: {cfg.calibration} on {len(feeds)} feed(s) from {ctx.samples.source}"
                     + (" - SYNTHETIC, not representative" if ctx.samples.synthetic else ""))
        from ..data import feeds_digest

        key = _calib_key(model, cfg, act, feeds_digest(ctx.samples.head(cfg.max_samples)))
        prepared = prepare_for_quantization(model, notes)
        extra = {"ActivationSymmetric": cfg.symmetric_activations, "WeightSymmetric": cfg.symmetric_weights,
                 "DefaultTensorType": onnx.TensorProto.FLOAT}
        cal_path = _calib_dir(ctx) / f"{key}.json"
        reused = _usable_ranges(cal_path)
        private = Path(tempfile.mkdtemp(prefix="optkit-ranges-")) / "ranges.json"
        try:
            if not reused:
                ctx.progress.start(f"calibrating ({cfg.calibration})", total=len(feeds))
                try:
                    calibrate(prepared, cfg, feeds, ctx.progress, cal_path)
                finally:
                    ctx.progress.stop()
            # a private copy: a concurrent run's LRU pruning may remove the shared file while ORT reads it
            shutil.copyfile(cal_path, private)
            out = _run_quantizer(
                quantize_static, prepared, calibration_data_reader=None, calibration_cache_path=str(private),
                quant_format=QuantFormat.QDQ if cfg.format == "qdq" else QuantFormat.QOperator,
                per_channel=cfg.per_channel, reduce_range=rr,
                activation_type=getattr(QuantType, _QTYPES[act]), weight_type=getattr(QuantType, _QTYPES[wt]),
                calibrate_method=getattr(CalibrationMethod, _METHODS[cfg.calibration]),
                op_types_to_quantize=list(cfg.op_types) or None, nodes_to_exclude=list(cfg.exclude_nodes) or None,
                extra_options=extra)
        except PassError:
            raise
        except Exception as e:
            raise PassError(f"int8-static: onnxruntime.quantization failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                            "try calibration: minmax, exclude the failing node, or report the model") from e
        finally:
            shutil.rmtree(private.parent, ignore_errors=True)
        if reused:
            notes.append("calibration ranges reused (same model, method and feeds as an earlier configuration)")
        notes.append(quantized_summary(model, out))
        return PassResult(out, notes=notes, metrics={"int8": {"pass": self.name, "activation": act, "weight": wt,
                                                              "reduce_range": rr, "why": why}})
