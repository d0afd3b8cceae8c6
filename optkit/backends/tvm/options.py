"""TVM backend options, targets and the tuning-database key; the host CPU as LLVM names it (asked of a child once
per machine and remembered)."""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from ...config import PassConfig, option
from ...data import parse_dims
from ...errors import BackendUnavailable, InputError
from ...model import TensorSpec

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
                parse_dims(text, f"option 'shapes' for {name!r}")
            except InputError as e:
                return f"{e.what} ({e.hint})"
        if self.target != "auto":
            try:
                parse_target(self.target, 1)
            except InputError as e:
                return e.what
        return None




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
    from ...data import resolve_shapes

    try:
        return resolve_shapes(inputs, given)
    except InputError as e:
        raise InputError(f"backend 'tvm' needs static input shapes: {e.what}",
                         "pass shapes (optimize --shape NAME=1x128) or backend option shapes: {NAME: '1x128'}") from e




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
            from ...child import run_child
            from .runner import worker_env

            proc = run_child([sys.executable, "-c", code], timeout=300, env=worker_env(1))
            line = next((ln for ln in (proc.stdout or "").splitlines() if ln.startswith("@@")), None)
            if line is None:
                raise BackendUnavailable(f"backend 'tvm': TVM failed to start here ({proc.why()}): "
                                         f"{((proc.stderr or '').strip().splitlines() or ['?'])[-1][:300]}", INSTALL_HINT)
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
