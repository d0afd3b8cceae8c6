"""Quantization of a torch model through Intel Neural Compressor (INC 3.x, ``neural_compressor.torch``), PT2E path.

    from optkit.torch import quantize
    res = quantize(model, example_inputs=(x,), calib_data=[(xb,) for xb in batches])        # static
    res = quantize(model, example_inputs=(x,), calib_data=batches, approach="autotune",
                   eval_fn=lambda m: accuracy(m), tolerance=0.01)                             # autotune
    res.model(x)                   # the converted torch GraphModule (Q/DQ "fake-quant" ops around conv / linear)
    res.to_onnx("model_int8.onnx") # QuantizeLinear / DequantizeLinear graph for ONNX Runtime
    res.info                       # approach, inc_version, config, trials, calib_batches, seconds

How it runs: ``neural_compressor.torch.export.export`` (torch.export, with a dynamic batch dim) ->
``prepare(exported, INT8StaticQuantConfig)`` (inserts observers, folds BatchNorm into Conv) -> calibration ->
``convert`` (replaces observers by ``quantized_decomposed.quantize/dequantize`` pairs). ``autotune`` runs the same
thing once per candidate config (``INT8StaticQuantConfig.get_config_set_for_tuning()``: activation symmetric /
asymmetric x minmax / kl observers) and keeps the first config whose score meets the tolerance, else the best one.

What INC's default static config quantizes here (torch 2.13 + torchao 0.18, x86 CPU, no IPEX): INC maps it onto
torchao's ``X86InductorQuantizer`` with its own specs:

* activations: **uint8, asymmetric, per-tensor**, ``MovingAverageMinMaxObserver`` (INC's "minmax" is a moving
  average, factor 0.01: the first calibration batch sets the range, later batches only nudge it);
* weights: **int8, symmetric, per-channel** (axis 0), min/max; biases stay float (ONNX Conv/Gemm float bias);
* quantized ops: Conv and Linear inputs/weights, and the activations flowing through pooling / flatten (the x86
  quantizer's list); the final Linear's output stays float.

So the default is the U8 activation x S8 weight layout, which is ONNX Runtime's fast path on this CPU (Zen 4,
AVX-512 VNNI; S8S8 runs ~2x slower there). The autotune set also tries ``act_sym=True`` with uint8, i.e. symmetric
uint8 (zero point 128), still U8S8 for ORT. In the exported ONNX the weights stay float initializers followed by
QuantizeLinear -> Clip -> DequantizeLinear (so the file is no smaller than the float one); ORT constant-folds that
to int8 weights and fuses every Conv into QLinearConv (the final Linear stays a float Gemm behind a DequantizeLinear).
Measured on the digits CNN (``optkit.examples.digits``), ORT 1.32, 1 thread: float 1.69 ms vs INC-int8 0.49 ms per
image (batch 32: 81 vs 24 ms), the same as ORT's own ``quantize_static`` U8S8 QDQ (0.50 ms); top-1 99.7% -> 99.4%.

Oddities worth knowing:

* torch.export cannot make the batch dim dynamic from a batch-1 example (it specializes 1); batch-1 example inputs
  are repeated to batch 2 for the export. Every tensor input's dim 0 is taken as the batch dim.
* INC's export puts the user's model in eval mode; optkit restores the original train/eval flags afterwards.
* torch.export'ed GraphModules raise NotImplementedError on ``.eval()``; the float, prepared and quantized graphs
  handed to ``eval_fn`` / ``calib_fn`` / ``QuantResult.model`` get a no-op ``.eval()`` (they were captured in eval
  mode); torchao's ``move_exported_model_to_eval`` is not used because it crashes on converted graphs with Dropout.
* ``to_onnx`` needs opset >= 18: the dynamo exporter writes 18+ (it silently bumps lower requests), onnx's version
  converter cannot bring the graph down (ReduceMean/Relu adapters), and the TorchScript exporter cannot trace it.
* INC's tolerance is relative: a config passes when ``score >= baseline * (1 - tolerance)``, which only makes sense
  for a positive, higher-is-better score (accuracy); ``eval_fn`` must return one.
* When no config meets the tolerance INC just returns the best model and logs; optkit raises
  :class:`optkit.errors.ToleranceMiss` instead, with the best result attached as ``err.result``.
* INC logs at INFO by default (logger ``neural_compressor``), torchao/torch warn on import and export; all of it is
  kept quiet for the duration of the call (Python-level stdout/stderr included: torch.export prints a failing graph
  to stderr), except inside your ``calib_fn`` / ``eval_fn``.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable

from optkit.errors import ExportError, InputError, ToleranceMiss

__all__ = ["quantize", "QuantResult", "APPROACHES"]

APPROACHES = ("static", "autotune")
_INC_HINT = "pip install 'optkit[inc]'"
# the fields of INC's INT8StaticQuantConfig that say what gets quantized how
_CFG_FIELDS = ("w_dtype", "w_sym", "w_granularity", "w_algo", "act_dtype", "act_sym", "act_granularity", "act_algo")


# ---------------------------------------------------------------------------------------------------------------
# keeping INC / torch quiet
# ---------------------------------------------------------------------------------------------------------------


class _Capture(logging.Handler):
    """Keeps INC's WARNING+ messages (to explain a failure) instead of printing them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        try:
            self.messages.append(f"{record.levelname}: {record.getMessage()}")
        except Exception:  # pragma: no cover - a malformed record must not break the call
            pass

    def last_error(self) -> str | None:
        errors = [m for m in self.messages if m.startswith(("ERROR", "CRITICAL"))]
        return errors[-1].split(": ", 1)[1] if errors else None


