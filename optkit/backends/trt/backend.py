"""``TrtBackend``: compile (verify the TensorRT layout, profiles, build command, and an engine where TensorRT and a
GPU are present) and load (an engine, an artifact's engine, or one built now and cached)."""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from pathlib import Path

import onnx

from ...errors import BackendUnavailable, InputError
from ...model import load_model, save_model, sha256_of, signature
from ...qdq_layout import check_trt_model, fold_int32_bias_dq, model_precision
from .. import Backend
from . import gpu
from .engine import build_engine
from .options import (ENGINE_FILE, INSTALL_HINT, README_FILE, SCRIPT_FILE, TIMING_CACHE_FILE, TRT_ONNX_FILE, TrtError,
                      TrtOptions)
from .profiles import _profiles_from_json, derive_profiles
from .script import _python_call, _write_build_files, build_command
from .session import TrtSession


def trt_ready(model: onnx.ModelProto, what: str = "the model",
              hint: str = "use the int8-trt / fp16-trt recipe (symmetric S8 QDQ, per-channel weights, format qdq)"
              ) -> tuple[onnx.ModelProto, list[str]]:
    """The verifier the backend runs before any build: ``model`` in the layout TensorRT takes, and what changed.
    A model that went through the ``trt-qdq-layout`` pass is already folded (nothing changes); one that did not gets
    the same exact rewrite here (``qdq_layout.fold_int32_bias_dq``). Any remaining problem is a TrtError."""
    ready, changes = fold_int32_bias_dq(model)
    problems = check_trt_model(ready)
    if problems:
        raise TrtError(f"{what} is not TensorRT-ready ({len(problems)} problem(s)): " + "; ".join(problems[:4])
                       + (f"; and {len(problems) - 4} more" if len(problems) > 4 else ""), hint)
    return ready, changes


def _shared_cache(st: dict, options: TrtOptions) -> Path | None:
    return gpu.shared_timing_cache(st["tensorrt"], st["gpu"], options.cache_dir) if options.timing_cache else None


