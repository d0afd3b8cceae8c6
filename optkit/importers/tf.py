"""TensorFlow side of ``optkit import``: a SavedModel directory, a Keras ``.keras`` / legacy ``.h5`` file, or an
in-memory ``keras.Model`` / ``tf.Module``, converted to ONNX with tf2onnx (extra ``optkit[tf]``).

Route: every model becomes one TensorFlow *ConcreteFunction* with flat, named tensor inputs and outputs, which is
frozen with ``tf2onnx.tf_loader.from_trackable`` and converted with tf2onnx's common converter
(``tf2onnx.convert._convert_common``, the code behind ``from_keras`` / ``from_function`` / ``--saved-model``).

* SavedModel: the concrete function is the chosen signature (``serving_default`` unless asked otherwise).
* Keras: the model is traced through a ``tf.function`` whose input_signature comes from ``model.inputs`` (with None
  at any axis the caller asks to be dynamic) and which returns the outputs as a flat list, so names and order are
  ours. ``tf2onnx.convert.from_keras`` is *not* used: with Keras 3 it fails (``KeyError: 'keras_tensor_N'`` while
  mapping output names) and it cannot re-trace with extra dynamic axes. ``model.export()`` + SavedModel would work
  too but writes to disk, prints to stdout and fixes the traced shapes, so the tf.function route is the robust one.

tf2onnx leaves ops it has no mapping for in the graph (only logging them); we collect its log records and turn them,
and any handler failure, into one ``ExportError`` line. TensorFlow is imported lazily (inside functions) and its log
output is silenced while loading and converting; nothing is printed to stdout.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ..errors import ExportError, InputError
from ..model import TensorSpec

DEFAULT_OPSET = 17
INSTALL_HINT = "pip install 'optkit[tf]'"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
KERAS_SIGNATURE = "serving_default"  # the one "signature" a Keras model has: its call

__all__ = ["available", "is_tf_path", "load_source", "from_object", "TfSource", "DEFAULT_OPSET"]

_LOGGERS = ("tensorflow", "tf2onnx", "absl", "keras", "h5py")


# ---------------------------------------------------------------------------------------------------------------
# availability, quiet imports
# ---------------------------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = next((t.strip() for t in text if t.strip()), "")
    return line[:300] if line else type(e).__name__


def available() -> str | None:
    """None when tensorflow and tf2onnx import; else a one-line reason ending in the install hint."""
    import importlib.util

    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return f"TensorFlow import needs {' and '.join(missing)}, not installed here; {INSTALL_HINT}"
    try:
        _modules()
    except Exception as e:  # a broken install: wrong protobuf, missing shared library, ...
        return f"TensorFlow import is unavailable ({type(e).__name__}: {_first_line(e)}); {INSTALL_HINT}"
    return None


# True when TensorFlow was imported by someone else before TF_CPP_MIN_LOG_LEVEL was set: its C++ logging then
# stays verbose (the level is read once), so conversion mutes file descriptor 2 instead.
_CPP_LOUD = False


def _modules():
    """Import tensorflow + tf2onnx with their log output turned down. Raises whatever the import raises."""
    global _CPP_LOUD
    first = "tensorflow" not in sys.modules
    if first:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ INFO/WARNING/ERROR off (read once by TF)
    elif "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        _CPP_LOUD = True
    loud = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("0", "")  # the user asked for TF's logs: keep them
    with _quiet(), _mute_fd2(force=first and not loud):
        import tensorflow as tf
        import tf2onnx
        from tf2onnx import convert as _convert  # noqa: F401  (imports the converter, sets TF's log level)
    return tf, tf2onnx


def _require():
    try:
        return _modules()
    except ImportError as e:
        raise InputError(f"importing a TensorFlow model needs tensorflow and tf2onnx ({_first_line(e)})",
                         INSTALL_HINT) from e


class _Capture(logging.Handler):
    """Keeps tf2onnx's ERROR records (unsupported ops, failed nodes) so they can become one ExportError."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def _mute_fd2(force: bool = False):
    """Send C++ log lines written straight to stderr (fd 2) to a temporary file: while importing TF (its oneDNN
    banner ignores TF_CPP_MIN_LOG_LEVEL), and while converting when TF's own level could not be set (_CPP_LOUD)."""
    if not (force or _CPP_LOUD):
        yield
        return
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreter, ...)
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextlib.contextmanager
def _quiet(capture: _Capture | None = None):
    """Silence TF / absl / keras / tf2onnx logging and warnings; route any stray print() to stderr."""
    saved = []
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate, list(lg.handlers)))
        lg.setLevel(logging.ERROR)
        if name == "tf2onnx":  # its records go to the capture only
            lg.propagate = False
            lg.handlers = [capture] if capture is not None else [logging.NullHandler()]
        elif name in ("absl", "tensorflow", "keras"):
            lg.setLevel(logging.CRITICAL)
    absl_level = None
    try:
        from absl import logging as absl_logging  # installed with tensorflow

        absl_level = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)
    except Exception:
        absl_logging = None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level, propagate, handlers in saved:
            lg.setLevel(level)
            lg.propagate = propagate
            lg.handlers = handlers
        if absl_logging is not None and absl_level is not None:
            absl_logging.set_verbosity(absl_level)


