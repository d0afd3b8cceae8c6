"""A deserialized TensorRT engine: ``run(feeds)`` and ``time_ms`` (CUDA events)."""
from __future__ import annotations

import numpy as np

from ...errors import InputError
from ...model import TensorSpec
from .cuda import _cuda
from .engine import _logger
from .options import TrtError

class TrtSession:
    """A deserialized engine: ``run(feeds)`` copies inputs to the GPU, ``execute_async_v3``, copies outputs back.

    ``time_ms(feed, runs)`` measures the engine alone (inputs already on the device) with CUDA events."""

    def __init__(self, plan: bytes, source: str = "", api: str | None = None):
        import tensorrt as trt

        self.trt = trt
        self.source = source
        self._log = _logger(trt)
        self.runtime = trt.Runtime(self._log)
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise TrtError(f"TensorRT cannot deserialize {source or 'the engine'}: " + " | ".join(self._log.messages[-3:]),
                           "engines are tied to the TensorRT version and GPU that built them: rebuild it here")
        self.context = self.engine.create_execution_context()
        self.cuda = _cuda(api)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_in = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self._dtypes = {}
        for n in names:
            try:
                self._dtypes[n] = np.dtype(trt.nptype(self.engine.get_tensor_dtype(n)))
            except (TypeError, KeyError, ValueError):
                raise TrtError(f"engine tensor {n!r} has type {self.engine.get_tensor_dtype(n)}, which numpy cannot hold",
                               "keep float32/float16/int IO (fp16 pass: keep_io_types: true)") from None
        shape = lambda n: tuple(int(d) if int(d) >= 0 else None for d in self.engine.get_tensor_shape(n))  # noqa: E731
        self.inputs = [TensorSpec(n, self._dtypes[n].name, shape(n)) for n in names if is_in[n]]
        self.outputs = [TensorSpec(n, self._dtypes[n].name, shape(n)) for n in names if not is_in[n]]
        self._profile = {s.name: tuple(tuple(int(v) for v in d) for d in self.engine.get_tensor_profile_shape(s.name, 0))
                         for s in self.inputs if None in s.shape}
        self._bufs: dict[str, tuple[tuple, object]] = {}

    def _buffer(self, name: str, shape: tuple):
        cur = self._bufs.get(name)
        if cur is None or cur[0] != shape:
            if cur is not None:
                self.cuda.free(cur[1])
            cur = (shape, self.cuda.empty(shape, self._dtypes[name]))
            self._bufs[name] = cur
            self.context.set_tensor_address(name, self.cuda.ptr(cur[1]))
        return cur[1]

    def _bind(self, feeds: dict[str, np.ndarray]) -> dict[str, tuple]:
        want = {s.name for s in self.inputs}
        if set(feeds) != want:
            raise InputError(f"TensorRT engine inputs are {sorted(want)}, the feed has {sorted(feeds)}",
                             "name the arrays after the model inputs")
        for s in self.inputs:
            arr = np.ascontiguousarray(feeds[s.name], dtype=self._dtypes[s.name])
            if s.name in self._profile:
                mn, _, mx = self._profile[s.name]
                if len(arr.shape) != len(mn) or any(not a <= d <= c for a, d, c in zip(mn, arr.shape, mx)):
                    raise InputError(f"feed shape {list(arr.shape)} for {s.name!r} is outside the engine's profile "
                                     f"(min {list(mn)}, max {list(mx)})",
                                     "rebuild with backend_options.profiles covering it, or feed a shape in range")
            if not self.context.set_input_shape(s.name, tuple(arr.shape)):
                raise InputError(f"TensorRT rejected shape {list(arr.shape)} for input {s.name!r}",
                                 f"the engine expects {list(s.shape)}")
            self.cuda.upload(self._buffer(s.name, tuple(arr.shape)), arr)
        shapes = {}
        for o in self.outputs:
            shp = tuple(int(d) for d in self.context.get_tensor_shape(o.name))
            if any(d < 0 for d in shp):
                raise TrtError(f"output {o.name!r} has a data-dependent shape {list(shp)}",
                               "optkit's TensorRT runtime needs output shapes known from the input shapes")
            self._buffer(o.name, shp)
            shapes[o.name] = shp
        return shapes

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.cuda.handle):
            raise TrtError("TensorRT execute_async_v3 failed: " + " | ".join(self._log.messages[-3:]),
                           "check the feed shapes and the GPU")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shapes = self._bind(feeds)
        self._execute()
        out = {o.name: self.cuda.download(self._bufs[o.name][1], shapes[o.name], self._dtypes[o.name])
               for o in self.outputs}
        self.cuda.sync()
        return out

    def time_ms(self, feed: dict[str, np.ndarray], runs: int = 100, warmup: int = 10) -> list[float]:
        """Per-run GPU latency (ms) of the engine alone, measured with CUDA events on its stream."""
        self._bind(feed)
        for _ in range(warmup):
            self._execute()
        self.cuda.sync()
        times = []
        for _ in range(runs):
            start, end = self.cuda.event(), self.cuda.event()
            self.cuda.record(start)
            self._execute()
            self.cuda.record(end)
            times.append(self.cuda.elapsed_ms(start, end))
        return times

    def close(self) -> None:
        if getattr(self, "cuda", None) is not None:
            try:
                self.cuda.sync()
            except Exception:
                pass
            for _, buf in self._bufs.values():
                self.cuda.free(buf)
            self._bufs = {}
            self.cuda.close()
            self.cuda = None
        self.context = self.engine = self.runtime = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
