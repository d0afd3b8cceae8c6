"""The candidate search of auto recipes (``auto-ort``): which of the recipe's candidates to keep.

Validations are spent like a budget (branch and bound on speed):

1. **Screen.** Every candidate runs once in its most aggressive form: its passes with the recipe's configurations, no
   recovery, no layer search, no guard. That costs one build, the pipeline's numerics check after each pass, one
   judgment against the tolerance and one speed probe against the input model.
2. **Recover, only where it can pay.** A candidate whose aggressive form missed the tolerance is searched (float
   fallback of sensitive nodes, other calibrations, fewer pruned layers, ...) only when that form is likely faster
   (its 95% interval lies above the median) than the best candidate that already passed: recovery only makes a
   candidate slower, so one that cannot beat the best as it is never will. Candidates are recovered simplest first (fewest
   lossy passes: what a one-shot recipe gives is secured before a compound candidate spends the budget), then
   fastest first, and the bound tightens as each one passes.
3. **Choose** the fastest passing candidate, where speeds are told apart by their 95% intervals; candidates that tie
   with the fastest go to the more accurate, then the simpler (earlier in the recipe).

A candidate that crashes costs itself, not the run; one that refuses the model (``PassError``) is skipped, and why is
recorded. When the pass cache is off (``--no-cache``), a cache private to this run (a temporary directory, removed at
the end) lets recovery reuse the screen's builds, evaluations and probes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
import time

from .cache import PassCache, probe_compare
from .errors import OptkitError, PassError
from .evaluate import DECISION
from .log import step
from .pipeline import Pipeline, PipelineResult, keep_input_if_slower


def pick_candidate(prefix: PipelineResult, candidates, ctx, tuning, original, on_pass, evals, eval_feeds):
    """(result, rows): the chosen candidate's pipeline result (prefix log + its own) and one row per candidate."""
    with _run_cache(ctx):
        rows, runs, refused = _screen(prefix, candidates, ctx, tuning, original, evals, eval_feeds)
        _recover(prefix, candidates, ctx, tuning, original, evals, eval_feeds, rows, runs)
    if not runs:
        if refused and len(refused) == len(rows):
            raise refused[0]
        raise PassError("no candidate ran: " + "; ".join(f"{r['candidate']}: {r.get('error', r.get('skipped'))}"
                                                         for r in rows)[:600],
                        "raise --budget, run a one-shot recipe (int8-ort, fp32-ort), or report the model")
    chosen, why = choose(list(runs.values()), _direct(ctx, tuning))
    for row in rows:
        row["chosen"] = row["candidate"] == chosen[1]
        if row["chosen"]:
            row["why"] = why
    sub = chosen[2]
    for entry in sub.log:
        entry["candidate"] = chosen[1]
        if on_pass is not None:
            on_pass(entry)
    result = PipelineResult(sub.model, prefix.log + sub.log, prefix.reference_outputs, sub.outputs, sub.missed)
    if tuning.guard and chosen[3].get("speed"):  # the chosen candidate's own probe against the input model
        keep_input_if_slower(result, original, chosen[3]["speed"])
    return result, rows


@contextlib.contextmanager
def _run_cache(ctx):
    """The context's pass cache, or one private to this run when there is none."""
    if ctx.cache is not None and getattr(ctx.cache, "enabled", False):
        yield
        return
    d = tempfile.mkdtemp(prefix="optkit-run-cache-")
    saved, ctx.cache = ctx.cache, PassCache(d, max_bytes=1 << 62)
    try:
        yield
    finally:
        ctx.cache = saved
        shutil.rmtree(d, ignore_errors=True)


def _deadline_passed(tuning) -> bool:
    return tuning.deadline is not None and time.monotonic() > tuning.deadline


def _run(cname, cpasses, prefix, ctx, tuning, evals, eval_feeds, rows, phase: str):
    """One candidate pipeline; None (and a row saying why) when it refuses the model or crashes."""
    try:
        return Pipeline(cpasses, ctx, tuning=tuning, eval_samples=evals, max_check_feeds=eval_feeds).run(prefix.model)
    except PassError as e:  # a candidate that refuses this model (INT8 on float16 compute, say): skipped, said why
        rows.append({"candidate": cname, "passes": [p.name for p in cpasses], "skipped": e.what, "passed": False,
                     "phase": phase})
        raise _Refused(e) from e
    except Exception as e:  # noqa: BLE001 - a candidate that crashes costs itself, the others go on
        what = e.what if isinstance(e, OptkitError) else f"{type(e).__name__}: {str(e).strip()[:300]}"
        rows.append({"candidate": cname, "passes": [p.name for p in cpasses], "error": what, "passed": False,
                     "phase": phase})
        return None


