"""Small input checks shared by the library and the CLI (a leaf: imports only errors, numpy and, lazily, onnxruntime).

- ``check_threads``: a thread count in 1..cores;
- ``non_finite``: NaN/Inf counts per float array (bad ``--data`` is a data problem, not a pass's);
- ``check_opsets``: an opset newer than this onnxruntime supports is named as such, before ORT's C++ error.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from .errors import InputError


def max_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)), os.cpu_count() or 1)
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def check_threads(n, flag: str = "--threads") -> int:
    hi = max_threads()
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= hi:
        raise InputError(f"{flag} must be between 1 and {hi} (the CPU cores here), got {n!r}",
                         f"use {flag} 1 (the reported default) up to {hi}")
    return int(n)


def non_finite(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """{name: count of NaN/Inf values} for the float/complex arrays that hold any."""
    out = {}
    for k, v in arrays.items():
        if isinstance(v, np.ndarray) and v.dtype.kind in "fc":
            c = int(v.size - np.count_nonzero(np.isfinite(v)))
            if c:
                out[k] = c
    return out


def check_finite(arrays: dict[str, np.ndarray], where: str) -> None:
    """NaN/Inf values, or an array with no values at all (a 0-length axis), are a data problem named up front."""
    empty = [k for k, v in arrays.items() if isinstance(v, np.ndarray) and v.size == 0]
    if empty:
        raise InputError(f"{where}: {', '.join(repr(k) for k in empty)} {'is' if len(empty) == 1 else 'are'} empty "
                         f"(shape {list(arrays[empty[0]].shape)}: no feeds, or a 0-length axis)",
                         "give at least one feed with data for every input")
    bad = non_finite(arrays)
    if bad:
        what = ", ".join(f"'{k}' holds {c} of {arrays[k].size}" for k, c in bad.items())
        raise InputError(f"{where}: non-finite values (NaN/Inf): {what}",
                         "replace or drop those values (numpy.nan_to_num, or remove the feeds) before optimizing "
                         "or benchmarking")


@functools.lru_cache(maxsize=1)
def ort_max_opset() -> int | None:
    """The newest ai.onnx opset this onnxruntime knows (the newest since_version among its schemas)."""
    try:
        from onnxruntime.capi import _pybind_state as C

        return max(s.since_version for s in C.get_all_operator_schema() if s.domain in ("", "ai.onnx"))
    except Exception:  # noqa: BLE001 - an onnxruntime without the schema API: let ORT say it
        return None


def check_opsets(model, where) -> None:
    """An InputError when the model's ai.onnx opset is newer than this onnxruntime supports."""
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            hi = ort_max_opset()
            if hi is not None and o.version > hi:
                raise InputError(f"{where}: opset {o.version} of ai.onnx is newer than this onnxruntime supports "
                                 f"(max {hi})", f"re-export the model at opset {hi} or lower, or upgrade onnxruntime")
