"""Trials and fleet units on a Ray cluster (``--executor ray`` / ``ray:ADDRESS``); Ray is an optional extra.

``RayExecutor`` implements ``optkit.serving.Executor`` as docs/serving-scale-out.md designs it:

- **Exclusive trial slots.** Every node that measures advertises a custom resource ``trial_slot`` (one per node when
  the node is measured as a whole; a cluster started by optkit here has ``trial_slot: 1``). One long-lived
  ``TrialActor`` holds one slot for its lifetime, so two trials never time on the same node's cores at once;
  ``workers`` = the slots the cluster has (capped by ``--workers`` when given more than 1). Concurrency comes from
  more nodes, never from packing trials onto one node.
- **Crash isolation.** The actor runs each trial in a child process exactly as ``LocalExecutor`` does (a segfault
  costs one trial, not the actor); an actor that dies anyway (OOM kill, lost node) costs its trial and is replaced.
  A trial that does not answer within its timeout (+ 30 s) is recorded as failed and its actor replaced.
- **Variants travel once.** The driver puts each file a trial needs (variant model, feed) into the object store once,
  keyed by its sha256; an actor writes it to its node's disk the first time it needs it and keeps it there.
- **Same seam.** ``run_many(specs)`` hands one spec to each idle actor and returns results in order; the search loop,
  the trial cache and serving.json do not change. Each result's ``source`` is ``ray``.

``ReplayExecutor`` runs behind the same remote interface (``RayExecutor(replay=table)``): the tests check the
protocol through a real Ray cluster without timing anything.
"""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from .errors import InputError

SLOT = "trial_slot"
INSTALL = "pip install 'optkit[ray]'  (or: pip install ray)"


def import_ray():
    try:
        import ray  # noqa: F401
    except ImportError:
        raise InputError("--executor ray needs Ray, which is not installed", INSTALL) from None
    return ray


def parse_executor(text: str | None) -> tuple[str, str | None]:
    """'local' -> ('local', None); 'ray' -> ('ray', None); 'ray:ADDRESS' -> ('ray', ADDRESS)."""
    s = (text or "local").strip()
    kind, _, addr = s.partition(":")
    if kind not in ("local", "ray") or (kind == "local" and addr):
        raise InputError(f"unknown --executor {text!r}", "use local, ray (a local Ray cluster) or ray:ADDRESS "
                                                          "(e.g. ray:auto, ray:ray://head:10001)")
    return kind, (addr or None)


