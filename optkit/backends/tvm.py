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

Tuning and building run in child processes (``optkit.backends._tvm_worker``) with their output in log files: a
crash there never takes the caller down. A crashed or timed-out tuning leaves an untuned build with
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
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, InputError, PassError
from ..model import TensorSpec, load_model, save_model, sha256_file, signature
from ..config import PassConfig, option
from . import Backend

LIB_FILE = "model.so"
META_FILE = "tvm.json"
BUILD_LOG = "build.log"
TUNE_LOG = "tune.log"
DB_MARKER = "optkit-tuning.json"
BUILD_TIMEOUT_S = 3600.0
META_FORMAT = 1
INSTALL_HINT = "pip install 'optkit[tvm]' (apache-tvm with apache-tvm-ffi==0.1.14.post1, xgboost-cpu, cloudpickle, psutil)"

# x86 CPU names by ISA level, for a host CPU name this LLVM does not know
_X86_FALLBACKS = (("avx512_vnni", "cascadelake"), ("avx512f", "skylake-avx512"), ("avx2", "haswell"), ("sse4_2", "nehalem"))


@dataclass(frozen=True)
class TvmOptions(PassConfig):
    target: str = option("auto", "'auto' (llvm, -mcpu from LLVM's host CPU detection, num-cores = --threads) or an "
                         "explicit llvm target: a TVM target JSON dict or 'llvm -mcpu=... -num-cores=...'")
    opt_level: int = option(3, "relax/TIR PassContext opt_level", choices=(0, 1, 2, 3))
    conv_layout: str = option("auto", "layout 2-D convolutions are compiled in: NHWC (channels-last kernels, weights "
                              "transposed at compile time; model inputs/outputs unchanged), NCHW, or auto (NHWC, NCHW "
                              "if the conversion fails)", choices=("auto", "NCHW", "NHWC"))
    tune: bool = option(False, "MetaSchedule tuning (minutes; in a child process, cached per model+target). Untuned "
                        "TVM uses default schedules, typically 10-100x slower than ONNX Runtime")
    tune_trials: int = option(64, "MetaSchedule trials in total (measured candidates over all tasks)")
    max_trials_per_task: int = option(0, "cap of trials per task; 0 = tune_trials / number of tasks")
    tune_timeout_s: float = option(3600.0, "stop tuning after this long; the build is untuned then (status 'timeout')")
    cache_dir: str = option("", "tuning-database root; empty = $OPTKIT_CACHE/tvm (or $OPTKIT_CACHE_DIR/tvm) or "
                            "~/.cache/optkit/tvm")
    shapes: dict[str, str] = option({}, "static input shapes {input: '1x128'} when the compile call gets none")
    numerics_tol: float = option(0.02, "max |TVM - ONNX Runtime| on the check feed, relative to the output range, "
                                 "above which compile fails")
    check_numerics: bool = option(True, "run one synthetic feed through the library and ONNX Runtime at compile time")
    seed: int = option(0, "MetaSchedule random seed")

    def check(self) -> str | None:
        if self.tune_trials < 1:
            return f"option 'tune_trials' must be >= 1, got {self.tune_trials}"
        if self.max_trials_per_task < 0:
            return f"option 'max_trials_per_task' must be >= 0, got {self.max_trials_per_task}"
        if self.tune_timeout_s <= 0:
            return f"option 'tune_timeout_s' must be > 0, got {self.tune_timeout_s}"
        if self.numerics_tol <= 0:
            return f"option 'numerics_tol' must be > 0, got {self.numerics_tol}"
        for name, text in self.shapes.items():
            try:
                _parse_dims(text)
            except ValueError:
                return f"option 'shapes' for {name!r} must look like 1x3x224x224, got {text!r}"
        if self.target != "auto":
            try:
                parse_target(self.target, 1)
            except InputError as e:
                return e.what
        return None


# ---------------------------------------------------------------------------------------------------------------
# target, shapes, cache
# ---------------------------------------------------------------------------------------------------------------


def _parse_dims(text: str) -> tuple[int, ...]:
    dims = tuple(int(p) for p in str(text).lower().replace(",", "x").split("x"))
    if not dims or any(d < 1 for d in dims):
        raise ValueError(text)
    return dims


