"""Backends: compile an ONNX model into an artifact and open sessions on it.

Each backend imports its library lazily; a missing library or device is a ``BackendUnavailable`` with the
reason and the install hint, never a crash of the CLI.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from ..errors import BackendUnavailable, RecipeError
from ..config import PassConfig


class Session(Protocol):
    """An open model: ``run(feeds) -> {output name: array}``, plus its input/output specs."""

    inputs: list
    outputs: list

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...
    def close(self) -> None: ...
    def __enter__(self) -> "Session": ...
    def __exit__(self, *exc) -> None: ...


class Backend:
    name: ClassVar[str] = ""
    doc: ClassVar[str] = ""
    Options: ClassVar[type[PassConfig]] = PassConfig

    def check(self) -> None:
        """Raise BackendUnavailable (with the reason and what to do) if this backend cannot compile here."""

    def status(self) -> dict:
        """{'ok': can this machine run models on this backend, 'reason': why not}; by default what check() says."""
        try:
            self.check()
        except BackendUnavailable as e:
            return {"ok": False, "reason": str(e)}
        return {"ok": True, "reason": None}

    def compile(self, model_path: Path, out_dir: Path, options: PassConfig, threads: int = 1,
                shapes: dict | None = None) -> dict:
        """Build the backend artifact from ``model_path`` into ``out_dir`` for the static ``shapes`` the pipeline
        used (input name -> dims); return what was written."""
        raise NotImplementedError

    def load(self, path: Path, threads: int = 1, options: PassConfig | None = None,
             shapes: dict | None = None) -> Session:
        """Open ``path`` for inference; ``shapes`` (input -> dims) are the feeds' shapes, for static-shape backends."""
        raise NotImplementedError


_BACKENDS = {
    "ort": "optkit.backends.ort:OrtBackend",
    "tvm": "optkit.backends.tvm:TvmBackend",
    "trt": "optkit.backends.trt:TrtBackend",
}


def backend_names() -> list[str]:
    return list(_BACKENDS)


def get_backend(name: str, check: bool = True) -> Backend:
    if name not in _BACKENDS:
        raise RecipeError(f"unknown backend {name!r}", f"available backends: {', '.join(_BACKENDS)}")
    mod, _, cls = _BACKENDS[name].partition(":")
    backend = getattr(importlib.import_module(mod), cls)()
    if check:
        backend.check()
    return backend


def backend_status() -> dict[str, str]:
    """name -> 'available' or the reason models cannot run on it here."""
    out = {}
    for name in _BACKENDS:
        st = get_backend(name, check=False).status()
        out[name] = "available" if st.get("ok") else (st.get("reason") or "unavailable")
    return out


__all__ = ["Backend", "Session", "BackendUnavailable", "get_backend", "backend_names", "backend_status"]
