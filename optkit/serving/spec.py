"""Serving-spec parsing: the SLO, the budget, the lists of backends, precisions, threads and batch sizes; and the
constants every part of ``optkit tune`` shares."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

SERVING = "serving.json"
SERVING_SVG = "serving.svg"
SERVING_SCHEMA = "optkit.serving/1"
CACHE_FILE = "trial-cache.json"
RESULT_MARK = "OPTKIT_TRIAL_RESULT "

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
