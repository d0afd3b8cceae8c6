"""Child-process entry of one ``optkit tune`` trial: ``python -m optkit.serving.worker`` reads the trial spec (JSON)
on stdin, measures it (``measure``) and prints one ``OPTKIT_TRIAL_RESULT {json}`` line. An exception is reported as
a failed trial; a crash (segfault, OOM kill) simply ends the process and the parent records the trial as failed.

    echo '{"backend": "ort", ...}' | python -m optkit.serving.worker
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from .spec import RESULT_MARK


def measure(spec: dict) -> dict:
    """One trial, run in the child: load the variant with ``threads`` intra-op threads, run the feed once (cold),
    then the bench protocol (warm-up, ``rounds`` rounds) on it. Returns latency percentiles and throughput."""
    from ..backends import get_backend
    from ..measure import time_sessions

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




def main() -> int:
    spec = json.loads(sys.stdin.read())
    try:
        res = measure(spec)
    except Exception as e:  # reported as this trial's failure; the search goes on
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        res = {"status": "failed", "error": f"{type(e).__name__}: {first}"}
    sys.stdout.write(RESULT_MARK + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