class TrtBackend(Backend):
    name = "trt"
    doc = "NVIDIA TensorRT engine (strongly typed network, explicit QDQ INT8 / FP16)"
    Options = TrtOptions

    def check(self) -> None:
        """Never raises: without TensorRT or a GPU, compile() still writes the TensorRT-ready ONNX and the
        engine-build command (and says no engine was built); load() is what refuses. See ``gpu.runtime_status``."""

    def status(self) -> dict:
        return gpu.runtime_status()

    def compile(self, model_path: Path, out_dir: Path, options: TrtOptions | None = None, threads: int = 1,
                shapes: dict | None = None) -> dict:
        options = options or TrtOptions()
        model_path, out_dir = Path(model_path), Path(out_dir)
        ready, changes = trt_ready(load_model(model_path, check=False))
        inputs, _ = signature(ready)
        profiles = derive_profiles(inputs, shapes, options.profiles, options.max_batch_multiple)
        precision = model_precision(ready)
        out_dir.mkdir(parents=True, exist_ok=True)
        if changes:
            save_model(ready, out_dir / TRT_ONNX_FILE)
            onnx_rel = TRT_ONNX_FILE
        else:
            onnx_rel = os.path.relpath(model_path.resolve(), out_dir.resolve())
        cache = TIMING_CACHE_FILE if options.timing_cache else None
        cmd = build_command(onnx_rel, ENGINE_FILE, profiles, precision, options.workspace_mb, cache,
                            builder_optimization_level=options.builder_optimization_level, tf32=options.tf32)
        st = gpu.runtime_status()
        info = {
            "backend": "trt", "onnx": onnx_rel, "onnx_changes": changes, "precision": precision, "strongly_typed": True,
            "layout_check": "passed", "profiles": {n: p.to_dict() for n, p in profiles.items()},
            "command": cmd, "command_line": " ".join(shlex.quote(a) for a in cmd),
            "tensorrt": st["tensorrt"], "gpu": st["gpu"],
            "build": {"onnx": onnx_rel, "engine": ENGINE_FILE, "timing_cache": cache, "workspace_mb": options.workspace_mb,
                      "builder_optimization_level": options.builder_optimization_level, "tf32": options.tf32,
                      "precision": precision},
        }
        if st["ok"]:
            shared = _shared_cache(st, options)
            built = build_engine(out_dir / onnx_rel, out_dir / ENGINE_FILE, profiles, precision=precision,
                                 workspace_mb=options.workspace_mb, timing_cache=(out_dir / cache) if cache else None,
                                 shared_cache=shared, builder_optimization_level=options.builder_optimization_level,
                                 tf32=options.tf32)
            info.update({"engine": ENGINE_FILE, "engine_built": True, "reason": None,
                         "engine_bytes": built["engine_bytes"], "build_seconds": built["build_seconds"],
                         "timing_cache": built["timing_cache"], "trt_warnings": built["warnings"]})
            status_line = f"The engine was built here: {ENGINE_FILE} (TensorRT {st['tensorrt']}, {st['gpu']})."
            info["message"] = (f"TensorRT engine built: compiled/{ENGINE_FILE} ({precision}, TensorRT {st['tensorrt']} on "
                               f"{st['gpu']}, {built['build_seconds']:.1f} s)")
        else:
            if options.require_engine:
                raise BackendUnavailable(f"backend 'trt' cannot build the engine here: {st['reason']}", INSTALL_HINT)
            info.update({"engine": None, "engine_built": False, "reason": st["reason"]})
            status_line = f"No engine was built here: {st['reason']}."
            info["message"] = (f"no TensorRT engine was built: {st['reason']}. The TensorRT-ready ONNX and the build "
                               f"command are in compiled/ ({SCRIPT_FILE}, {README_FILE}); run it on a machine with "
                               "TensorRT >= 10 and an NVIDIA GPU")
        py = _python_call(onnx_rel, profiles, precision, options)
        info["files"] = ([TRT_ONNX_FILE] if changes else []) + _write_build_files(
            out_dir, cmd, py, profiles, precision, status_line, changes) + ([ENGINE_FILE] if info["engine_built"] else [])
        info["python_call"] = py
        return info

    def load(self, path: Path, threads: int = 1, options: TrtOptions | None = None,
             shapes: dict | None = None) -> TrtSession:
        """An engine (.plan/.engine), or an ONNX file: an artifact's compiled/engine.plan when it exists, else an
        engine built now (profiles from the artifact's manifest when there is one) and cached in cache_dir."""
        st = gpu._require_runtime()
        options = options or TrtOptions()
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path} not found", "pass an engine (.plan), an ONNX file or an artifact's model.onnx")
        if path.suffix in (".plan", ".engine", ".trt"):
            return TrtSession(path.read_bytes(), str(path), st["cuda_api"])
        spec = self._artifact_spec(path)
        if spec is not None:
            engine = path.parent / "compiled" / (spec.get("engine") or ENGINE_FILE)
            if engine.is_file():
                return TrtSession(engine.read_bytes(), str(engine), st["cuda_api"])
        return self._build_cached(path, spec, options, st)

    @staticmethod
    def _artifact_spec(path: Path) -> dict | None:
        man = path.parent / "manifest.json"
        if not man.is_file():
            return None
        try:
            data = json.loads(man.read_text())
        except (OSError, ValueError):
            return None
        if data.get("output", {}).get("path") != path.name or (data.get("backend") or {}).get("backend") != "trt":
            return None
        return data["backend"]

    def _build_cached(self, path: Path, spec: dict | None, options: TrtOptions, st: dict) -> TrtSession:
        src = path
        if spec is not None and (spec.get("onnx_changes") or []):
            cand = path.parent / "compiled" / spec.get("onnx", TRT_ONNX_FILE)
            if cand.is_file():
                src = cand
        ready, changes = trt_ready(load_model(src, check=False), path.name,
                                   "optimize it with the int8-trt / fp16-trt recipe first")
        inputs, _ = signature(ready)
        if spec is not None and spec.get("profiles"):
            profiles = _profiles_from_json(spec["profiles"])
        else:
            profiles = derive_profiles(inputs, None, options.profiles, options.max_batch_multiple)
        cache_dir = gpu.default_cache_dir(options.cache_dir)
        key = hashlib.sha256(json.dumps(
            {"onnx": sha256_of(src), "changes": changes, "profiles": {n: p.to_dict() for n, p in profiles.items()},
             "trt": st["tensorrt"], "gpu": st["gpu"], "ws": options.workspace_mb, "lvl": options.builder_optimization_level,
             "tf32": options.tf32}, sort_keys=True).encode()).hexdigest()[:24]
        engine = cache_dir / "engines" / f"{key}.plan"
        if not engine.is_file():
            with tempfile.TemporaryDirectory(prefix="optkit-trt-") as d:
                onnx_file = src
                if changes:
                    onnx_file = save_model(ready, Path(d) / TRT_ONNX_FILE)
                shared = _shared_cache(st, options)
                build_engine(onnx_file, engine, profiles, workspace_mb=options.workspace_mb, timing_cache=None,
                             shared_cache=shared, builder_optimization_level=options.builder_optimization_level,
                             tf32=options.tf32)
        return TrtSession(engine.read_bytes(), str(engine), st["cuda_api"])