# ---------------------------------------------------------------------------------------------------------------
# public entry points
# ---------------------------------------------------------------------------------------------------------------


def is_tf_path(path: Path) -> bool:
    """A SavedModel directory (holds saved_model.pb/.pbtxt) or a Keras .keras / .h5 file. Does not import TF."""
    p = Path(path)
    if p.is_dir():
        return (p / "saved_model.pb").is_file() or (p / "saved_model.pbtxt").is_file()
    return p.suffix.lower() in KERAS_SUFFIXES


def load_source(path: Path, *, signature: str | None = None, trust_pickle: bool = False) -> "TfSource":
    """Load a SavedModel directory or a Keras .keras / .h5 file. Bad input raises one InputError.

    A SavedModel's graph runs in TensorFlow (its ops, not Python). Keras loads in safe mode: a Lambda layer holding
    Python bytecode is refused unless ``trust_pickle`` (that bytecode would run)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"model not found: {p}", "check the path")
    if p.is_dir():
        if not is_tf_path(p):
            raise InputError(f"{p} is a directory without saved_model.pb",
                             "pass a TensorFlow SavedModel directory or a .keras/.h5 file")
        tf, _ = _require()
        try:
            with _quiet():
                loaded = tf.saved_model.load(str(p))
        except Exception as e:
            raise InputError(f"{p} is not a readable TensorFlow SavedModel ({type(e).__name__}: {_first_line(e)})",
                             "check that the directory is a complete SavedModel (saved_model.pb + variables/)") from e
        return _signature_source(tf, loaded, signature, f"TensorFlow SavedModel {p}", p)
    if p.suffix.lower() not in KERAS_SUFFIXES:
        raise InputError(f"{p} is not a TensorFlow model", "pass a SavedModel directory or a .keras/.h5 file")
    if p.stat().st_size == 0:
        raise InputError(f"{p} is empty", "re-save the Keras model with model.save()")
    tf, _ = _require()
    keras = _keras()
    try:
        with _quiet():
            model = keras.saving.load_model(str(p), compile=False, safe_mode=not trust_pickle)
    except Exception as e:
        if "safe_mode" in str(e) and not trust_pickle:
            raise InputError(f"{p} holds a Lambda layer with Python bytecode, which would run on load: refused "
                             "without --trust-pickle", "pass --trust-pickle (API: trust_pickle=True) only if you trust "
                             "where the file came from, or rebuild the layer as a registered custom layer") from e
        raise InputError(f"{p} is not a loadable Keras model ({type(e).__name__}: {_first_line(e)})",
                         "check that it is a complete file written by model.save() (not save_weights); custom layers "
                         "must be imported and registered with @keras.saving.register_keras_serializable") from e
    kind = "legacy HDF5 Keras" if p.suffix.lower() in (".h5", ".hdf5") else "Keras"
    return _keras_source(tf, model, signature, f"{kind} model file {p}")


def from_object(obj, *, signature: str | None = None) -> "TfSource":
    """An in-memory keras.Model, a tf.Module (a loaded SavedModel, or one whose tf.functions have an
    input_signature), a tf.function with an input_signature, or a ConcreteFunction."""
    tf, _ = _require()
    if _is_keras_model(obj):
        name = getattr(obj, "name", type(obj).__name__)
        return _keras_source(tf, obj, signature, f"in-memory Keras model {name!r}")
    if isinstance(obj, tf.types.experimental.ConcreteFunction) or _is_tf_function(tf, obj):
        key = signature or getattr(obj, "__name__", None) or "call"
        holder = _FunctionHolder(tf, {str(key): obj})
        return _signature_source(tf, holder, None, f"in-memory tf.function {key!r}", None)
    if isinstance(obj, tf.Module) or hasattr(obj, "signatures"):
        return _signature_source(tf, obj, signature, f"in-memory {type(obj).__name__}", None)
    raise InputError(f"cannot import a {type(obj).__module__}.{type(obj).__name__} as a TensorFlow model",
                     "pass a keras.Model, a tf.Module with signatures, or a SavedModel directory / .keras file")


# ---------------------------------------------------------------------------------------------------------------
# the source
# ---------------------------------------------------------------------------------------------------------------


class TfSource:
    """A TensorFlow model with named, flat inputs and outputs, ready for run() and to_onnx()."""

    framework = "tensorflow"
    exporters = ("tf2onnx",)

    def __init__(self, *, description: str, signature: str, input_names: list[str], output_names: list[str]):
        self.description = description
        self.signature = signature
        self._input_names = input_names
        self._default_output_names = list(output_names)
        self._output_names = list(output_names)  # after to_onnx(output_names=...), run() uses these

    # -- interface ------------------------------------------------------------------------------------------------
    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def input_specs(self, feed=None) -> list[TensorSpec] | None:
        raise NotImplementedError

    def run(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def to_onnx(self, example: dict[str, np.ndarray] | None = None, *, opset: int | None = None,
                dynamic: dict[str, dict[int, str]] | None = None, output_names: list[str] | None = None):
        raise NotImplementedError

    # -- shared helpers -------------------------------------------------------------------------------------------
    def _rename_outputs(self, output_names):
        if output_names is None:
            return list(self._default_output_names)
        output_names = [str(n) for n in output_names]
        if len(output_names) != len(self._default_output_names):
            raise InputError(f"{len(output_names)} output names given for {len(self._default_output_names)} "
                             f"outputs ({', '.join(self._default_output_names)})",
                             "give one name per output, in this order")
        if len(set(output_names)) != len(output_names):
            raise InputError(f"output names are not unique: {output_names}", "give each output its own name")
        return output_names

    def _tensors(self, tf, feed: dict, specs: list):
        """feed arrays in signature order as tensors of the signature's dtypes."""
        missing = [n for n in self._input_names if n not in feed]
        if missing:
            raise InputError(f"feed lacks input(s) {', '.join(missing)} of {self.description}",
                             f"give arrays for: {', '.join(self._input_names)}")
        out = []
        for name, spec in zip(self._input_names, specs):
            arr = np.asarray(feed[name])
            want = np.dtype(spec.dtype.as_numpy_dtype)
            if arr.dtype != want:
                if arr.dtype.kind != want.kind and not (arr.dtype.kind in "iu" and want.kind in "iu"):
                    raise InputError(f"input {name} is {arr.dtype}, the model wants {want}",
                                     f"pass {want} data for {name}")
                arr = arr.astype(want)
            out.append(tf.constant(arr))
        return out

    def _dims(self, name: str, shape) -> tuple:
        """TF shape (None for unknown) -> TensorSpec dims: unknown axis 0 is 'batch', others '<input>_dim<i>'."""
        return tuple(int(d) if d is not None else ("batch" if i == 0 else f"{name}_dim{i}")
                     for i, d in enumerate(shape))

    def _convert(self, tf, concrete, trackable, dims: dict[str, tuple], out_names: list[str], opset: int | None,
                 notes: list[str]):
        model, used = _convert(tf, concrete, trackable, self._input_names, dims, out_names, opset, self.description)
        self._output_names = list(out_names)
        import tf2onnx

        info = {"exporter": "tf2onnx", "exporter_version": tf2onnx.__version__, "framework_version": tf.__version__,
                "opset": used, "signature": self.signature, "notes": notes}
        return model, info