class _Quiet:
    """Context manager: INC's logger captured, torch/torchao/onnxscript loggers and Python warnings muted, Python-level
    stdout/stderr swallowed. ``loud()`` gives user callbacks their stdout/stderr back."""

    _MUTED = ("torch", "torchao", "onnxscript", "onnx_ir")

    def __enter__(self):
        self.capture = _Capture()
        inc = logging.getLogger("neural_compressor")
        self._inc = (inc, inc.level, list(inc.handlers), inc.propagate)
        inc.handlers = [self.capture]
        inc.setLevel(logging.WARNING)
        inc.propagate = False
        self._levels = []
        names = set(self._MUTED) | {n for n in logging.root.manager.loggerDict if n.startswith(("torch.", "torchao."))}
        for name in names:
            lg = logging.getLogger(name)
            if name in self._MUTED or lg.level:  # children without their own level follow the muted parent
                self._levels.append((lg, lg.level))
                lg.setLevel(logging.CRITICAL)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        self.stdout, self.stderr = sys.stdout, sys.stderr
        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(contextlib.redirect_stdout(io.StringIO()))
        self._redirect.enter_context(contextlib.redirect_stderr(io.StringIO()))  # torch.export prints failures there
        return self

    def __exit__(self, *exc):
        self._redirect.close()
        self._warn.__exit__(*exc)
        for lg, level in reversed(self._levels):
            lg.setLevel(level)
        inc, level, handlers, propagate = self._inc
        inc.handlers = handlers
        inc.setLevel(level)
        inc.propagate = propagate
        return False

    @contextlib.contextmanager
    def loud(self):
        with contextlib.redirect_stdout(self.stdout), contextlib.redirect_stderr(self.stderr):
            yield


def _import_inc():
    """(export, prepare, convert, autotune, TuningConfig, INT8StaticQuantConfig, version); call inside _Quiet."""
    try:
        from neural_compressor.torch.export import export
        from neural_compressor.torch.quantization import (INT8StaticQuantConfig, TuningConfig, autotune, convert,
                                                          prepare)
    except ImportError as e:
        raise InputError(f"optkit.torch.quantize needs Intel Neural Compressor for PyTorch (neural_compressor.torch), "
                         f"which cannot be imported here ({e})", _INC_HINT) from e
    try:
        from neural_compressor.common.version import __version__ as version
    except ImportError:  # pragma: no cover
        version = "unknown"
    return export, prepare, convert, autotune, TuningConfig, INT8StaticQuantConfig, version


