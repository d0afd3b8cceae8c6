"""Serving-spec search (``optkit tune``): the backend, precision, intra-op threads and batch size that serve a model
best under a latency SLO and an accuracy tolerance, found by Bayesian optimization instead of a full load-test grid.

    res = optkit.serving.tune("model.onnx", precisions="fp32,int8", batches="1,2,4,8,16,32", slo="p99<20ms",
                              objective="throughput", tolerance="1%", budget="25%", data="calib.npz")
    res["recommended"]   # {"backend", "precision", "threads", "batch", "artifact", "expected": {p50/p99/throughput}}

How it works:

- **Variants**: each requested (backend, precision) is built once with ``optkit.optimize`` from a built-in recipe
  (``RECIPES``) into ``TUNE_DIR/variants/<backend>-<precision>/<version>/`` and reused by later runs while the input
  model, the recipe and the data are unchanged. Its accuracy against the input model (top-1 with labels, else cosine)
  is judged against ``tolerance``: a variant that misses it is *infeasible* and is not timed (no trial can make it
  accurate). A backend whose ``status()`` is not ok is listed in ``unavailable`` with the reason.
- **Trials**: one trial = (variant, threads, batch). An ``Executor`` runs it; ``LocalExecutor`` starts a child
  process per trial (``python -m optkit.serving_worker``) that loads the variant with that many intra-op threads,
  feeds a batch built from the data (``Samples.batched``), warms up and times ``rounds`` rounds (the bench protocol).
  A crash, hang or error in the child costs that one trial (status ``failed``); the search goes on. One worker by
  default: trials that run at the same time share cores and distort each other's timing.
- **Search**: optuna (``sampler='auto'``: its Gaussian-process sampler when torch is installed, else TPE; or
  ``'gp'``, ``'tpe'``, ``'random'``, ``'grid'`` to measure every point) over the variant (categorical) and the indices of the sorted thread and batch lists
  (integers, so neighbouring batch sizes inform each other). SLO misses are reported to the sampler as constraint
  violations. A point is never measured twice: repeats within a run are answered from memory, and every measured
  point is kept in ``TUNE_DIR/trial-cache.json`` keyed by the variant's sha256, the protocol, the feed and the
  machine, so a re-run measures only new points.
- **Output**: ``serving.json`` (schema ``optkit.serving/1``): the recommended spec, the Pareto set of throughput vs
  p99, every trial, the variants, the unavailable backends; and ``serving.svg`` (throughput vs p99 plot). For an
  ONNX file they go to ``OUTPUT/<name>/tune/``; for an artifact directory ``serving.json`` and ``serving.svg`` go
  into the artifact itself and the working files into ``ARTIFACT/tune/``.
"""
from __future__ import annotations

import concurrent.futures
import datetime as _dt
import hashlib
import html
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .errors import InputError, OptkitError
from .report import nice_ticks

SERVING = "serving.json"
SERVING_SVG = "serving.svg"
SERVING_SCHEMA = "optkit.serving/1"
CACHE_FILE = "trial-cache.json"
RESULT_MARK = "OPTKIT_TRIAL_RESULT "
CRASH_ENV = "OPTKIT_SERVING_CRASH"  # testing hook: trial keys (comma-separated, or '*') whose child kills itself

# (backend, precision) -> built-in recipe that builds that variant
RECIPES = {("ort", "fp32"): "fp32-ort", ("ort", "fp16"): "fp16-ort", ("ort", "int8"): "int8-ort",
           ("tvm", "fp32"): "fp32-tvm", ("tvm", "int8"): "int8-tvm",
           ("trt", "fp16"): "fp16-trt", ("trt", "int8"): "int8-trt"}
PRECISIONS = ("fp32", "fp16", "int8")
# objective -> (optuna direction, trial field, unit)
OBJECTIVES = {"throughput": ("maximize", "throughput", "items/s"),
              "latency": ("minimize", "p99_ms", "ms p99"),
              "cost": ("maximize", "throughput_per_core", "items/s per core")}
SAMPLERS = ("auto", "gp", "tpe", "random", "grid")
# backends whose compiled library fixes the input shapes (and the thread count in its target): each (threads, batch)
# point gets its own build, made in the trial's child on first use and kept in VARIANT/compiled-b<batch>-t<threads>/
STATIC_SHAPE_BACKENDS = ("tvm",)
DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32)


# -- parsing ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SloTerm:
    """One SLO bound: ``metric`` (p50/p90/p99/mean in ms, or throughput in items/s) ``op`` (<, <=, >, >=) ``limit``."""

    metric: str
    op: str
    limit: float

    @property
    def field(self) -> str:
        return "throughput" if self.metric == "throughput" else f"{self.metric}_ms"

    def describe(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}{'' if self.metric == 'throughput' else 'ms'}"

    def met(self, result: dict) -> bool:
        v, lim = float(result[self.field]), self.limit
        return {"<": v < lim, "<=": v <= lim, ">": v > lim, ">=": v >= lim}[self.op]

    def violation(self, result: dict) -> float:
        """Relative amount by which ``result`` misses this bound: <= 0 met, > 0 missed."""
        v = float(result[self.field])
        d = (v - self.limit) / self.limit if self.op in ("<", "<=") else (self.limit - v) / self.limit
        return min(d, 0.0) if self.met(result) else max(d, 1e-9)

    def miss(self, result: dict) -> str | None:
        if self.met(result):
            return None
        unit = " items/s" if self.metric == "throughput" else " ms"
        return f"{self.metric} {result[self.field]:.4g}{unit} violates {self.describe()}"


_SLO_TERM = re.compile(r"^(p50|p90|p99|mean|throughput)\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:e-?\d+)?)\s*(us|ms|s|/s|items/s)?$")


def parse_slo(text: str | None) -> list[SloTerm]:
    """'p99<20ms' | 'p50<=5ms' | 'p99<20ms,throughput>=500' (comma- or 'and'-separated) -> terms. Latency units
    us/ms/s (default ms); throughput is items/s."""
    if text is None or not str(text).strip():
        return []
    terms = []
    for part in re.split(r",|\band\b|&", str(text).strip().lower()):
        part = part.strip().replace(" ", "")
        if not part:
            continue
        m = _SLO_TERM.match(part)
        if not m:
            raise InputError(f"bad --slo term {part!r}", "use e.g. p99<20ms, p50<=5ms or throughput>=500 (comma-separated)")
        metric, op, value, unit = m.group(1), m.group(2), float(m.group(3)), m.group(4)
        if metric == "throughput":
            if unit not in (None, "/s", "items/s"):
                raise InputError(f"--slo {part!r}: throughput is in items/s", "write e.g. throughput>=500")
        else:
            if unit in ("/s", "items/s"):
                raise InputError(f"--slo {part!r}: {metric} is a latency", "give it in ms, us or s, e.g. p99<20ms")
            value *= {"us": 1e-3, "ms": 1.0, "s": 1e3, None: 1.0}[unit]
            if op in (">", ">="):
                raise InputError(f"--slo {part!r}: a latency bound must be an upper bound", "use < or <=")
        if value <= 0:
            raise InputError(f"--slo {part!r}: the bound must be positive", "give a positive bound")
        terms.append(SloTerm(metric, op, value))
    return terms