class _SignatureSource(TfSource):
    """A SavedModel signature (or a tf.function): shapes and dtypes come from the signature and stay as it says."""

    def __init__(self, tf, holder, key: str, concrete, description: str, notes: list[str] | None = None):
        self._tf = tf
        self._notes = list(notes or [])
        self._holder = holder  # keeps variables alive
        self._fn = concrete
        flat = _flat_input_specs(tf, concrete, description)
        self._specs = [s for _, s in flat]
        super().__init__(description=description, signature=key, input_names=[n for n, _ in flat],
                         output_names=_flat_output_names(tf, concrete))

    def input_specs(self, feed=None) -> list[TensorSpec]:
        return [TensorSpec(n, np.dtype(s.dtype.as_numpy_dtype).name, self._dims(n, s.shape.as_list()))
                for n, s in zip(self._input_names, self._specs)]

    def run(self, feed):
        tf = self._tf
        tensors = self._tensors(tf, feed, self._specs)
        args, kwargs = tf.nest.pack_sequence_as(self._fn.structured_input_signature, tensors)
        try:
            with _quiet():
                result = self._fn(*args, **kwargs)
        except Exception as e:
            raise InputError(f"{self.description} failed on the given feed ({type(e).__name__}: {_first_line(e)})",
                             "check the feed's shapes and dtypes against the signature") from e
        flat = tf.nest.flatten(result)
        return {n: np.asarray(t.numpy() if hasattr(t, "numpy") else t) for n, t in zip(self._output_names, flat)}

    def to_onnx(self, example=None, *, opset=None, dynamic=None, output_names=None):
        tf = self._tf
        dims = {s.name: list(s.shape) for s in self.input_specs()}
        for name, axes in _check_dynamic(dynamic, dims).items():
            for axis, dim_name in axes.items():
                if isinstance(dims[name][axis], int):
                    raise ExportError(
                        f"signature {self.signature!r} fixes {name} axis {axis} to {dims[name][axis]}, so it cannot be "
                        f"made dynamic", "re-save the model with None at that axis in its tf.TensorSpec, or drop "
                        "the dynamic axis")
                dims[name][axis] = str(dim_name)
        out_names = self._rename_outputs(output_names)
        notes = list(self._notes)
        return self._convert(tf, self._fn, self._holder, {k: tuple(v) for k, v in dims.items()}, out_names, opset,
                             notes)


