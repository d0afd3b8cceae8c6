"""``TvmBackend``: compile (static shapes, target, optional tuning, build in a child, numerics check, tvm.json) and
load (a compiled dir, an artifact, or an ONNX compiled on the spot)."""
from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from ...data import parse_dims
from ...errors import BackendUnavailable, InputError, PassError
from ...model import load_model, save_model, sha256_file, signature
from .. import Backend
from .options import (BUILD_LOG, BUILD_TIMEOUT_S, INSTALL_HINT, LIB_FILE, META_FILE, META_FORMAT, TUNE_LOG,
                      TvmOptions, _dist_version, _host_cpu_cached, _read_json, cache_key, parse_target, static_shapes,
                      target_string, tvm_version)
from .runner import run_worker
from .session import TvmSession
from .tuning import _unsupported, tune_database


def _warner(notes: list[str], warn):
    def _warn(msg: str) -> None:
        notes.append(msg)
        if warn is not None:
            warn(msg)
        else:
            warnings.warn(msg, RuntimeWarning, stacklevel=4)

    return _warn


def _build_result(run: dict, out_dir: Path) -> dict:
    log = out_dir / BUILD_LOG
    if run["status"] == "ok":
        return run["result"]
    res = run["result"] or {}
    if res.get("kind") == "unsupported_ops":
        raise _unsupported(res)
    if run["status"] == "timeout":
        raise PassError(f"backend 'tvm': the TVM build ran past {BUILD_TIMEOUT_S:g} s and was stopped; log: {log}",
                        "see the log; use an -ort recipe for this model")
    if run["status"] == "crashed":
        raise PassError(f"backend 'tvm': the TVM build process crashed ({run['signal'] or 'exit ' + str(run['returncode'])}); "
                        f"log: {log}", "see the log's last lines; use an -ort recipe for this model")
    raise PassError(f"backend 'tvm': the TVM build failed: {res.get('message', '?')[:500]}; log: {log}",
                    "see the log; use an -ort recipe for this model")


def _review(built: dict, tuning: dict, options: TvmOptions, version: str | None, out_dir: Path, warn):
    """Warnings about what the build is (partly tuned, untuned, INT8 as fake-quant) and the numerics verdict (a
    PassError when the library disagrees with ONNX Runtime): -> (int8 record, numerics record)."""
    if tuning.get("status") in ("tuned", "reused") and built.get("tuned_tasks"):
        tuning["tuned_tasks"] = tt = built["tuned_tasks"]
        if tt["tuned"] < tt["tasks"]:
            warn(f"TVM tuning covered {tt['tuned']} of {tt['tasks']} kernels; the rest use default schedules "
                 "(raise tune_trials)")
    if not options.tune:
        warn("backend 'tvm' compiled without tuning (default schedules, typically 10-100x slower than ONNX "
             "Runtime); set backend option tune: true (and tune_trials) for speed")
    int8 = None
    if built.get("qdq_nodes"):
        int8 = {"qdq_nodes": built["qdq_nodes"], "kernels": "none (float fake-quant)"}
        warn(f"TVM {version} has no INT8 QDQ fusion for CPU: the {built['qdq_nodes']} Quantize/DequantizeLinear "
             "nodes run as float fake-quant (INT8 numerics, no INT8 kernels, slower than fp32-tvm); use "
             "fp32-tvm, or int8-ort for INT8 speed")
    numerics = built.get("numerics")
    if numerics is not None:
        bad = (not numerics["finite_match"]) or not math.isfinite(numerics["max_abs"]) or \
            numerics["max_rel_to_range"] > options.numerics_tol
        numerics["tol"] = options.numerics_tol
        numerics["passed"] = not bad
        if bad:
            raise PassError(f"backend 'tvm': the compiled model disagrees with ONNX Runtime on a synthetic feed "
                            f"(max abs {numerics['max_abs']:.4g}, {numerics['max_rel_to_range']:.2%} of the output "
                            f"range; tolerance {options.numerics_tol:.2%}); build log {out_dir / BUILD_LOG}",
                            "report it; use an -ort recipe for this model")
    return int8, numerics


