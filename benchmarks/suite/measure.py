"""Accuracy on the test feeds (checked before any timing) and alternating timing of all variants of one model
(``optkit.measure.time_sessions``: 1 thread, batch 1, order flipped every round, speedup = median of per-round
ratios to FP32), then one row per variant with size, optimize time, precision and the roofline figures."""
from __future__ import annotations

import time

from optkit.backends.ort import OrtSession
from optkit.measure import precision_of, speedup, time_sessions
from optkit.model import load_model

from .roofline import roofline
from .variants import Variant, file_bytes


def _run(sess, feeds):
    return [sess.run(f) for f in feeds]


def measure(model, variants: list[Variant], flops: int, peaks: dict, rounds: int, round_time: float,
            log=print) -> list[dict]:
    rows = {v.name: {"name": v.name, "kind": v.kind, "how": v.how, "optimize_s": v.optimize_s, **({"optkit": v.info} if v.info else {}),
                     "error": v.error} for v in variants}
    sessions = {}
    try:
        for v in variants:
            if v.error:
                continue
            try:
                t0 = time.perf_counter()
                sessions[v.name] = OrtSession(v.path, threads=1)
                rows[v.name]["load_ms"] = (time.perf_counter() - t0) * 1e3
                rows[v.name]["bytes"] = file_bytes(v.path)
                rows[v.name]["precision"] = precision_of(load_model(v.path, check=False))
            except Exception as e:
                rows[v.name]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                sessions.pop(v.name, None)
        if "fp32" not in sessions:
            raise RuntimeError(f"{model.key}: the FP32 model does not load: {rows['fp32']['error']}")
        log(f"  [{model.key}] accuracy on {len(model.test_feeds)} test feeds ...")
        ref = _run(sessions["fp32"], model.test_feeds)
        for name, s in list(sessions.items()):
            try:
                outs = ref if name == "fp32" else _run(s, model.test_feeds)
                rows[name]["metrics"] = model.score(ref, outs)
                rows[name]["accuracy"] = rows[name]["metrics"][model.metric]
            except Exception as e:  # a variant that runs but fails on real inputs
                rows[name]["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                sessions.pop(name).close()
            outs = None  # noqa: F841  (free a variant's outputs before the next)
        del ref
        log(f"  [{model.key}] timing {len(sessions)} variants, {rounds} alternating rounds ...")
        timing = time_sessions(sessions, model.timed_feed, rounds=rounds, round_time=round_time)
    finally:
        for s in sessions.values():
            s.close()
    for name, t in timing.items():
        sp = speedup(timing["fp32"]["round_p50_ms"], t["round_p50_ms"])
        r = rows[name]
        r.update({"p50_ms": t["p50_ms"], "p90_ms": t["p90_ms"], "p99_ms": t["p99_ms"], "cv": t["cv"], "runs": t["runs"],
                  "round_p50_ms": t["round_p50_ms"], "speedup_vs_fp32": sp["median"],
                  "speedup_range": [sp["min"], sp["max"]]})
        r["roofline"] = roofline(flops, t["p50_ms"], r["precision"], peaks)
    return list(rows.values())