def _init_inc_logger():
    """INC configures its logger (INFO, a stderr handler) the first time its logger module is imported; do that
    before muting, so the setup does not undo the muting."""
    try:
        import neural_compressor.common.utils.logger  # noqa: F401
    except ImportError as e:
        raise InputError(f"optkit.torch.quantize needs Intel Neural Compressor (neural-compressor-pt), "
                         f"which cannot be imported here ({e})", _INC_HINT) from e


# ---------------------------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------------------------


def _to_tensor(v):
    import numpy as np
    import torch

    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    return v


def _as_args(item, n_inputs: int, what: str) -> tuple:
    """One calibration item (tensor, array, tuple/list of them) as positional args for the model."""
    import numpy as np
    import torch

    if isinstance(item, (torch.Tensor, np.ndarray)):
        args = (item,)
    elif isinstance(item, (tuple, list)):
        args = tuple(item)
    else:
        raise ValueError(f"{what}: expected a tensor or a tuple of tensors, got {type(item).__name__}")
    if len(args) < n_inputs:
        raise ValueError(f"{what}: has {len(args)} tensor(s) but the model takes {n_inputs} input(s)")
    # extra trailing items (labels from an (x, y) DataLoader) are dropped
    return tuple(_to_tensor(a) for a in args[:n_inputs])


def _batch_spec(example_inputs: tuple, dynamic_batch: bool):
    """(example inputs for torch.export, dynamic_shapes or None). A batch-1 example is repeated to batch 2: torch.export
    specializes a size-1 dim and then refuses to make it dynamic."""
    import torch

    if not dynamic_batch:
        return example_inputs, None
    batch = torch.export.Dim("batch")
    ex, shapes = [], []
    for a in example_inputs:
        if isinstance(a, torch.Tensor) and a.dim() >= 1:
            ex.append(torch.cat([a, a]) if a.shape[0] == 1 else a)
            shapes.append({0: batch})
        else:
            ex.append(a)
            shapes.append(None)
    return tuple(ex), tuple(shapes)


def _config_dict(cfg) -> dict:
    d = {"name": getattr(cfg, "name", type(cfg).__name__)}
    for k in _CFG_FIELDS:
        if hasattr(cfg, k):
            d[k] = getattr(cfg, k)
    return d


def _allow_train_eval(gm):
    """torch.export'ed / PT2E GraphModules raise NotImplementedError on ``.eval()`` / ``.train()``. The graphs here
    were captured in eval mode (INC's export calls ``model.eval()``), so make ``.eval()`` / ``.train(False)`` a no-op
    that returns the model (the usual first line of an eval_fn or calib_fn) and ``.train()`` a clear error.
    (torchao's ``move_exported_model_to_eval`` is not used: its dropout rewrite crashes on converted graphs.)"""
    import types

    def _train(self, mode: bool = True):
        if mode:
            raise NotImplementedError("this PT2E (torch.export) graph was captured in eval mode for post-training "
                                      "quantization; it cannot be switched to training mode")
        return self

    def _eval(self):
        return self

    gm.train = types.MethodType(_train, gm)
    gm.eval = types.MethodType(_eval, gm)
    gm._exported_training = False  # torchao's flag (export_utils._EXPORTED_TRAINING_ATTR): already in eval mode
    return gm


def _qconfig_of(model):
    """The INC config a converted model was quantized with (INC sets ``model.qconfig`` = {algo: config})."""
    mapping = getattr(model, "qconfig", None)
    if isinstance(mapping, dict) and mapping:
        return next(iter(mapping.values()))
    return None


# ---------------------------------------------------------------------------------------------------------------
# result
# ---------------------------------------------------------------------------------------------------------------


