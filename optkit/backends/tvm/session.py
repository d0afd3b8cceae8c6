"""The TVM runtime side: a compiled library on the relax VM (``TvmSession``), 64-byte aligned staging of inputs."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ...errors import InputError
from ...model import TensorSpec
from .options import LIB_FILE, META_FILE, tvm_version

_ALIGN = 64


def _aligned_empty(shape, dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    raw = np.empty(n * dt.itemsize + _ALIGN, np.uint8)
    off = (-raw.ctypes.data) % _ALIGN
    return raw[off:off + n * dt.itemsize].view(dt).reshape(shape)


def _prepare_runtime_env(threads: int) -> None:
    """TVM reads these when its thread pool starts: size it for this machine, and do not pin threads to cores
    (TVM's default binds the main thread to core 0, which every ONNX Runtime thread created later would inherit)."""
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    os.environ.setdefault("TVM_NUM_THREADS", str(max(int(threads), os.cpu_count() or 1)))  # read at first kernel run


class TvmSession:
    """A compiled TVM library on the relax VM: ``run(feeds) -> {output name: array}``."""

    def __init__(self, compiled_dir: str | Path, threads: int = 1, _tmp: tempfile.TemporaryDirectory | None = None):
        d = Path(compiled_dir)
        self._tmp = _tmp
        try:
            self.meta = json.loads((d / META_FILE).read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{d / META_FILE} is missing or unreadable", "compile the model with the tvm backend") from e
        built_with = self.meta.get("tvm")
        if built_with and tvm_version() and built_with != tvm_version():
            raise InputError(f"{d / LIB_FILE} was built with TVM {built_with}, this is TVM {tvm_version()}",
                             "compile it again (optkit optimize ... --recipe fp32-tvm)")
        _prepare_runtime_env(threads)
        import tvm
        from tvm import relax

        lib_path = d / self.meta.get("lib", LIB_FILE)
        try:
            lib = tvm.runtime.load_module(str(lib_path))
        except Exception as e:
            raise InputError(f"TVM cannot load {lib_path}: {str(e).strip().splitlines()[-1][:300]}",
                             "compile it again on this machine") from e
        self._tvm = tvm
        self.vm = relax.VirtualMachine(lib, tvm.cpu())
        self._main = self.vm["main"]
        self._threads = max(1, int(threads))
        self._set_threads()
        self.inputs = [TensorSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in self.meta["inputs"]]
        self.outputs = [TensorSpec(o["name"], o["dtype"], tuple(o["shape"])) for o in self.meta["outputs"]]
        self._names = [o.name for o in self.outputs]
        self._staging = []
        for spec in self.inputs:
            stage = _aligned_empty(spec.shape, spec.dtype)
            self._staging.append((stage, tvm.runtime.from_dlpack(stage)))

    def _set_threads(self) -> None:
        num = self._tvm.get_global_func("runtime.NumThreads")
        if int(num()) != self._threads:
            self._tvm.get_global_func("runtime.config_threadpool")(1, self._threads)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.vm is None:
            raise InputError("this TVM session is closed", "load the model again")
        args = []
        for spec, (stage, staged) in zip(self.inputs, self._staging):
            if spec.name not in feeds:
                raise InputError(f"missing input {spec.name!r}", f"the compiled model takes {[s.name for s in self.inputs]}")
            a = feeds[spec.name]
            if not isinstance(a, np.ndarray):
                a = np.asarray(a)
            if a.shape != spec.shape:
                raise InputError(f"input {spec.name!r} has shape {list(a.shape)}, the TVM library was compiled for "
                                 f"{list(spec.shape)}", "compile again with that shape (static shapes only)")
            if a.dtype == stage.dtype and a.flags.c_contiguous and a.ctypes.data % _ALIGN == 0:
                args.append(self._tvm.runtime.from_dlpack(a))  # zero copy
            else:
                np.copyto(stage, a, casting="unsafe")  # TVM kernels need 64-byte aligned inputs
                args.append(staged)
        out = self._main(*args)
        outs = [out] if isinstance(out, self._tvm.runtime.Tensor) else list(out)
        return {n: np.from_dlpack(o).copy() for n, o in zip(self._names, outs)}

    def close(self) -> None:
        self.vm = None
        self._main = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

