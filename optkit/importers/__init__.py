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
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ExportError, InputError
from ..data import as_array
from ..model import TensorSpec

ONNX_SUFFIXES = (".onnx",)
METADATA_KEY = "optkit.import"
_SEQ_LABELS = ("seq", "sequence", "seq_len", "sequence_length", "tokens")


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


# -- options ---------------------------------------------------------------------------------------------------
def parse_dtypes(items) -> dict[str, str]:
    """``["ids=int64"]`` -> {"ids": "int64"}."""
    out = {}
    for item in items or []:
        name, sep, dt = str(item).partition("=")
        try:
            if not sep or not name:
                raise TypeError
            out[name.strip()] = np.dtype(dt.strip()).name
        except TypeError:
            raise InputError(f"bad --dtype {item!r}", "use NAME=DTYPE, e.g. --dtype input_ids=int64") from None
    return out


def parse_dynamic(items, feed: dict[str, np.ndarray]) -> dict[str, dict[int, str]]:
    """``batch`` (axis 0 of every input), ``seq`` (axis 1 of every input of rank >= 2) or ``NAME:AXIS[=label]``;
    comma-separated or repeated."""
    if isinstance(items, str):
        items = [items]
    out: dict[str, dict[int, str]] = {}
    for raw in items or []:
        for item in filter(None, (s.strip() for s in str(raw).split(","))):
            if item.lower() in ("none", "static"):
                continue
            if ":" in item:
                name, _, rest = item.partition(":")
                axis_s, _, label = rest.partition("=")
                if name not in feed:
                    raise InputError(f"--dynamic {item!r} names unknown input {name!r}", f"the inputs are {list(feed)}")
                try:
                    axis = int(axis_s)
                except ValueError:
                    raise InputError(f"bad --dynamic {item!r}", "use batch, seq or NAME:AXIS[=label]") from None
                rank = feed[name].ndim
                if not -rank <= axis < rank:
                    raise InputError(f"--dynamic {item!r}: input {name!r} has rank {rank}", "pick an axis inside the input's rank")
                axis %= rank
                out.setdefault(name, {})[axis] = label or f"{name}_dim{axis}"
            elif item.lower() in ("batch", "n", "batch_size"):
                for name, arr in feed.items():
                    if arr.ndim >= 1:
                        out.setdefault(name, {})[0] = "batch"
            elif item.lower() in _SEQ_LABELS:
                for name, arr in feed.items():
                    if arr.ndim >= 2:
                        out.setdefault(name, {})[1] = "seq"
            else:
                raise InputError(f"bad --dynamic {item!r}", "use batch, seq or NAME:AXIS[=label] (comma-separated)")
    return out


# -- example feeds ---------------------------------------------------------------------------------------------
def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if hasattr(x, "numpy") and not isinstance(x, np.ndarray):
        return np.asarray(x.numpy())
    return np.asarray(x)


def _read_npz_feeds(path: Path, order: list[str] | None, specs: dict[str, TensorSpec] | None,
                    shapes: dict | None, limit: int) -> list[dict[str, np.ndarray]]:
    """Feeds from --data without an ONNX signature. A file is one feed unless its 'labels' has two axes (a stack of
    per-feed labels) or the arrays have one axis more than the signature / --shape says."""
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not path.exists() or not files:
        raise InputError(f"--data {path} not found or holds no .npz files", "pass a .npz file or a directory of them")
    feeds = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:
            raise InputError(f"cannot read --data file {f}: {type(e).__name__}", "write it with numpy.savez") from e
        from ..checks import check_finite

        check_finite(arrays, f"--data {f}")
        labels = arrays.pop("labels", None)
        names = list(arrays)
        if order:
            missing = [n for n in order if n not in arrays]
            if missing:
                raise InputError(f"--data {f.name} has no array(s) {missing}", f"its arrays are {names}")
            names = list(order)
        ranks = {n: len(specs[n].shape) for n in names if specs and n in specs}
        ranks.update({n: len(s) for n, s in (shapes or {}).items()})
        stacked = (labels is not None and labels.ndim == 2) or any(arrays[n].ndim == r + 1 for n, r in ranks.items() if n in arrays)
        if stacked:
            count = min(arrays[n].shape[0] for n in names)
            feeds += [{n: as_array(arrays[n][i]) for n in names} for i in range(count)]
        else:
            feeds.append({n: as_array(arrays[n]) for n in names})
        if len(feeds) >= limit:
            break
    return feeds[:limit]