class _Refused(Exception):
    def __init__(self, err: PassError):
        self.err = err


def _measure(cname, cpasses, sub, prefix, ctx, tuning, original, evals, trials: int, phase: str) -> dict:
    """The candidate's row: tolerance judgment, speed vs the input model (95% interval), trials spent."""
    speed = probe_compare(tuning.probe, original, sub.model, ctx.cache) if tuning.probe is not None else None
    acc = sub.log[-1].get("vs_input", {}) if sub.log else {}
    row = {"candidate": cname, "passes": [p.name for p in cpasses], "passed": not sub.missed, "missed_by": sub.missed,
           "speedup_vs_input": speed["median"] if speed else None, "trials": trials, "phase": phase,
           "cosine_vs_prefix": acc.get("cosine"), "reverted": [e["pass"] for e in sub.log if e["status"] == "reverted"]}
    if speed:
        row["speed"] = {k: speed[k] for k in ("median", "lo", "hi", "rounds", "verdict")}
    judged = tuning.criterion.judge(prefix.reference_outputs, sub.outputs, evals.labels[:len(sub.outputs)]
                                    if evals.labels else None, evals.feeds[:len(sub.outputs)]) \
        if tuning.criterion is not None and sub.outputs else None
    if judged is not None:
        row["metric"] = {"name": judged["metric"], "value": judged["value"], "threshold": judged["threshold"],
                         "margin": judged["margin"]}
        row["passed"] = row["passed"] and judged["ok"]
        lossy = [e for e in sub.log if not e.get("exact") and e.get("status") == "ok"]
        if lossy and "tolerance" not in lossy[-1]:  # a screened candidate: its one judgment goes in its last lossy pass
            lossy[-1]["tolerance"] = {**judged, "criterion": tuning.criterion.describe()}
            if not judged["ok"]:
                sub.missed = [lossy[-1]["pass"]]
    return row


def _screen(prefix, candidates, ctx, tuning, original, evals, eval_feeds):
    """Every candidate once, as the recipe writes it: no recovery, no layer search, no guard (one judgment at the end)."""
    rows, runs, refused = [], {}, []
    plain = dataclasses.replace(tuning, criterion=None, guard=False, trials_run=0)
    for order, (cname, cpasses) in enumerate(candidates):
        if _deadline_passed(tuning):
            rows.append({"candidate": cname, "skipped": "time budget spent", "phase": "screen"})
            continue
        step("candidate %d/%d %s (screen): %s", order + 1, len(candidates), cname,
             " → ".join(p.name for p in cpasses) or "(no passes)")
        try:
            sub = _run(cname, cpasses, prefix, ctx, plain, evals, eval_feeds, rows, "screen")
        except _Refused as r:
            refused.append(r.err)
            continue
        if sub is None:
            continue
        row = _measure(cname, cpasses, sub, prefix, ctx, tuning, original, evals, 1 if sub.outputs else 0, "screen")
        rows.append(row)
        runs[order] = (order, cname, sub, row)
    return rows, runs, refused


def _recover(prefix, candidates, ctx, tuning, original, evals, eval_feeds, rows, runs) -> None:
    """Search the candidates that missed, simplest then fastest first, while their aggressive form beats the best
    passing one."""
    if tuning.criterion is None:
        return
    # simplest first (fewest lossy passes: what a one-shot recipe would give is secured before a compound candidate
    # spends the budget), then fastest as screened
    lossy = {order: sum(not p.exact for p in candidates[order][1]) for order in runs}
    missed = sorted((r for r in runs.values() if not r[3]["passed"]), key=lambda r: (lossy[r[0]], -_median(r[3])))
    for order, cname, _, row in missed:
        best = max((r for r in runs.values() if r[3]["passed"]), key=lambda r: _median(r[3]), default=None)
        if best is not None and not _beats(row, best[3]):
            row["recovery"] = (f"not searched: even as screened ({_span(row)}) it is not likely faster than "
                               f"{best[1]} ({_span(best[3])}), which meets the tolerance; recovery only slows it")
            continue
        if _deadline_passed(tuning):
            row["recovery"] = "not searched: time budget spent"
            continue
        cpasses = [type(p)(p.config) for p in candidates[order][1]]
        own = dataclasses.replace(tuning, trials_run=0, search=False)  # recover a miss; speed is chosen across candidates
        step("candidate %s (recover): %s", cname, " → ".join(p.name for p in cpasses))
        rec_rows: list[dict] = []
        try:
            sub = _run(cname, cpasses, prefix, ctx, own, evals, eval_feeds, rec_rows, "recover")
        except _Refused:
            sub = None
        if sub is None:
            row["recovery"] = "failed: " + (rec_rows[0].get("error") or rec_rows[0].get("skipped", "")) if rec_rows else "failed"
            continue
        new = _measure(cname, cpasses, sub, prefix, ctx, tuning, original, evals, row["trials"] + own.trials_run, "recover")
        new["screened"] = {k: row.get(k) for k in ("speed", "metric", "passed")}
        rows[rows.index(row)] = new
        runs[order] = (order, cname, sub, new)


