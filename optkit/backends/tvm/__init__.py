"""Apache TVM backend: relax ONNX import, llvm target for this CPU, optional MetaSchedule tuning, relax VM runtime.

What ``compile()`` does
-----------------------
1. fixes the input shapes (``shapes`` argument, else backend option ``shapes``, else the model's static dims with a
   batch-like leading symbolic dim = 1; another symbolic dim without a value is an error);
2. picks the target: ``target: auto`` is ``{"kind": "llvm", "mcpu": <LLVM's host CPU, e.g. znver4>, "num-cores":
   threads}`` (a CPU name LLVM does not know falls back to a feature-based x86 name, then to LLVM's default);
   an explicit target is a TVM target JSON dict or the old ``llvm -mcpu=... -num-cores=...`` string form;
3. with ``tune: true``: MetaSchedule (``tune_relax``: ``tune_trials`` in total, ``max_trials_per_task``) into a
   persistent JSON tuning database keyed by sha256(static-shape ONNX bytes) + target + TVM version, under
   ``cache_dir`` / ``$OPTKIT_CACHE/tvm`` / ``~/.cache/optkit/tvm``; the next compile of the same model and target
   reuses it (``tuning.db == "reused"``) without tuning again;
4. builds (relax ``tvm.compile``; 2-D convolutions converted to NHWC unless ``conv_layout`` says otherwise; the
   database applied when there is one) and writes ``compiled/model.so``
   (``export_library``: weights are constants inside the library) and ``compiled/tvm.json`` (target, shapes, input
   and output names/dtypes/shapes, TVM version, tuning record, numerics);
5. runs the library on one synthetic feed against ONNX Runtime and records the max-abs difference; a result wildly
   off (relative to the output range, ``numerics_tol``) is a ``PassError``.

Tuning and building run in child processes (``optkit.backends.tvm.worker``, started through ``optkit.child`` in a
process group of its own that is killed on timeout) with their output in log files: a crash there never takes the
caller down. A crashed or timed-out tuning leaves an untuned build with
``tuning.status = "crashed" | "timeout"``, the log path and a loud warning (never a claim that it was tuned); a crashed
build is a ``PassError`` naming the log.

INT8: relax's ONNX frontend imports QuantizeLinear/DequantizeLinear, but TVM 0.27's CPU pipeline has no QDQ fusion:
the model runs as float "fake quant" (dequantize -> float op -> quantize), with INT8 numerics and no INT8 kernels.
compile() says so (``int8.kernels = "none (float fake-quant)"`` and a warning). QOperator models (QLinearConv ...) and
ONNX Runtime contrib ops have no converter: compile() fails and names them.

``load()`` takes a compiled dir (or an artifact dir / an artifact's ``model.onnx`` whose ``compiled/tvm.json`` matches
it), or a plain ``.onnx`` which it compiles now into a temporary dir (untuned unless the options say ``tune: true``).

Notes: ``export_library`` links with the system C++ compiler (``g++``), so compiling needs one; the static-shape ONNX is
folded with onnxsim before import (TVM 0.27's importer fails on some Shape->Gather chains otherwise); sessions set
``TVM_BIND_THREADS=0`` (TVM would pin the main thread to core 0) and size TVM's thread pool with ``TVM_NUM_THREADS``
unless the user set them; the pool is per process, so the last session's ``threads`` wins.

The package: ``options`` (TvmOptions, targets, cache key, host CPU), ``runner`` (worker phases in child processes),
``tuning`` (the tuning database), ``backend`` (compile, load), ``session`` (the runtime) and ``worker`` (the child
side; importing it does not import TVM).
"""
from __future__ import annotations

from .backend import TvmBackend
from .options import (BUILD_LOG, BUILD_TIMEOUT_S, DB_MARKER, INSTALL_HINT, LIB_FILE, META_FILE, META_FORMAT, TUNE_LOG,
                      TvmOptions, cache_key, cache_root, host_cpu, parse_target, static_shapes, target_string,
                      tvm_version)
from .runner import run_worker
from .session import TvmSession

__all__ = ["TvmBackend", "TvmOptions", "TvmSession", "parse_target", "host_cpu", "cache_root", "cache_key",
           "target_string", "tvm_version", "run_worker", "static_shapes", "BUILD_LOG", "BUILD_TIMEOUT_S", "DB_MARKER",
           "INSTALL_HINT", "LIB_FILE", "META_FILE", "META_FORMAT", "TUNE_LOG"]
