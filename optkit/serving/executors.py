"""Where trials run: the ``Executor`` protocol, ``LocalExecutor`` (one child process per trial, through the shared
runner ``optkit.child``), ``ReplayExecutor`` (answers from a recorded table) and ``make_executor``."""
from __future__ import annotations

import concurrent.futures
import json
from dataclasses import dataclass, field
from typing import Protocol

from ..child import child_env, run_child, worker_argv
from ..errors import InputError
from .spec import RESULT_MARK

# the child-process entry of one trial; a module name (python -m) or a .py file (tests pass a misbehaving one)
WORKER = "optkit.serving.worker"


def trial_key(variant: str, threads: int, batch: int) -> str:
    return f"{variant}/t{threads}/b{batch}"


@dataclass(frozen=True)
class TrialSpec:
    """What one trial runs. ``payload`` is what the child needs (model path, backend options, feed file, protocol)."""

    variant: str  # '<backend>-<precision>'
    threads: int
    batch: int
    payload: dict = field(default_factory=dict, compare=False)
    timeout: float = 120.0

    @property
    def key(self) -> str:
        return trial_key(self.variant, self.threads, self.batch)

    @property
    def backend(self) -> str:
        return self.variant.split("-", 1)[0]

    @property
    def precision(self) -> str:
        return self.variant.split("-", 1)[1]

    def to_dict(self) -> dict:
        return {"key": self.key, "variant": self.variant, "backend": self.backend, "precision": self.precision,
                "threads": self.threads, "batch": self.batch, **self.payload}


class Executor(Protocol):
    """The seam between the search and where trials run. ``submit`` runs one trial and returns its measurement
    (``{'status': 'ok', 'p50_ms', 'p90_ms', 'p99_ms', 'mean_ms', 'throughput', 'throughput_per_core', ...}`` or
    ``{'status': 'failed', 'error'}``) and never raises for a trial's own failure; ``run_many`` runs up to
    ``workers`` trials at once (results in the specs' order). See docs/serving-scale-out.md for a Ray executor."""

    name: str
    workers: int

    def submit(self, spec: TrialSpec) -> dict: ...
    def run_many(self, specs: list[TrialSpec]) -> list[dict]: ...
    def close(self) -> None: ...


class LocalExecutor:
    """Each trial in its own child process (``python -m optkit.serving.worker``, in a session of its own): a crash,
    a hang (``timeout``: the child's whole process group is killed) or an exception costs that trial only.
    ``workers`` > 1 runs trials side by side, which makes them share cores and memory bandwidth and distorts every
    timing: keep 1 unless each trial is pinned to cores of its own. ``worker``: the child's entry (module or .py)."""

    name = "local"

    def __init__(self, workers: int = 1, worker: str | None = None):
        if workers < 1:
            raise InputError(f"--workers must be >= 1, got {workers}", "use 1 (timings on a shared CPU must not overlap)")
        self.workers = workers
        self.worker = worker or WORKER
        self.launched = 0

    def submit(self, spec: TrialSpec) -> dict:
        self.launched += 1
        run = run_child(worker_argv(self.worker), input=json.dumps(spec.to_dict()), timeout=spec.timeout,
                        env=child_env())
        if run.timed_out:
            return {"status": "failed", "error": f"timed out after {spec.timeout:g} s (child killed)",
                    "cause": "timeout", "seconds": run.seconds}
        for line in reversed(run.stdout.splitlines()):
            if line.startswith(RESULT_MARK):
                res = json.loads(line[len(RESULT_MARK):])
                res["seconds"] = run.seconds
                return res
        tail = [ln for ln in run.stderr.strip().splitlines() if ln.strip()][-1:]
        return {"status": "failed", "error": f"child process {run.why()}" + (f": {tail[0][:300]}" if tail else ""),
                "cause": "signal" if run.signal else "exit", "signal": run.signal, "returncode": run.returncode,
                "seconds": run.seconds}

    def run_many(self, specs: list[TrialSpec]) -> list[dict]:
        if self.workers == 1 or len(specs) == 1:
            return [self.submit(s) for s in specs]
        with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.submit, specs))

    def close(self) -> None:
        pass


class ReplayExecutor:
    """Answers trials from a table of recorded measurements (trial key -> result): the fair way to compare search
    strategies across seeds on one measured grid, and the tests' way to run the search without timing anything."""

    name = "replay"

    def __init__(self, table: dict[str, dict], workers: int = 1):
        self.table = {k: dict(v) for k, v in table.items()}
        self.workers = workers
        self.calls: list[str] = []

    def submit(self, spec: TrialSpec) -> dict:
        self.calls.append(spec.key)
        res = self.table.get(spec.key)
        if res is None:
            return {"status": "failed", "error": f"{spec.key} is not in the replay table"}
        return dict(res)

    def run_many(self, specs: list[TrialSpec]) -> list[dict]:
        return [self.submit(s) for s in specs]

    def close(self) -> None:
        pass


def make_executor(executor, workers: int = 1):
    """'local' (default), 'ray' (a local Ray cluster), 'ray:ADDRESS' (an existing one; optkit.ray_executor), or an
    object with the Executor protocol."""
    if executor is None or executor == "local":
        return LocalExecutor(workers)
    if isinstance(executor, str):
        from ..ray_executor import RayExecutor, parse_executor

        kind, address = parse_executor(executor)
        if kind == "local":
            return LocalExecutor(workers)
        return RayExecutor(address, workers)
    for attr in ("submit", "run_many"):
        if not callable(getattr(executor, attr, None)):
            raise InputError(f"executor {executor!r} has no {attr}()", "implement the optkit.serving.Executor protocol")
    return executor