class QuantResult:
    """A quantized model: ``model`` (converted torch GraphModule with quantize/dequantize ops, callable) and ``info``
    (approach, inc_version, config, trials, calib_batches, seconds, ...). ``to_onnx`` writes its QDQ ONNX."""

    def __init__(self, model, info: dict, example_inputs: tuple, dynamic_shapes=None):
        self.model = model
        self.info = info
        self._example_inputs = example_inputs
        self._dynamic_shapes = dynamic_shapes

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __repr__(self) -> str:
        cfg = self.info.get("config")
        cfg = {k: v for k, v in cfg.items() if k != "name"} if isinstance(cfg, dict) else cfg
        return f"QuantResult(approach={self.info.get('approach')!r}, config={cfg})"

    def to_onnx(self, path, *, opset: int | None = None, input_names=None, output_names=None) -> Path:
        """``torch.onnx.export(dynamo=True)`` of the quantized model (dynamic batch dim when quantized with
        ``dynamic_batch=True``) to one .onnx file. The graph has QuantizeLinear/DequantizeLinear around Conv/Gemm;
        the file passes ``onnx.checker``. Raises :class:`optkit.errors.ExportError` when the export fails."""
        import onnx
        import torch

        if opset is not None and (not isinstance(opset, int) or opset < 18):
            raise ValueError(f"to_onnx writes ONNX opset 18 or newer (torch's dynamo exporter; the TorchScript "
                             f"exporter cannot trace PT2E models), got opset={opset!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        nbytes = sum(t.numel() * t.element_size() for t in list(self.model.parameters()) + list(self.model.buffers()))
        kwargs: dict[str, Any] = {"dynamo": True, "verbose": False, "external_data": nbytes > 1_800_000_000}
        if opset is not None:
            kwargs["opset_version"] = opset
        if input_names is not None:
            kwargs["input_names"] = list(input_names)
        if output_names is not None:
            kwargs["output_names"] = list(output_names)
        if self._dynamic_shapes is not None:
            kwargs["dynamic_shapes"] = self._dynamic_shapes
        _init_inc_logger()
        with _Quiet():
            try:
                torch.onnx.export(self.model, self._example_inputs, str(path), **kwargs)
            except Exception as e:
                raise ExportError(f"torch.onnx.export of the quantized model failed: "
                                  f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                                  "try another opset, or export the float model and quantize the ONNX with optkit"
                                  ) from e
        proto = onnx.load(str(path), load_external_data=False)
        ops = {n.op_type for n in proto.graph.node}
        if not {"QuantizeLinear", "DequantizeLinear"} <= ops:
            raise ExportError(f"the ONNX export of the quantized model has no QuantizeLinear/DequantizeLinear nodes "
                              f"({path})", "the quantization was lost in the export; check torch/onnxscript versions")
        onnx.checker.check_model(str(path))
        self.info["onnx"] = {"path": str(path), "opset": next((o.version for o in proto.opset_import
                                                               if o.domain in ("", "ai.onnx")), None),
                             "inputs": [i.name for i in proto.graph.input],
                             "outputs": [o.name for o in proto.graph.output],
                             "quantize_linear": sum(n.op_type == "QuantizeLinear" for n in proto.graph.node),
                             "dequantize_linear": sum(n.op_type == "DequantizeLinear" for n in proto.graph.node),
                             "parity": self._ort_parity(path)}
        return path

    def _ort_parity(self, path: Path) -> dict:
        """The export run by ORT vs the torch model on the example inputs, like with like: ORT with Q/DQ as float ops
        is the program torch ran (the export's correctness); ORT's fused integer kernels are what a default session
        serves, and on CPUs without VNNI their U8S8 products saturate, so that deviation is measured and said apart."""
        import numpy as np
        import torch

        from ..backends.ort import OrtSession
        from ..hw import isa_label, ort_int8_kernels

        with torch.no_grad():
            want = self.model(*self._example_inputs)
        want = [want] if isinstance(want, torch.Tensor) else list(want)
        want = [np.asarray(w.detach().numpy(), np.float64) for w in want]
        out: dict = {"feed": "the example inputs"}
        for key, fake, what in (("fake_quant", True, "ORT with Q/DQ run as float (session.disable_quant_qdq=1): the "
                                 "program torch ran"),
                                ("int8_kernels", False, "ORT default session: Q/DQ fused into integer kernels")):
            with OrtSession(path, fake_quant=fake) as s:
                feed = {spec.name: np.asarray(x.detach().numpy()) for spec, x in zip(s.inputs, self._example_inputs)}
                got = [np.asarray(v, np.float64) for v in s.run(feed).values()]
            out[key] = {"reference": what, "max_abs": max(float(np.abs(g - w).max()) for g, w in zip(got, want)),
                        "scale": max(float(np.abs(w).max()) for w in want)}
        kern = ort_int8_kernels()
        out["int8_kernels"].update({"isa": isa_label(), "u8s8_saturates": kern["u8s8_saturates"]})
        if kern["u8s8_saturates"]:
            out["int8_kernels"]["note"] = ("this CPU has no VNNI: ORT's U8S8 kernels saturate 16-bit pair sums, so the "
                                           "integer path can differ from torch by more than quantization rounding")
        return out


# ---------------------------------------------------------------------------------------------------------------
# quantize
# ---------------------------------------------------------------------------------------------------------------


def quantize(model, *, example_inputs: tuple, calib_data: Iterable | None = None,
             calib_fn: Callable | None = None, approach: str = "static", eval_fn: Callable | None = None,
             tolerance: float | None = None, max_trials: int = 8, dynamic_batch: bool = True) -> QuantResult:
    """Post-training INT8 quantization of ``model`` (an ``nn.Module``) with Intel Neural Compressor's PT2E path.

    approach: ``"static"`` (INC's default static config: U8 asymmetric per-tensor activations, S8 symmetric
        per-channel weights) or ``"autotune"`` (INC ``autotune`` over the static config set, scored by ``eval_fn``).
    example_inputs: a tuple of inputs (a single tensor is accepted) used to trace the model.
    calib_data: an iterable of input tuples or single tensors/arrays (extra trailing items, e.g. labels, are
        dropped); or ``calib_fn(prepared_model)`` that runs the calibration forward passes itself. One is required.
    eval_fn: ``eval_fn(model) -> float``, positive and higher-is-better (accuracy). Required for autotune; with
        static it is optional and, if given, scores the float and quantized models (``info['baseline'/'score']``).
    tolerance: relative loss allowed, ``score >= baseline * (1 - tolerance)`` (INC's rule); autotune default 0.01.
        Missed -> :class:`optkit.errors.ToleranceMiss` with the (best) result as ``err.result``.
    max_trials: most configs autotune tries (INC caps it at the size of the config set, 4 here).
    dynamic_batch: export with a dynamic batch dim so the quantized model and its ONNX take any batch size.

    Raises ValueError on bad arguments, InputError when neural-compressor is missing, ExportError when the model
    cannot be captured by torch.export. INC's logging, torch warnings and stdout are kept quiet during the call.
    """
    t0 = time.perf_counter()
    approach = str(approach).lower().strip()
    if approach not in APPROACHES:
        raise ValueError(f"unknown quantization approach {approach!r}; use one of {', '.join(APPROACHES)}")
    if calib_data is None and calib_fn is None:
        raise ValueError("quantize needs calibration: pass calib_data (an iterable of input tuples) "
                         "or calib_fn(prepared_model)")
    if calib_data is not None and calib_fn is not None:
        raise ValueError("pass either calib_data or calib_fn, not both")
    if calib_fn is not None and not callable(calib_fn):
        raise ValueError("calib_fn must be callable: calib_fn(prepared_model) runs the calibration batches")
    if eval_fn is not None and not callable(eval_fn):
        raise ValueError("eval_fn must be callable: eval_fn(model) -> float, higher is better")
    if approach == "autotune" and eval_fn is None:
        raise ValueError("approach='autotune' needs eval_fn(model) -> float (higher is better) to score each config")
    if tolerance is not None and (not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance)):
        raise ValueError(f"tolerance must be a finite number (relative loss, e.g. 0.01), got {tolerance!r}")
    if approach == "autotune" and (not isinstance(max_trials, int) or max_trials < 1):
        raise ValueError(f"max_trials must be an int >= 1, got {max_trials!r}")

    import torch

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(example_inputs, (torch.Tensor,)) or type(example_inputs).__name__ == "ndarray":
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise ValueError("example_inputs must be a non-empty tuple of model inputs, e.g. (x,)")
    example_inputs = tuple(_to_tensor(a) for a in example_inputs)
    n_inputs = len(example_inputs)

    batches = None
    if calib_data is not None:
        if isinstance(calib_data, (torch.Tensor, str, bytes)):
            raise ValueError("calib_data must be an iterable of batches (e.g. a list of (x,) tuples or a DataLoader), "
                             "not a single tensor; wrap it: [x]")
        batches = [_as_args(b, n_inputs, f"calib_data item {i}") for i, b in enumerate(calib_data)]
        if not batches:
            raise ValueError("calib_data is empty: give at least one calibration batch")

    export_inputs, dynamic_shapes = _batch_spec(example_inputs, dynamic_batch)
    _init_inc_logger()
    modes = {m: m.training for m in model.modules()}
    quiet = _Quiet()
    with quiet:
        export, prepare, convert, autotune, TuningConfig, StaticConfig, inc_version = _import_inc()

        calls = {"n": 0}

        def run_calib(prepared):
            """Calibration forward passes on a prepared (observed) model; returns how many ran."""
            calls["n"] = 0
            _allow_train_eval(prepared)
            hook = prepared.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
            try:
                with torch.no_grad():
                    if batches is not None:
                        for i, args in enumerate(batches):
                            try:
                                prepared(*args)
                            except Exception as e:
                                shapes = [tuple(a.shape) if hasattr(a, "shape") else type(a).__name__ for a in args]
                                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                                raise ValueError(
                                    f"calib_data item {i} {shapes} fails on the model ({type(e).__name__}: {msg})"
                                    + ("" if dynamic_batch else "; with dynamic_batch=False every batch must have the "
                                       "example inputs' batch size")) from e
                    else:
                        with quiet.loud():
                            calib_fn(prepared)
            finally:
                hook.remove()
            if calls["n"] == 0:
                raise ValueError("calib_fn never ran the prepared model: it must call prepared_model(*inputs) "
                                 "on calibration batches")
            return calls["n"]

        try:
            try:
                exported = _allow_train_eval(export(model, export_inputs, dynamic_shapes=dynamic_shapes))
            except RuntimeError as e:
                detail = quiet.capture.last_error() or str(e)
                raise ExportError(f"torch.export could not capture the model for PT2E quantization: "
                                  f"{detail.strip().splitlines()[0] if detail.strip() else e}",
                                  "the model must be torch.export-able (no data-dependent Python control flow); "
                                  "try dynamic_batch=False") from e
        finally:
            for m, training in modes.items():
                m.train(training)

        info: dict[str, Any] = {"approach": approach, "inc_version": inc_version, "dynamic_batch": bool(dynamic_batch)}
        if approach == "static":
            cfg = StaticConfig()
            baseline = None
            if eval_fn is not None:  # the float score first: prepare/convert rewrite the exported graph in place
                import copy

                float_model = _allow_train_eval(copy.deepcopy(exported))
                with quiet.loud():
                    baseline = float(eval_fn(float_model))
                del float_model
            prepared = prepare(exported, cfg)
            n_calib = run_calib(prepared)
            qmodel = _allow_train_eval(convert(prepared))
            info.update(config=_config_dict(cfg), calib_batches=n_calib)
            if eval_fn is not None:
                with quiet.loud():
                    score = float(eval_fn(qmodel))
                info.update(baseline=baseline, score=score)
                if tolerance is not None:
                    if not baseline > 0:
                        raise ValueError(f"eval_fn must return a positive, higher-is-better score when a tolerance "
                                         f"is given (the tolerance is relative); it returned {baseline!r} for the "
                                         f"float model")
                    info["tolerance"] = float(tolerance)
                    info["met_tolerance"] = _passes(score, baseline, tolerance)
        else:
            qmodel, tune_info = _autotune(exported, autotune, TuningConfig, StaticConfig, eval_fn, run_calib,
                                          tolerance, max_trials, export_inputs, quiet)
            info.update(tune_info)
            info["calib_batches"] = calls["n"]

    info["seconds"] = round(time.perf_counter() - t0, 3)
    result = QuantResult(qmodel, info, export_inputs, dynamic_shapes)
    if info.get("met_tolerance") is False:
        err = ToleranceMiss(
            f"quantized model scores {info['score']:.6g} vs float {info['baseline']:.6g}: relative loss "
            f"{_rel_loss(info['score'], info['baseline']):.4g} exceeds tolerance {info['tolerance']:.4g}"
            + (f" (best of {len(info['trials'])} autotune trial(s))" if info.get("trials") else ""),
            "raise the tolerance, give better calibration data, or use err.result anyway")
        err.result = result
        raise err
    return result