def _example_feeds(src, example_inputs, data, shapes, dtypes, input_names, max_feeds, warn):
    """The feeds the export traces with and the parity check runs on: example first."""
    specs = src.input_specs()
    spec_map = {s.name: s for s in specs} if specs else None
    if example_inputs is not None:
        if isinstance(example_inputs, dict):
            feed = {k: _to_numpy(v) for k, v in example_inputs.items()}
        else:
            vals = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
            arrays = [_to_numpy(v) for v in vals]
            names = list(input_names or (
                [s.name for s in specs] if specs else src.default_input_names(len(arrays))))
            if len(names) != len(arrays):
                raise InputError(f"{len(arrays)} example input(s) but {len(names)} input name(s) {names}",
                                 "give one name per example input")
            feed = dict(zip(names, arrays))
        feeds = [feed]
        source = "example_inputs"
    elif data is not None:
        feeds = _read_npz_feeds(Path(data), input_names or ([s.name for s in specs] if specs else None), spec_map,
                                shapes, max_feeds)
        source = str(data)
        if not specs and not shapes and len(feeds) == 1:
            feeds = _unstack_if_needed(src, feeds, max_feeds)
    elif shapes or specs:
        from ..data import resolve_shapes

        if specs:
            static = resolve_shapes(specs, shapes)
            types = {s.name: s.dtype for s in specs}
        else:
            static = dict(shapes)
            types = {n: dtypes.get(n, "float32") for n in static}
            unknown = sorted(set(dtypes) - set(static))
            if unknown:
                raise InputError(f"--dtype names input(s) {unknown} that have no --shape", "give a --shape for each input")
        rng = np.random.default_rng(0)
        feeds = []
        for _ in range(max(2, min(max_feeds, 4))):
            feed = {}
            for n, shp in static.items():
                dt = np.dtype(types[n])
                if dt.kind == "f":
                    feed[n] = rng.standard_normal(shp).astype(dt)
                elif dt.kind == "b" or "mask" in n.lower():
                    feed[n] = np.ones(shp, dt)
                else:
                    feed[n] = rng.integers(0, 2, size=shp).astype(dt)
            feeds.append(feed)
        source = "synthetic"
        warn("parity is checked on synthetic random inputs; pass --data with real feeds for a check on the data the "
             "model will see")
    else:
        raise InputError(f"{src.description} has no input signature to build example inputs from",
                         "give --shape NAME=DIMS (and --dtype NAME=int64 for integer inputs) or --data feeds.npz")
    if specs:
        names = {s.name for s in specs}
        if set(feeds[0]) != names:
            raise InputError(f"the example inputs {sorted(feeds[0])} do not match the model's inputs {sorted(names)}",
                             "name the --data arrays / --shape after the model's inputs")
        for f in feeds:
            for s in specs:
                f[s.name] = np.ascontiguousarray(f[s.name], dtype=np.dtype(s.dtype)) \
                    if np.asarray(f[s.name]).dtype.kind == np.dtype(s.dtype).kind else f[s.name]
    elif dtypes:
        for f in feeds:
            for n, dt in dtypes.items():
                if n in f:
                    f[n] = f[n].astype(dt)
    return feeds, source


def _unstack_if_needed(src, feeds, max_feeds):
    """Without a signature or --shape a stacked .npz (feeds x batch x ...) looks like one big feed: when the model
    rejects it but accepts its first row, the file is a stack and each row is a feed."""
    from ..data import split_stacked

    try:
        src.run(feeds[0])
        return feeds
    except InputError as e:
        rows = split_stacked(feeds[0])
        if not rows:
            raise
        try:
            src.run(rows[0])
        except InputError:
            raise e from None
        return rows[:max_feeds]


def _grow(feed: dict[str, np.ndarray], dynamic: dict[str, dict[int, str]]) -> dict[str, np.ndarray]:
    """The feed with every dynamic axis one longer (two when it is 1), by repeating its data; one size per label."""
    sizes: dict[str, int] = {}
    for name, axes in dynamic.items():
        for axis, label in axes.items():
            cur = feed[name].shape[axis]
            sizes.setdefault(label, cur + 1 if cur > 1 else 2)
    out = {}
    for name, arr in feed.items():
        for axis, label in dynamic.get(name, {}).items():
            idx = np.arange(sizes[label]) % arr.shape[axis]
            arr = np.take(arr, idx, axis=axis)
        out[name] = np.ascontiguousarray(arr)
    return out


