"""The TVM worker phases (tune, build) in child processes through the shared runner ``optkit.child``: output to a
log file, a result JSON read back, a crash or a timeout (the child's whole process group killed) reported as such."""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path

from ...child import child_env, run_child, worker_argv

# the child-process entry; a module name (python -m) or a .py file (tests pass one that fails on purpose)
WORKER = "optkit.backends.tvm.worker"


def worker_env(threads: int) -> dict:
    return child_env({"PYTHONUNBUFFERED": "1",
                      # kernels measured with the thread count they will run with
                      "TVM_NUM_THREADS": max(1, int(threads))},
                     defaults={"TVM_BIND_THREADS": "0"})


def _progress(spec: dict):
    """Log every poll: tuning records written so far / the trial budget."""
    from ...log import step

    def on_poll(elapsed: float) -> None:
        rec = Path(spec.get("work_dir", "")) / "database_tuning_record.json"
        done = sum(1 for _ in open(rec)) if spec.get("work_dir") and rec.is_file() else 0
        budget = f"/{spec['tune_trials']}" if spec.get("tune_trials") else ""
        step("TVM %s: %.0f s, %d%s tuning records so far", spec.get("phase"), elapsed, done, budget)

    return on_poll


def run_worker(spec: dict, log: Path, threads: int, timeout: float | None = None) -> dict:
    """Run one worker phase; returns {'status': 'ok'|'error'|'crashed'|'timeout', 'result', 'returncode', 'log',
    'signal'}."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optkit-tvmw-") as d:
        spec = dict(spec, result=str(Path(d) / "result.json"))
        spec_path = Path(d) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        with open(log, "ab") as out:
            out.write(f"\n=== optkit tvm worker: phase {spec['phase']} ({time.strftime('%Y-%m-%d %H:%M:%S')}) ===\n".encode())
            out.flush()
            run = run_child(worker_argv(WORKER, [str(spec_path)]), timeout=timeout, stdout=out,
                            env=worker_env(threads), on_poll=_progress(spec))
        res_path = Path(spec["result"])
        result = json.loads(res_path.read_text()) if res_path.is_file() else None
    if run.timed_out:
        status = "timeout"
    elif result is None:
        status = "crashed"
    else:
        status = "ok" if result.get("ok") else "error"
    return {"status": status, "result": result, "returncode": run.returncode, "log": str(log), "signal": run.signal}


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock (two compiles of the same model must not tune into one database at once)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