def tvm_version() -> str | None:
    """The installed apache-tvm version, without importing TVM."""
    try:
        return importlib.metadata.version("apache-tvm")
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_cpu() -> dict:
    """{'mcpu': name or None, 'source': how it was chosen}. Imports TVM (LLVM's host detection)."""
    from tvm.target import codegen

    name = str(codegen.llvm_get_system_cpu() or "")
    triple = str(codegen.llvm_get_system_triple() or "")
    if name and name != "generic" and codegen.llvm_is_valid_cpu(name, triple):
        return {"mcpu": name, "source": "llvm host detection"}
    flags = _cpu_flags()
    for flag, cpu in _X86_FALLBACKS:
        if flag in flags and codegen.llvm_is_valid_cpu(cpu, triple):
            return {"mcpu": cpu, "source": f"fallback: LLVM does not know host cpu {name!r}; {flag} present"}
    return {"mcpu": None, "source": f"fallback: LLVM default cpu (host cpu {name!r} unknown to this LLVM)"}


def parse_target(text: str, threads: int) -> dict:
    """An explicit target option -> a TVM target dict (num-cores defaults to ``threads``)."""
    t = str(text).strip()
    if t.startswith("{"):
        try:
            d = json.loads(t)
        except ValueError as e:
            raise InputError(f"backend option 'target' is not valid JSON: {e}", "write it as {\"kind\": \"llvm\", ...}") from e
    else:
        parts = t.split()
        if not parts:
            raise InputError("backend option 'target' is empty", "use 'auto' or an llvm target")
        d = {"kind": parts[0]}
        for p in parts[1:]:
            if not p.startswith("-") or "=" not in p:
                raise InputError(f"backend option 'target': cannot read {p!r}", "use -key=value flags, e.g. -mcpu=znver4")
            k, v = p.lstrip("-").split("=", 1)
            d[k] = int(v) if k == "num-cores" and v.isdigit() else (v.split(",") if k == "mattr" else v)
    if d.get("kind") != "llvm":
        raise InputError(f"backend 'tvm' compiles for CPU targets only (kind 'llvm'), got {d.get('kind')!r}",
                         "use target: auto or an llvm target")
    d.setdefault("num-cores", max(1, int(threads)))
    return d


def target_string(target: dict) -> str:
    return json.dumps(target, sort_keys=True, separators=(",", ":"))


