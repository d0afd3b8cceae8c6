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

from pathlib import Path

from ..errors import InputError
from ._tf_convert import DEFAULT_OPSET
from ._tf_env import INSTALL_HINT, _first_line, _quiet, _require, available  # noqa: F401  (INSTALL_HINT re-exported)
from ._tf_sources import KERAS_SIGNATURE  # noqa: F401  (re-exported)
from ._tf_sources import (TfSource, _FunctionHolder, _is_keras_model, _is_tf_function, _keras, _keras_source,
                          _signature_source)

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")

__all__ = ["available", "is_tf_path", "load_source", "from_object", "TfSource", "DEFAULT_OPSET"]


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