class TvmBackend(Backend):
    name = "tvm"
    doc = "Apache TVM relax VM, llvm target for this CPU, MetaSchedule tuning"
    Options = TvmOptions

    def check(self) -> None:
        if importlib.util.find_spec("tvm") is None:
            raise BackendUnavailable("backend 'tvm' is not available here: apache-tvm is not installed", INSTALL_HINT)

    # -- compile ---------------------------------------------------------------------------------------------

    def compile(self, model_path: Path, out_dir: Path, options: TvmOptions | None = None, threads: int = 1,
                shapes: dict | None = None, warn=None) -> dict:
        """Build ``out_dir/model.so`` + ``out_dir/tvm.json`` from ``model_path``; see the package docstring.
        ``shapes``: {input: dims} for symbolic dims; ``warn``: a callable for warnings (else ``warnings.warn``)."""
        from ...model import fix_dims

        self.check()
        options = options or TvmOptions()
        threads = max(1, int(threads))
        model_path, out_dir = Path(model_path), Path(out_dir)
        notes: list[str] = []
        _warn = _warner(notes, warn)
        started = time.perf_counter()
        model = load_model(model_path, check=False)
        inputs, outputs = signature(model)
        given = dict(shapes or {}) or {k: parse_dims(v, f"backend option shapes[{k!r}]")
                                       for k, v in options.shapes.items()}
        fixed_shapes = static_shapes(inputs, {k: tuple(v) for k, v in given.items()})
        target, target_source = self._target(options, threads)
        version = tvm_version()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / BUILD_LOG).unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="optkit-tvm-") as work:
            fixed_path = save_model(fix_dims(model, fixed_shapes), Path(work) / "model.onnx")
            graph_sha = sha256_file(fixed_path)
            key = cache_key(graph_sha, target, version, options.conv_layout)
            tuning = tune_database(fixed_path, key, target, options, threads, _warn) if options.tune else \
                {"enabled": False, "status": "off"}
            db_dir = tuning.get("db_dir") if tuning.get("status") in ("tuned", "reused") else None
            spec = {"phase": "build", "model": str(fixed_path), "target": target, "out_dir": str(out_dir),
                    "lib": LIB_FILE, "db_dir": db_dir, "opt_level": options.opt_level, "check": options.check_numerics,
                    "conv_layout": options.conv_layout, "input_names": [s.name for s in inputs]}
            built = _build_result(run_worker(spec, out_dir / BUILD_LOG, threads, timeout=BUILD_TIMEOUT_S), out_dir)
        int8, numerics = _review(built, tuning, options, version, out_dir, _warn)
        meta = {
            "format": META_FORMAT, "backend": "tvm", "tvm": version, "tvm_ffi": _dist_version("apache-tvm-ffi"),
            "lib": LIB_FILE, "target": target, "target_string": target_string(target), "target_source": target_source,
            "threads": threads, "opt_level": options.opt_level, "conv_layout": built.get("conv_layout"),
            "shapes": {k: list(v) for k, v in fixed_shapes.items()},
            "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(fixed_shapes[s.name])} for s in inputs],
            "outputs": [{"name": o.name, "dtype": got["dtype"], "shape": got["shape"]}
                        for o, got in zip(outputs, built["outputs"])],
            "source_sha256": sha256_file(model_path), "static_onnx_sha256": graph_sha,
            "tuning": tuning, "numerics": numerics, "int8": int8, "build_seconds": built.get("build_seconds"),
        }
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
        files = [LIB_FILE, META_FILE, BUILD_LOG]
        if tuning.get("log") and Path(tuning["log"]).is_file():
            with contextlib.suppress(OSError):
                shutil.copyfile(tuning["log"], out_dir / TUNE_LOG)
                files.append(TUNE_LOG)
        return {"backend": "tvm", "artifact": LIB_FILE, "meta": META_FILE, "files": files, "tvm": version,
                "target": target_string(target), "target_source": target_source, "shapes": meta["shapes"],
                "opt_level": options.opt_level, "conv_layout": meta["conv_layout"], "tuning": tuning,
                "numerics": numerics, "int8": int8,
                "build_seconds": built.get("build_seconds"), "log": BUILD_LOG, "warnings": notes,
                "compile_seconds": round(time.perf_counter() - started, 3)}

    @staticmethod
    def _target(options: TvmOptions, threads: int) -> tuple[dict, str]:
        # host detection needs LLVM: ask a short child once per process instead of importing TVM here
        if options.target != "auto":
            return parse_target(options.target, threads), "option"
        cpu = _host_cpu_cached()
        d = {"kind": "llvm", "num-cores": threads}
        if cpu.get("mcpu"):
            d["mcpu"] = cpu["mcpu"]
        return d, cpu["source"]

    # -- load ------------------------------------------------------------------------------------------------

    def load(self, path: Path, threads: int = 1, options: TvmOptions | None = None, shapes: dict | None = None) -> TvmSession:
        """A compiled dir (``tvm.json`` + ``model.so``), an artifact dir, an artifact's ``model.onnx`` (uses its
        ``compiled/`` when that was built from this file), or a plain ``.onnx`` (compiled now into a temp dir)."""
        self.check()
        p = Path(path)
        if p.is_dir():
            for d in (p, p / "compiled"):
                if (d / META_FILE).is_file():
                    return TvmSession(d, threads)
            raise InputError(f"{p} holds no TVM build ({META_FILE})", "pass a compiled dir or an .onnx file")
        if not p.is_file():
            raise InputError(f"{p} not found", "pass a compiled dir, an artifact or an .onnx file")
        if p.suffix == ".so" and (p.parent / META_FILE).is_file():
            return TvmSession(p.parent, threads)
        compiled = p.parent / "compiled"
        meta = _read_json(compiled / META_FILE)
        if meta and meta.get("source_sha256") == sha256_file(p) and (not shapes or all(
                list(v) == meta["shapes"].get(k) for k, v in shapes.items())):
            return TvmSession(compiled, threads)
        tmp = tempfile.TemporaryDirectory(prefix="optkit-tvm-load-")
        try:
            self.compile(p, Path(tmp.name), options or TvmOptions(), threads, shapes=shapes, warn=lambda m: None)
            return TvmSession(tmp.name, threads, _tmp=tmp)
        except BaseException:
            tmp.cleanup()
            raise
