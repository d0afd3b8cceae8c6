"""MetaSchedule tuning into a persistent database per (static-shape model, target, TVM version), reused by later
compiles; a crashed or timed-out tuning is moved aside and reported, and the build goes on untuned."""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from .options import DB_MARKER, TUNE_LOG, TvmOptions, _read_json, cache_root, target_string
from .runner import _locked, run_worker


def _unsupported(res: dict):
    from ...errors import PassError

    ops = res.get("ops") or []
    qop = [o for o in ops if o.startswith("QLinear") or o.endswith("Integer") or "com.microsoft" in o]
    hint = ("use fp32-tvm (or int8-ort for INT8); TVM imports QDQ INT8 models (QuantizeLinear/DequantizeLinear) but "
            "not QOperator or ONNX Runtime contrib ops") if qop else "use an -ort recipe for this model"
    return PassError(f"backend 'tvm' cannot import the model: TVM's relax ONNX frontend has no converter for "
                     f"{', '.join(ops)}", hint)


def tune_database(fixed_path: Path, key: str, target: dict, options: TvmOptions, threads: int, warn) -> dict:
    """Tune ``fixed_path`` into the database for ``key`` (or reuse a complete one): -> the tuning record."""
    root = cache_root(options.cache_dir)
    db_dir = root / key
    marker = db_dir / DB_MARKER
    rec = {"enabled": True, "cache_key": key, "db_dir": str(db_dir), "trials_requested": options.tune_trials,
           "max_trials_per_task": options.max_trials_per_task or None, "target": target_string(target)}
    with _locked(root / f"{key}.lock"):
        prev = _read_json(marker)
        if prev and prev.get("status") == "complete" and prev.get("tune_trials", 0) >= options.tune_trials \
                and (db_dir / "database_tuning_record.json").is_file():
            rec.update({"status": "reused", "db": "reused", "trials_run": prev.get("trials_run"),
                        "tasks": prev.get("tasks"), "tuned_at": prev.get("finished"),
                        "tune_seconds_then": prev.get("seconds"), "log": prev.get("log"), "seconds": 0.0})
            return rec
        rec["db"] = "extended" if (db_dir / "database_tuning_record.json").is_file() else "new"
        db_dir.mkdir(parents=True, exist_ok=True)
        log = db_dir / TUNE_LOG
        spec = {"phase": "tune", "model": str(fixed_path), "target": target, "work_dir": str(db_dir),
                "tune_trials": options.tune_trials, "max_trials_per_task": options.max_trials_per_task,
                "seed": options.seed, "conv_layout": options.conv_layout}
        t0 = time.perf_counter()
        run = run_worker(spec, log, threads, timeout=options.tune_timeout_s)
        seconds = round(time.perf_counter() - t0, 3)
        rec.update({"seconds": seconds, "log": str(log)})
        if run["status"] == "ok":
            res = run["result"]
            rec.update({"status": "tuned", "trials_run": res.get("trials_run"), "tasks": res.get("tasks"),
                        "max_trials_per_task": res.get("max_trials_per_task"),
                        "search_population": res.get("search_population")})
            if not res.get("tasks"):
                rec["status"] = "nothing to tune"
                return rec
            marker.write_text(json.dumps({"status": "complete", "tune_trials": options.tune_trials,
                                          "trials_run": res.get("trials_run"), "tasks": res.get("tasks"),
                                          "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds,
                                          "log": str(log), "target": target_string(target)}, indent=2))
            return rec
        # crashed / timed out / failed: move the (maybe half-written) database aside, build untuned
        aside = root / f"{key}.{run['status']}-{time.strftime('%Y%m%d-%H%M%S')}"
        with contextlib.suppress(OSError):
            os.replace(db_dir, aside)
            log = aside / TUNE_LOG
        why = {"crashed": f"the tuning process crashed ({run['signal'] or 'exit ' + str(run['returncode'])})",
               "timeout": f"tuning ran past tune_timeout_s={options.tune_timeout_s:g}",
               "error": f"tuning failed: {(run['result'] or {}).get('message', '')[:300]}"}[run["status"]]
        rec.update({"status": run["status"] if run["status"] != "error" else "failed", "db": None,
                    "log": str(log), "returncode": run["returncode"], "signal": run["signal"],
                    "reason": why})
        if run["status"] == "error" and (run["result"] or {}).get("kind") == "unsupported_ops":
            raise _unsupported(run["result"])
        warn(f"TVM TUNING FAILED - {why}; the model is built UNTUNED (default schedules, typically 10-100x slower "
             f"than ONNX Runtime). Log: {log}")
        return rec