class _KerasSource(TfSource):
    """A Keras model, traced through a tf.function (batch and any requested axis dynamic)."""

    def __init__(self, tf, model, description: str):
        self._tf = tf
        self.model = model
        self._keras_inputs = _keras_inputs(model)  # None: a subclassed / unbuilt model (shapes from the feed)
        self._traced = None  # the ConcreteFunction the last to_onnx converted
        if self._keras_inputs is not None:
            names = _unique([_tensor_name(t, f"input_{i}") for i, t in enumerate(self._keras_inputs)])
        else:
            names = []
        outs = _keras_outputs(model)
        super().__init__(description=description, signature=KERAS_SIGNATURE, input_names=names,
                         output_names=outs or [])

    # shapes / dtypes ------------------------------------------------------------------------------------------------
    def _signature(self, feed=None):
        """[(name, shape list with None, tf dtype)] from model.inputs, else from the feed (axis 0 -> None)."""
        tf = self._tf
        if self._keras_inputs is not None:
            return [(n, list(t.shape), tf.as_dtype(t.dtype)) for n, t in zip(self._input_names, self._keras_inputs)]
        if not feed:
            return None
        self._input_names = list(feed)
        return [(n, [None] + list(np.shape(a))[1:], tf.as_dtype(np.asarray(a).dtype)) for n, a in feed.items()]

    def input_specs(self, feed=None) -> list[TensorSpec] | None:
        sig = self._signature(feed)
        if sig is None:
            return None
        return [TensorSpec(n, np.dtype(d.as_numpy_dtype).name, self._dims(n, s)) for n, s, d in sig]

    def _pack(self, tensors):
        keras = _keras()
        struct = getattr(self.model, "_inputs_struct", None)
        if struct is not None and self._keras_inputs is not None:
            try:
                return keras.tree.pack_sequence_as(struct, list(tensors))
            except Exception:
                pass
        return tensors[0] if len(tensors) == 1 else list(tensors)

    def _flatten_outputs(self, y):
        keras = _keras()
        flat = keras.tree.flatten(y)
        if not self._default_output_names:
            self._default_output_names = [f"output_{i}" for i in range(len(flat))] if len(flat) > 1 else ["output"]
            self._output_names = list(self._default_output_names)
        if len(flat) != len(self._default_output_names):
            raise ExportError(f"the Keras model returned {len(flat)} outputs, expected "
                              f"{len(self._default_output_names)}", "check the model's outputs")
        return flat

    def run(self, feed):
        tf = self._tf
        sig = self._signature(feed)
        if sig is None:
            raise InputError(f"{self.description} has no known inputs", "build the model with keras.Input first")
        tensors = self._tensors(tf, feed, [tf.TensorSpec(s, d) for _, s, d in sig])
        try:
            with _quiet():
                if self._traced is not None:  # what to_onnx converted (honours its extra dynamic axes)
                    flat = list(self._traced(*tensors))
                else:
                    flat = self._flatten_outputs(self.model(self._pack(tensors), training=False))
        except (InputError, ExportError):
            raise
        except Exception as e:
            raise InputError(f"{self.description} failed on the given feed ({type(e).__name__}: {_first_line(e)})",
                             "check the feed's shapes and dtypes against the model's inputs") from e
        return {n: np.asarray(t.numpy() if hasattr(t, "numpy") else t) for n, t in zip(self._output_names, flat)}

    def to_onnx(self, example=None, *, opset=None, dynamic=None, output_names=None):
        tf = self._tf
        sig = self._signature(example)
        if sig is None:
            raise InputError(f"{self.description} has no known inputs and no example feed was given",
                             "build the model with keras.Input, or pass example data")
        shapes = {n: list(s) for n, s, _ in sig}
        dims = {n: list(self._dims(n, s)) for n, s, _ in sig}
        for name, axes in _check_dynamic(dynamic, shapes).items():
            for axis, dim_name in axes.items():
                shapes[name][axis] = None
                dims[name][axis] = str(dim_name)
        spec = [tf.TensorSpec(shapes[n], d, name=n) for n, _, d in sig]
        if not self._default_output_names:  # a subclassed model: learn the output count from one call
            self.run({n: np.zeros([1 if v is None else v for v in shapes[n]], d.as_numpy_dtype)
                      for n, _, d in sig})
        out_names = self._rename_outputs(output_names)
        model, pack, flatten = self.model, self._pack, self._flatten_outputs

        def call(*args):
            return list(flatten(model(pack(list(args)), training=False)))

        try:
            with _quiet():
                concrete = tf.function(call, input_signature=spec, autograph=False).get_concrete_function()
        except Exception as e:
            raise ExportError(f"tracing {self.description} with tf.function failed ({type(e).__name__}: "
                              f"{_first_line(e)})", "check that the model runs under tf.function with the "
                              "TensorFlow Keras backend") from e
        notes = ["Keras model traced through tf.function (tf2onnx.from_keras does not support Keras 3)"]
        result = self._convert(tf, concrete, model, {k: tuple(v) for k, v in dims.items()}, out_names, opset, notes)
        self._traced = concrete
        return result


