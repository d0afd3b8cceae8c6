"""Apache TVM backend (relax + MetaSchedule). Compilation and tuning land with issue 5.

Until then this backend refuses clearly: it never pretends to have compiled anything.
"""
from __future__ import annotations

import importlib.util

from ..errors import BackendUnavailable
from . import Backend


class TvmBackend(Backend):
    name = "tvm"
    doc = "Apache TVM relax VM, llvm target for this CPU, MetaSchedule tuning"

    def check(self) -> None:
        if importlib.util.find_spec("tvm") is None:
            raise BackendUnavailable("backend 'tvm' is not available here: apache-tvm is not installed",
                                     "pip install 'optkit[tvm]' (the TVM backend itself lands with issue 5)")
        raise BackendUnavailable("backend 'tvm' is not implemented in this optkit version (lands with issue 5)",
                                 "use an -ort recipe for now")
