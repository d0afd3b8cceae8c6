"""Device buffers for the TensorRT runtime, behind one small interface: torch CUDA tensors, else cuda-python."""
from __future__ import annotations

import numpy as np

from ...errors import BackendUnavailable
from .gpu import _import_cudart
from .options import TrtError

class _TorchCuda:
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.handle = int(self.stream.cuda_stream)

    def empty(self, shape, dtype: np.dtype):
        t = self.torch
        table = {np.dtype(np.float32): t.float32, np.dtype(np.float16): t.float16, np.dtype(np.int8): t.int8,
                 np.dtype(np.uint8): t.uint8, np.dtype(np.int32): t.int32, np.dtype(np.int64): t.int64,
                 np.dtype(np.bool_): t.bool}
        if dtype not in table:
            raise TrtError(f"engine IO type {dtype} has no torch equivalent", "use float32/float16/int IO")
        return t.empty(tuple(int(d) for d in shape), dtype=table[dtype], device="cuda")

    @staticmethod
    def ptr(buf) -> int:
        return int(buf.data_ptr())

    def upload(self, buf, arr: np.ndarray) -> None:
        with self.torch.cuda.stream(self.stream):
            buf.copy_(self.torch.from_numpy(np.ascontiguousarray(arr)))

    def download(self, buf, shape, dtype):
        with self.torch.cuda.stream(self.stream):
            out = buf.reshape(tuple(shape)).cpu()  # ordered after the enqueued work on this stream
        return out.numpy().astype(dtype, copy=False)

    def sync(self) -> None:
        self.stream.synchronize()

    def event(self):
        return self.torch.cuda.Event(enable_timing=True)

    def record(self, ev) -> None:
        ev.record(self.stream)

    @staticmethod
    def elapsed_ms(start, end) -> float:
        end.synchronize()
        return float(start.elapsed_time(end))

    def free(self, buf) -> None:
        pass

    def close(self) -> None:
        self.stream = None


class _CudartCuda:
    name = "cuda-python"

    def __init__(self):
        self.rt = _import_cudart()
        self.stream = self._ck(self.rt.cudaStreamCreate())
        self.handle = int(self.stream)
        self._events = []

    def _ck(self, res):
        err, *vals = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            _, msg = self.rt.cudaGetErrorString(err)
            raise TrtError(f"CUDA error {int(err)}: {msg.decode(errors='replace') if isinstance(msg, bytes) else msg}",
                           "check the GPU and driver (nvidia-smi)")
        return vals[0] if len(vals) == 1 else (tuple(vals) if vals else None)

    def empty(self, shape, dtype: np.dtype):
        nbytes = max(1, int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
        return {"ptr": self._ck(self.rt.cudaMalloc(nbytes)), "nbytes": nbytes}

    @staticmethod
    def ptr(buf) -> int:
        return int(buf["ptr"])

    def upload(self, buf, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ck(self.rt.cudaMemcpyAsync(buf["ptr"], arr.ctypes.data, arr.nbytes, kind, self.stream))
        buf["host"] = arr  # kept alive until the next sync

    def download(self, buf, shape, dtype):
        out = np.empty(tuple(shape), dtype=dtype)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ck(self.rt.cudaMemcpyAsync(out.ctypes.data, buf["ptr"], out.nbytes, kind, self.stream))
        self.sync()
        return out

    def sync(self) -> None:
        self._ck(self.rt.cudaStreamSynchronize(self.stream))

    def event(self):
        ev = self._ck(self.rt.cudaEventCreate())
        self._events.append(ev)
        return ev

    def record(self, ev) -> None:
        self._ck(self.rt.cudaEventRecord(ev, self.stream))

    def elapsed_ms(self, start, end) -> float:
        self._ck(self.rt.cudaEventSynchronize(end))
        return float(self._ck(self.rt.cudaEventElapsedTime(start, end)))

    def free(self, buf) -> None:
        if buf.get("ptr") is not None:
            self.rt.cudaFree(buf["ptr"])
            buf["ptr"] = None

    def close(self) -> None:
        for ev in self._events:
            self.rt.cudaEventDestroy(ev)
        self._events = []
        if self.stream is not None:
            self.rt.cudaStreamDestroy(self.stream)
            self.stream = None


def _cuda(api: str | None):
    if api == "torch":
        return _TorchCuda()
    if api == "cuda-python":
        return _CudartCuda()
    raise BackendUnavailable("backend 'trt' has no CUDA API for device buffers (torch with CUDA, or cuda-python)",
                             "pip install cuda-python")