# ---------------------------------------------------------------------------------------------------------------
# building sources
# ---------------------------------------------------------------------------------------------------------------


def _keras():
    with _quiet():
        import keras
    return keras


def _is_keras_model(obj) -> bool:
    try:
        keras = _keras()
        if isinstance(obj, keras.Model):
            return True
    except ImportError:
        pass
    mod = type(obj).__module__ or ""
    return (mod.startswith("tf_keras") or mod.startswith("keras")) and hasattr(obj, "call") and callable(obj)


def _is_tf_function(tf, obj) -> bool:
    return isinstance(obj, tf.types.experimental.PolymorphicFunction) if hasattr(
        tf.types.experimental, "PolymorphicFunction") else hasattr(obj, "get_concrete_function")


def _keras_source(tf, model, signature, description) -> TfSource:
    if signature not in (None, KERAS_SIGNATURE):
        raise InputError(f"signature {signature!r} not found in {description}; available: {KERAS_SIGNATURE}",
                         "a Keras model has one signature (its call): drop --signature")
    keras = _keras()
    if isinstance(model, keras.Model) and keras.backend.backend() != "tensorflow":
        raise InputError(f"Keras runs on the {keras.backend.backend()!r} backend; converting needs TensorFlow",
                         "set KERAS_BACKEND=tensorflow")
    return _KerasSource(tf, model, description)


