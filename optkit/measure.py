"""Latency protocol and accuracy metrics.

Protocol (DESIGN.md): outputs checked before timing; warm-up max(10 runs, 0.2 s); then rounds in which the
candidate and the reference alternate (order flipped every round), each timed for max(min_runs, round_time);
p50/p90/p99/mean/min/CV over all runs; speedup = median of per-round ratios. Cold (first) run and session
load time are reported apart.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .backends import get_backend
from .data import Samples, get_samples
from .env import environment
from .errors import BackendUnavailable, InputError
from .evaluate import _time_for
from .metrics import compare, top1
from .model import load_model, sha256_file
from .predictor import artifact_backend, backend_options, load_path


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
    from .log import step

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
    from .evaluate import median_ci

    ratios = [r / c for r, c in zip(ref_rounds, cand_rounds) if c > 0]
    lo, hi = median_ci(ratios)
    return {"median": float(np.median(ratios)), "min": float(min(ratios)), "max": float(max(ratios)), "rounds": ratios,
            "ci95": [lo, hi], "verdict": "faster" if lo > 1.0 else "slower" if hi < 1.0 else "tie"}


def _check_options(threads, rounds, round_runs, round_time) -> None:
    from .checks import check_threads

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
    from .predictor import resolve_artifact

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
        from .artifact import read_bench_results

        read_bench_results(t["artifact"])  # a garbled earlier result is named now, not after timing
    man = t["manifest"]
    names = parse_backends(backend, artifact_backend(man))
    if len(names) > 1:
        return bench_matrix(t, names, reference=reference, data=data, shapes=shapes, threads=threads, batch=batch,
                            rounds=rounds, round_runs=round_runs, round_time=round_time, warn=warn, save=save, times=times)
    backend = names[0]
    be = get_backend(backend)
    st = be.status()
    if not st.get("ok"):
        import sys

        hint = getattr(sys.modules[type(be).__module__], "INSTALL_HINT", None)
        raise BackendUnavailable(f"backend {backend!r} cannot run models here: {st.get('reason')}",
                                 (hint + "; " if hint else "") + "or bench on another --backend (ort runs everywhere)")
    ref_be = be if backend == "ort" else get_backend("ort")
    ref_path, samples = _prepare(t, reference, data, shapes, batch, warn)
    first = samples.feeds[0]
    feed_batch = int(next(iter(first.values())).shape[0]) if first and next(iter(first.values())).ndim else 1
    sessions, load_ms, cold_ms = {}, {}, {}
    cand_path = load_path(t["artifact"], man, Path(t["model"]), backend) if t["artifact"] else Path(t["model"])
    try:
        for role, path in (("candidate", cand_path), ("reference", ref_path)):
            if path is None:
                continue
            t0 = time.perf_counter()
            feed_shapes = {k: tuple(v.shape) for k, v in first.items()}
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
        outs = {role: [s.run(f) for f in samples.feeds] for role, s in sessions.items()}
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
        load = machine_load()
        timing = time_sessions(sessions, first, rounds=rounds, round_runs=round_runs, round_time=round_time,
                               batch=feed_batch, keep_times=times)
        if load:
            load["after"] = machine_load()["before"]
    finally:
        for s in sessions.values():
            s.close()
    result = {
        "target": str(target), "model": str(t["model"]), "reference": str(ref_path) if ref_path else None,
        "backend": backend, "reference_backend": ref_be.name if ref_path else None, "threads": threads,
        "precision": {"candidate": precision_of(load_model(t["model"])),
                      **({"reference": precision_of(load_model(ref_path))} if ref_path else {})}, "inter_op_threads": 1, "batch": feed_batch,
        "protocol": {"rounds": rounds, "round_runs": round_runs, "round_time_s": round_time, "warmup_runs": 10,
                     "warmup_time_s": 0.2, "alternating": len(sessions) > 1},
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


def _keep(t: dict, result: dict, save: bool, warn) -> dict:
    """Store a bench of an artifact with it (bench/<n>.json) and rewrite its report, so the evidence stays together."""
    if save and t["artifact"] is not None:
        from .report import save_bench, write_report

        try:
            result["saved"] = str(save_bench(t["artifact"], result))
            result["report"] = str(write_report(t["artifact"])[1])
        except OSError as e:
            warn(f"could not save the bench result into {t['artifact']} ({e.strerror or e}); results are printed only")
    return result


def _prepare(t: dict, reference, data, shapes, batch, warn) -> tuple[Path | None, Samples]:
    """The reference model (``--reference``, else the artifact's input model when unchanged) and the feeds
    (``--data``, else the artifact's data, else synthetic), rebatched when asked."""
    man = t["manifest"]
    model = load_model(t["model"])
    ref_path = Path(reference) if reference else None
    if ref_path is None and man is not None:
        cand = Path(man["input"]["path"])
        if not cand.is_absolute():  # an imported model's ONNX lives in the artifact (input.onnx)
            cand = Path(t["model"]).parent / cand
        if cand.is_file() and sha256_file(cand) == man["input"]["sha256"]:
            ref_path = cand
        else:
            warn(f"the artifact's input model {cand} is missing or changed since optimize; no reference comparison "
                 "(pass --reference FP32.onnx)")
    if ref_path is not None:
        load_model(ref_path)  # clear error for a bad reference
    if data is None and man is not None and man["data"].get("path") and Path(man["data"]["path"]).exists():
        data = man["data"]["path"]
    if shapes is None and man is not None and man.get("user_shapes"):
        shapes = {k: tuple(v) for k, v in man["user_shapes"].items()}
    samples: Samples = get_samples(model, data, shapes)
    samples.path = str(Path(data).resolve()) if data else None
    for w in samples.warnings:
        warn(w)
    if batch is not None:
        samples = _rebatch(samples, batch, model)
    return ref_path, samples


def parse_backends(spec: str | None, default: str) -> list[str]:
    """'ort' | 'ort,tvm,trt' | 'all' (every registered backend) -> names; unknown names are an error."""
    from .backends import backend_names

    if not spec:
        return [default]
    names = backend_names() if spec.strip().lower() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        get_backend(n, check=False)  # RecipeError naming the available backends
    return list(dict.fromkeys(names))


def precision_of(model) -> str:
    """int8 when the graph quantizes (QDQ, QOperator, integer MatMul/Conv), fp16 when it computes in float16, else fp32."""
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
              "ConvInteger", "DynamicQuantizeMatMul"}:
        return "int8"
    if any(t.data_type == 10 for t in model.graph.initializer):  # FLOAT16
        return "fp16"
    return "fp32"


def bench_matrix(t: dict, names: list[str], *, reference, data, shapes, threads, batch, rounds, round_runs, round_time,
                 warn, save: bool = True, times: bool = False) -> dict:
    """One recipe's result on every backend: the candidate on each available backend and the reference on ORT,
    timed alternately in one protocol; accuracy of every row against the reference's outputs."""
    man = t["manifest"]
    ref_path, samples = _prepare(t, reference, data, shapes, batch, warn)
    first = samples.feeds[0]
    feed_batch = int(next(iter(first.values())).shape[0]) if first and next(iter(first.values())).ndim else 1
    cand_prec = precision_of(load_model(t["model"]))
    rows: list[dict] = []
    sessions: dict = {}
    if ref_path is not None:
        rows.append({"key": "ort/reference", "backend": "ort", "variant": "reference", "model": str(ref_path),
                     "precision": precision_of(load_model(ref_path))})
    for n in names:
        rows.append({"key": f"{n}/candidate", "backend": n, "variant": "candidate", "model": str(t["model"]),
                     "precision": cand_prec})
    built = (man or {}).get("backend") or {}
    try:
        for row in rows:
            be = get_backend(row["backend"], check=False)
            st = be.status()
            if not st.get("ok"):
                row.update(status="unavailable", reason=st.get("reason"))
                continue
            path = Path(row["model"]) if row["variant"] == "reference" or not t["artifact"] else \
                load_path(t["artifact"], man, Path(t["model"]), row["backend"])
            opts = be.Options() if row["variant"] == "reference" else backend_options(man, row["backend"])
            t0 = time.perf_counter()
            try:
                sess = be.load(path, threads=threads, options=opts, shapes={k: tuple(v.shape) for k, v in first.items()})
            except BackendUnavailable as e:
                row.update(status="unavailable", reason=str(e))
                continue
            except Exception as e:  # a backend that cannot compile this model: one row says so, the rest run
                row.update(status="failed", reason=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
                continue
            row["load_ms"] = (time.perf_counter() - t0) * 1e3
            if row["variant"] == "candidate" and built.get("backend") == row["backend"]:
                row["compile_s"] = built.get("seconds")
                row["tuning"] = built.get("tuning")
            t0 = time.perf_counter()
            try:
                sess.run(first)
            except Exception as e:  # e.g. a static-shape backend given another batch: this row fails, the rest run
                sess.close()
                row.update(status="failed", reason=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
                continue
            row["cold_ms"] = (time.perf_counter() - t0) * 1e3
            row["status"] = "ok"
            sessions[row["key"]] = sess
        outs = {}
        for row in rows:  # outputs are checked before timing; a backend that fails to run one row says why
            if row["key"] not in sessions:
                continue
            try:
                outs[row["key"]] = [sessions[row["key"]].run(f) for f in samples.feeds]
            except Exception as e:
                row.update(status="failed", reason=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}")
                sessions.pop(row["key"]).close()
        ref_outs = outs.get("ort/reference")
        for row in rows:
            if row["key"] not in outs:
                continue
            acc = {}
            t1 = top1(outs[row["key"]], samples.labels)
            if t1 is not None:
                acc["top1"] = t1
            if ref_outs is not None and row["key"] != "ort/reference":
                d = compare(ref_outs, outs[row["key"]])
                acc["vs_reference"] = {k: v for k, v in d.items() if k != "outputs"}
            row["accuracy"] = acc
        load = machine_load()
        timing = time_sessions(sessions, first, rounds=rounds, round_runs=round_runs, round_time=round_time,
                               batch=feed_batch, keep_times=times) if sessions else {}
        if load:
            load["after"] = machine_load()["before"]
    finally:
        for s in sessions.values():
            s.close()
    all_times = {k: v.pop("times_ms") for k, v in timing.items() if "times_ms" in v}
    for row in rows:
        if row["key"] in timing:
            row["latency"] = timing[row["key"]]
            if "ort/reference" in timing:
                row["speedup_vs_reference"] = speedup(timing["ort/reference"]["round_p50_ms"],
                                                      timing[row["key"]]["round_p50_ms"])
    result = {
        "target": str(t["artifact"] or t["model"]), "model": str(t["model"]), "reference": str(ref_path) if ref_path else None,
        "backends": names, "rows": rows, "threads": threads, "inter_op_threads": 1, "batch": feed_batch,
        "data": {"feeds": len(samples), "synthetic": samples.synthetic, "source": samples.source},
        "protocol": {"rounds": rounds, "round_runs": round_runs, "round_time_s": round_time, "warmup_runs": 10,
                     "warmup_time_s": 0.2, "alternating": len(sessions) > 1},
        "load": load, "environment": environment(),
    }
    if times:
        result["times_ms"] = all_times
    if man is not None:
        result["recipe"] = man["recipe"]["name"]
    return _keep(t, result, save, warn)


def _rebatch(samples: Samples, batch: int, model) -> Samples:
    from .model import signature

    if batch < 1:
        raise InputError(f"--batch must be >= 1, got {batch}", "use a positive batch size")
    for spec in signature(model)[0]:
        if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] != batch:
            raise InputError(f"--batch {batch}: input {spec.name!r} has a fixed batch dim of {spec.shape[0]}",
                             "re-export the model with a dynamic batch axis or drop --batch")
    return samples.batched(batch)