def _passes(score: float, baseline: float, tolerance: float) -> bool:
    return score >= baseline * (1 - tolerance)  # INC's rule (TuningMonitor.need_stop)


def _rel_loss(score: float, baseline: float) -> float:
    return (baseline - score) / baseline if baseline else float("nan")


def _autotune(exported, autotune, TuningConfig, StaticConfig, eval_fn, run_calib, tolerance, max_trials,
              example_inputs, quiet):
    """INC autotune over the static PT2E config set; returns (model, info) with every trial INC ran."""
    tolerance = 0.01 if tolerance is None else float(tolerance)
    trials: list[dict] = []
    state: dict[str, Any] = {"baseline": None}

    def scored(model):
        cfg = _qconfig_of(model)
        _allow_train_eval(model)
        with quiet.loud():
            score = float(eval_fn(model))
        if cfg is None:  # INC scores the float (exported) model first: the baseline
            if not score > 0:
                raise ValueError(f"eval_fn must return a positive, higher-is-better score (INC's tolerance is "
                                 f"relative to it); it returned {score!r} for the float model")
            state["baseline"] = score
        else:
            trials.append({"trial": len(trials) + 1, "config": _config_dict(cfg), "score": score,
                           "passed": _passes(score, state["baseline"], tolerance)})
        return score

    config_set = StaticConfig.get_config_set_for_tuning()  # act_sym x act_algo, PT2E static (not IPEX, not WOQ)
    tune_config = TuningConfig(config_set=[config_set], tolerable_loss=tolerance, max_trials=int(max_trials))
    qmodel = autotune(exported, tune_config, eval_fn=scored, run_fn=run_calib, example_inputs=example_inputs)
    if not trials:
        raise RuntimeError("INC autotune ran no trial (empty config set)")
    chosen_cfg = _qconfig_of(qmodel) if qmodel is not None else None
    best = max(trials, key=lambda t: t["score"])
    if qmodel is None:  # INC returns None when its config loader ran dry before its stop rule fired
        import copy

        from neural_compressor.torch.quantization import quantize as inc_quantize

        chosen_cfg = StaticConfig(**{k: best["config"][k] for k in _CFG_FIELDS if k in best["config"]})
        model = copy.deepcopy(exported)
        model._exported, model.dynamic_shapes = True, getattr(exported, "dynamic_shapes", None)
        qmodel = inc_quantize(model, chosen_cfg, run_fn=run_calib, example_inputs=example_inputs)
    _allow_train_eval(qmodel)
    chosen = _config_dict(chosen_cfg) if chosen_cfg is not None else best["config"]
    selected = next((t for t in trials if t["config"] == chosen and t["passed"]), None) \
        or next((t for t in trials if t["config"] == chosen), best)
    info = {"config": chosen, "trials": trials, "baseline": state["baseline"], "score": selected["score"],
            "selected_trial": selected["trial"], "tolerance": tolerance,
            "max_trials": min(int(max_trials), int(getattr(tune_config, "max_trials", max_trials))),
            "met_tolerance": any(t["passed"] for t in trials)}
    return qmodel, info
