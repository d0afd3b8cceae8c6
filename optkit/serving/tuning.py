"""``optkit tune``, step by step: validate the request, prepare the input and the data, build and judge the
variants, search the space, and write ``serving.json`` + ``serving.svg``."""
from __future__ import annotations

import datetime as _dt
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from .cache import TrialCache, _context_hash, write_json
from .executors import TrialSpec, make_executor
from .plot import svg_plot
from .search import Space, _optuna, best_trial, pareto_front, resolve_sampler, search
from .spec import (DEFAULT_BATCHES, OBJECTIVES, PRECISIONS, SERVING, SERVING_SCHEMA, SERVING_SVG,
                   STATIC_SHAPE_BACKENDS, CACHE_FILE, default_threads, parse_int_list, parse_names, parse_slo,
                   parse_tune_budget)
from .variants import (_fixed_batch, _judge_variants, _resolve_input, build_variants, plan_variants,
                       variant_summary)


@dataclass
class _Job:
    """What one tune works on, once validated and prepared."""

    src: Path
    art: Path | None
    art_man: dict | None
    name: str
    tune_dir: Path
    serving_dir: Path
    src_sha: str
    be_names: list[str]
    precs: list[str]
    thread_list: list[int]
    batch_list: list[int] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cores: int = 1
    data: object = None
    samples: object = None
    evals: object = None
    criterion: object = None


def _validate(objective: str, sampler: str, slo, tolerance, rounds: int, round_time: float):
    """Everything checked before any work: -> (sampler, SLO terms)."""
    from ..search import parse_tolerance

    if objective not in OBJECTIVES:
        raise InputError(f"--objective must be one of {', '.join(OBJECTIVES)}; got {objective!r}", "pick one")
    sampler = resolve_sampler(sampler)
    if sampler != "grid":
        _optuna()  # a missing optuna fails here, before any variant is built or calibrated
    slo_terms = parse_slo(slo)
    parse_tolerance(tolerance)
    if rounds < 1 or round_time <= 0:
        raise InputError("--rounds must be >= 1 and --round-time > 0", "e.g. --rounds 3 --round-time 0.3")
    return sampler, slo_terms


def _batches(job: _Job, inputs, batches, warn) -> None:
    """The batch sizes to search; a model with a fixed batch dim keeps only that one (the others are excluded)."""
    fixed = _fixed_batch(inputs)
    if batches is None:
        job.batch_list = [fixed] if fixed else list(DEFAULT_BATCHES)
    else:
        job.batch_list = parse_int_list(batches, "batch")
    if fixed is None:
        return
    bad = [b for b in job.batch_list if b != fixed]
    if bad:
        job.excluded += [{"batch": b, "reason": f"the model's batch dim is fixed to {fixed}"} for b in bad]
        job.notes.append(f"the model has a fixed batch of {fixed}: batch sizes {bad} are excluded "
                         "(re-export with a dynamic batch axis to tune the batch size)")
        warn(job.notes[-1])
    job.batch_list = [b for b in job.batch_list if b == fixed]
    if not job.batch_list:
        raise InputError(f"the model's batch dim is fixed to {fixed}; none of --batch {batches} can run",
                         f"use --batch {fixed} or re-export the model with a dynamic batch axis")


