"""Environment facts recorded with every result: CPU, library versions, platform."""
from __future__ import annotations

import importlib.metadata
import platform
import sys

from .hw import cpu_features, isa_label, ort_int8_kernels

_LIBS = ("optkit", "onnx", "onnxruntime", "onnxsim", "onnxslim", "onnxscript", "numpy", "torch",
         "tensorflow-cpu", "tf2onnx", "apache-tvm", "tensorrt", "neural-compressor")


def library_versions() -> dict[str, str]:
    out = {}
    for lib in _LIBS:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def environment() -> dict:
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu_features(),
            "isa": isa_label(), "int8_kernels": ort_int8_kernels(), "libraries": library_versions()}