class _FunctionHolder:
    """Gives a bare tf.function / ConcreteFunction the ``signatures`` mapping a loaded SavedModel has."""

    def __init__(self, tf, fns: dict):
        self.signatures = fns


def _concrete(tf, fn, key: str, description: str):
    if isinstance(fn, tf.types.experimental.ConcreteFunction):
        return fn
    if getattr(fn, "input_signature", None) is None:
        raise InputError(f"tf.function {key!r} of {description} has no input_signature",
                         "decorate it with @tf.function(input_signature=[tf.TensorSpec(...), ...])")
    return fn.get_concrete_function()


def _signature_source(tf, obj, signature, description, path) -> TfSource:
    sigs = dict(getattr(obj, "signatures", None) or {})
    sigs = {k: v for k, v in sigs.items() if not str(k).startswith("_")}
    if not sigs and not isinstance(obj, _FunctionHolder):
        # a live tf.Module: its tf.functions that carry an input_signature act as signatures
        for attr in sorted(dir(obj)):
            if attr.startswith("_"):
                continue
            try:
                val = getattr(obj, attr)
            except Exception:
                continue
            if _is_tf_function(tf, val) and getattr(val, "input_signature", None) is not None:
                sigs[attr] = val
    where = str(path) if path is not None else description
    if not sigs:
        raise InputError(f"{where} has no serving signatures to convert",
                         "save it with tf.saved_model.save(obj, dir, signatures={'serving_default': fn}) or "
                         "keras model.export(dir)")
    notes = []
    if signature is None:
        key = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
        if len(sigs) > 1:
            notes.append(f"used signature {key!r} of {', '.join(sorted(sigs))} (pick another with --signature)")
    elif signature in sigs:
        key = signature
    else:
        raise InputError(f"signature {signature!r} not found in {where}; available: {', '.join(sorted(sigs))}",
                         "pass one of those with --signature")
    concrete = _concrete(tf, sigs[key], key, description)
    return _SignatureSource(tf, obj, key, concrete, f"{description} (signature {key})", notes)


