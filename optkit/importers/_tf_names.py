"""Input and output names and dims for the TensorFlow importer (optkit.importers.tf): flat, unique names from a
signature's nested structure or a Keras model's tensors, and the check of requested dynamic axes."""
from __future__ import annotations

from ..errors import InputError


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
