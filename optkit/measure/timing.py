"""The latency protocol: warm-up, alternating rounds (order flipped every round), per-session statistics with a
histogram, the machine's load around the timing, and the speedup as the median of per-round ratios with its interval."""
from __future__ import annotations

import numpy as np

from ..evaluate import _time_for


def stats(times_s: list[float], batch: int = 1) -> dict:
    t = np.asarray(times_s, dtype=np.float64) * 1e3
    mean = float(t.mean())
    # a compact picture of the distribution for reports: 30 bins from min to p99.5 (the tail beyond is counted apart)
    hi = float(np.percentile(t, 99.5))
    counts, edges = np.histogram(t[t <= hi], bins=30, range=(float(t.min()), hi if hi > t.min() else float(t.min()) + 1e-6))
    return {"runs": int(t.size), "p50_ms": float(np.percentile(t, 50)), "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)), "mean_ms": mean, "min_ms": float(t.min()),
            "p25_ms": float(np.percentile(t, 25)), "p75_ms": float(np.percentile(t, 75)), "max_ms": float(t.max()),
            "std_ms": float(t.std()), "cv": float(t.std() / mean) if mean else 0.0,
            "throughput": float(batch * 1e3 / mean) if mean else 0.0, "batch": batch,
            "hist": {"edges_ms": [round(float(e), 5) for e in edges], "counts": [int(c) for c in counts],
                     "above": int((t > hi).sum())}}


def time_sessions(sessions: dict, feed: dict, *, rounds: int = 5, round_runs: int = 20, round_time: float = 0.5,
                  warmup_runs: int = 10, warmup_time: float = 0.2, batch: int = 1, keep_times: bool = False) -> dict:
    """Alternating timing of several sessions on one feed. Returns per-session stats and per-round medians
    (and every run's time as ``times_ms`` with ``keep_times``)."""
    from ..log import step

    names = list(sessions)
    for n in names:
        _time_for(sessions[n].run, feed, warmup_runs, warmup_time)
    all_times = {n: [] for n in names}
    round_medians = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            ts = _time_for(sessions[n].run, feed, round_runs, round_time)
            all_times[n].extend(ts)
            round_medians[n].append(float(np.median(ts)) * 1e3)
        step("bench round %d/%d: %s", r + 1, rounds, ", ".join(f"{n} p50 {round_medians[n][-1]:.3f} ms" for n in names))
    return {n: {**stats(all_times[n], batch), "round_p50_ms": round_medians[n],
                **({"times_ms": [round(t * 1e3, 6) for t in all_times[n]]} if keep_times else {})} for n in names}


def machine_load() -> dict:
    """1-minute load average and the cores it competes for (the verdict warns when timing ran on a loaded machine)."""
    import os

    try:
        la = os.getloadavg()[0]
    except (OSError, AttributeError):
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"before": round(la, 2), "cores": cores}


def speedup(ref_rounds: list[float], cand_rounds: list[float]) -> dict:
    """Median of per-round ratios with its 95% distribution-free interval; 'verdict' says whether the interval
    separates from 1.0 (faster / slower) or not (tie: within the noise of this run)."""
    from ..evaluate import median_ci

    ratios = [r / c for r, c in zip(ref_rounds, cand_rounds) if c > 0]
    lo, hi = median_ci(ratios)
    return {"median": float(np.median(ratios)), "min": float(min(ratios)), "max": float(max(ratios)), "rounds": ratios,
            "ci95": [lo, hi], "verdict": "faster" if lo > 1.0 else "slower" if hi < 1.0 else "tie"}


def _timed(sessions: dict, first: dict, rounds, round_runs, round_time, feed_batch: int, times: bool):
    """(timing, load): the sessions timed alternately, with the machine's load average before and after."""
    load = machine_load()
    timing = time_sessions(sessions, first, rounds=rounds, round_runs=round_runs, round_time=round_time,
                           batch=feed_batch, keep_times=times) if sessions else {}
    if load:
        load["after"] = machine_load()["before"]
    return timing, load


def _protocol(rounds, round_runs, round_time, alternating: bool) -> dict:
    return {"rounds": rounds, "round_runs": round_runs, "round_time_s": round_time, "warmup_runs": 10,
            "warmup_time_s": 0.2, "alternating": alternating}