# -- ONNX Runtime side -----------------------------------------------------------------------------------------
def _ort_runner(model):
    import onnxruntime as ort

    from ..model import save_model

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 4  # a failing run is reported as one ExportError, not ORT's multi-line log
    # like with like: a quantized framework model computes Q/DQ as float fake-quant, so the export is checked with ORT
    # running them as float ops too; ORT's fused integer kernels differ by CPU (U8S8 saturates without VNNI)
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    ro = ort.RunOptions()
    ro.log_severity_level = 4
    tmp = tempfile.TemporaryDirectory(prefix="optkit-import-")
    path = Path(tmp.name) / "model.onnx"
    save_model(model, path)
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        tmp.cleanup()
        raise ExportError(f"ONNX Runtime cannot load the exported model ({type(e).__name__}: {_first(e)})",
                          "try the other --exporter or another --opset") from e
    names = [o.name for o in sess.get_outputs()]

    def run(feed):
        try:
            return dict(zip(names, sess.run(None, feed, ro)))
        except Exception as e:
            raise ExportError(f"ONNX Runtime fails on the exported model with inputs "
                              f"{ {k: list(v.shape) for k, v in feed.items()} } ({_ort_msg(e)})",
                              "try the other --exporter or another --opset; --dynamic none exports static shapes") from e

    run.cleanup = tmp.cleanup
    run.reference = ("onnxruntime, Q/DQ run as float fake-quant (session.disable_quant_qdq=1), as the framework computes "
                     "them" if qdq else "onnxruntime (default session)")
    return run


def _ort_msg(e: BaseException) -> str:
    """ORT's run error in a few words: the node that failed and the last sentence of its message."""
    text = str(e)
    m = re.search(r"running (\w+) node\. Name:'([^']*)'", text)
    tail = re.split(r"(?<=false\.)\s+|Status Message:\s*", text)[-1].strip().splitlines()[0][:200]
    return f"{m.group(1)} node {m.group(2)!r}: {tail}" if m else _first(e)


def _first(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


def _parity(src_outs: list[dict], ort_outs: list[dict], rtol: float, atol: float) -> dict:
    from ..metrics import compare, within

    # match outputs by name when both sides use the same names, else by position (exporters may rename them)
    if set(src_outs[0]) == set(ort_outs[0]):
        order = list(ort_outs[0])
        src_outs = [{k: o[k] for k in order} for o in src_outs]
    ref = [dict(zip(range(len(o)), o.values())) for o in src_outs]
    new = [dict(zip(range(len(o)), o.values())) for o in ort_outs]
    if len(ref[0]) != len(new[0]):
        return {"passed": False, "reason": f"the framework returns {len(ref[0])} outputs, the ONNX model {len(new[0])}"}
    d = compare(ref, new)
    names = list(ort_outs[0])
    per = {names[i]: {k: v for k, v in d["outputs"][i].items()} for i in d["outputs"]}
    ok = within(d, rtol, atol, min_cosine=0.9999)
    return {"passed": bool(ok), "max_abs": d["max_abs"], "cosine": d["cosine"], "rtol": rtol, "atol": atol,
            "outputs": per, **({"top1_agreement": d["top1_agreement"]} if "top1_agreement" in d else {})}


def _output_dynamic(src, example, grown, dynamic) -> dict[str, dict[int, str]]:
    """Output axes that change size when the dynamic input axes do, labelled after the input axis they follow."""
    a, b = src.run(example), src.run(grown)
    new_sizes = {}
    for name, axes in dynamic.items():
        for axis, label in axes.items():
            new_sizes.setdefault(grown[name].shape[axis], label)
    out = {}
    for (name, x), y in zip(a.items(), b.values()):
        for axis, (s0, s1) in enumerate(zip(x.shape, y.shape)):
            if s0 != s1:
                out.setdefault(name, {})[axis] = new_sizes.get(s1, f"{name}_dim{axis}")
    return out


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
    if src.input_specs() is not None:  # TensorFlow: the signature's unknown dims are dynamic already
        dyn = {s.name: {i: (d if isinstance(d, str) else ("batch" if i == 0 else f"{s.name}_dim{i}"))
                        for i, d in enumerate(s.shape) if not isinstance(d, int)} for s in src.input_specs()}
        dyn = {k: v for k, v in dyn.items() if v}
        for name, axes in parse_dynamic(dynamic, example).items():
            dyn.setdefault(name, {}).update(axes)
    else:
        dyn = parse_dynamic("batch" if dynamic is None else dynamic, example)
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


def _parity_msg(parity: dict, feeds, grown) -> str:
    if "reason" in parity:
        return f"parity check failed: {parity['reason']}"
    if "dynamic_check" in parity and not parity["dynamic_check"]["passed"]:
        dc = parity["dynamic_check"]
        return (f"parity check failed at the dynamic-shape feed {dc['shapes']}: max-abs {dc['max_abs']:.3g}, cosine "
                f"{dc['cosine']:.6f} (the export baked in a size that should vary; --dynamic none exports static shapes)")
    return (f"parity check failed on {len(feeds)} feed(s): max-abs {parity['max_abs']:.3g} > "
            f"{parity['atol']:g} + {parity['rtol']:g}*|ref|, cosine {parity['cosine']:.6f}")


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