def _prepare(target, output, name, backends, precisions, threads, batches, data, eval_data, shapes, tolerance,
             make_ex, warn) -> tuple[_Job, object]:
    """Resolve the input, the lists, the executor (-> (job, executor)), then load the model and the data."""
    from ..backends import backend_names
    from ..data import get_samples
    from ..model import load_model, sha256_file, signature
    from ..search import make_criterion

    be_names = parse_names(backends, "backends", tuple(backend_names()))
    precs = parse_names(precisions, "precisions", PRECISIONS)
    thread_list = parse_int_list(threads, "threads") if threads is not None else default_threads()
    ex = make_ex()
    src, art, art_man, nm, tune_dir, serving_dir = _resolve_input(target, output, name)
    if data is None and art_man is not None and (art_man.get("data") or {}).get("path") and \
            Path(art_man["data"]["path"]).exists():
        data = art_man["data"]["path"]
    m = load_model(src)
    inputs, _ = signature(m)
    job = _Job(src, art, art_man, nm, tune_dir, serving_dir, sha256_file(src), be_names, precs, thread_list,
               data=data, cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    if max(thread_list) > job.cores:
        warn(f"--threads {max(thread_list)} is more than the {job.cores} core(s) this process may use: those trials "
             "oversubscribe the CPU")
    _batches(job, inputs, batches, warn)
    job.samples = get_samples(m, data, shapes)
    for w in job.samples.warnings:
        warn(w)
    job.evals = get_samples(m, eval_data, shapes) if eval_data else job.samples
    job.criterion = make_criterion(tolerance, "auto", m, job.evals.labels is not None)
    return job, ex


def _variants(job: _Job, shapes, max_eval_feeds: int, status, warn) -> tuple[list[dict], list[dict]]:
    """Plan, build and judge the variants: -> (unavailable backends, variants)."""
    unavailable, variants = plan_variants(job.be_names, job.precs, warn)
    job.tune_dir.mkdir(parents=True, exist_ok=True)
    build_variants(variants, job.src, job.src_sha, job.art, job.art_man, job.tune_dir, job.data, shapes, status, warn)
    status(f"judging accuracy ({job.criterion.describe()}) on {min(len(job.evals), max_eval_feeds)} feed(s)")
    _judge_variants(job.src, variants, job.evals, job.criterion, max_eval_feeds, warn)
    for v in variants:
        if v.get("status") in ("inaccurate", "failed"):
            warn(f"variant {v['variant']}: {v['reason']}")
    return unavailable, variants


def _protocol(rounds: int, round_time: float, ex, warn) -> dict:
    workers = getattr(ex, "workers", 1)
    if workers > 1:
        warn(f"{ex.workers} trials run at the same time: they share cores and distort each other's timing")
    return {"warmup_runs": 10, "warmup_time": 0.2, "rounds": rounds, "round_runs": 10, "round_time": round_time,
            "inter_op_threads": 1, "timing": "one child process per trial, trials one after another"
            if workers == 1 else f"{ex.workers} trials at a time (timings distorted)"}


def _write_feeds(samples, batch_list: list[int], tmp: str) -> tuple[dict, dict]:
    """One .npz feed per batch size (the children load it): -> ({batch: file}, {batch: {input: shape}})."""
    files, shapes = {}, {}
    for b in batch_list:
        f = Path(tmp) / f"batch-{b}.npz"
        feed = samples.batched(b).feeds[0]
        np.savez(f, **feed)
        files[b], shapes[b] = str(f), {k: list(a.shape) for k, a in feed.items()}
    return files, shapes


def _spec_maker(by_name: dict, protocol: dict, feed_files: dict, feed_shapes: dict, trial_timeout: float,
                compile_timeout: float):
    def make_spec(v, t, b):
        var = by_name[v]
        payload = {"model": var["model"], "options": var["options"], "feed": feed_files[b], "protocol": protocol}
        timeout = trial_timeout
        if var["backend"] in STATIC_SHAPE_BACKENDS:
            cdir = Path(var["artifact"]) / f"compiled-b{b}-t{t}"
            payload.update(model=var["onnx"], compile_dir=str(cdir), shapes=feed_shapes[b])
            if not (cdir / "tvm.json").is_file():
                timeout += compile_timeout
        return TrialSpec(v, t, b, payload=payload, timeout=timeout)

    return make_spec


def _search(job: _Job, space: Space, variants: list[dict], protocol: dict, ex, budget_d: dict, deadline, *,
            objective, slo_terms, sampler, seed, fresh, trial_timeout, compile_timeout, status, on_trial) -> dict:
    """Feeds, the trial cache and the search itself: -> {'trials', 'stopped', 'repeats'}."""
    by_name = {v["variant"]: v for v in variants}
    feed_sig = {"source": job.samples.source, "shapes": {k: list(s) for k, s in job.samples.shapes().items()}}
    cache = TrialCache(job.tune_dir / CACHE_FILE, {v: _context_hash(by_name[v], protocol, feed_sig)
                                                   for v in space.variants}, fresh=fresh)
    run_cache = cache.hits(space.points())
    if not space.size:
        return {"trials": [], "stopped": "no variant to time", "repeats": 0}

    def on_record(rec):
        cache.add(rec)
        if on_trial is not None:
            on_trial(rec)

    with tempfile.TemporaryDirectory(prefix="optkit-tune-feeds-") as tmp:
        feed_files, feed_shapes = _write_feeds(job.samples, job.batch_list, tmp)
        make_spec = _spec_maker(by_name, protocol, feed_files, feed_shapes, trial_timeout, compile_timeout)
        status(f"searching {space.size} points ({len(space.variants)} variant(s) × {len(job.thread_list)} thread "
               f"count(s) × {len(job.batch_list)} batch size(s)) with {sampler}, budget "
               + ", ".join(x for x in (f"{budget_d['trials']} trials" if budget_d["trials"] else "",
                                       f"{budget_d['seconds']:g} s" if budget_d["seconds"] else "") if x))
        return search(space, ex, make_spec, objective=objective, slo=slo_terms, budget_trials=budget_d["trials"],
                      deadline=deadline, sampler=sampler, seed=seed, cache=run_cache, on_trial=on_record)


def _recommend(best: dict | None, variants: list[dict], objective: str) -> dict | None:
    if best is None:
        return None
    var = next(v for v in variants if v["variant"] == best["variant"])
    return {"backend": best["backend"], "precision": best["precision"], "threads": best["threads"],
            "batch": best["batch"], "inter_op_threads": 1, "artifact": var["artifact"], "recipe": var["recipe"],
            "objective": {"name": objective, "value": best["objective"], "unit": OBJECTIVES[objective][2]},
            "expected": {k: best[k] for k in ("p50_ms", "p90_ms", "p99_ms", "throughput", "throughput_per_core")},
            "accuracy": var.get("accuracy"),
            "load": f"optkit.load({var['artifact']!r}, backend={best['backend']!r}, threads={best['threads']})"
                    f"  # feed batches of {best['batch']}"}


def _search_stats(trials: list[dict], space: Space, search_res: dict, ex, sampler, seed, budget_d, search_seconds,
                  started) -> dict:
    counts = {s: sum(1 for t in trials if t["status"] == s) for s in ("ok", "infeasible", "failed")}
    return {"sampler": sampler, "seed": seed, "executor": getattr(ex, "name", type(ex).__name__),
            "workers": getattr(ex, "workers", 1), "budget": budget_d, "stopped": search_res["stopped"],
            "trials": len(trials), "measured": sum(1 for t in trials if t["source"] != "cache"),
            "from_cache": sum(1 for t in trials if t["source"] == "cache"),
            "repeats_answered_from_memory": search_res["repeats"], **counts,
            "fraction_of_space": round(len(trials) / space.size, 4) if space.size else 0.0,
            "search_seconds": round(search_seconds, 3), "total_seconds": round(time.monotonic() - started, 3)}


def _document(job: _Job, *, recommended, objective, slo_terms, tolerance, front, space, stats, protocol, variants,
              unavailable, trials) -> dict:
    """The serving.json content (schema ``optkit.serving/1``)."""
    from ..env import environment

    samples, evals = job.samples, job.evals
    return {
        "schema": SERVING_SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"path": str(job.src.resolve()), "sha256": job.src_sha, "name": job.name,
                  "artifact": str(job.art) if job.art is not None else None},
        "recommended": recommended,
        "objective": objective,
        "slo": [t.describe() for t in slo_terms],
        "tolerance": {"value": tolerance, "criterion": job.criterion.describe(),
                      "judged_on": evals.source + (" (the calibration data)" if evals is samples and not samples.synthetic
                                                   else "")},
        "pareto": [{k: p[k] for k in ("key", "backend", "precision", "threads", "batch", "p50_ms", "p99_ms",
                                      "throughput", "throughput_per_core", "status")} for p in front],
        "space": {"backends": job.be_names, "precisions": job.precs, "variants": space.variants,
                  "threads": job.thread_list, "batches": job.batch_list, "size": space.size, "excluded": job.excluded},
        "search": stats,
        "protocol": protocol,
        "variants": variant_summary(variants),
        "unavailable": unavailable,
        "trials": trials,
        "notes": job.notes,
        "data": {"source": samples.source, "synthetic": samples.synthetic, "feeds": len(samples),
                 "labels": samples.labels is not None},
        "cores": job.cores,
        "environment": environment(),
    }