_STARTED: list = []  # clusters this process started (shut down by close())


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` or start a local one (``num_cpus`` = this machine's, one ``trial_slot``).
    Returns True when this call started it."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[1])
    env = {"PYTHONPATH": root + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
           "PYTHONWARNINGS": "ignore"}
    for k in ("OPTKIT_CACHE_DIR", "OPTKIT_NO_CACHE", "OPTKIT_CACHE_MAX_BYTES"):
        if k in os.environ:
            env[k] = os.environ[k]
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False, ignore_reinit_error=True)
        return False
    cpus = num_cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    ray.init(num_cpus=cpus, resources={SLOT: 1}, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": env}, ignore_reinit_error=True)
    _STARTED.append(True)
    return True


def _actor_class():
    ray = import_ray()

    @ray.remote(num_cpus=0, max_restarts=0)
    class TrialActor:
        """Holds one trial slot; runs trials in child processes (or answers from a replay table)."""

        def __init__(self, replay: dict | None = None):
            import tempfile

            from optkit.serving import LocalExecutor, ReplayExecutor

            self.inner = ReplayExecutor(replay) if replay is not None else LocalExecutor(1)
            self.dir = Path(tempfile.mkdtemp(prefix="optkit-ray-files-"))
            self.fetched: dict[str, str] = {}

        def node(self) -> dict:
            import platform

            return {"node": ray.get_runtime_context().get_node_id(), "host": platform.node(), "pid": os.getpid()}

        def run(self, variant, threads, batch, payload, timeout, files, worker):
            from optkit.serving import TrialSpec

            payload = dict(payload)
            for field, (sha, name, ref) in files.items():  # materialize each shipped file once per actor
                if sha not in self.fetched:
                    d = self.dir / sha[:16]
                    d.mkdir(parents=True, exist_ok=True)
                    data = ray.get(ref[0])
                    for rel, blob in data.items():
                        p = d / rel
                        p.parent.mkdir(parents=True, exist_ok=True)
                        p.write_bytes(blob)
                    self.fetched[sha] = str(d / name)
                payload[field] = self.fetched[sha]
            if hasattr(self.inner, "worker"):
                self.inner.worker = worker  # the driver's trial worker (tests pass one that crashes on purpose)
            res = self.inner.submit(TrialSpec(variant, threads, batch, payload=payload, timeout=timeout))
            res["node"] = self.node()["host"]
            return res

    return TrialActor


def _file_bundle(path: Path) -> tuple[str, dict[str, bytes]]:
    """sha256 and bytes of a model file (with its external-data files beside it) or any other file."""
    files = {path.name: path.read_bytes()}
    if path.suffix == ".onnx":
        for extra in path.parent.glob(path.name + ".data"):
            files[extra.name] = extra.read_bytes()
        for extra in path.parent.glob(path.stem + ".data"):
            files[extra.name] = extra.read_bytes()
    h = hashlib.sha256()
    for k in sorted(files):
        h.update(k.encode())
        h.update(files[k])
    return h.hexdigest(), files


class RayExecutor:
    """``optkit.serving.Executor`` on Ray: one ``TrialActor`` per trial slot; see the module docstring."""

    name = "ray"
    SHIPPED = ("model", "feed")  # payload fields that are files the driver ships

    def __init__(self, address: str | None = None, workers: int = 1, replay: dict | None = None,
                 num_cpus: int | None = None):
        self.ray = import_ray()
        self.address = address
        self.owns = connect(address, num_cpus)
        slots = int(self.ray.cluster_resources().get(SLOT, 0))
        if slots < 1:
            raise InputError(f"the Ray cluster at {address or 'local'} advertises no {SLOT!r} resource, so no node is "
                             "reserved for timing", f"start each measuring node with: ray start --resources "
                             f"'{{\"{SLOT}\": 1}}'")
        self.workers = max(1, min(slots, workers if workers > 1 else slots))
        self.replay = replay
        self._cls = _actor_class()
        self.actors = [self._new_actor() for _ in range(self.workers)]
        self.shipped: dict[str, tuple] = {}  # path -> (sha, name, [ref]) (one upload per file per run)
        self.launched = 0
        self.replaced = 0

    def _new_actor(self):
        return self._cls.options(resources={SLOT: 1}).remote(self.replay)

    def _files(self, payload: dict) -> dict:
        out = {}
        if self.replay is not None:
            return out
        for field in self.SHIPPED:
            p = payload.get(field)
            if not p or not Path(p).is_file():
                continue
            key = str(Path(p).resolve())
            if key not in self.shipped:
                sha, files = _file_bundle(Path(p))
                self.shipped[key] = (sha, Path(p).name, [self.ray.put(files)])  # a list: not resolved on the way
            out[field] = self.shipped[key]
        return out

    def _call(self, actor, spec):
        from .serving import executors

        self.launched += 1
        return actor.run.remote(spec.variant, spec.threads, spec.batch, dict(spec.payload), spec.timeout,
                                self._files(spec.payload), executors.WORKER)

    def submit(self, spec) -> dict:
        return self.run_many([spec])[0]

    def run_many(self, specs: list) -> list[dict]:
        results: list[dict | None] = [None] * len(specs)
        queue = list(enumerate(specs))
        idle = list(range(len(self.actors)))
        running: dict = {}  # ref -> (index, actor slot, started, timeout)
        while queue or running:
            while queue and idle:
                i, spec = queue.pop(0)
                a = idle.pop(0)
                running[self._call(self.actors[a], spec)] = (i, a, time.monotonic(), spec.timeout + 30)
            done, _ = self.ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in done:
                i, a, t0, _ = running.pop(ref)
                try:
                    results[i] = self.ray.get(ref)
                except Exception as e:  # the actor died (a crash outside the child, a lost node): one trial lost
                    results[i] = {"status": "failed", "error": f"Ray worker lost: {type(e).__name__}: "
                                  f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}",
                                  "seconds": round(time.monotonic() - t0, 3)}
                    self._replace(a)
                idle.append(a)
            now = time.monotonic()
            for ref, (i, a, t0, limit) in list(running.items()):
                if now - t0 > limit:
                    running.pop(ref)
                    results[i] = {"status": "failed", "error": f"no answer from the Ray worker within {limit:g} s",
                                  "seconds": round(now - t0, 3)}
                    self._replace(a)
                    idle.append(a)
        return results  # type: ignore[return-value]

    def _replace(self, a: int) -> None:
        try:
            self.ray.kill(self.actors[a])
        except Exception:
            pass
        self.actors[a] = self._new_actor()
        self.replaced += 1

    def nodes(self) -> list[dict]:
        return self.ray.get([a.node.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        self.actors = []
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()
            if _STARTED:
                _STARTED.pop()