def parse_tune_budget(budget, space_size: int) -> dict:
    """'30' | '30 trials' | '25%' (of the space) | '10m' / '90s' / '1h' | '30 trials,10m' -> {'trials', 'seconds'}.
    None: 25% of the space, at least min(6, space) trials. Trials are distinct points evaluated (measured or from
    the cache); the time budget counts from the start of the tune and no trial starts after it."""
    trials: int | None = None
    seconds: float | None = None
    if budget is None:
        return {"trials": max(math.ceil(0.25 * space_size), min(6, space_size)), "seconds": None}
    if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool):
        parts = [f"{int(budget)}"]
    else:
        parts = [p.strip().lower() for p in re.split(r"[,|+]", str(budget)) if p.strip()]
    if not parts:
        raise InputError(f"bad --budget {budget!r}", "use 30, '30 trials', 25%, 10m or '30 trials,10m'")
    for p in parts:
        m_t = re.fullmatch(r"(\d+)\s*(trials?)?", p)
        m_p = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", p)
        m_s = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|m|min|h)", p)
        if m_t:
            trials = int(m_t.group(1))
        elif m_p:
            trials = max(1, math.ceil(float(m_p.group(1)) / 100 * space_size))
        elif m_s:
            seconds = float(m_s.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m_s.group(2)]
        else:
            raise InputError(f"bad --budget {budget!r}", "use 30, '30 trials', 25%, 10m or '30 trials,10m'")
    if trials is not None and trials < 1:
        raise InputError(f"--budget {budget!r}: at least one trial", "give a positive number of trials")
    if seconds is not None and seconds <= 0:
        raise InputError(f"--budget {budget!r}: the time budget must be positive", "e.g. 10m")
    return {"trials": trials, "seconds": seconds}


def parse_int_list(value, what: str) -> list[int]:
    """'1,2,4' | [1, 2, 4] | 4 -> sorted unique positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        items = [int(value)]
    elif isinstance(value, str):
        try:
            items = [int(x) for x in re.split(r"[,\s]+", value.strip()) if x]
        except ValueError:
            raise InputError(f"bad --{what} {value!r}", f"give comma-separated integers, e.g. --{what} 1,2,4") from None
    else:
        items = [int(x) for x in value]
    if not items or min(items) < 1:
        raise InputError(f"--{what} {value!r}: give positive integers", f"e.g. --{what} 1,2,4")
    return sorted(set(items))


def parse_names(value, what: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [x.strip().lower() for x in (value.split(",") if isinstance(value, str) else value) if str(x).strip()]
    if not items:
        raise InputError(f"--{what} is empty", f"name at least one, e.g. --{what} {allowed[0] if allowed else 'ort'}")
    if allowed:
        bad = [x for x in items if x not in allowed]
        if bad:
            raise InputError(f"--{what}: unknown {', '.join(bad)}", f"choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def default_threads() -> list[int]:
    """1, 2, 4, ... up to the cores this process may use, and that count itself."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out, t = [], 1
    while t <= n:
        out.append(t)
        t *= 2
    return sorted(set(out + [n]))


# -- trials and executors --------------------------------------------------------------------------------------
def trial_key(variant: str, threads: int, batch: int) -> str:
    return f"{variant}/t{threads}/b{batch}"


@dataclass(frozen=True)
class TrialSpec:
    """What one trial runs. ``payload`` is what the child needs (model path, backend options, feed file, protocol)."""

    variant: str  # '<backend>-<precision>'
    threads: int
    batch: int
    payload: dict = field(default_factory=dict, compare=False)
    timeout: float = 120.0

    @property
    def key(self) -> str:
        return trial_key(self.variant, self.threads, self.batch)

    @property
    def backend(self) -> str:
        return self.variant.split("-", 1)[0]

    @property
    def precision(self) -> str:
        return self.variant.split("-", 1)[1]

    def to_dict(self) -> dict:
        return {"key": self.key, "variant": self.variant, "backend": self.backend, "precision": self.precision,
                "threads": self.threads, "batch": self.batch, **self.payload}


class Executor(Protocol):
    """The seam between the search and where trials run. ``submit`` runs one trial and returns its measurement
    (``{'status': 'ok', 'p50_ms', 'p90_ms', 'p99_ms', 'mean_ms', 'throughput', 'throughput_per_core', ...}`` or
    ``{'status': 'failed', 'error'}``) and never raises for a trial's own failure; ``run_many`` runs up to
    ``workers`` trials at once (results in the specs' order). See docs/serving-scale-out.md for a Ray executor."""

    name: str
    workers: int

    def submit(self, spec: TrialSpec) -> dict: ...
    def run_many(self, specs: list[TrialSpec]) -> list[dict]: ...
    def close(self) -> None: ...


class LocalExecutor:
    """Each trial in its own child process (``python -m optkit.serving_worker``): a crash, a hang (``timeout``) or an
    exception costs that trial only. ``workers`` > 1 runs trials side by side, which makes them share cores and
    memory bandwidth and distorts every timing: keep 1 unless each trial is pinned to cores of its own."""

    name = "local"

    def __init__(self, workers: int = 1):
        if workers < 1:
            raise InputError(f"--workers must be >= 1, got {workers}", "use 1 (timings on a shared CPU must not overlap)")
        self.workers = workers
        self.launched = 0

    def submit(self, spec: TrialSpec) -> dict:
        self.launched += 1
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONWARNINGS", "ignore")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "optkit.serving_worker"], input=json.dumps(spec.to_dict()),
                                  capture_output=True, text=True, timeout=spec.timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "error": f"timed out after {spec.timeout:g} s (child killed)",
                    "seconds": round(time.perf_counter() - t0, 3)}
        secs = round(time.perf_counter() - t0, 3)
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(RESULT_MARK):
                res = json.loads(line[len(RESULT_MARK):])
                res["seconds"] = secs
                return res
        if proc.returncode < 0:
            try:
                why = f"killed by {signal.Signals(-proc.returncode).name}"
            except ValueError:
                why = f"killed by signal {-proc.returncode}"
        else:
            why = f"exited with code {proc.returncode}"
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-1:]
        return {"status": "failed", "error": f"child process {why}" + (f": {tail[0][:300]}" if tail else ""),
                "seconds": secs}

    def run_many(self, specs: list[TrialSpec]) -> list[dict]:
        if self.workers == 1 or len(specs) == 1:
            return [self.submit(s) for s in specs]
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.submit, specs))

    def close(self) -> None:
        pass


