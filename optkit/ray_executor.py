"""Trials and fleet units on a Ray cluster (``--executor ray`` / ``ray:ADDRESS``); Ray is an optional extra.

``RayExecutor`` implements ``optkit.serving.Executor`` as docs/serving-scale-out.md designs it:

- **Exclusive trial slots.** Every node that measures advertises a custom resource ``trial_slot`` (one per node when
  the node is measured as a whole, one per NUMA domain or core group otherwise; a cluster started by optkit here has
  ``trial_slot: 1``). Each slot is a placement group of one bundle ``{"CPU": k, "trial_slot": 1}`` (k = the node's
  CPUs / its slots, or ``slot_cpus``), and one long-lived ``TrialActor`` lives in it for the executor's lifetime;
  ``workers`` = the slots the cluster has (capped by ``--workers`` when given more than 1).
- **Pinned cores.** Ray reserves CPU counts, not CPU ids, so the actor claims the i-th block of k CPUs of its node
  (an ``flock``-ed file per block under ``PIN_DIR/<node id>/``, released when the actor's process dies) and pins
  every thread of its process to it with ``os.sched_setaffinity``; trial child processes inherit it. Two slots of a
  node never share a CPU, and a trial asking for more threads than its slot has CPUs fails instead of timing an
  oversubscribed run. Each result carries ``cpus`` (the pinned set).
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
import json
import os
import tempfile
import time
from pathlib import Path

from .errors import InputError

SLOT = "trial_slot"
PIN_DIR = Path(tempfile.gettempdir()) / "optkit-ray-slots"
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

        def __init__(self, replay: dict | None = None, slot_cpus: int | None = None):
            from optkit.serving import LocalExecutor, ReplayExecutor

            self.inner = ReplayExecutor(replay) if replay is not None else LocalExecutor(1)
            self.replaying = replay is not None  # a replayed trial times nothing: its threads may exceed the slot
            self.dir = Path(tempfile.mkdtemp(prefix="optkit-ray-files-"))
            self.fetched: dict[str, str] = {}
            self.slot, self.cpus, self._lock = (None, None, None)
            if slot_cpus and hasattr(os, "sched_setaffinity"):
                node = ray.get_runtime_context().get_node_id()
                self.slot, self.cpus, self._lock = claim_cpus(PIN_DIR / node, slot_cpus, sorted(os.sched_getaffinity(0)))
                pin_process(self.cpus)

        def affinity(self) -> dict:
            """The slot, its CPUs, the affinity of every thread of this process and of a child process it starts."""
            import subprocess
            import sys

            threads = set()
            for tid in os.listdir("/proc/self/task"):
                try:
                    threads |= os.sched_getaffinity(int(tid))
                except OSError:
                    pass
            code = "import json, os; print(json.dumps(sorted(os.sched_getaffinity(0))))"
            child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
            return {"slot": self.slot, "cpus": self.cpus, "threads": sorted(threads), "child": json.loads(child or "null"),
                    **self.node()}

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
            if self.cpus is not None and threads > len(self.cpus) and not self.replaying:
                return {"status": "failed", "node": self.node()["host"], "cpus": self.cpus,
                        "error": f"{threads} threads asked, the trial slot has {len(self.cpus)} CPU(s) {self.cpus}"}
            res = self.inner.submit(TrialSpec(variant, threads, batch, payload=payload, timeout=timeout))
            res["node"] = self.node()["host"]
            res["cpus"] = self.cpus
            return res

    return TrialActor


def claim_cpus(node_dir: Path, k: int, available: list[int], wait: float = 30.0):
    """The first free block of ``k`` of this node's ``available`` CPUs: (block index, CPUs, the open lock file that
    holds it). A block is held by an exclusive ``flock`` on ``node_dir/slot-<i>.lock``, which the kernel drops when the
    holding process dies, so a replaced actor takes its predecessor's block."""
    import fcntl

    node_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        for i in range(len(available) // k):
            f = open(node_dir / f"slot-{i}.lock", "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            return i, available[i * k:(i + 1) * k], f
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)  # a killed predecessor's process may still be exiting (its lock goes with it)
    raise RuntimeError(f"no free block of {k} CPU(s) among {available} on this node: more trial slots than its CPUs "
                       f"allow (ray start --resources '{{\"{SLOT}\": N}}' with N x CPUs per slot <= the node's CPUs)")


def pin_process(cpus: list[int]) -> None:
    """Every thread of this process (Ray's worker has many) onto ``cpus``; threads and processes started later
    inherit it."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that ended meanwhile
            pass
    os.sched_setaffinity(0, cpus)


def cpus_per_slot(ray) -> int:
    """CPUs of one trial slot: the smallest (node CPUs // node slots) over the alive nodes that have slots."""
    per = [int(n["Resources"].get("CPU", 0) // n["Resources"][SLOT]) for n in ray.nodes()
           if n.get("Alive") and n.get("Resources", {}).get(SLOT)]
    return max(1, min(per)) if per else 1


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
                 num_cpus: int | None = None, slot_cpus: int | None = None, pin: bool = True):
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
        self.slot_cpus = slot_cpus or cpus_per_slot(self.ray)
        self.pin = pin
        self._cls = _actor_class()
        self.groups = self._reserve(self.workers)
        self.actors = [self._new_actor(i) for i in range(self.workers)]
        self.shipped: dict[str, tuple] = {}  # path -> (sha, name, [ref]) (one upload per file per run)
        self.launched = 0
        self.replaced = 0

    def _reserve(self, n: int) -> list:
        """One placement group per slot: a single bundle {CPU: slot_cpus, trial_slot: 1} (STRICT_PACK: one node)."""
        from ray.util.placement_group import placement_group, remove_placement_group

        groups = [placement_group([{"CPU": self.slot_cpus, SLOT: 1}], strategy="STRICT_PACK") for _ in range(n)]
        try:
            self.ray.get([g.ready() for g in groups], timeout=120)
        except Exception as e:
            for g in groups:
                remove_placement_group(g)
            raise InputError(f"the Ray cluster could not reserve {n} trial slot(s) of {self.slot_cpus} CPU(s) "
                             f"({type(e).__name__})", "free the cluster's CPUs, or pass fewer --workers") from None
        return groups

    def _new_actor(self, i: int):
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        where = PlacementGroupSchedulingStrategy(placement_group=self.groups[i], placement_group_bundle_index=0)
        return self._cls.options(num_cpus=self.slot_cpus, resources={SLOT: 1}, scheduling_strategy=where).remote(
            self.replay, self.slot_cpus if self.pin else None)

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
        self.actors[a] = self._new_actor(a)
        self.replaced += 1

    def nodes(self) -> list[dict]:
        return self.ray.get([a.node.remote() for a in self.actors])

    def affinities(self) -> list[dict]:
        """Per slot: its CPU block and the affinity of the actor's threads and of a child process it starts."""
        return self.ray.get([a.affinity.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:
                pass
        self.actors = []
        from ray.util.placement_group import remove_placement_group

        for g in getattr(self, "groups", []):
            try:
                remove_placement_group(g)
            except Exception:
                pass
        self.groups = []
        if self.owns and self.ray.is_initialized():
            self.ray.shutdown()
            if _STARTED:
                _STARTED.pop()