def _flatten_with_paths(tf, structure) -> list[tuple[str, object]]:
    """[("a/b", leaf)] in tf.nest.flatten order (dict keys sorted)."""
    try:
        from tensorflow.python.util import nest as _nest  # public tf.nest lacks the *_with_paths helpers

        return list(_nest.flatten_with_joined_string_paths(structure))
    except (ImportError, AttributeError):
        def walk(x, prefix):
            if isinstance(x, dict):
                for k in sorted(x):
                    yield from walk(x[k], f"{prefix}/{k}" if prefix else str(k))
            elif isinstance(x, (list, tuple)):
                for i, v in enumerate(x):
                    yield from walk(v, f"{prefix}/{i}" if prefix else str(i))
            else:
                yield prefix, x

        return list(walk(structure, ""))


def _flat_input_specs(tf, concrete, description) -> list[tuple[str, object]]:
    """[(onnx input name, tf.TensorSpec)] in the order TensorFlow flattens the signature's inputs."""
    pairs = _flatten_with_paths(tf, concrete.structured_input_signature)
    out = []
    for path, spec in pairs:
        if not isinstance(spec, tf.TensorSpec):
            raise InputError(f"{description} takes a {type(spec).__name__} input ({path}); only dense tensors "
                             "can be converted", "give the signature plain tf.TensorSpec inputs")
        if spec.dtype == tf.resource:
            continue
        parts = path.split("/")
        default = "/".join(parts[1:]) if parts[0] == "1" and len(parts) > 1 else f"input_{len(out)}"
        out.append((spec.name or default, spec))
    names = _unique([n for n, _ in out])
    return [(n, s) for n, (_, s) in zip(names, out)]


def _flat_output_names(tf, concrete) -> list[str]:
    pairs = _flatten_with_paths(tf, concrete.structured_outputs)
    names = []
    for i, (path, _) in enumerate(pairs):
        if not path or path.replace("/", "").isdigit():
            names.append("output" if len(pairs) == 1 else f"output_{i}")
        else:
            names.append(path)
    return _unique(names)


def _keras_inputs(model):
    try:
        inputs = model.inputs
    except Exception:  # subclassed or never built
        return None
    return list(inputs) if inputs else None


def _keras_outputs(model) -> list[str] | None:
    try:
        outputs = list(model.outputs or [])
    except Exception:
        return None
    if not outputs:
        return None
    names = getattr(model, "output_names", None)
    if not (isinstance(names, (list, tuple)) and len(names) == len(outputs) and all(isinstance(n, str) for n in names)):
        names = []
        for i, t in enumerate(outputs):
            hist = getattr(t, "_keras_history", None)
            op = getattr(hist, "operation", None) or getattr(hist, "layer", None)
            names.append(getattr(op, "name", None) or f"output_{i}")
    return _unique([str(n) for n in names])


def _tensor_name(t, default: str) -> str:
    name = getattr(t, "name", None) or default
    return str(name).split(":")[0]


def _unique(names: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for n in names:
        m, i = n, 1
        while m in seen:
            m = f"{n}_{i}"
            i += 1
        seen.add(m)
        out.append(m)
    return out


def _check_dynamic(dynamic, shapes: dict) -> dict:
    dynamic = dynamic or {}
    for name, axes in dynamic.items():
        if name not in shapes:
            raise InputError(f"dynamic axes given for unknown input {name!r}",
                             f"inputs are: {', '.join(shapes)}")
        for axis in axes:
            if not (-len(shapes[name]) <= int(axis) < len(shapes[name])):
                raise InputError(f"dynamic axis {axis} is out of range for input {name} of rank {len(shapes[name])}",
                                 "give an axis inside the input's rank")
    return {n: {int(a) % len(shapes[n]): d for a, d in axes.items()} for n, axes in dynamic.items()}


# ---------------------------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------------------------


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
