"""One trial of the tolerance search: build a pass's output, run it as it will be served, judge it, and (when the
search compares speeds) time it against the model before the pass. Also the search's settings (``Tuning``), what a
searched pass returns (``Outcome``) and the rule that picks among passing trials (``pick``)."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import onnx

from ..log import trial as log_trial
from .criterion import Criterion


@dataclass
class Tuning:
    """What optimize() asked for: a criterion (or none), limits, and whether the guard is on."""

    criterion: Criterion | None = None
    max_trials: int = 24
    deadline: float | None = None  # time.monotonic() value
    guard: bool = True
    probe: object | None = None  # optkit.evaluate.SpeedProbe
    trials_run: int = 0
    # search: try every configuration and keep the fastest passing (an explicit --tolerance); False: the default gate
    # of a one-shot recipe, which keeps the recipe's configuration when it passes and searches only to recover a miss
    search: bool = True
    default_gate: bool = False
    # prune/lowrank: search how many layers fit the tolerance; --force applies the recipe's ratios as written (still
    # judged by the gate: a miss exits 5 unless --allow-miss)
    layer_search: bool = True

    def exhausted(self) -> bool:
        return self.trials_run >= self.max_trials or (self.deadline is not None and time.monotonic() > self.deadline)


@dataclass
class Outcome:
    result: object  # PassResult
    trials: list[dict] = field(default_factory=list)
    judged: dict | None = None
    passed: bool = True
    speedup: float | None = None


@dataclass
class Judge:
    """Everything a trial of one pass is run and judged with: the model before the pass (every trial's input and
    the speed baseline), the context, the reference outputs and feeds, and the search settings."""

    model: onnx.ModelProto
    ctx: object  # optkit.passes.Context
    ref_out: list[dict]
    feeds: list[dict]
    labels: list | None
    tuning: Tuning

    def with_tuning(self, tuning: Tuning) -> "Judge":
        return dataclasses.replace(self, tuning=tuning)

    def trial(self, p, label: dict) -> tuple:
        """(result, judged, record) of pass ``p`` on the model: result/judged are None when the pass or the deployed
        runtime fails on this configuration (that costs one trial, not the search). Every trial gets a progress line."""
        out = self._trial(p, label)
        log_trial(p.name, out[2], self.tuning)
        return out

    def _trial(self, p, label: dict) -> tuple:
        from ..cache import evaluate, probe_compare, run_pass
        from ..errors import PassError, Unsupported

        tuning, cache = self.tuning, getattr(self.ctx, "cache", None)
        t0 = time.perf_counter()
        try:
            res = run_pass(p, self.model, self.ctx)
        except Unsupported:  # the model, not this configuration: no other configuration can do better
            raise
        except PassError as e:  # one failing configuration (e.g. an ORT calibrator bug) costs one trial
            tuning.trials_run += 1
            return None, None, {**label, "ok": False, "error": e.what, "seconds": round(time.perf_counter() - t0, 3)}
        try:
            out = evaluate(self.ctx.evaluator, res.model, self.feeds, cache)
        except Exception as e:  # a configuration the deployed runtime cannot run costs one trial
            tuning.trials_run += 1
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            return None, None, {**label, "ok": False, "error": f"the evaluator cannot run it: {type(e).__name__}: {first}",
                                "seconds": round(time.perf_counter() - t0, 3)}
        judged = tuning.criterion.judge(self.ref_out, out, self.labels, self.feeds)
        rec = {**label, "metric": judged["metric"], "value": judged["value"], "threshold": judged["threshold"],
               "margin": judged["margin"], "ok": judged["ok"], "seconds": round(time.perf_counter() - t0, 3)}
        if judged["ok"] and tuning.probe is not None and tuning.search:
            speed = probe_compare(tuning.probe, self.model, res.model, cache)
            rec["speedup_vs_before"] = speed["median"]
            rec["speed"] = speed
        if getattr(res, "cached", False):
            rec["cached"] = True
        tuning.trials_run += 1
        return res, judged, rec


def config_diff(cfg, base) -> dict:
    """The fields where ``cfg`` differs from ``base`` (what a trial record shows as its configuration)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if dataclasses.asdict(base).get(k) != v}


def pick(passing: list[tuple], direct=None) -> tuple:
    """(result, judged, record, why) among passing (speed, result, judged, record): the fastest, where speeds are told
    apart by their confidence intervals; candidates whose intervals overlap the fastest's are a tie, and a tie goes to
    the more accurate (larger margin), then the earlier (simpler: the recipe's own configuration comes first).
    ``direct(a_model, b_model)`` (a SpeedProbe comparison), when given, settles an overlap head to head: a contender
    the fastest is measurably faster than does not tie (a noisy probe's wide interval overlaps everything)."""
    if len(passing) == 1:
        _, res, judged, rec = passing[0]
        return res, judged, rec, "the first configuration that passed"
    best = max(passing, key=lambda x: x[0])
    blo = (best[3].get("speed") or {}).get("lo", best[0])
    ties = [x for x in passing if (x[3].get("speed") or {}).get("hi", x[0]) >= blo]
    if direct is not None:
        settled = [best]
        for x in ties:
            if x is not best and direct(x[1].model, best[1].model)["verdict"] != "faster":
                settled.append(x)
        ties = settled
    choice = max(ties, key=lambda x: (x[2]["margin"], -passing.index(x)))
    why = "the fastest passing" if choice is best else \
        f"{len(ties)} passing configurations tie on speed (overlapping 95% intervals): kept the most accurate"
    return choice[1], choice[2], choice[3], why


def better(a: dict, b: dict) -> bool:
    return a["margin"] > b["margin"]
