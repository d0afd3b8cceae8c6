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

import math
import time
from typing import Any, Callable, Iterable

from optkit.errors import ExportError, ToleranceMiss

from ._inc import (_allow_train_eval, _as_args, _batch_spec, _config_dict, _import_inc, _init_inc_logger, _Quiet,
                   _to_tensor)
from ._quant_result import QuantResult
from ._quant_tune import _autotune, _passes, _rel_loss

__all__ = ["quantize", "QuantResult", "APPROACHES"]

APPROACHES = ("static", "autotune")


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
    approach = _check_args(approach, calib_data, calib_fn, eval_fn, tolerance, max_trials)
    example_inputs, batches = _inputs(model, example_inputs, calib_data)
    export_inputs, dynamic_shapes = _batch_spec(example_inputs, dynamic_batch)
    _init_inc_logger()
    quiet = _Quiet()
    with quiet:
        export, prepare, convert, autotune, TuningConfig, StaticConfig, inc_version = _import_inc()
        run_calib, calls = _calibration(batches, calib_fn, dynamic_batch, quiet)
        exported = _export(export, model, export_inputs, dynamic_shapes, quiet)
        info: dict[str, Any] = {"approach": approach, "inc_version": inc_version, "dynamic_batch": bool(dynamic_batch)}
        if approach == "static":
            qmodel = _static(exported, prepare, convert, StaticConfig(), run_calib, eval_fn, tolerance, quiet, info)
        else:
            qmodel, tune_info = _autotune(exported, autotune, TuningConfig, StaticConfig, eval_fn, run_calib,
                                          tolerance, max_trials, export_inputs, quiet)
            info.update(tune_info)
            info["calib_batches"] = calls["n"]

    info["seconds"] = round(time.perf_counter() - t0, 3)
    result = QuantResult(qmodel, info, export_inputs, dynamic_shapes)
    _raise_if_missed(info, result)
    return result


def _check_args(approach, calib_data, calib_fn, eval_fn, tolerance, max_trials) -> str:
    """The normalized approach; ValueError for a bad combination of arguments."""
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
    return approach


def _inputs(model, example_inputs, calib_data) -> tuple[tuple, list | None]:
    """(example inputs as a tuple of tensors, calibration batches as argument tuples or None); ValueError when bad."""
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
    return example_inputs, batches


def _calibration(batches, calib_fn, dynamic_batch: bool, quiet: _Quiet):
    """(run_calib(prepared) -> number of forward passes, the counter it keeps in calls["n"])."""
    import torch

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

    return run_calib, calls


def _export(export, model, export_inputs, dynamic_shapes, quiet: _Quiet):
    """INC's torch.export of the model (its train/eval flags restored afterwards); ExportError when it cannot."""
    modes = {m: m.training for m in model.modules()}
    try:
        try:
            return _allow_train_eval(export(model, export_inputs, dynamic_shapes=dynamic_shapes))
        except RuntimeError as e:
            detail = quiet.capture.last_error() or str(e)
            raise ExportError(f"torch.export could not capture the model for PT2E quantization: "
                              f"{detail.strip().splitlines()[0] if detail.strip() else e}",
                              "the model must be torch.export-able (no data-dependent Python control flow); "
                              "try dynamic_batch=False") from e
    finally:
        for m, training in modes.items():
            m.train(training)


def _static(exported, prepare, convert, cfg, run_calib, eval_fn, tolerance, quiet: _Quiet, info: dict):
    """INC's default static config: prepare, calibrate, convert; scores float and quantized when eval_fn is given.
    Fills ``info``; returns the quantized model."""
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
    return qmodel


def _raise_if_missed(info: dict, result: QuantResult) -> None:
    """ToleranceMiss (with the result as ``err.result``) when the quantized score misses the tolerance."""
    if info.get("met_tolerance") is False:
        err = ToleranceMiss(
            f"quantized model scores {info['score']:.6g} vs float {info['baseline']:.6g}: relative loss "
            f"{_rel_loss(info['score'], info['baseline']):.4g} exceeds tolerance {info['tolerance']:.4g}"
            + (f" (best of {len(info['trials'])} autotune trial(s))" if info.get("trials") else ""),
            "raise the tolerance, give better calibration data, or use err.result anyway")
        err.result = result
        raise err
