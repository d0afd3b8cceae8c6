"""Latency protocol and accuracy metrics.

Protocol (DESIGN.md): outputs checked before timing; warm-up max(10 runs, 0.2 s); then rounds in which the
candidate and the reference alternate (order flipped every round), each timed for max(min_runs, round_time);
p50/p90/p99/mean/min/CV over all runs; speedup = median of per-round ratios. Cold (first) run and session
load time are reported apart.

The package: ``timing`` (the protocol), ``inputs`` (reference, feeds, precision, keeping results), ``matrix`` (one
recipe on several backends); this module holds ``bench``.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..backends import get_backend
from ..env import environment
from ..errors import BackendUnavailable, InputError
from ..data import Samples
from ..metrics import compare, top1
from ..model import load_model
from ..predictor import artifact_backend, backend_options, load_path
from .inputs import _feed_batch, _keep, _prepare, _rebatch, parse_backends, precision_of  # noqa: F401  (re-exported)
from .matrix import bench_matrix
from .timing import _protocol, _timed, machine_load, speedup, stats, time_sessions  # noqa: F401  (re-exported)


def _check_options(threads, rounds, round_runs, round_time) -> None:
    from ..checks import check_threads

    check_threads(threads)
    if not isinstance(rounds, int) or rounds < 1:
        raise InputError(f"--rounds must be >= 1, got {rounds!r}", "use --rounds 5 (the default) or more")
    if not isinstance(round_runs, int) or round_runs < 1:
        raise InputError(f"round_runs must be >= 1, got {round_runs!r}", "use 20 (the default)")
    if not (isinstance(round_time, (int, float)) and 0 <= round_time < float("inf")):
        raise InputError(f"--round-time must be a number of seconds >= 0, got {round_time!r}", "use --round-time 0.5")


def resolve_target(target: str | Path) -> dict:
    """A .onnx file, an artifact directory, or a model directory of versions (the latest) -> the model to run and
    what the manifest knows."""
    from ..predictor import resolve_artifact

    p = Path(target)
    if not p.is_dir():
        return {"model": p, "artifact": None, "manifest": None}
    art, man, model = resolve_artifact(p)
    return {"model": model, "artifact": art, "manifest": man}


def bench(target: str | Path, *, backend: str | None = None, reference: str | Path | None = None,
          data: str | Path | None = None, shapes: dict | None = None, threads: int = 1, batch: int | None = None,
          rounds: int = 5, round_runs: int = 20, round_time: float = 0.5, warn=None, save: bool = True,
          times: bool = False) -> dict:
    """Latency (alternating vs the reference when there is one) and accuracy of a model or artifact.

    For an artifact the result is also kept in ``ARTIFACT/bench/<n>.json`` and its report is rewritten (``save``).

    ``times``: also return every timed run (``times_ms``: role -> list of ms, in the order they ran).
    The result records the machine's load average before and after timing (``load``).

    ``backend``: one name (default: the artifact's backend, else ort), a comma-separated list, or 'all'. With one
    backend the candidate and the reference alternate on it (the reference runs on ORT when the backend is not
    ORT: the baseline every user has). With several, every available backend runs the candidate, ORT runs the
    reference, all alternate in one protocol, and unavailable backends are listed with the reason.
    """
    warn = warn or (lambda msg: None)
    _check_options(threads, rounds, round_runs, round_time)
    t = resolve_target(target)  # an artifact's files are verified against its manifest here
    if t["artifact"] is not None:
        from ..artifact import read_bench_results

        read_bench_results(t["artifact"])  # a garbled earlier result is named now, not after timing
    man = t["manifest"]
    names = parse_backends(backend, artifact_backend(man))
    if len(names) > 1:
        return bench_matrix(t, names, reference=reference, data=data, shapes=shapes, threads=threads, batch=batch,
                            rounds=rounds, round_runs=round_runs, round_time=round_time, warn=warn, save=save, times=times)
    backend = names[0]
    be = _available_backend(backend)
    ref_be = be if backend == "ort" else get_backend("ort")
    ref_path, samples = _prepare(t, reference, data, shapes, batch, warn)
    first = samples.feeds[0]
    feed_batch = _feed_batch(first)
    sessions, load_ms, cold_ms = {}, {}, {}
    cand_path = load_path(t["artifact"], man, Path(t["model"]), backend) if t["artifact"] else Path(t["model"])
    try:
        feed_shapes = {k: tuple(v.shape) for k, v in first.items()}
        for role, path in (("candidate", cand_path), ("reference", ref_path)):
            if path is None:
                continue
            t0 = time.perf_counter()
            if role == "candidate":
                sessions[role] = be.load(Path(path), threads=threads, options=backend_options(man, backend),
                                         shapes=feed_shapes)
            else:
                sessions[role] = ref_be.load(Path(path), threads=threads, options=ref_be.Options(), shapes=feed_shapes)
            load_ms[role] = (time.perf_counter() - t0) * 1e3
            t0 = time.perf_counter()
            sessions[role].run(first)
            cold_ms[role] = (time.perf_counter() - t0) * 1e3
        # outputs are checked before any timing
        accuracy = _accuracy(samples, {role: [s.run(f) for f in samples.feeds] for role, s in sessions.items()})
        timing, load = _timed(sessions, first, rounds, round_runs, round_time, feed_batch, times)
    finally:
        for s in sessions.values():
            s.close()
    result = {
        "target": str(target), "model": str(t["model"]), "reference": str(ref_path) if ref_path else None,
        "backend": backend, "reference_backend": ref_be.name if ref_path else None, "threads": threads,
        "precision": {"candidate": precision_of(load_model(t["model"])),
                      **({"reference": precision_of(load_model(ref_path))} if ref_path else {})}, "inter_op_threads": 1, "batch": feed_batch,
        "protocol": _protocol(rounds, round_runs, round_time, len(sessions) > 1),
        "latency": timing,
        "load_ms": load_ms, "cold_run_ms": cold_ms, "accuracy": accuracy, "load": load,
        "environment": environment(),
    }
    if times:
        result["times_ms"] = {role: s.pop("times_ms") for role, s in timing.items()}
    if "reference" in timing:
        result["speedup"] = speedup(timing["reference"]["round_p50_ms"], timing["candidate"]["round_p50_ms"])
    if man is not None:
        result["recipe"] = man["recipe"]["name"]
    return _keep(t, result, save, warn)


def _available_backend(backend: str):
    """The backend, or BackendUnavailable (with its install hint) when it cannot run models here."""
    be = get_backend(backend)
    st = be.status()
    if not st.get("ok"):
        import sys

        hint = getattr(sys.modules[type(be).__module__], "INSTALL_HINT", None)
        raise BackendUnavailable(f"backend {backend!r} cannot run models here: {st.get('reason')}",
                                 (hint + "; " if hint else "") + "or bench on another --backend (ort runs everywhere)")
    return be


def _accuracy(samples: Samples, outs: dict) -> dict:
    """Top-1 of each role on the labels (when there are labels) and the candidate's outputs vs the reference's."""
    accuracy = {"feeds": len(samples), "synthetic": samples.synthetic, "source": samples.source,
                "data_path": getattr(samples, "path", None)}
    for role, o in outs.items():
        acc = top1(o, samples.labels)
        if acc is not None:
            accuracy[f"top1_{role}"] = acc
    if "reference" in outs:
        d = compare(outs["reference"], outs["candidate"])
        accuracy["vs_reference"] = {k: v for k, v in d.items() if k != "outputs"}
        accuracy["vs_reference_outputs"] = d["outputs"]
        if "top1_reference" in accuracy:
            accuracy["top1_delta"] = accuracy["top1_candidate"] - accuracy["top1_reference"]
    return accuracy