class ReplayExecutor:
    """Answers trials from a table of recorded measurements (trial key -> result): the fair way to compare search
    strategies across seeds on one measured grid, and the tests' way to run the search without timing anything."""

    name = "replay"

    def __init__(self, table: dict[str, dict], workers: int = 1):
        self.table = {k: dict(v) for k, v in table.items()}
        self.workers = workers
        self.calls: list[str] = []

    def submit(self, spec: TrialSpec) -> dict:
        self.calls.append(spec.key)
        res = self.table.get(spec.key)
        if res is None:
            return {"status": "failed", "error": f"{spec.key} is not in the replay table"}
        return dict(res)

    def run_many(self, specs: list[TrialSpec]) -> list[dict]:
        return [self.submit(s) for s in specs]

    def close(self) -> None:
        pass


def make_executor(executor, workers: int = 1):
    """'local' (default), 'ray' (a local Ray cluster), 'ray:ADDRESS' (an existing one; optkit.ray_executor), or an
    object with the Executor protocol."""
    if executor is None or executor == "local":
        return LocalExecutor(workers)
    if isinstance(executor, str):
        from .ray_executor import RayExecutor, parse_executor

        kind, address = parse_executor(executor)
        if kind == "local":
            return LocalExecutor(workers)
        return RayExecutor(address, workers)
    for attr in ("submit", "run_many"):
        if not callable(getattr(executor, attr, None)):
            raise InputError(f"executor {executor!r} has no {attr}()", "implement the optkit.serving.Executor protocol")
    return executor


def measure(spec: dict) -> dict:
    """One trial, run in the child: load the variant with ``threads`` intra-op threads, run the feed once (cold),
    then the bench protocol (warm-up, ``rounds`` rounds) on it. Returns latency percentiles and throughput."""
    from .backends import get_backend
    from .measure import time_sessions

    be = get_backend(spec["backend"], check=False)
    opts = be.Options.from_dict(spec.get("options") or {}, where=f"backend {spec['backend']}: ")
    with np.load(spec["feed"], allow_pickle=False) as z:
        feed = {k: z[k] for k in z.files}
    path, compile_s = Path(spec["model"]), None
    if spec.get("compile_dir"):  # a static-shape backend: build for this batch size and thread count once
        path = Path(spec["compile_dir"])
        if not (path / "tvm.json").is_file():
            t0 = time.perf_counter()
            be.compile(Path(spec["model"]), path, opts, int(spec["threads"]),
                       shapes={k: tuple(v) for k, v in spec["shapes"].items()}, warn=lambda m: None)
            compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sess = be.load(path, threads=int(spec["threads"]), options=opts)
    load_ms = (time.perf_counter() - t0) * 1e3
    try:
        t0 = time.perf_counter()
        sess.run(feed)
        cold_ms = (time.perf_counter() - t0) * 1e3
        p = spec.get("protocol") or {}
        st = time_sessions({"t": sess}, feed, rounds=int(p.get("rounds", 3)), round_runs=int(p.get("round_runs", 10)),
                           round_time=float(p.get("round_time", 0.3)), warmup_runs=int(p.get("warmup_runs", 10)),
                           warmup_time=float(p.get("warmup_time", 0.2)), batch=int(spec["batch"]))["t"]
    finally:
        sess.close()
    return {"status": "ok", **{k: st[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "cv", "runs",
                                                   "throughput")},
            "throughput_per_core": st["throughput"] / int(spec["threads"]), "round_p50_ms": st["round_p50_ms"],
            "load_ms": load_ms, "cold_ms": cold_ms, "compile_s": compile_s}


# -- search ----------------------------------------------------------------------------------------------------
@dataclass
class Space:
    """The search space: variants ('<backend>-<precision>') × threads × batch sizes."""

    variants: list[str]
    threads: list[int]
    batches: list[int]

    @property
    def size(self) -> int:
        return len(self.variants) * len(self.threads) * len(self.batches)

    def points(self) -> list[tuple[str, int, int]]:
        return [(v, t, b) for v in self.variants for t in self.threads for b in self.batches]


def objective_value(result: dict, objective: str) -> float | None:
    f = OBJECTIVES[objective][1]
    return float(result[f]) if result.get(f) is not None else None


def classify(result: dict, slo: list[SloTerm], objective: str) -> dict:
    """A trial result with ``status`` ok / infeasible (SLO miss, with ``reasons``) / failed, ``violation`` (max
    relative SLO miss, <= 0 when met) and ``objective``."""
    out = dict(result)
    if out.get("status") == "failed" or out.get("throughput") is None:
        out.update(status="failed", violation=None, objective=None)
        out.setdefault("error", "no measurement")
        return out
    reasons = [m for m in (t.miss(out) for t in slo) if m]
    viol = max((t.violation(out) for t in slo), default=-1.0)
    out.update(status="infeasible" if reasons else "ok", reasons=reasons, violation=viol,
               objective=objective_value(out, objective))
    return out


def resolve_sampler(name: str) -> str:
    """'auto' is optuna's Gaussian-process sampler when torch is installed (it needs it), else TPE: on the
    benchmark's measured grid and on synthetic serving surfaces GP found better specs than TPE with a 25% budget
    (benchmarks/results/serving_search-*.md)."""
    import importlib.util

    if name not in SAMPLERS:
        raise InputError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {name!r}", "pick one")
    has_torch = importlib.util.find_spec("torch") is not None
    if name == "auto":
        return "gp" if has_torch else "tpe"
    if name == "gp" and not has_torch:
        raise InputError("--sampler gp needs torch (optuna's GPSampler is built on it)",
                         "pip install torch (CPU build), or use --sampler tpe")
    return name


def _optuna():
    try:
        import optuna
    except ImportError:
        raise InputError("optkit tune searches with optuna, which is not installed",
                         "pip install 'optkit[tune]' (or --sampler grid to measure every point)") from None
    return optuna


