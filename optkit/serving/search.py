"""The search over (variant, threads, batch): optuna (GP / TPE / random) or the exhaustive grid, SLO misses as
constraint violations, a point never measured twice; and the Pareto front and the best trial of the result."""
from __future__ import annotations

import random
import time
import warnings
from dataclasses import dataclass
from typing import Callable

from ..errors import InputError
from .executors import TrialSpec, trial_key
from .spec import OBJECTIVES, SAMPLERS, SloTerm


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


class _Trials:
    """The record of one search: trials in order, the points seen, the limits, and the executor that measures."""

    def __init__(self, space: Space, executor, make_spec, objective: str, slo: list[SloTerm],
                 budget_trials: int | None, deadline: float | None, cache: dict, on_trial):
        self.space, self.executor, self.make_spec = space, executor, make_spec
        self.objective, self.slo, self.deadline, self.cache, self.on_trial = objective, slo, deadline, cache, on_trial
        self.limit = min(budget_trials or space.size, space.size)
        self.workers = max(1, int(getattr(executor, "workers", 1)))
        self.source = getattr(executor, "name", "executor")
        self.trials: list[dict] = []
        self.seen: dict[str, dict] = {}

    def record(self, key: str, v: str, t: int, b: int, res: dict, source: str) -> dict:
        rec = classify(res, self.slo, self.objective)
        rec.update(n=len(self.trials) + 1, key=key, variant=v, backend=v.split("-", 1)[0],
                   precision=v.split("-", 1)[1], threads=t, batch=b, source=source)
        self.trials.append(rec)
        self.seen[key] = rec
        if self.on_trial is not None:
            self.on_trial(rec)
        return rec

    def measure(self, points: list[tuple[str, int, int]]) -> list[dict]:
        results = self.executor.run_many([self.make_spec(v, t, b) for v, t, b in points])
        return [self.record(trial_key(v, t, b), v, t, b, res, self.source) for (v, t, b), res in zip(points, results)]

    def budget_spent(self) -> bool:
        return len(self.trials) >= self.limit

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def stop_reason(self) -> str | None:
        if len(self.seen) >= self.space.size:
            return "space exhausted"
        if self.budget_spent():
            return "trial budget spent"
        if self.out_of_time():
            return "time budget spent"
        return None


def _grid(run: _Trials) -> str:
    """Every point, in order: the exhaustive baseline."""
    for v, t, b in run.space.points():
        if run.budget_spent():
            return "trial budget spent"
        if run.out_of_time():
            return "time budget spent"
        key = trial_key(v, t, b)
        if key in run.cache:
            run.record(key, v, t, b, run.cache[key], "cache")
        else:
            run.measure([(v, t, b)])
    return "space exhausted"


class _OptunaSearch:
    """Ask optuna for points in waves of ``workers``; a repeat is answered from memory (after ``max_repeats`` in a
    row an unseen point is enqueued at random), a cached point is answered from the cache, the rest are measured."""

    def __init__(self, run: _Trials, sampler: str, seed: int | None, n_startup: int, max_repeats: int):
        self.optuna = optuna = _optuna()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.run = run
        self.study = optuna.create_study(direction=OBJECTIVES[run.objective][0],
                                         sampler=_sampler(sampler, seed, n_startup))
        self.rng = random.Random(seed)
        self.max_repeats = max_repeats
        self.repeats = self.streak = 0

    def tell(self, trial, rec: dict) -> None:
        if rec["status"] == "failed":
            self.fail(trial)
            return
        trial.set_user_attr("constraint", (float(rec["violation"]),))
        # an SLO miss keeps its measured value: the constraint ranks it below every feasible trial
        self.study.tell(trial, rec["objective"])

    def fail(self, trial) -> None:
        trial.set_user_attr("constraint", (1.0,))
        self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)

    def ask(self):
        space = self.run.space
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tr = self.study.ask()
            v = tr.suggest_categorical("variant", space.variants)
            t = space.threads[tr.suggest_int("threads_i", 0, len(space.threads) - 1)]
            b = space.batches[tr.suggest_int("batch_i", 0, len(space.batches) - 1)]
        return tr, v, t, b

    def repeat(self, tr, key: str, wave: list[tuple]) -> bool:
        """Answer a repeated point; after too many in a row enqueue an unseen one. False: nothing is left unseen."""
        self.repeats += 1
        self.streak += 1
        if key in self.run.seen:
            self.tell(tr, self.run.seen[key])
        else:
            self.fail(tr)
        if self.streak < self.max_repeats:
            return True
        self.streak = 0
        space = self.run.space
        unseen = [p for p in space.points() if trial_key(*p) not in self.run.seen
                  and all(w[1] != trial_key(*p) for w in wave)]
        if not unseen:
            return False
        pv, pt, pb = self.rng.choice(unseen)
        self.study.enqueue_trial({"variant": pv, "threads_i": space.threads.index(pt),
                                  "batch_i": space.batches.index(pb)})
        return True

    def next_wave(self) -> list[tuple]:
        """(optuna trial, key, v, t, b) to measure now."""
        run, wave = self.run, []
        while len(wave) < min(run.workers, run.limit - len(run.trials)):
            tr, v, t, b = self.ask()
            key = trial_key(v, t, b)
            if key in run.seen or any(w[1] == key for w in wave):
                if not self.repeat(tr, key, wave):
                    break
                continue
            self.streak = 0
            if key in run.cache:
                self.tell(tr, run.record(key, v, t, b, run.cache[key], "cache"))
                if run.budget_spent():
                    break
                continue
            wave.append((tr, key, v, t, b))
        return wave

    def loop(self) -> str:
        while True:
            stopped = self.run.stop_reason()
            if stopped:
                return stopped
            wave = self.next_wave()
            if wave:
                for (tr, *_), rec in zip(wave, self.run.measure([(v, t, b) for _, _, v, t, b in wave])):
                    self.tell(tr, rec)


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
    run = _Trials(space, executor, make_spec, objective, slo or [], budget_trials, deadline,
                  cache if cache is not None else {}, on_trial)
    if sampler == "grid":
        return {"trials": run.trials, "stopped": _grid(run), "repeats": 0}
    opt = _OptunaSearch(run, sampler, seed, n_startup if n_startup is not None else
                        n_startup_for(budget_trials, space.size), max_repeats)
    stopped = opt.loop()
    return {"trials": run.trials, "stopped": stopped, "repeats": opt.repeats}


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
