"""Bring a trained model into ONNX: PyTorch (module, TorchScript, pickled model, state_dict + factory, torch.export
program) and TensorFlow (SavedModel, Keras), each followed by a parity check of the framework against ONNX Runtime.

Every framework module provides a *source*: an object with

    framework: str                      # "torch" | "tensorflow"
    description: str                    # what was loaded, for the manifest ("TorchScript file x.pt", ...)
    input_specs(feed) -> list[TensorSpec] | None   # the signature when the framework knows it (TF), else None
    run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]   # the framework's outputs, by ONNX output name
    to_onnx(example: dict[str, np.ndarray], *, opset, dynamic: dict[str, dict[int, str]], output_names)
        -> (onnx.ModelProto, info: dict)     # info: exporter, exporter_version, framework_version, opset, notes

and ``import_model`` does the rest (example feeds, export, parity, dynamic-shape check, save).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ExportError, InputError
from ._feeds import (_SEQ_LABELS, _example_feeds, _grow, _read_npz_feeds, _to_numpy,  # noqa: F401  (re-exported)
                     _unstack_if_needed, parse_dtypes, parse_dynamic)
from ._parity import _first, _ort_msg, _ort_runner, _output_dynamic, _parity, _parity_msg  # noqa: F401

ONNX_SUFFIXES = (".onnx",)
METADATA_KEY = "optkit.import"


@dataclass
class Imported:
    """The ONNX model, what happened (info: source, exporter, opset, parity, attempts) and the feeds it was checked on."""

    model: object  # onnx.ModelProto
    info: dict
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)


def detect(path: Path) -> str:
    """'onnx' | 'torch' | 'tensorflow' for a path, or an InputError saying what optkit accepts."""
    from . import tf as tfmod
    from . import torch as torchmod

    p = Path(path)
    if not p.exists():
        raise InputError(f"model not found: {p}", "check the path")
    if p.is_file() and p.suffix.lower() in ONNX_SUFFIXES:
        return "onnx"
    if tfmod.is_tf_path(p):
        return "tensorflow"
    if torchmod.is_torch_path(p):
        return "torch"
    if p.is_dir():
        raise InputError(f"{p} is a directory but not a TensorFlow SavedModel (no saved_model.pb)",
                         "pass a SavedModel directory, a .keras/.h5 file, a PyTorch file (.pt/.pth/.pt2) or an .onnx file")
    raise InputError(f"cannot tell what framework {p.name} is from (suffix {p.suffix or 'none'!r})",
                     "pass .onnx, a PyTorch .pt/.pth/.pt2, a Keras .keras/.h5 file or a SavedModel directory")


def is_framework_object(obj) -> bool:
    from . import torch as torchmod

    return torchmod.is_torch_object(obj) or _is_tf_object(obj)


def _is_tf_object(obj) -> bool:
    import sys

    if "tensorflow" not in sys.modules and "keras" not in sys.modules:
        return False
    import tensorflow as tf

    return isinstance(obj, tf.Module) or type(obj).__module__.startswith("keras")


def _source(model, *, module=None, signature=None, trust_pickle=False):
    """The framework source for a path or an in-memory model."""
    if isinstance(model, (str, Path)):
        kind = detect(Path(model))
        if kind == "onnx":
            raise InputError(f"{model} is already ONNX", "pass it to optimize/bench directly")
        if kind == "torch":
            from . import torch as torchmod

            reason = torchmod.available()
            if reason:
                raise InputError(reason)
            if signature:
                raise InputError("--signature is for TensorFlow SavedModels", "drop --signature")
            return torchmod.load_source(Path(model), module=module, trust_pickle=trust_pickle)
        from . import tf as tfmod

        reason = tfmod.available()
        if reason:
            raise InputError(reason, "pip install 'optkit[tf]'")
        if module:
            raise InputError("--module is for PyTorch state_dicts", "drop --module")
        return tfmod.load_source(Path(model), signature=signature, trust_pickle=trust_pickle)
    from . import torch as torchmod

    if torchmod.is_torch_object(model):
        return torchmod.from_object(model)
    if _is_tf_object(model):
        from . import tf as tfmod

        return tfmod.from_object(model, signature=signature)
    raise InputError(f"cannot import a {type(model).__name__}",
                     "pass a torch.nn.Module, a Keras model, or a path to a model file")


# -- the entry point -------------------------------------------------------------------------------------------
def import_model(model, *, example_inputs=None, data=None, shapes: dict | None = None, dtypes: dict | None = None,
                 input_names: list[str] | None = None, output_names: list[str] | None = None, dynamic=None,
                 opset: int | None = None, exporter: str = "auto", module: str | None = None,
                 signature: str | None = None, rtol: float = 1e-3, atol: float = 1e-4, max_feeds: int = 8,
                 warn=None, trust_pickle: bool = False) -> Imported:
    """Export a PyTorch/TensorFlow model (object or file) to ONNX and check it against the framework.

    The export is accepted only when ONNX Runtime reproduces the framework's outputs on every feed within
    ``atol + rtol * max|ref|`` (and cosine >= 0.9999), and, with ``dynamic`` axes, also on a feed where those axes
    have another size (``dynamic`` None means 'batch' for PyTorch and the signature's unknown dims for TensorFlow;
    'none' exports static shapes). With ``exporter='auto'`` the exporters are tried in order (PyTorch: dynamo, then TorchScript)
    and the first that passes is kept; every attempt is recorded in ``info['attempts']``.

    Nothing in a model file runs unless asked: a file whose loading executes code from it (a ``torch.save``d whole
    model, a torch.export .pt2 program, a Keras Lambda layer) is refused unless ``trust_pickle``; a ``module`` factory
    is your code and runs because you named it.
    """
    import onnx

    warn = warn or (lambda msg: None)
    t0 = time.perf_counter()
    src = _source(model, module=module, signature=signature, trust_pickle=trust_pickle)
    shapes = dict(shapes or {})
    dtypes = dict(dtypes or {})
    if exporter not in ("auto",) + tuple(src.exporters):
        raise InputError(f"--exporter {exporter!r} does not apply to {src.description}",
                         f"use auto or one of {list(src.exporters)}")
    feeds, feed_source = _example_feeds(src, example_inputs, data, shapes, dtypes, input_names, max_feeds, warn)
    example = feeds[0]
    dyn = _dynamic_axes(src, dynamic, example)
    src_outs = [src.run(f) for f in feeds]
    grown = _grow(example, dyn) if dyn else None
    out_names = list(output_names) if output_names else None
    if out_names and len(out_names) != len(src_outs[0]):
        raise InputError(f"{len(out_names)} --output-names for {len(src_outs[0])} model outputs", "give one name per output")
    attempts = []
    order = list(src.exporters) if exporter == "auto" else [exporter]
    for exp in order:
        t1 = time.perf_counter()
        try:
            onnx_model, info, parity = _export_and_check(src, exp, feeds, src_outs, grown, dyn, opset, out_names,
                                                         rtol, atol)
        except (ExportError, InputError) as e:
            attempts.append({"exporter": exp, "error": e.what, "seconds": round(time.perf_counter() - t1, 2)})
            if isinstance(e, InputError) and not isinstance(e, ExportError):
                raise
            continue
        except onnx.checker.ValidationError as e:
            attempts.append({"exporter": exp, "error": f"exported model fails the ONNX checker: {_first(e)}",
                             "seconds": round(time.perf_counter() - t1, 2)})
            continue
        attempt = {"exporter": exp, "parity": parity["passed"], "max_abs": parity.get("max_abs"),
                   "seconds": round(time.perf_counter() - t1, 2)}
        attempts.append(attempt)
        if parity["passed"]:
            return _finish(onnx_model, src, info, parity, attempts, feeds, feed_source, dyn, t0)
        attempt["error"] = _parity_msg(parity, feeds, grown)
    _raise_failed(src, attempts)


def _dynamic_axes(src, dynamic, example) -> dict[str, dict[int, str]]:
    """{input: {axis: label}} to export as dynamic: TensorFlow's signature's unknown dims plus ``dynamic``; for PyTorch
    ``dynamic`` alone (None means 'batch')."""
    if src.input_specs() is not None:  # TensorFlow: the signature's unknown dims are dynamic already
        dyn = {s.name: {i: (d if isinstance(d, str) else ("batch" if i == 0 else f"{s.name}_dim{i}"))
                        for i, d in enumerate(s.shape) if not isinstance(d, int)} for s in src.input_specs()}
        dyn = {k: v for k, v in dyn.items() if v}
        for name, axes in parse_dynamic(dynamic, example).items():
            dyn.setdefault(name, {}).update(axes)
        return dyn
    return parse_dynamic("batch" if dynamic is None else dynamic, example)


def _export_and_check(src, exp, feeds, src_outs, grown, dyn, opset, out_names, rtol, atol):
    """One exporter: export, check the ONNX, and compare ONNX Runtime with the framework on every feed (and on the
    grown feed when there are dynamic axes). Returns (onnx model, export info, parity)."""
    import onnx

    example = feeds[0]
    trace_feed = grown if grown is not None and any(example[n].shape[a] == 1 for n, ax in dyn.items() for a in ax) \
        else example
    kwargs = {"exporter": exp} if src.framework == "torch" else {}
    all_dyn = dict(dyn)
    if dyn and src.framework == "torch" and exp == "torchscript":
        all_dyn.update(_output_dynamic(src, example, grown, dyn))
    onnx_model, info = src.to_onnx(trace_feed, opset=opset, dynamic=all_dyn, output_names=out_names, **kwargs)
    onnx.checker.check_model(onnx_model, full_check=False) if onnx_model.ByteSize() < 2_000_000_000 else None
    runner = _ort_runner(onnx_model)
    try:
        parity = _parity(src_outs, [runner(f) for f in feeds], rtol, atol)
        parity["reference"] = runner.reference
        if grown is not None and parity["passed"]:
            dp = _parity([src.run(grown)], [runner(grown)], rtol, atol)
            parity["dynamic_check"] = {"shapes": {k: list(v.shape) for k, v in grown.items()},
                                       "passed": dp["passed"], "max_abs": dp.get("max_abs"), "cosine": dp.get("cosine")}
            parity["passed"] = dp["passed"]
    finally:
        runner.cleanup()
    return onnx_model, info, parity


def _raise_failed(src, attempts: list[dict]):
    """One ExportError naming every exporter tried and why each failed."""
    last = attempts[-1]["error"] if attempts else "no exporter ran"
    tried = ", ".join(a["exporter"] for a in attempts)
    if len(attempts) > 1:
        last = "; ".join(f"{a['exporter']}: {a['error']}" for a in attempts)
    if "has no ONNX conversion" in last:
        raise ExportError(f"could not export {src.description} to ONNX (tried {tried}): {last}",
                          "rewrite that operator with supported ones (or register an ONNX function for it), or try "
                          "another --opset; --debug shows the exporter's full error")
    raise ExportError(f"could not export {src.description} to ONNX (tried {tried}): {last}",
                      "options: " + ("--exporter dynamo|torchscript, " if src.framework == "torch" else "")
                      + "--opset N, --dynamic none (static shapes), --parity-tol when the difference is expected; "
                        "--debug shows the full error")


def _finish(onnx_model, src, info, parity, attempts, feeds, feed_source, dyn, t0) -> Imported:
    from ..model import signature

    inputs, outputs = signature(onnx_model)
    info = {"source": src.description, "framework": src.framework, **info,
            "inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs],
            "dynamic": {k: {str(a): l for a, l in v.items()} for k, v in dyn.items()},
            "parity": {**parity, "feeds": len(feeds), "feeds_source": feed_source},
            "attempts": attempts, "seconds": round(time.perf_counter() - t0, 2)}
    summary = {k: info[k] for k in ("source", "framework", "exporter", "exporter_version", "opset")}
    summary["parity"] = {k: parity[k] for k in ("max_abs", "cosine", "passed")}
    keep = [(p.key, p.value) for p in onnx_model.metadata_props if p.key != METADATA_KEY]
    del onnx_model.metadata_props[:]
    for k, v in keep:
        e = onnx_model.metadata_props.add()
        e.key, e.value = k, v
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(summary, default=str)
    return Imported(onnx_model, info, feeds)