def _outcome_note(best, space: Space, trials: list[dict]) -> str | None:
    if best is not None:
        return None
    if space.size:
        return ("no trial met the SLO" if any(t["status"] == "infeasible" for t in trials)
                else "no trial could be measured")
    return "no variant could be timed (see variants: unavailable, failed or outside the tolerance)"


def _write_outputs(result: dict, job: _Job) -> dict:
    job.serving_dir.mkdir(parents=True, exist_ok=True)
    write_json(job.serving_dir / SERVING, result)
    (job.serving_dir / SERVING_SVG).write_text(svg_plot(result), encoding="utf-8")
    result["serving_json"] = str(job.serving_dir / SERVING)
    result["plot"] = str(job.serving_dir / SERVING_SVG)
    result["tune_dir"] = str(job.tune_dir)
    return result


def tune(model_or_artifact, *, backends="ort", precisions="fp32,int8", threads=None, batches=None,
         slo: str | None = None, objective: str = "throughput", tolerance: str = "1%", budget=None, seed: int = 0,
         output: str | Path = "optkit-out", data=None, eval_data=None, shapes: dict | None = None,
         executor="local", workers: int = 1, sampler: str = "auto", rounds: int = 3, round_time: float = 0.3,
         trial_timeout: float = 120.0, compile_timeout: float = 1800.0, fresh: bool = False, name: str | None = None,
         max_eval_feeds: int = 256, warn=None, on_trial=None, on_status=None) -> dict:
    """Search for the serving spec (backend, precision, threads, batch) with the best ``objective`` under ``slo``
    among variants within ``tolerance`` of the input model; write ``serving.json`` + ``serving.svg`` and return the
    serving.json content (recommended spec, Pareto set, every trial, variants, unavailable backends, search stats).

    ``model_or_artifact``: an ONNX model (files go to ``output/<name>/tune/``) or an artifact directory (its input
    model is the FP32 source and the reference; the artifact itself is reused as its own variant; serving.json goes
    into the artifact). ``budget``: '30' / '30 trials' / '25%' / '10m' / '30 trials,10m' (default 25% of the space,
    at least 6 trials). ``executor``: 'local' or an ``Executor``. ``fresh``: ignore the trial cache.
    ``trial_timeout``: seconds a trial's child may take (plus ``compile_timeout`` when a static-shape backend such as
    TVM must first build that (threads, batch) point).
    """
    warn = warn or (lambda msg: None)
    status = on_status or (lambda msg: None)
    started = time.monotonic()
    sampler, slo_terms = _validate(objective, sampler, slo, tolerance, rounds, round_time)
    job, ex = _prepare(model_or_artifact, output, name, backends, precisions, threads, batches, data, eval_data,
                       shapes, tolerance, lambda: make_executor(executor, workers), warn)
    unavailable, variants = _variants(job, shapes, max_eval_feeds, status, warn)
    space = Space([v["variant"] for v in variants if v.get("status") == "ok"], job.thread_list, job.batch_list)
    budget_d = parse_tune_budget(budget, max(space.size, 1))
    deadline = started + budget_d["seconds"] if budget_d["seconds"] else None
    protocol = _protocol(rounds, round_time, ex, warn)
    search_t0 = time.perf_counter()
    search_res = _search(job, space, variants, protocol, ex, budget_d, deadline, objective=objective,
                         slo_terms=slo_terms, sampler=sampler, seed=seed, fresh=fresh, trial_timeout=trial_timeout,
                         compile_timeout=compile_timeout, status=status, on_trial=on_trial)
    search_seconds = time.perf_counter() - search_t0
    ex.close()
    trials = search_res["trials"]
    for t in trials:
        t.pop("round_p50_ms", None)
    best = best_trial(trials, objective)
    note = _outcome_note(best, space, trials)
    if note:
        job.notes.append(note)
    stats = _search_stats(trials, space, search_res, ex, sampler, seed, budget_d, search_seconds, started)
    result = _document(job, recommended=_recommend(best, variants, objective), objective=objective,
                       slo_terms=slo_terms, tolerance=tolerance, front=pareto_front(trials), space=space, stats=stats,
                       protocol=protocol, variants=variants, unavailable=unavailable, trials=trials)
    return _write_outputs(result, job)
