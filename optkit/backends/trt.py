"""NVIDIA TensorRT backend. Engine build and the TensorRT-ready export land with issue 5.

Until then this backend refuses clearly: no fake engine, no pretending.
"""
from __future__ import annotations

import importlib.util

from ..errors import BackendUnavailable
from . import Backend


class TrtBackend(Backend):
    name = "trt"
    doc = "NVIDIA TensorRT engine (strongly typed network, explicit QDQ INT8 / FP16)"

    def check(self) -> None:
        if importlib.util.find_spec("tensorrt") is None:
            raise BackendUnavailable("backend 'trt' is not available here: TensorRT is not installed (and it needs an NVIDIA GPU)",
                                     "run *-trt recipes on a GPU machine with `pip install 'optkit[tensorrt]'` "
                                     "(the TensorRT-ready export without a GPU lands with issue 5)")
        raise BackendUnavailable("backend 'trt' is not implemented in this optkit version (lands with issue 5)",
                                 "use an -ort recipe for now")
