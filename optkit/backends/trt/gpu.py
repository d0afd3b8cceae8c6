"""What this machine has: TensorRT (and whether it has the features optkit needs), a CUDA GPU and a CUDA API for
device buffers; and where timing caches and engines are kept. ``runtime_status`` is the one answer every part of the
backend asks (tests replace it here to play a machine without TensorRT)."""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
from pathlib import Path

from ...errors import BackendUnavailable
from .options import INSTALL_HINT

_GPU_NODES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/proc/driver/nvidia/version")


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _find_gpu() -> tuple[str | None, str | None, str | None]:
    """(gpu name, CUDA API for buffers 'torch'|'cuda-python', reason when there is no usable GPU)."""
    if not any(os.path.exists(p) for p in _GPU_NODES):
        return None, None, "there is no CUDA GPU (no NVIDIA driver or device: /dev/nvidia0, /proc/driver/nvidia)"
    why = []
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return torch.cuda.get_device_name(0), "torch", None
            why.append(f"torch {torch.__version__} sees no CUDA device")
        except Exception as e:  # a broken torch install must not break compile
            why.append(f"torch failed: {type(e).__name__}")
    try:
        cudart = _import_cudart()
    except Exception:
        why.append("cuda-python is not installed")
    else:
        try:
            err, count = cudart.cudaGetDeviceCount()
            if int(err) == 0 and count > 0:
                err, prop = cudart.cudaGetDeviceProperties(0)
                raw = prop.name if int(err) == 0 else b"CUDA device 0"
                name = (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)).rstrip("\x00")
                return name, "cuda-python", None
            why.append(f"cudaGetDeviceCount: {err}, {count} device(s)")
        except Exception as e:
            why.append(f"cuda-python failed: {type(e).__name__}: {e}")
    return None, None, "no usable CUDA GPU (" + "; ".join(why) + "; pip install cuda-python, or torch with CUDA)"


def _trt_features(trt) -> str | None:
    """What this TensorRT lacks for optkit (feature checks, not version strings), or None."""
    missing = [a for a, obj in (("OnnxParser", trt), ("Runtime", trt), ("IExecutionContext.execute_async_v3",
                                                                            getattr(trt, "IExecutionContext", None)),
                                 ("ICudaEngine.num_io_tensors", getattr(trt, "ICudaEngine", None)))
               if obj is None or not hasattr(obj, a.split(".")[-1])]
    flags = getattr(trt, "NetworkDefinitionCreationFlag", None)
    strongly_typed = hasattr(flags, "STRONGLY_TYPED") or not hasattr(getattr(trt, "BuilderFlag", None), "FP16")
    if not strongly_typed:
        missing.append("strongly typed networks")
    if missing:
        return (f"TensorRT {getattr(trt, '__version__', '?')} lacks {', '.join(missing)} "
                "(optkit needs TensorRT >= 10)")
    return None


def runtime_status() -> dict:
    """{'ok', 'reason', 'tensorrt' (version), 'gpu' (name), 'cuda_api'}: can this machine build and run engines?"""
    out = {"ok": False, "reason": None, "tensorrt": None, "gpu": None, "cuda_api": None}
    reasons = []
    if importlib.util.find_spec("tensorrt") is None:
        reasons.append("TensorRT is not installed (no 'tensorrt' Python module)")
    else:
        try:
            trt = importlib.import_module("tensorrt")
            out["tensorrt"] = getattr(trt, "__version__", "?")
            lack = _trt_features(trt)
            if lack:
                reasons.append(lack)
        except Exception as e:  # e.g. the pip stub without libnvinfer
            reasons.append(f"TensorRT cannot be imported ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})")
    gpu, api, why = _find_gpu()
    out.update(gpu=gpu, cuda_api=api)
    if why:
        reasons.append(why)
    out["ok"] = not reasons
    out["reason"] = "; ".join(reasons) if reasons else None
    return out


def _require_runtime() -> dict:
    st = runtime_status()
    if not st["ok"]:
        raise BackendUnavailable(f"backend 'trt' cannot build or run TensorRT engines here: {st['reason']}", INSTALL_HINT)
    return st


def default_cache_dir(cache_dir: str = "") -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    base = os.environ.get("OPTKIT_CACHE_DIR")
    return Path(base).expanduser() / "trt" if base else Path.home() / ".cache" / "optkit" / "trt"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-").lower() or "gpu"


def shared_timing_cache(trt_version: str, gpu: str, cache_dir: str = "") -> Path:
    """Timing caches are specific to the device and the TensorRT version: one shared file per pair."""
    return default_cache_dir(cache_dir) / f"timing-trt{trt_version}-{_slug(gpu)}.cache"