def _sampler(name: str, seed: int | None, n_startup: int):
    optuna = _optuna()

    def constraints(trial):
        return trial.user_attrs.get("constraint", (1.0,))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for multivariate / constraints
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True,
                                              constraints_func=constraints, warn_independent_sampling=False)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup, constraints_func=constraints,
                                             warn_independent_sampling=False)
        return optuna.samplers.RandomSampler(seed=seed)


def n_startup_for(budget_trials: int | None, space_size: int) -> int:
    """Random trials before the model-based sampler takes over: a third of the budget, 2 to 10."""
    b = budget_trials or space_size
    return max(2, min(10, b // 3))


def search(space: Space, executor, make_spec: Callable[[str, int, int], TrialSpec], *, objective: str = "throughput",
           slo: list[SloTerm] | None = None, budget_trials: int | None = None, deadline: float | None = None,
           sampler: str = "auto", seed: int | None = 0, cache: dict[str, dict] | None = None,
           n_startup: int | None = None, on_trial: Callable[[dict], None] | None = None,
           max_repeats: int = 6) -> dict:
    """Run the search over ``space``. Every distinct point evaluated counts against ``budget_trials`` (None: no
    limit besides the space and the deadline); a point suggested again is answered from memory (never re-measured,
    not counted), and after ``max_repeats`` repeats in a row an unseen point is drawn at random. ``cache`` (trial
    key -> earlier result) answers points measured by earlier runs. Returns {'trials', 'stopped', 'repeats'}."""
    if objective not in OBJECTIVES:
        raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}", "pick one")
    sampler = resolve_sampler(sampler)
    slo = slo or []
    cache = cache if cache is not None else {}
    trials: list[dict] = []
    seen: dict[str, dict] = {}
    workers = max(1, int(getattr(executor, "workers", 1)))
    limit = min(budget_trials or space.size, space.size)

    def record(key, v, t, b, res, source):
        rec = classify(res, slo, objective)
        rec.update(n=len(trials) + 1, key=key, variant=v, backend=v.split("-", 1)[0], precision=v.split("-", 1)[1],
                   threads=t, batch=b, source=source)
        trials.append(rec)
        seen[key] = rec
        if on_trial is not None:
            on_trial(rec)
        return rec

    def out_of_time():
        return deadline is not None and time.monotonic() >= deadline

    if sampler == "grid":  # every point, in order: the exhaustive baseline
        stopped = "space exhausted"
        for v, t, b in space.points():
            if len(trials) >= limit:
                stopped = "trial budget spent"
                break
            if out_of_time():
                stopped = "time budget spent"
                break
            key = trial_key(v, t, b)
            if key in cache:
                record(key, v, t, b, cache[key], "cache")
            else:
                record(key, v, t, b, executor.run_many([make_spec(v, t, b)])[0], getattr(executor, "name", "executor"))
        return {"trials": trials, "stopped": stopped, "repeats": 0}

    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    direction = OBJECTIVES[objective][0]
    study = optuna.create_study(direction=direction,
                                sampler=_sampler(sampler, seed, n_startup if n_startup is not None else
                                                 n_startup_for(budget_trials, space.size)))
    rng = random.Random(seed)

    def tell(trial, rec):
        if rec["status"] == "failed":
            trial.set_user_attr("constraint", (1.0,))
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        trial.set_user_attr("constraint", (float(rec["violation"]),))
        # an SLO miss keeps its measured value: the constraint ranks it below every feasible trial
        study.tell(trial, rec["objective"])

    repeats = streak = 0
    stopped = "space exhausted"
    while True:
        if len(seen) >= space.size:
            stopped = "space exhausted"
            break
        if len(trials) >= limit:
            stopped = "trial budget spent"
            break
        if out_of_time():
            stopped = "time budget spent"
            break
        wave: list[tuple] = []  # (optuna trial, key, v, t, b) to run now
        while len(wave) < min(workers, limit - len(trials)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tr = study.ask()
                v = tr.suggest_categorical("variant", space.variants)
                t = space.threads[tr.suggest_int("threads_i", 0, len(space.threads) - 1)]
                b = space.batches[tr.suggest_int("batch_i", 0, len(space.batches) - 1)]
            key = trial_key(v, t, b)
            if key in seen or any(w[1] == key for w in wave):
                repeats += 1
                streak += 1
                if key in seen:
                    tell(tr, seen[key])
                else:
                    tr.set_user_attr("constraint", (1.0,))
                    study.tell(tr, state=optuna.trial.TrialState.FAIL)
                if streak >= max_repeats:
                    streak = 0
                    unseen = [p for p in space.points() if trial_key(*p) not in seen
                              and all(w[1] != trial_key(*p) for w in wave)]
                    if not unseen:
                        break
                    pv, pt, pb = rng.choice(unseen)
                    study.enqueue_trial({"variant": pv, "threads_i": space.threads.index(pt),
                                         "batch_i": space.batches.index(pb)})
                continue
            streak = 0
            if key in cache:
                tell(tr, record(key, v, t, b, cache[key], "cache"))
                if len(trials) >= limit:
                    break
                continue
            wave.append((tr, key, v, t, b))
        if not wave:
            continue
        results = executor.run_many([make_spec(v, t, b) for _, _, v, t, b in wave])
        for (tr, key, v, t, b), res in zip(wave, results):
            tell(tr, record(key, v, t, b, res, getattr(executor, "name", "executor")))
    return {"trials": trials, "stopped": stopped, "repeats": repeats}


def pareto_front(points: list[dict]) -> list[dict]:
    """The measured points that no other point beats on both throughput (higher) and p99 (lower), by p99."""
    pts = [p for p in points if p.get("status") in ("ok", "infeasible") and p.get("throughput") is not None]
    front = []
    for p in pts:
        dominated = any(q["p99_ms"] <= p["p99_ms"] and q["throughput"] >= p["throughput"]
                        and (q["p99_ms"] < p["p99_ms"] or q["throughput"] > p["throughput"]) for q in pts if q is not p)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: (p["p99_ms"], -p["throughput"]))


def best_trial(trials: list[dict], objective: str) -> dict | None:
    """The feasible trial with the best objective (ties: fewer threads, then smaller batch, then lower p99)."""
    ok = [t for t in trials if t.get("status") == "ok" and t.get("objective") is not None]
    if not ok:
        return None
    sign = -1 if OBJECTIVES[objective][0] == "maximize" else 1
    return min(ok, key=lambda t: (sign * t["objective"], t["threads"], t["batch"], t["p99_ms"]))


# -- variants --------------------------------------------------------------------------------------------------
def _resolve_input(target, output, name):
    """(source ONNX, artifact dir or None, its manifest, model name, tune dir, serving.json dir)."""
    from .api import _model_name
    from .predictor import resolve_artifact

    p = Path(target)
    if name is not None:
        from .artifact import check_name

        check_name(name)  # files go under OUTPUT/<name>/: one path component, never outside
    if not p.exists():
        raise InputError(f"{p} not found", "pass an ONNX model or an artifact directory (OUT/<name>/<version>)")
    if p.is_file():
        if p.suffix.lower() != ".onnx":
            raise InputError(f"optkit tune takes an ONNX model or an artifact directory, not {p.name}",
                             "import it first: optkit import MODEL --out model.onnx")
        nm = name or _model_name(p)
        tune_dir = Path(output) / nm / "tune"
        return p, None, None, nm, tune_dir, tune_dir
    art, man, _ = resolve_artifact(p)
    src = Path(man["input"]["path"])
    if not src.is_absolute():
        src = art / src
    from .model import sha256_file

    if not src.is_file() or sha256_file(src) != man["input"]["sha256"]:
        raise InputError(f"the artifact's input model {src} is missing or changed since optimize; tune builds its "
                         "variants from it", "pass the original ONNX model to optkit tune instead")
    return src, art, man, name or art.parent.name, art / "tune", art


def _variant_matches(man: dict, src_sha: str, recipe_dict: dict, data_path: str | None) -> bool:
    return (man.get("input", {}).get("sha256") == src_sha and man.get("recipe") == recipe_dict
            and (man.get("data") or {}).get("path") == data_path)


def _build_variant(src: Path, src_sha: str, backend: str, precision: str, vdir: Path, data, shapes, warn) -> dict:
    """Build (or reuse) one variant with its recipe; the performance guard is off (the tuner decides speed per
    threads and batch size, so an INT8 model slower at batch 1 may still win at batch 32)."""
    from .api import optimize
    from .artifact import check, read_manifest, versions
    from .recipe import load_recipe

    recipe = RECIPES[(backend, precision)]
    rec = load_recipe(recipe)
    rdict = rec.to_dict()
    data_path = str(Path(data).resolve()) if data else None
    for v in reversed(versions(vdir)):
        try:
            man = read_manifest(vdir / str(v))
            check(vdir / str(v), man)  # a cached variant whose files changed is rebuilt, never loaded
        except OptkitError:
            continue
        if _variant_matches(man, src_sha, json.loads(json.dumps(rdict)), data_path):
            return {"recipe": recipe, "artifact": str(vdir / str(v)), "built": False,
                    "build_seconds": man.get("optimize_seconds"), "manifest": man}
    t0 = time.perf_counter()
    man = optimize(src, rec, data=data, shapes=shapes, output=vdir.parent, name=vdir.name, force=True,
                   warn=lambda m: None)
    return {"recipe": recipe, "artifact": man["artifact"], "built": True,
            "build_seconds": round(time.perf_counter() - t0, 3), "manifest": man}


def _judge_variants(src: Path, variants: list[dict], evals, criterion, max_feeds: int, warn) -> None:
    """Accuracy of every built variant against the input model (ORT) on the eval feeds, on its own backend."""
    from .backends import get_backend
    from .backends.ort import OrtSession
    from .predictor import backend_options, load_path

    feeds = evals.feeds[:max_feeds]
    labels = evals.labels[:max_feeds] if evals.labels else None
    with OrtSession(src, 1) as ref:
        ref_out = [ref.run(f) for f in feeds]
    for v in variants:
        if v["status"] != "built":
            continue
        art, man = Path(v["artifact"]), v.pop("_manifest")
        be = get_backend(v["backend"], check=False)
        try:
            path = load_path(art, man, art / man["output"]["path"], v["backend"])
            opts = backend_options(man, v["backend"])
            sess = be.load(path, threads=1, options=opts)
            try:
                outs = [sess.run(f) for f in feeds]
            finally:
                sess.close()
        except Exception as e:  # a variant this backend cannot run: recorded, the others go on
            v.update(status="failed", reason=f"cannot run: {type(e).__name__}: {str(e).strip()[:300]}")
            continue
        v["model"], v["options"] = str(path), opts.to_dict()
        verdict = criterion.judge(ref_out, outs, labels, feeds)
        v["accuracy"] = {"criterion": criterion.describe(), "feeds": len(feeds), **verdict}
        if verdict["ok"]:
            v["status"] = "ok"
        else:
            v.update(status="inaccurate", reason=f"{verdict['metric']} {verdict['value']:.5g} below the threshold "
                                                 f"{verdict['threshold']:.5g} ({criterion.describe()}); not timed")


def _fixed_batch(inputs) -> int | None:
    dims = {s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], int)}
    return dims.pop() if len(dims) == 1 else (min(dims) if dims else None)


