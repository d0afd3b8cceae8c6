"""Graph folding with the external simplifiers (onnxsim, onnxslim): shared by the ``simplify`` pass and the TVM
backend's worker (which folds the static-shape model before TVM's importer), so neither imports the other."""
from __future__ import annotations

import onnx


def onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim with its own output check off; its failed check is an error."""
    import onnxsim as _onnxsim

    out, ok = _onnxsim.simplify(model, check_n=0)
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    return out


def onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim as _onnxslim

    return _onnxslim.slim(model, no_shape_infer=False)


ENGINES = {"onnxsim": onnxsim, "onnxslim": onnxslim}


def simplified(model: onnx.ModelProto) -> tuple[onnx.ModelProto | None, str | None]:
    """(the model folded by onnxsim, else by onnxslim, and the engine's name) or (None, None) when both fail."""
    for engine, fn in ENGINES.items():
        try:
            return fn(model), engine
        except Exception:  # noqa: BLE001 - try the next engine / the caller keeps the unsimplified model
            continue
    return None, None


__all__ = ["onnxsim", "onnxslim", "simplified", "ENGINES"]
