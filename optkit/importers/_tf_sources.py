"""The sources of the TensorFlow importer (optkit.importers.tf): ``TfSource`` and its two kinds, a SavedModel
signature / tf.function (``_SignatureSource``) and a Keras model traced through a tf.function (``_KerasSource``), with
the helpers that build them and name their flat inputs and outputs."""
from __future__ import annotations

import numpy as np

from ..errors import ExportError, InputError
from ..model import TensorSpec
from ._tf_convert import _convert
from ._tf_env import _first_line, _quiet
from ._tf_names import (_check_dynamic, _flat_input_specs, _flat_output_names, _keras_inputs, _keras_outputs,
                        _tensor_name, _unique)

KERAS_SIGNATURE = "serving_default"  # the one "signature" a Keras model has: its call


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