def _direct(ctx, tuning):
    """Head-to-head timing of two candidates' models (``a`` as the baseline), or None without a probe."""
    if tuning.probe is None:
        return None
    return lambda a, b: probe_compare(tuning.probe, a[2].model, b[2].model, ctx.cache, **DECISION)


def _median(row: dict) -> float:
    return (row.get("speed") or {}).get("median", row.get("speedup_vs_input") or 1.0)


def _beats(row: dict, best: dict) -> bool:
    """Likely faster: the lower end of the screened form's 95% interval is above the best's median. (Medians alone
    sent every noisy near-tie into a costly recovery; requiring the intervals to separate let one wide interval on
    the best block a candidate 16% faster, seen on a text recogniser.)"""
    a = row.get("speed")
    if a and best.get("speed"):
        return a["lo"] > _median(best)
    return _median(row) > _median(best)


def _span(row: dict) -> str:
    sp = row.get("speed")
    return f"{sp['median']:.2f}x, 95% {sp['lo']:.2f}-{sp['hi']:.2f}" if sp else f"{_median(row):.2f}x"


def choose(runs: list[tuple], direct=None) -> tuple:
    """(order, name, result, row) of the candidate to keep, and why. ``direct(a, b)``, when given, times candidate
    ``a`` against ``b`` head to head (a SpeedProbe result: verdict "faster" = ``b`` measurably faster than ``a``)."""
    passing = [r for r in runs if r[3]["passed"]]
    if not passing:  # nothing meets the tolerance: the closest miss is saved (and the run exits 5 unless --allow-miss)
        best = max(runs, key=lambda r: (r[3].get("metric") or {}).get("margin", float("-inf")))
        return best, "no candidate met the tolerance: kept the closest"

    def speed(r, key):
        sp = r[3].get("speed") or {}
        return sp.get(key, r[3].get("speedup_vs_input") or 1.0)

    fastest = max(passing, key=lambda r: speed(r, "median"))
    ties = [r for r in passing if speed(r, "hi") >= speed(fastest, "lo")]
    if direct is not None and len(ties) > 1:
        ties = _settle(fastest, ties, direct)
    choice = max(ties, key=lambda r: (r[3].get("beats_fastest", False), (r[3].get("metric") or {}).get("margin", 0.0),
                                      -len(r[3]["passes"]), -r[0]))
    if choice is fastest:
        return choice, "the fastest within the tolerance" + (f" ({len(ties) - 1} tie(s) on speed, less accurate)"
                                                            if len(ties) > 1 else "")
    if choice[3].get("beats_fastest"):
        return choice, f"measurably faster than {fastest[1]} head to head (its probe against the input was noisier)"
    return choice, (f"ties on speed with the fastest ({fastest[1]}: timed head to head, the 95% interval holds 1.0); "
                    "kept the more accurate, then the simpler")


def _settle(fastest, ties: list, direct) -> list:
    """Intervals measured separately against the input overlap whenever one of them is noisy (an fp32 candidate at
    0.34-1.69x 'tied' an INT8 one at 1.42-1.59x and won on accuracy): each contender is timed head to head against the
    fastest, and only those the fastest is not measurably faster than stay tied."""
    from .model import model_digest

    kept, ref = [fastest], model_digest(fastest[2].model)
    for r in ties:
        if r is fastest:
            continue
        if model_digest(r[2].model) == ref:  # the same model reached another way (a recovery that kept nothing)
            kept.append(r)
            continue
        d = direct(r, fastest)
        r[3]["vs_fastest"] = {"candidate": fastest[1], **{k: d[k] for k in ("median", "lo", "hi", "rounds", "verdict")}}
        if d["verdict"] == "slower":  # this one is measurably faster than the 'fastest'
            r[3]["beats_fastest"] = True
        if d["verdict"] != "faster":
            kept.append(r)
    return kept
