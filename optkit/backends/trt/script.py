"""The engine-build command: the ``trtexec`` argv (``build_command``), the equivalent optkit call, and the
``trtexec.sh`` / ``build_engine.txt`` files written next to the TensorRT-ready ONNX."""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from .options import ENGINE_FILE, PRECISIONS, README_FILE, SCRIPT_FILE, TIMING_CACHE_FILE, TrtOptions
from .profiles import Profile, _as_profiles, _dims

def _trtexec_name(name: str) -> str:
    return f"'{name}'" if any(c in name for c in ":,*") else name


def _shape_flag(profiles: dict[str, Profile], which: str) -> str:
    return ",".join(f"{_trtexec_name(p.name)}:{_dims(getattr(p, which))}" for p in profiles.values() if p.dynamic)


def build_command(onnx_path, engine_path, profiles, precision: str = "fp32", workspace_mb: int = 1024,
                  timing_cache=TIMING_CACHE_FILE, *, builder_optimization_level: int | None = 3, tf32: bool = False,
                  skip_inference: bool = True) -> list[str]:
    """The ``trtexec`` argv that builds ``engine_path`` from ``onnx_path`` the way ``build_engine`` does.

    ``profiles``: {input: Profile | (min, opt, max) | 'MIN,OPT,MAX'}; only inputs with a varying dim get
    --minShapes/--optShapes/--maxShapes. ``precision`` (fp32|fp16|int8) must match what the ONNX holds; it adds no
    flag: the network is strongly typed and takes its types from the graph (TensorRT 11 removed --fp16/--int8;
    --stronglyTyped is required on 10.x and a no-op on 11.x). ``tf32=False`` adds --noTF32 so float32 layers keep
    the FP32 numerics ONNX Runtime validated. ``timing_cache`` None leaves the timing cache out."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if workspace_mb < 1:
        raise ValueError(f"workspace_mb must be >= 1, got {workspace_mb}")
    profs = _as_profiles(profiles)
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", "--stronglyTyped"]
    if any(p.dynamic for p in profs.values()):
        cmd += [f"--minShapes={_shape_flag(profs, 'min')}", f"--optShapes={_shape_flag(profs, 'opt')}",
                f"--maxShapes={_shape_flag(profs, 'max')}"]
    if timing_cache:
        cmd.append(f"--timingCacheFile={timing_cache}")
    cmd.append(f"--memPoolSize=workspace:{int(workspace_mb)}M")
    if builder_optimization_level is not None:
        cmd.append(f"--builderOptimizationLevel={int(builder_optimization_level)}")
    if not tf32:
        cmd.append("--noTF32")
    if skip_inference:
        cmd.append("--skipInference")
    return cmd


def _python_call(onnx_path: str, profiles: dict[str, Profile], precision: str, opts: TrtOptions) -> str:
    prof = {n: [_dims(p.min), _dims(p.opt), _dims(p.max)] for n, p in profiles.items() if p.dynamic}
    q = json.dumps  # double-quoted literals, so the shell line needs only one pair of single quotes
    cache = q(TIMING_CACHE_FILE) if opts.timing_cache else "None"
    code = (f"from optkit.backends.trt import build_engine; build_engine({q(onnx_path)}, {q(ENGINE_FILE)}, "
            f"profiles={q(prof)}, precision={q(precision)}, workspace_mb={opts.workspace_mb}, timing_cache={cache}, "
            f"builder_optimization_level={opts.builder_optimization_level}, tf32={opts.tf32})")
    return "python -c " + shlex.quote(code)


def _write_text(path: Path, text: str, mode: int | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_build_files(out_dir: Path, cmd: list[str], python_call: str, profiles: dict[str, Profile], precision: str,
                       status_line: str, notes: list[str]) -> list[str]:
    body = " \\\n  ".join(shlex.quote(a) for a in cmd[1:])
    script = ("#!/bin/sh\n"
              "# Builds the TensorRT engine (engine.plan) of this optkit artifact: a strongly typed network, so the\n"
              "# precision comes from the ONNX (no --fp16/--int8). Needs TensorRT >= 10 (trtexec) and an NVIDIA GPU.\n"
              "# Paths are relative to this folder; set TRTEXEC=/path/to/trtexec if it is not on PATH.\n"
              "set -e\n"
              'cd "$(dirname "$0")"\n'
              f'exec "${{TRTEXEC:-trtexec}}" \\\n  {body}\n')
    _write_text(out_dir / SCRIPT_FILE, script, 0o755)
    rows = [f"  {p.name}: {_dims(p.min)} / {_dims(p.opt)} / {_dims(p.max)}"
            + (f"  (dynamic axes {list(p.dynamic_axes)})" if p.dynamic else "  (static)") for p in profiles.values()]
    text = "\n".join([
        "TensorRT engine build for this optkit artifact (backend trt)",
        "",
        status_line,
        "",
        "Build the engine on a machine with TensorRT >= 10 and an NVIDIA GPU, from this folder (compiled/):",
        "",
        "  " + " ".join(shlex.quote(a) for a in cmd),
        "",
        "(or run ./trtexec.sh). The same build through the TensorRT Python API, with optkit installed:",
        "",
        "  " + python_call,
        "",
        "or let optkit build it when it benchmarks the artifact there (the engine is built on load and cached):",
        "",
        "  optkit bench <artifact> --backend trt",
        "",
        "input profiles (min / opt / max):",
        *rows,
        f"precision: {precision} (from the ONNX: strongly typed network)",
        *(f"note: {n}" for n in notes),
        "",
    ])
    _write_text(out_dir / README_FILE, text)
    return [SCRIPT_FILE, README_FILE]
