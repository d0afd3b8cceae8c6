"""optkit: offline inference optimization and compression for ONNX models.

    import optkit
    art = optkit.optimize("model.onnx", "int8-ort", data="calib.npz")
    res = optkit.bench(art["artifact"])

Heavy libraries load on first use, so ``import optkit`` stays fast.
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "optimize": ("optkit.api", "optimize"),
    "inspect": ("optkit.api", "inspect"),
    "export": ("optkit.api", "export"),
    "load": ("optkit.predictor", "load"),
    "tune": ("optkit.serving", "tune"),
    "Predictor": ("optkit.predictor", "Predictor"),
    "bench": ("optkit.measure", "bench"),
    "verify": ("optkit.artifact", "verify"),
    "load_recipe": ("optkit.recipe", "load_recipe"),
    "Recipe": ("optkit.recipe", "Recipe"),
    "Pipeline": ("optkit.pipeline", "Pipeline"),
    "OptkitError": ("optkit.errors", "OptkitError"),
}

__all__ = list(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'optkit' has no attribute {name!r}")