# -- cache -----------------------------------------------------------------------------------------------------
def _context_hash(variant: dict, protocol: dict, feed_sig: dict) -> str:
    from .env import environment

    env = environment()
    ctx = {"model_sha256": variant["model_sha256"], "options": variant.get("options"), "protocol": protocol,
           "feed": feed_sig, "cpu": env["cpu"].get("model"), "cores": os.cpu_count(), "libraries": env["libraries"],
           "python": env["python"]}
    return hashlib.sha256(json.dumps(ctx, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data.get("entries", {}) if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


# -- the tune command ------------------------------------------------------------------------------------------
def tune(model_or_artifact, *, backends="ort", precisions="fp32,int8", threads=None, batches=None,
         slo: str | None = None, objective: str = "throughput", tolerance: str = "1%", budget=None, seed: int = 0,
         output: str | Path = "optkit-out", data=None, eval_data=None, shapes: dict | None = None,
         executor="local", workers: int = 1, sampler: str = "auto", rounds: int = 3, round_time: float = 0.3,
         trial_timeout: float = 120.0, compile_timeout: float = 1800.0, fresh: bool = False, name: str | None = None,
         max_eval_feeds: int = 256, warn=None, on_trial=None, on_status=None) -> dict:
    """Search for the serving spec (backend, precision, threads, batch) with the best ``objective`` under ``slo``
    among variants within ``tolerance`` of the input model; write ``serving.json`` + ``serving.svg`` and return the
    serving.json content (recommended spec, Pareto set, every trial, variants, unavailable backends, search stats).

    ``model_or_artifact``: an ONNX model (files go to ``output/<name>/tune/``) or an artifact directory (its input
    model is the FP32 source and the reference; the artifact itself is reused as its own variant; serving.json goes
    into the artifact). ``budget``: '30' / '30 trials' / '25%' / '10m' / '30 trials,10m' (default 25% of the space,
    at least 6 trials). ``executor``: 'local' or an ``Executor``. ``fresh``: ignore the trial cache.
    ``trial_timeout``: seconds a trial's child may take (plus ``compile_timeout`` when a static-shape backend such as
    TVM must first build that (threads, batch) point).
    """
    from .backends import get_backend
    from .data import get_samples
    from .measure import precision_of
    from .model import load_model, sha256_file, signature
    from .search import make_criterion, parse_tolerance

    warn = warn or (lambda msg: None)
    status = on_status or (lambda msg: None)
    started = time.monotonic()
    # -- validate everything before any work
    if objective not in OBJECTIVES:
        raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}", "pick one")
    sampler = resolve_sampler(sampler)
    if sampler != "grid":
        _optuna()  # a missing optuna fails here, before any variant is built or calibrated
    slo_terms = parse_slo(slo)
    parse_tolerance(tolerance)
    if rounds < 1 or round_time <= 0:
        raise InputError("--rounds must be >= 1 and --round-time > 0", "e.g. --rounds 3 --round-time 0.3")
    from .backends import backend_names

    be_names = parse_names(backends, "backends", tuple(backend_names()))
    precs = parse_names(precisions, "precisions", PRECISIONS)
    thread_list = parse_int_list(threads, "threads") if threads is not None else default_threads()
    ex = make_executor(executor, workers)
    src, art, art_man, nm, tune_dir, serving_dir = _resolve_input(model_or_artifact, output, name)
    if data is None and art_man is not None and (art_man.get("data") or {}).get("path") and \
            Path(art_man["data"]["path"]).exists():
        data = art_man["data"]["path"]
    m = load_model(src)
    inputs, outputs = signature(m)
    src_sha = sha256_file(src)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    notes: list[str] = []
    if max(thread_list) > cores:
        warn(f"--threads {max(thread_list)} is more than the {cores} core(s) this process may use: those trials "
             "oversubscribe the CPU")
    fixed = _fixed_batch(inputs)
    excluded: list[dict] = []
    if batches is None:
        batch_list = [fixed] if fixed else list(DEFAULT_BATCHES)
    else:
        batch_list = parse_int_list(batches, "batch")
    if fixed is not None:
        bad = [b for b in batch_list if b != fixed]
        if bad:
            excluded += [{"batch": b, "reason": f"the model's batch dim is fixed to {fixed}"} for b in bad]
            notes.append(f"the model has a fixed batch of {fixed}: batch sizes {bad} are excluded "
                         "(re-export with a dynamic batch axis to tune the batch size)")
            warn(notes[-1])
        batch_list = [b for b in batch_list if b == fixed]
        if not batch_list:
            raise InputError(f"the model's batch dim is fixed to {fixed}; none of --batch {batches} can run",
                             f"use --batch {fixed} or re-export the model with a dynamic batch axis")
    samples = get_samples(m, data, shapes)
    for w in samples.warnings:
        warn(w)
    evals = get_samples(m, eval_data, shapes) if eval_data else samples
    criterion = make_criterion(tolerance, "auto", m, evals.labels is not None)
    # -- backends and variants
    unavailable, variants = [], []
    for b in be_names:
        st = get_backend(b, check=False).status()
        if not st.get("ok"):
            unavailable.append({"backend": b, "reason": st.get("reason") or "unavailable"})
            warn(f"backend {b} is unavailable here and is left out of the search: {st.get('reason')}")
            continue
        for p in precs:
            v = {"variant": f"{b}-{p}", "backend": b, "precision": p, "recipe": RECIPES.get((b, p))}
            if v["recipe"] is None:
                v.update(status="unsupported", reason=f"no built-in recipe builds {p} for backend {b}")
            variants.append(v)
    tune_dir.mkdir(parents=True, exist_ok=True)
    art_prec = precision_of(load_model(art / art_man["output"]["path"])) if art is not None else None
    from .predictor import artifact_backend

    for v in variants:
        if v.get("status") == "unsupported":
            continue
        if art is not None and v["backend"] == artifact_backend(art_man) and v["precision"] == art_prec:
            v.update(status="built", artifact=str(art), built=False, build_seconds=art_man.get("optimize_seconds"),
                     recipe=art_man["recipe"]["name"], _manifest=art_man, source="the given artifact")
            continue
        status(f"variant {v['variant']}: building with recipe {v['recipe']} (or reusing the cache)")
        try:
            info = _build_variant(src, src_sha, v["backend"], v["precision"], tune_dir / "variants" / v["variant"],
                                  data, shapes, warn)
        except OptkitError as e:
            v.update(status="failed", reason=f"build failed: {e}")
            warn(f"variant {v['variant']} could not be built: {e}")
            continue
        v.update(status="built", artifact=info["artifact"], built=info["built"], build_seconds=info["build_seconds"],
                 _manifest=info["manifest"])
    for v in variants:
        if v.get("status") == "built":
            out_model = Path(v["artifact"]) / v["_manifest"]["output"]["path"]
            v["model_sha256"] = sha256_file(out_model)
            v["onnx"] = str(out_model)
            v["precision_actual"] = precision_of(load_model(out_model))
    status(f"judging accuracy ({criterion.describe()}) on {min(len(evals), max_eval_feeds)} feed(s)")
    _judge_variants(src, variants, evals, criterion, max_eval_feeds, warn)
    for v in variants:
        if v.get("status") in ("inaccurate", "failed"):
            warn(f"variant {v['variant']}: {v['reason']}")
    space = Space([v["variant"] for v in variants if v.get("status") == "ok"], thread_list, batch_list)
    budget_d = parse_tune_budget(budget, max(space.size, 1))
    deadline = started + budget_d["seconds"] if budget_d["seconds"] else None
    protocol = {"warmup_runs": 10, "warmup_time": 0.2, "rounds": rounds, "round_runs": 10, "round_time": round_time,
                "inter_op_threads": 1, "timing": "one child process per trial, trials one after another"
                if getattr(ex, "workers", 1) == 1 else f"{ex.workers} trials at a time (timings distorted)"}
    if getattr(ex, "workers", 1) > 1:
        warn(f"{ex.workers} trials run at the same time: they share cores and distort each other's timing")
    # -- feeds, cache, search
    by_name = {v["variant"]: v for v in variants}
    cache_path = tune_dir / CACHE_FILE
    disk_cache = {} if fresh else _load_cache(cache_path)
    feed_sig = {"source": samples.source, "shapes": {k: list(s) for k, s in samples.shapes().items()}}
    ctx = {v: _context_hash(by_name[v], protocol, feed_sig) for v in space.variants}
    run_cache = {}
    for v, t, b in space.points():
        hit = disk_cache.get(f"{trial_key(v, t, b)}@{ctx[v]}")
        if hit is not None:
            run_cache[trial_key(v, t, b)] = hit
    search_res = {"trials": [], "stopped": "no variant to time", "repeats": 0}
    search_t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="optkit-tune-feeds-") as tmp:
        feed_files, feed_shapes = {}, {}
        for b in batch_list:
            f = Path(tmp) / f"batch-{b}.npz"
            feed = samples.batched(b).feeds[0]
            np.savez(f, **feed)
            feed_files[b], feed_shapes[b] = str(f), {k: list(a.shape) for k, a in feed.items()}

        def make_spec(v, t, b):
            var = by_name[v]
            payload = {"model": var["model"], "options": var["options"], "feed": feed_files[b], "protocol": protocol}
            timeout = trial_timeout
            if var["backend"] in STATIC_SHAPE_BACKENDS:
                cdir = Path(var["artifact"]) / f"compiled-b{b}-t{t}"
                payload.update(model=var["onnx"], compile_dir=str(cdir), shapes=feed_shapes[b])
                if not (cdir / "tvm.json").is_file():
                    timeout += compile_timeout
            return TrialSpec(v, t, b, payload=payload, timeout=timeout)

        def on_record(rec):
            if rec["source"] not in ("cache",) and rec["status"] != "failed":
                raw = {k: rec[k] for k in ("status", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "cv", "runs",
                                           "throughput", "throughput_per_core", "load_ms", "cold_ms", "compile_s")
                       if k in rec}
                raw["status"] = "ok"
                raw["measured"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                disk_cache[f"{rec['key']}@{ctx[rec['variant']]}"] = raw
                _write_json(cache_path, {"schema": "optkit.trial-cache/1", "entries": disk_cache})
            if on_trial is not None:
                on_trial(rec)

        if space.size:
            status(f"searching {space.size} points ({len(space.variants)} variant(s) × {len(thread_list)} thread "
                   f"count(s) × {len(batch_list)} batch size(s)) with {sampler}, budget "
                   + ", ".join(x for x in (f"{budget_d['trials']} trials" if budget_d["trials"] else "",
                                           f"{budget_d['seconds']:g} s" if budget_d["seconds"] else "") if x))
            search_res = search(space, ex, make_spec, objective=objective, slo=slo_terms,
                                budget_trials=budget_d["trials"], deadline=deadline, sampler=sampler, seed=seed,
                                cache=run_cache, on_trial=on_record)
    ex.close()
    trials = search_res["trials"]
    for t in trials:
        t.pop("round_p50_ms", None)
    best = best_trial(trials, objective)
    front = pareto_front(trials)
    recommended = None
    if best is not None:
        var = by_name[best["variant"]]
        recommended = {"backend": best["backend"], "precision": best["precision"], "threads": best["threads"],
                       "batch": best["batch"], "inter_op_threads": 1, "artifact": var["artifact"], "recipe": var["recipe"],
                       "objective": {"name": objective, "value": best["objective"], "unit": OBJECTIVES[objective][2]},
                       "expected": {k: best[k] for k in ("p50_ms", "p90_ms", "p99_ms", "throughput",
                                                         "throughput_per_core")},
                       "accuracy": var.get("accuracy"),
                       "load": f"optkit.load({var['artifact']!r}, backend={best['backend']!r}, threads={best['threads']})"
                               f"  # feed batches of {best['batch']}"}
    elif space.size:
        notes.append("no trial met the SLO" if any(t["status"] == "infeasible" for t in trials)
                     else "no trial could be measured")
    else:
        notes.append("no variant could be timed (see variants: unavailable, failed or outside the tolerance)")
    counts = {s: sum(1 for t in trials if t["status"] == s) for s in ("ok", "infeasible", "failed")}
    result = {
        "schema": SERVING_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(src.resolve()), "sha256": src_sha, "name": nm,
                  "artifact": str(art) if art is not None else None},
        "recommended": recommended,
        "objective": objective,
        "slo": [t.describe() for t in slo_terms],
        "tolerance": {"value": tolerance, "criterion": criterion.describe(),
                      "judged_on": evals.source + (" (the calibration data)" if evals is samples and not samples.synthetic
                                                   else "")},
        "pareto": [{k: p[k] for k in ("key", "backend", "precision", "threads", "batch", "p50_ms", "p99_ms",
                                      "throughput", "throughput_per_core", "status")} for p in front],
        "space": {"backends": be_names, "precisions": precs, "variants": space.variants, "threads": thread_list,
                  "batches": batch_list, "size": space.size, "excluded": excluded},
        "search": {"sampler": sampler, "seed": seed, "executor": getattr(ex, "name", type(ex).__name__),
                   "workers": getattr(ex, "workers", 1), "budget": budget_d, "stopped": search_res["stopped"],
                   "trials": len(trials), "measured": sum(1 for t in trials if t["source"] != "cache"),
                   "from_cache": sum(1 for t in trials if t["source"] == "cache"), "repeats_answered_from_memory":
                   search_res["repeats"], **counts,
                   "fraction_of_space": round(len(trials) / space.size, 4) if space.size else 0.0,
                   "search_seconds": round(time.perf_counter() - search_t0, 3),
                   "total_seconds": round(time.monotonic() - started, 3)},
        "protocol": protocol,
        "variants": [{k: v.get(k) for k in ("variant", "backend", "precision", "recipe", "status", "reason", "artifact",
                                            "built", "build_seconds", "precision_actual", "accuracy", "source")
                      if v.get(k) is not None} for v in variants],
        "unavailable": unavailable,
        "trials": trials,
        "notes": notes,
        "data": {"source": samples.source, "synthetic": samples.synthetic, "feeds": len(samples),
                 "labels": samples.labels is not None},
        "cores": cores,
    }
    from .env import environment

    result["environment"] = environment()
    serving_dir.mkdir(parents=True, exist_ok=True)
    _write_json(serving_dir / SERVING, result)
    (serving_dir / SERVING_SVG).write_text(svg_plot(result), encoding="utf-8")
    result["serving_json"] = str(serving_dir / SERVING)
    result["plot"] = str(serving_dir / SERVING_SVG)
    result["tune_dir"] = str(tune_dir)
    return result