def cache_root(cache_dir: str = "") -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    for var in ("OPTKIT_CACHE", "OPTKIT_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser() / "tvm"
    return Path.home() / ".cache" / "optkit" / "tvm"


def cache_key(graph_sha256: str, target: dict, version: str | None = None, conv_layout: str = "auto") -> str:
    """sha256 of the static-shape ONNX + the target string (+ TVM version: databases are not portable across; + the
    convolution layout, which changes the kernels tuned)."""
    extra = "" if conv_layout == "auto" else f"|{conv_layout}"
    h = hashlib.sha256(f"{graph_sha256}|{target_string(target)}|tvm-{version or tvm_version()}{extra}".encode())
    return h.hexdigest()[:32]


def static_shapes(inputs: list[TensorSpec], given: dict | None) -> dict[str, tuple[int, ...]]:
    from ..data import resolve_shapes

    try:
        return resolve_shapes(inputs, given)
    except InputError as e:
        raise InputError(f"backend 'tvm' needs static input shapes: {e.what}",
                         "pass shapes (optimize --shape NAME=1x128) or backend option shapes: {NAME: '1x128'}") from e


# ---------------------------------------------------------------------------------------------------------------
# child processes
# ---------------------------------------------------------------------------------------------------------------


def _worker_env(threads: int) -> dict:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # the dir holding the optkit package (source checkouts too)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["TVM_NUM_THREADS"] = str(max(1, int(threads)))  # kernels measured with the thread count they will run with
    env.setdefault("TVM_BIND_THREADS", "0")
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def _wait_logging(proc: subprocess.Popen, timeout: float | None, spec: dict, every: float = 10.0) -> int:
    """proc.wait(timeout) that logs progress every ``every`` seconds: tuning records written / the trial budget."""
    from ..log import step

    t0 = time.monotonic()
    while True:
        left = None if timeout is None else timeout - (time.monotonic() - t0)
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        try:
            return proc.wait(timeout=every if left is None else min(every, left))
        except subprocess.TimeoutExpired:
            rec = Path(spec.get("work_dir", "")) / "database_tuning_record.json"
            done = sum(1 for _ in open(rec)) if spec.get("work_dir") and rec.is_file() else 0
            budget = f"/{spec['tune_trials']}" if spec.get("tune_trials") else ""
            step("TVM %s: %.0f s, %d%s tuning records so far", spec.get("phase"), time.monotonic() - t0, done, budget)


def run_worker(spec: dict, log: Path, threads: int, timeout: float | None = None) -> dict:
    """Run one worker phase; returns {'status': 'ok'|'error'|'crashed'|'timeout', 'result', 'returncode', 'log'}."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optkit-tvmw-") as d:
        spec = dict(spec, result=str(Path(d) / "result.json"))
        spec_path = Path(d) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        with open(log, "ab") as out:
            out.write(f"\n=== optkit tvm worker: phase {spec['phase']} ({time.strftime('%Y-%m-%d %H:%M:%S')}) ===\n".encode())
            out.flush()
            proc = subprocess.Popen([sys.executable, "-m", "optkit.backends._tvm_worker", str(spec_path)],
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=_worker_env(threads), start_new_session=True)
            timed_out = False
            try:
                rc = _wait_logging(proc, timeout, spec)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    _kill_group(proc)
                    proc.wait()
            if timed_out or rc != 0:
                _kill_group(proc)  # MetaSchedule's popen workers a crashed child leaves behind (its own session)
        res_path = Path(spec["result"])
        result = json.loads(res_path.read_text()) if res_path.is_file() else None
    if timed_out:
        status = "timeout"
    elif result is None:
        status = "crashed"
    else:
        status = "ok" if result.get("ok") else "error"
    return {"status": status, "result": result, "returncode": rc, "log": str(log),
            "signal": _signal_name(rc)}


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def _signal_name(rc: int | None) -> str | None:
    if rc is None or rc >= 0:
        return None
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def _tail(path: str | Path, n: int = 15) -> str:
    try:
        lines = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock (two compiles of the same model must not tune into one database at once)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# backend
# ---------------------------------------------------------------------------------------------------------------


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
        """Build ``out_dir/model.so`` + ``out_dir/tvm.json`` from ``model_path``; see the module docstring.
        ``shapes``: {input: dims} for symbolic dims; ``warn``: a callable for warnings (else ``warnings.warn``)."""
        self.check()
        options = options or TvmOptions()
        threads = max(1, int(threads))
        model_path, out_dir = Path(model_path), Path(out_dir)
        notes: list[str] = []

        def _warn(msg: str) -> None:
            notes.append(msg)
            if warn is not None:
                warn(msg)
            else:
                warnings.warn(msg, RuntimeWarning, stacklevel=3)

        started = time.perf_counter()
        model = load_model(model_path, check=False)
        inputs, outputs = signature(model)
        given = dict(shapes or {}) or {k: _parse_dims(v) for k, v in options.shapes.items()}
        fixed_shapes = static_shapes(inputs, {k: tuple(v) for k, v in given.items()})
        from ..model import fix_dims

        fixed = fix_dims(model, fixed_shapes)
        target, target_source = self._target(options, threads)
        version = tvm_version()
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / BUILD_LOG).unlink(missing_ok=True)
        with tempfile.TemporaryDirectory(prefix="optkit-tvm-") as work:
            fixed_path = save_model(fixed, Path(work) / "model.onnx")
            graph_sha = sha256_file(fixed_path)
            key = cache_key(graph_sha, target, version, options.conv_layout)
            tuning = self._tune(fixed_path, key, target, options, threads, _warn) if options.tune else \
                {"enabled": False, "status": "off"}
            db_dir = tuning.get("db_dir") if tuning.get("status") in ("tuned", "reused") else None
            spec = {"phase": "build", "model": str(fixed_path), "target": target, "out_dir": str(out_dir),
                    "lib": LIB_FILE, "db_dir": db_dir, "opt_level": options.opt_level, "check": options.check_numerics,
                    "conv_layout": options.conv_layout,
                    "input_names": [s.name for s in inputs]}
            run = run_worker(spec, out_dir / BUILD_LOG, threads, timeout=BUILD_TIMEOUT_S)
        built = self._build_result(run, out_dir)
        if tuning.get("status") in ("tuned", "reused") and built.get("tuned_tasks"):
            tuning["tuned_tasks"] = built["tuned_tasks"]
            tt = built["tuned_tasks"]
            if tt["tuned"] < tt["tasks"]:
                _warn(f"TVM tuning covered {tt['tuned']} of {tt['tasks']} kernels; the rest use default schedules "
                      "(raise tune_trials)")
        if not options.tune:
            _warn("backend 'tvm' compiled without tuning (default schedules, typically 10-100x slower than ONNX "
                  "Runtime); set backend option tune: true (and tune_trials) for speed")
        int8 = None
        if built.get("qdq_nodes"):
            int8 = {"qdq_nodes": built["qdq_nodes"], "kernels": "none (float fake-quant)"}
            _warn(f"TVM {version} has no INT8 QDQ fusion for CPU: the {built['qdq_nodes']} Quantize/DequantizeLinear "
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
        out_specs = []
        for spec_o, got in zip(outputs, built["outputs"]):
            out_specs.append({"name": spec_o.name, "dtype": got["dtype"], "shape": got["shape"]})
        meta = {
            "format": META_FORMAT, "backend": "tvm", "tvm": version, "tvm_ffi": _dist_version("apache-tvm-ffi"),
            "lib": LIB_FILE, "target": target, "target_string": target_string(target), "target_source": target_source,
            "threads": threads, "opt_level": options.opt_level, "conv_layout": built.get("conv_layout"),
            "shapes": {k: list(v) for k, v in fixed_shapes.items()},
            "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(fixed_shapes[s.name])} for s in inputs],
            "outputs": out_specs, "source_sha256": sha256_file(model_path), "static_onnx_sha256": graph_sha,
            "tuning": tuning, "numerics": numerics, "int8": int8, "build_seconds": built.get("build_seconds"),
        }
        (out_dir / META_FILE).write_text(json.dumps(meta, indent=2))
        files = [LIB_FILE, META_FILE, BUILD_LOG]
        if tuning.get("log") and Path(tuning["log"]).is_file():
            with contextlib.suppress(OSError):
                shutil.copyfile(tuning["log"], out_dir / TUNE_LOG)
                files.append(TUNE_LOG)
        info = {"backend": "tvm", "artifact": LIB_FILE, "meta": META_FILE, "files": files, "tvm": version,
                "target": target_string(target), "target_source": target_source, "shapes": meta["shapes"],
                "opt_level": options.opt_level, "conv_layout": meta["conv_layout"], "tuning": tuning,
                "numerics": numerics, "int8": int8,
                "build_seconds": built.get("build_seconds"), "log": BUILD_LOG, "warnings": notes,
                "compile_seconds": round(time.perf_counter() - started, 3)}
        return info

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

    def _tune(self, fixed_path: Path, key: str, target: dict, options: TvmOptions, threads: int, warn) -> dict:
        root = cache_root(options.cache_dir)
        db_dir = root / key
        marker = db_dir / DB_MARKER
        rec = {"enabled": True, "cache_key": key, "db_dir": str(db_dir), "trials_requested": options.tune_trials,
               "max_trials_per_task": options.max_trials_per_task or None, "target": target_string(target)}
        with _locked(root / f"{key}.lock"):
            prev = _read_json(marker)
            if prev and prev.get("status") == "complete" and prev.get("tune_trials", 0) >= options.tune_trials \
                    and (db_dir / "database_tuning_record.json").is_file():
                rec.update({"status": "reused", "db": "reused", "trials_run": prev.get("trials_run"),
                            "tasks": prev.get("tasks"), "tuned_at": prev.get("finished"),
                            "tune_seconds_then": prev.get("seconds"), "log": prev.get("log"), "seconds": 0.0})
                return rec
            rec["db"] = "extended" if (db_dir / "database_tuning_record.json").is_file() else "new"
            db_dir.mkdir(parents=True, exist_ok=True)
            log = db_dir / TUNE_LOG
            spec = {"phase": "tune", "model": str(fixed_path), "target": target, "work_dir": str(db_dir),
                    "tune_trials": options.tune_trials, "max_trials_per_task": options.max_trials_per_task,
                    "seed": options.seed, "conv_layout": options.conv_layout}
            t0 = time.perf_counter()
            run = run_worker(spec, log, threads, timeout=options.tune_timeout_s)
            seconds = round(time.perf_counter() - t0, 3)
            rec.update({"seconds": seconds, "log": str(log)})
            if run["status"] == "ok":
                res = run["result"]
                rec.update({"status": "tuned", "trials_run": res.get("trials_run"), "tasks": res.get("tasks"),
                            "max_trials_per_task": res.get("max_trials_per_task"),
                            "search_population": res.get("search_population")})
                if not res.get("tasks"):
                    rec["status"] = "nothing to tune"
                    return rec
                marker.write_text(json.dumps({"status": "complete", "tune_trials": options.tune_trials,
                                              "trials_run": res.get("trials_run"), "tasks": res.get("tasks"),
                                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds,
                                              "log": str(log), "target": target_string(target)}, indent=2))
                return rec
            # crashed / timed out / failed: move the (maybe half-written) database aside, build untuned
            aside = root / f"{key}.{run['status']}-{time.strftime('%Y%m%d-%H%M%S')}"
            with contextlib.suppress(OSError):
                os.replace(db_dir, aside)
                log = aside / TUNE_LOG
            why = {"crashed": f"the tuning process crashed ({run['signal'] or 'exit ' + str(run['returncode'])})",
                   "timeout": f"tuning ran past tune_timeout_s={options.tune_timeout_s:g}",
                   "error": f"tuning failed: {(run['result'] or {}).get('message', '')[:300]}"}[run["status"]]
            rec.update({"status": run["status"] if run["status"] != "error" else "failed", "db": None,
                        "log": str(log), "returncode": run["returncode"], "signal": run["signal"],
                        "reason": why})
            if run["status"] == "error" and (run["result"] or {}).get("kind") == "unsupported_ops":
                raise _unsupported(run["result"])
            warn(f"TVM TUNING FAILED - {why}; the model is built UNTUNED (default schedules, typically 10-100x slower "
                 f"than ONNX Runtime). Log: {log}")
            return rec

    @staticmethod
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


def _unsupported(res: dict) -> PassError:
    ops = res.get("ops") or []
    qop = [o for o in ops if o.startswith("QLinear") or o.endswith("Integer") or "com.microsoft" in o]
    hint = ("use fp32-tvm (or int8-ort for INT8); TVM imports QDQ INT8 models (QuantizeLinear/DequantizeLinear) but "
            "not QOperator or ONNX Runtime contrib ops") if qop else "use an -ort recipe for this model"
    return PassError(f"backend 'tvm' cannot import the model: TVM's relax ONNX frontend has no converter for "
                     f"{', '.join(ops)}", hint)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


_HOST_CPU: dict | None = None


def _host_cpu_cached() -> dict:
    """LLVM's host CPU name (and fallback). Asked of a short child process (compile() never imports TVM itself) and
    remembered in the cache root per CPU model/flags and TVM version, so only the first compile on a machine pays."""
    global _HOST_CPU
    if _HOST_CPU is not None:
        return dict(_HOST_CPU)
    ident = hashlib.sha256((_cpu_model() + "|" + " ".join(sorted(_cpu_flags())) + f"|{tvm_version()}").encode())
    memo = cache_root() / f"host-cpu-{ident.hexdigest()[:16]}.json"
    got = _read_json(memo)
    if not (got and "source" in got):
        if "tvm" in sys.modules:
            got = host_cpu()
        else:
            code = "import json; from optkit.backends.tvm import host_cpu; print('@@' + json.dumps(host_cpu()))"
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                                  env=_worker_env(1))
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@")), None)
            if line is None:
                raise BackendUnavailable(f"backend 'tvm': TVM failed to start here (exit {proc.returncode}): "
                                         f"{(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}", INSTALL_HINT)
            got = json.loads(line[2:])
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            memo.write_text(json.dumps(got))
    _HOST_CPU = got
    return dict(got)


def _cpu_model() -> str:
    """vendor, family, model and model name of the first CPU in /proc/cpuinfo."""
    fields = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key = line.split(":", 1)[0].strip()
                if key in ("vendor_id", "cpu family", "model", "model name"):
                    fields.append(line.split(":", 1)[1].strip())
    except OSError:
        pass
    return "|".join(fields)


__all__ = ["TvmBackend", "TvmOptions", "TvmSession", "parse_target", "host_cpu", "cache_root",
           "cache_key", "target_string", "tvm_version", "run_worker"]
