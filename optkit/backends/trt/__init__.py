"""NVIDIA TensorRT backend: TensorRT-ready ONNX, engine build (strongly typed network), engine runtime.

What it does
------------
``compile()`` takes the ONNX the recipe's passes produced (``int8-trt``: explicit symmetric S8 QDQ with per-channel
weights; ``fp16-trt``: FP16 weights and casts, float32 IO) and

1. makes it TensorRT-ready (``trt_ready``: int32 bias DequantizeLinear nodes, which TensorRT cannot import, are
   folded into float32 initializers - the same arithmetic ONNX Runtime did, so the validated numerics hold; the
   ``trt-qdq-layout`` pass does the same rewrite inside a recipe, from the neutral ``optkit.qdq_layout``);
2. verifies the layout TensorRT 10/11 strongly typed networks need (``check_trt_qdq`` / ``check_trt_model``) and
   refuses with the list of problems otherwise;
3. derives one optimization profile (min/opt/max per input, ``derive_profiles``);
4. writes ``trtexec.sh`` and ``build_engine.txt`` with the exact engine-build command (``build_command``) and the
   equivalent optkit call (``build_engine``);
5. where TensorRT and a CUDA GPU are present, builds ``engine.plan`` for real through the TensorRT Python API
   (ONNX parser, strongly typed network, profile, workspace pool, timing cache reused from and saved to both
   ``compiled/timing.cache`` and a shared cache dir). Where they are absent it says so in the returned dict
   (``"engine": None, "engine_built": False, "reason": ...``): there is no fake engine.

``load()`` runs an engine (``execute_async_v3`` with ``set_tensor_address``; device buffers from torch CUDA tensors,
else cuda-python) and raises ``BackendUnavailable`` with the reason where TensorRT or a GPU is missing.

Profiles (backend option ``profiles``)
--------------------------------------
``profiles: {input: "1x3x224x224,8x3x224x224,32x3x224x224"}`` gives MIN,OPT,MAX for an input (one shape alone
means min = opt = max). An input not named there gets: opt = its ``--shape`` / data shape (else the model's dims
with a symbolic leading dim set to 1); for each symbolic dim min = 1; max = opt x ``max_batch_multiple`` on axis 0
and max = opt on other symbolic axes (a sequence length given is taken as the longest). Static dims are fixed.
Only inputs with symbolic dims get a profile entry (trtexec's --minShapes/--optShapes/--maxShapes).

TensorRT 10 vs 11 differences are handled by feature checks (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
present or weak typing gone, ``BuilderFlag.TF32``, ``builder_optimization_level``, parser error ``node_name``),
never by version strings. No precision builder flags are used: the ONNX carries the types (TensorRT 11 removed
``--fp16``/``--int8`` and the INT8 calibrator).

The package: ``options`` (TrtOptions, file names, TrtError), ``profiles`` (shapes and optimization profiles),
``script`` (trtexec command and build files), ``gpu`` (what this machine has: ``runtime_status``), ``engine``
(``build_engine``), ``cuda`` (device-buffer adapters), ``session`` (``TrtSession``) and ``backend`` (``TrtBackend``,
``trt_ready``). The layout checks and the int32-bias fold live in ``optkit.qdq_layout`` (shared with the pass).
"""
from __future__ import annotations

from ...qdq_layout import check_trt_model, check_trt_qdq, model_precision
from ...qdq_layout import fold_int32_bias_dq as prepare_trt_onnx
from .backend import TrtBackend, trt_ready
from .engine import build_engine
from .gpu import default_cache_dir, runtime_status, shared_timing_cache
from .options import (ENGINE_FILE, INSTALL_HINT, PRECISIONS, README_FILE, SCRIPT_FILE, TIMING_CACHE_FILE,
                      TRT_ONNX_FILE, TrtError, TrtOptions)
from .profiles import Profile, derive_profiles, parse_profile, parse_shape
from .script import build_command
from .session import TrtSession

__all__ = ["TrtBackend", "TrtOptions", "TrtSession", "TrtError", "Profile", "parse_shape", "parse_profile",
           "derive_profiles", "check_trt_qdq", "check_trt_model", "prepare_trt_onnx", "model_precision",
           "build_command", "build_engine", "runtime_status", "shared_timing_cache", "default_cache_dir", "trt_ready",
           "ENGINE_FILE", "INSTALL_HINT", "PRECISIONS", "README_FILE", "SCRIPT_FILE", "TIMING_CACHE_FILE",
           "TRT_ONNX_FILE"]