def _write_json(path: Path, data: dict) -> None:
    from .artifact import write_json

    write_json(path, data)


# -- the plot --------------------------------------------------------------------------------------------------
_COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]


def svg_plot(res: dict) -> str:
    """Throughput (y) vs p99 latency (x, log scale when it spans > 20x) of every measured trial: filled = feasible,
    open = SLO miss; the Pareto front as a dashed step line; the recommended spec ringed; p99 SLO as a red line."""
    pts = [t for t in res["trials"] if t.get("status") in ("ok", "infeasible")]
    W, H, L, R, T, B = 760, 380, 70, 200, 30, 48
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
             'font-family="system-ui,sans-serif" font-size="11">',
             f'<text x="{L}" y="18" font-size="13" font-weight="600">optkit tune · {html.escape(res["model"]["name"])} · '
             f'objective {res["objective"]}{" · SLO " + html.escape(", ".join(res["slo"])) if res["slo"] else ""}</text>']
    if not pts:
        parts.append(f'<text x="{L}" y="{H / 2}">no trial was measured</text></svg>')
        return "".join(parts)
    xs = [t["p99_ms"] for t in pts]
    ys = [t["throughput"] for t in pts]
    slo_p99 = [s for s in res["slo"] if s.startswith("p99")]
    slo_x = float(re.findall(r"[0-9.]+", slo_p99[0])[-1]) if slo_p99 else None
    xlo, xhi = min(xs + ([slo_x] if slo_x else [])), max(xs + ([slo_x] if slo_x else []))
    logx = xhi / max(xlo, 1e-9) > 20
    if logx:
        fx = lambda v: math.log10(max(v, 1e-9))  # noqa: E731
        x0, x1 = fx(xlo) - 0.1, fx(xhi) + 0.1
    else:
        fx = lambda v: v  # noqa: E731
        x0, x1 = 0.0, xhi * 1.1
    y0, y1 = 0.0, max(ys) * 1.1
    sx = lambda v: L + (fx(v) - x0) / (x1 - x0) * (W - L - R)  # noqa: E731
    sy = lambda v: T + (1 - (v - y0) / (y1 - y0)) * (H - T - B)  # noqa: E731
    xticks = ([10 ** e * m for e in range(math.floor(x0), math.ceil(x1) + 1) for m in (1, 2, 5)
               if x0 <= math.log10(10 ** e * m) <= x1] if logx else nice_ticks(x0, x1))
    for tx in xticks:
        parts.append(f'<line x1="{sx(tx):.1f}" y1="{T}" x2="{sx(tx):.1f}" y2="{H - B}" stroke="#eef0f3"/>'
                     f'<text x="{sx(tx):.1f}" y="{H - B + 15}" text-anchor="middle">{tx:g}</text>')
    for ty in nice_ticks(y0, y1):
        parts.append(f'<line x1="{L}" y1="{sy(ty):.1f}" x2="{W - R}" y2="{sy(ty):.1f}" stroke="#eef0f3"/>'
                     f'<text x="{L - 6}" y="{sy(ty) + 4:.1f}" text-anchor="end">{ty:g}</text>')
    parts.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#98a2b3"/>'
                 f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#98a2b3"/>'
                 f'<text class="axis-x" x="{(L + W - R) / 2:.0f}" y="{H - 10}" text-anchor="middle">p99 latency per batch (ms'
                 f'{", log scale" if logx else ""}), lower is better</text>'
                 f'<text class="axis-y" transform="translate(16,{(T + H - B) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                 'throughput (items/s), higher is better</text>')
    if slo_x:
        parts.append(f'<line x1="{sx(slo_x):.1f}" y1="{T}" x2="{sx(slo_x):.1f}" y2="{H - B}" stroke="#b42318" '
                     f'stroke-dasharray="4 3"/><text x="{sx(slo_x) + 3:.1f}" y="{T + 10}" fill="#b42318">'
                     f'{html.escape(slo_p99[0])}</text>')
    front = res["pareto"]
    if len(front) > 1:
        d = f"M{sx(front[0]['p99_ms']):.1f},{sy(front[0]['throughput']):.1f}"
        for p in front[1:]:
            d += f" H{sx(p['p99_ms']):.1f} V{sy(p['throughput']):.1f}"
        parts.append(f'<path d="{d}" fill="none" stroke="#f59e0b" stroke-width="2" stroke-dasharray="5 3"/>')
    variants = list(dict.fromkeys(t["variant"] for t in pts))
    color = {v: _COLORS[i % len(_COLORS)] for i, v in enumerate(variants)}
    rec = res.get("recommended") or {}
    for t in pts:
        c = color[t["variant"]]
        x, y = sx(t["p99_ms"]), sy(t["throughput"])
        fill = c if t["status"] == "ok" else "white"
        r = 4 + 1.2 * math.log2(max(t["threads"], 1))
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{fill}" stroke="{c}" stroke-width="1.5">'
                     f'<title>{html.escape(t["key"])}: p50 {t["p50_ms"]:.3f} ms, p99 {t["p99_ms"]:.3f} ms, '
                     f'{t["throughput"]:.1f} items/s{" (SLO miss)" if t["status"] != "ok" else ""}</title></circle>'
                     f'<text x="{x + r + 2:.1f}" y="{y - 3:.1f}" font-size="9" fill="#667085">b{t["batch"]}</text>')
        if rec and t["variant"] == f"{rec['backend']}-{rec['precision']}" and t["threads"] == rec["threads"] \
                and t["batch"] == rec["batch"]:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r + 5:.1f}" fill="none" stroke="#111" stroke-width="2"/>')
    for i, v in enumerate(variants):
        ly = T + 14 + i * 17
        parts.append(f'<circle cx="{W - R + 16}" cy="{ly - 4}" r="5" fill="{color[v]}"/>'
                     f'<text x="{W - R + 26}" y="{ly}">{html.escape(v)}</text>')
    ly = T + 14 + len(variants) * 17 + 8
    parts.append(f'<text x="{W - R + 10}" y="{ly}">bigger dot = more threads</text>'
                 f'<text x="{W - R + 10}" y="{ly + 15}">open = misses the SLO</text>'
                 f'<text x="{W - R + 10}" y="{ly + 30}">ringed = recommended</text>'
                 f'<text x="{W - R + 10}" y="{ly + 45}" fill="#b54708">'
                 f'{"dashed = Pareto front" if len(front) > 1 else "Pareto front: one point (no line)"}</text></svg>')
    return "".join(parts)


__all__ = ["tune", "search", "Space", "TrialSpec", "Executor", "LocalExecutor", "ReplayExecutor", "parse_slo",
           "parse_tune_budget", "pareto_front", "best_trial", "classify", "measure", "svg_plot", "RECIPES", "SERVING"]
