"""One evaluator: the deployed one. Every number that decides something (a pass's numerics check, a tolerance trial,
the performance guard, the candidate choice) comes from running the candidate the way ``optkit.load`` will serve it.

On ONNX Runtime that means the artifact's session options: graph optimization level (default ``all``, where Q/DQ
pairs are fused into integer kernels whose results depend on the CPU), threads, the CPU execution provider. A gate
that judged ORT's ``basic`` level (Q/DQ as float fake-quant) and shipped level ``all`` measured another program: the
digits CNN with S8 activations kept 99.7% top-1 at ``basic`` and 18% at ``all`` on an AVX2 CPU.

TVM runs Q/DQ as float fake-quant and TensorRT accumulates INT8 in 32 bits without saturation: for those the
evaluator is ORT with Q/DQ run as float ops (``session.disable_quant_qdq``), the program they compute, and each
backend's compile step checks its build against that same reference.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import onnx


@dataclass(frozen=True)
class Evaluator:
    backend: str = "ort"
    threads: int = 1
    level: str = "all"
    fake_quant: bool = False
    inter_op_threads: int = 1

    @classmethod
    def for_backend(cls, backend: str, options=None, threads: int = 1) -> "Evaluator":
        if backend == "ort":
            level = getattr(options, "graph_optimization_level", "all") if options is not None else "all"
            inter = getattr(options, "inter_op_threads", 1) if options is not None else 1
            return cls("ort", threads, level, False, inter)
        return cls(backend, threads, "all", True)

    def describe(self) -> str:
        if self.backend == "ort":
            return (f"ONNX Runtime CPU EP, graph optimization level {self.level}, {self.threads} thread(s): the session "
                    "optkit.load serves")
        return (f"ONNX Runtime with Q/DQ run as float ops (what {self.backend} computes), {self.threads} thread(s); "
                f"the {self.backend} build is checked against the same reference when it is compiled")

    def to_dict(self) -> dict:
        return {"backend": self.backend, "threads": self.threads, "level": self.level, "fake_quant": self.fake_quant,
                "inter_op_threads": self.inter_op_threads, "describe": self.describe()}

    def session(self, model):
        from .backends.ort import OrtSession

        return OrtSession(model, threads=self.threads, level=self.level, inter_op_threads=self.inter_op_threads,
                          fake_quant=self.fake_quant)

    def run(self, model: onnx.ModelProto, feeds: list[dict]) -> list[dict]:
        with self.session(model) as s:
            return [s.run(f) for f in feeds]


# -- speed decisions above the noise ----------------------------------------------------------------------------

def _time_for(run, feed, min_runs: int, min_seconds: float) -> list[float]:
    out, start = [], time.perf_counter()
    while len(out) < min_runs or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        run(feed)
        out.append(time.perf_counter() - t0)
    return out


def _binom_cdf(k: int, n: int) -> float:
    from math import comb

    return sum(comb(n, i) for i in range(k + 1)) / 2 ** n


def median_ci(ratios: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median (order statistics, binomial): (lo, hi)."""
    r = sorted(ratios)
    n = len(r)
    if n == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    k = -1
    while k + 1 < n // 2 and _binom_cdf(k + 1, n) <= alpha:
        k += 1
    k = max(k, 0)  # fewer than 6 rounds cannot reach 95%: the full range is the (wider) interval
    return r[k], r[n - 1 - k]


# A head-to-head decision between two candidates may take up to 40 rounds / 24 s (a screen stops at 20 rounds / 6 s):
# at 8 rounds the 95% interval of the median is min..max of the ratios, and on a loaded machine one spike made a 2.1x
# median a "tie". Passed as SpeedProbe.compare(..., **DECISION).
DECISION = {"time_cap": 24.0, "max_rounds": 40}


@dataclass
class SpeedProbe:
    """Alternating timing of two models on one feed, run as the evaluator runs them, until a 95% confidence interval
    on the median per-round ratio separates from 1.0 or the time cap is hit. ``verdict``: faster | slower | tie."""

    feed: dict
    evaluator: Evaluator = Evaluator()
    min_rounds: int = 6
    max_rounds: int = 20
    round_time: float = 0.1
    time_cap: float = 6.0
    # (baseline model, its open session): kept across comparisons with the same baseline object
    _held: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def _base_session(self, base: onnx.ModelProto):
        """The baseline's session, kept open across comparisons with the same baseline object (an auto recipe
        compares every candidate with the input model: one session for all of them, not one per probe)."""
        held = self._held
        if held is not None and held[0] is base:
            return held[1]
        if held is not None:
            held[1].close()
        s = self.evaluator.session(base)
        self._held = (base, s)
        return s

    def compare(self, base: onnx.ModelProto, cand: onnx.ModelProto, time_cap: float | None = None,
                max_rounds: int | None = None) -> dict:
        """``time_cap`` / ``max_rounds`` override the probe's own for one comparison: a decision between two
        candidates (not a screen) may spend longer, because with few rounds the 95% interval of the median is the
        whole range of the ratios (8 rounds: min to max) and one load spike makes it hold 1.0."""
        time_cap = self.time_cap if time_cap is None else time_cap
        max_rounds = self.max_rounds if max_rounds is None else max_rounds
        t_start = time.monotonic()
        a = self._base_session(base)
        with self.evaluator.session(cand) as b:
            for s in (a, b):
                _time_for(s.run, self.feed, 5, 0.05)
            ratios: list[float] = []
            for r in range(max_rounds):
                pair = (a, b) if r % 2 == 0 else (b, a)
                med = {}
                for s in pair:
                    med[id(s)] = float(np.median(_time_for(s.run, self.feed, 3, self.round_time)))
                ratios.append(med[id(a)] / med[id(b)] if med[id(b)] > 0 else 1.0)
                if len(ratios) >= self.min_rounds:
                    lo, hi = median_ci(ratios)
                    if lo > 1.0 or hi < 1.0 or time.monotonic() - t_start > time_cap:
                        break
        lo, hi = median_ci(ratios)
        verdict = "faster" if lo > 1.0 else "slower" if hi < 1.0 else "tie"
        return {"median": float(np.median(ratios)), "lo": lo, "hi": hi, "rounds": len(ratios), "verdict": verdict,
                "evaluator": self.evaluator.describe()}

    def speedup(self, base: onnx.ModelProto, cand: onnx.ModelProto) -> float:
        return self.compare(base, cand)["median"]
