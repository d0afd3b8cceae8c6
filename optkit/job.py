"""``optimize``'s work, in steps: prepare (everything that can fail on bad input, before anything is written),
search (the recipe's passes, then an auto recipe's candidates), compile and check as served, write the typed manifest,
seal, report. ``optkit.api.optimize`` builds the ``OptimizeRequest`` and calls ``run``."""
from __future__ import annotations

import datetime as _dt
import re
import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from .artifact import MANIFEST_SCHEMA, model_name, seal, staged_version
from .backends import get_backend
from .data import get_samples, resolve_shapes
from .env import environment
from .errors import InputError, PassError, ToleranceMiss
from .hw import cpu_features
from .manifest import DataInfo, EvalData, GuardInfo, Manifest, ToleranceInfo
from .metrics import top1
from .model import load_model, model_files, model_info, save_model, sha256_file, signature
from .passes import Context, Progress
from .pipeline import Pipeline, without_outputs
from .recipe import Recipe, load_recipe


@dataclass
class _Job:
    """What ``run`` prepared before anything is written: the recipe, the backend, the loaded and normalized model, the
    samples, and the context every pass and decision shares."""

    req: object  # OptimizeRequest
    rec: Recipe
    targets: list[str]
    backend: object
    backend_opts: object
    passes: list
    m_in: onnx.ModelProto
    m: onnx.ModelProto
    input_desc: dict
    import_info: dict | None
    name: str
    ingest_entry: dict
    samples: object
    evals: object
    static_shapes: dict
    evaluator: object
    pass_cache: object
    ctx: Context
    tuning: object


def run(req) -> dict:
    """``optimize`` on an ``OptimizeRequest``: prepare, search, compile, check as served, seal, report."""
    job = _prepare(req)
    started = time.perf_counter()
    with staged_version(Path(req.output), job.name, req.version) as staged:
        if job.import_info is not None:  # the imported ONNX is the reference that bench compares with
            save_model(job.m_in, staged.stage / "input.onnx")
            job.input_desc.update({"path": "input.onnx", "sha256": sha256_file(staged.stage / "input.onnx")})
        result, candidates = _search(job)
        out_model = staged.stage / "model.onnx"
        save_model(result.model, out_model)
        compiled, all_compiled, served = _compile(job, staged.stage, out_model, result)
        manifest = _manifest(job, result, candidates, out_model, compiled, all_compiled, served,
                             round(time.perf_counter() - started, 3))
        seal(staged.stage, manifest)  # the sha256 of every file written above, checked whenever it is used
    manifest["artifact"] = str(staged.path)
    try:
        from .report import write_report

        manifest["report"] = str(write_report(staged.path)[1])
    except Exception as e:  # the artifact is complete without it; say so rather than fail the run
        req.say(f"could not write the report ({type(e).__name__}: {e}); `optkit report {staged.path}` retries")
    if result.missed and not req.allow_miss:
        raise ToleranceMiss(f"tolerance missed ({job.tuning.criterion.describe()}) by pass(es) {', '.join(result.missed)}; "
                            f"the best candidate is saved at {staged.path}",
                            "raise --tolerance or --budget, or pass --allow-miss to accept it")
    return manifest


def _prepare(req) -> _Job:
    """Everything that can fail on bad input, before anything is written."""
    from .cache import make_cache
    from .evaluate import Evaluator
    from .measure import parse_backends

    warn = req.say
    rec = req.recipe if isinstance(req.recipe, Recipe) else load_recipe(req.recipe)
    targets = parse_backends(",".join(req.backends) if isinstance(req.backends, (list, tuple)) else req.backends,
                             rec.backend)
    backend = get_backend(targets[0])  # a missing primary backend fails here, before any work
    backend_opts = rec.backend_config() if targets[0] == rec.backend else backend.Options()
    passes = rec.build_passes()
    import_options = req.import_options
    if not req.onnx_input:  # a framework model: the import traces with the same data/shapes the pipeline will use
        import_options = {"data": req.data, "shapes": req.shapes, **(import_options or {})}
    m_in, input_desc, import_info, name = _load_input(req.model, req.name, req.example_inputs, import_options, warn)
    m, ingest_entry, samples = _ingest(m_in, req.model, req.data, req.shapes, req.threads)
    inputs, _ = signature(m)
    static_shapes = resolve_shapes(inputs, samples.shapes(), source=f"--data {Path(req.data).name}" if req.data else "--shape")
    for w in samples.warnings:
        warn(w)
    evals = get_samples(m, req.eval_data, req.shapes) if req.eval_data else samples
    if req.tolerance is not None and req.eval_data is None and not samples.synthetic:
        warn("--tolerance is judged on the calibration data (--data); pass --eval-data with held-out feeds for an "
             "honest judgment")
    evaluator = Evaluator.for_backend(targets[0], backend_opts, req.threads)  # every decision runs the model as served
    pass_cache = make_cache(req.cache)
    ctx = Context(samples=samples, shapes=dict(req.shapes or {}), threads=req.threads, cpu=_serve_cpu(req.serve_isa),
                  progress=req.progress or Progress(), warn=warn, evaluator=evaluator, cache=pass_cache)
    tuning = _tuning(m, rec, passes, evals, req.threads, req.tolerance, req.metric, req.budget, req.max_trials,
                     req.force, warn, evaluator, targets[0])
    return _Job(req, rec, targets, backend, backend_opts, passes, m_in, m, input_desc, import_info, name, ingest_entry,
                samples, evals, static_shapes, evaluator, pass_cache, ctx, tuning)


def _search(job: _Job):
    """The recipe's passes, then (auto recipes) the candidate search; the ingest row first in the pass log."""
    req = job.req
    if job.ingest_entry["modified"] and req.on_pass is not None:
        req.on_pass(job.ingest_entry)
    result = Pipeline(job.passes, job.ctx, tuning=job.tuning, eval_samples=job.evals,
                      max_check_feeds=req.eval_feeds).run(job.m, on_pass=req.on_pass)
    candidates = None
    if job.rec.candidates:
        from .candidates import pick_candidate

        result, candidates = pick_candidate(result, job.rec.build_candidates(), job.ctx, job.tuning, job.m, req.on_pass,
                                            job.evals, req.eval_feeds)
    if job.ingest_entry["modified"]:  # a clean model adds no row; its ingest entry is in the manifest's "ingest"
        result.log.insert(0, job.ingest_entry)
    return result, candidates


def _compile(job: _Job, stage: Path, out_model: Path, result):
    """The primary backend's build (checked as ``optkit.load`` serves it) and any extra backends' builds."""
    import inspect as _inspect

    req, backend = job.req, job.backend
    t0 = time.perf_counter()
    extra = {"warn": req.say} if "warn" in _inspect.signature(backend.compile).parameters else {}
    compiled = backend.compile(out_model, stage / "compiled", job.backend_opts, req.threads, shapes=job.static_shapes,
                               **extra)
    compiled["seconds"] = round(time.perf_counter() - t0, 3)
    served = _served_check(job.targets[0], backend, job.backend_opts, stage, out_model, compiled, req.threads,
                           job.static_shapes, result, job.evals, req.eval_feeds)
    all_compiled = {job.targets[0]: compiled}
    for name in job.targets[1:]:
        all_compiled[name] = _compile_extra(name, job.rec, out_model, stage / f"compiled-{name}", req.threads,
                                            job.static_shapes, req.say)
    return compiled, all_compiled, served


def _manifest(job: _Job, result, candidates, out_model: Path, compiled, all_compiled, served, seconds: float) -> dict:
    req, tuning, samples, evals = job.req, job.tuning, job.samples, job.evals
    crit = tuning.criterion
    return Manifest(
        schema=MANIFEST_SCHEMA,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        input={**job.input_desc, "info": model_info(job.m_in, job.static_shapes)},
        ingest=job.ingest_entry,
        import_=job.import_info,
        output={"path": "model.onnx", "sha256": sha256_file(out_model), "info": model_info(result.model, job.static_shapes)},
        recipe=job.rec.to_dict(),
        recipe_source=job.rec.source,
        shapes={k: list(v) for k, v in job.static_shapes.items()},
        user_shapes={k: list(v) for k, v in (req.shapes or {}).items()},
        data=DataInfo(source=samples.source, synthetic=samples.synthetic, feeds=len(samples),
                      labels=samples.labels is not None, path=str(Path(req.data).resolve()) if req.data else None,
                      eval=EvalData(source=evals.source, feeds=min(len(evals), req.eval_feeds),
                                    labels=evals.labels is not None,
                                    path=str(Path(req.eval_data).resolve()) if req.eval_data else None)),
        pass_log=result.log,
        accuracy=_accuracy(result, evals),
        backend=compiled,
        backends=all_compiled,
        threads=req.threads,
        optimize_seconds=seconds,
        tolerance=ToleranceInfo(
            criterion=crit.describe(), metric=crit.metric, default_gate=tuning.default_gate,
            passed=not result.missed, missed_by=result.missed,
            judged_on=evals.source + (" (calibration data)" if evals is samples else ""),
            trials=tuning.trials_run + sum(c.get("trials", 0) for c in candidates or [])) if crit else None,
        guard=GuardInfo(enabled=tuning.guard and tuning.probe is not None, final=result.final_guard),
        evaluator=job.evaluator.to_dict(),
        served_check=served,
        int8=_int8_record(result.log, req.serve_isa),
        candidates=candidates,
        warnings=list(samples.warnings),
        cache=({"root": str(job.pass_cache.root), **job.pass_cache.stats()} if job.pass_cache is not None else None),
        environment=environment(),
        reproduce=_reproduce(req.model, req.recipe, job.rec, req.data, req.eval_data, req.tolerance, req.metric,
                             job.targets, req.threads, req.output),
    ).to_dict()


def _load_input(model, name, example_inputs, import_options, warn):
    """(ONNX model, input description for the manifest, import info or None, name) for an ONNX path, a framework
    file or an in-memory framework model; framework inputs go through the importer and its parity check."""
    from .importers import detect, is_framework_object

    opts = dict(import_options or {})
    if isinstance(model, (str, Path)) and detect(Path(model)) == "onnx":
        if example_inputs is not None or opts:
            raise InputError(f"{model} is already ONNX: import options ({', '.join(opts) or 'example_inputs'}) do not apply",
                             "drop them")
        src = Path(model)
        return load_model(src), {"path": str(src.resolve()), "sha256": sha256_file(src)}, None, name or model_name(src)
    if not isinstance(model, (str, Path)) and not is_framework_object(model):
        raise InputError(f"optimize takes an ONNX/PyTorch/TensorFlow model or file, not a {type(model).__name__}",
                         "pass a path or a torch.nn.Module / Keras model")
    from .importers import import_model

    rtol, atol = opts.pop("parity_tol", (1e-3, 1e-4))  # export()'s keywords (trust_pickle, if given, is one of opts)
    imp = import_model(model, example_inputs=example_inputs, rtol=rtol, atol=atol, warn=warn, **opts)
    if isinstance(model, (str, Path)):
        src = Path(model)
        desc = {"source_path": str(src.resolve()), "source_sha256": _source_sha(src)}
        default_name = model_name(src)
    else:
        desc = {"source_object": imp.info["source"]}
        default_name = re.sub(r"[^A-Za-z0-9._-]+", "_", type(model).__name__) or "model"
    return imp.model, desc, imp.info, name or default_name


def _source_sha(path: Path) -> str:
    """sha256 of a file, or of every file under a directory (SavedModel) in path order."""
    import hashlib

    if path.is_file():
        return sha256_file(path) if path.suffix == ".onnx" else hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _ingest(m_in, model, data, shapes, threads):
    """optkit.ingest on the loaded model: normalized model, its pass-log entry, and the samples (built from the
    normalized signature: -1 dims are symbolic there)."""
    from .ingest import ingest

    built = {}

    def feeds_for(normalized):
        built["samples"] = get_samples(normalized, data, shapes)
        return built["samples"].feeds

    src_files = model_files(model) if isinstance(model, (str, Path)) and Path(model).suffix.lower() == ".onnx" else None
    m, entry = ingest(m_in, feeds_for, threads=threads, source_files=src_files)
    samples = built.get("samples") or get_samples(m, data, shapes)
    return m, entry, samples


def _reproduce(model, recipe, rec, data, eval_data, tolerance, metric, targets, threads, output) -> dict:
    """The command line that reproduces this artifact (the CLI's own argv, else an equivalent one), optkit's version
    and the resolved recipe's hash."""
    import shlex

    from .log import command
    from .verdict import reproduce_record

    cmd = command()
    if cmd is None or " optimize " not in f"{cmd} ":
        args = ["optkit", "optimize", str(model), "--recipe", recipe if isinstance(recipe, (str, Path)) else rec.name]
        for flag, v in (("--data", data), ("--eval-data", eval_data), ("--tolerance", tolerance),
                        ("--metric", None if metric == "auto" else metric), ("--backend", ",".join(targets)),
                        ("--threads", threads if threads != 1 else None), ("--output", output)):
            if v is not None:
                args += [flag, str(v)]
        cmd = shlex.join(args)
    return reproduce_record(cmd, rec.to_dict())


def _compile_extra(name, rec, model_path, out_dir, threads, shapes, warn) -> dict:
    """Compile for one more backend; one that cannot compile here is recorded with the reason, not fatal."""
    from .errors import BackendUnavailable, OptkitError

    be = get_backend(name, check=False)
    try:
        be.check()
        opts = rec.backend_config() if name == rec.backend else be.Options()
        t0 = time.perf_counter()
        info = be.compile(model_path, out_dir, opts, threads, shapes=shapes)
        info["seconds"] = round(time.perf_counter() - t0, 3)
        return {"status": "ok", **info}
    except BackendUnavailable as e:
        return {"backend": name, "status": "unavailable", "reason": str(e)}
    except OptkitError as e:
        warn(f"backend {name}: {e}")
        return {"backend": name, "status": "failed", "reason": str(e)}


def _tuning(model, rec: Recipe, passes, samples, threads: int, tolerance, metric: str, budget, max_trials: int, force: bool,
            warn, evaluator=None, backend: str = "ort"):
    """The gate and the search. Every lossy recipe runs behind a gate: 1% on the auto metric unless --tolerance says
    otherwise (one-shot recipes keep their own configuration when it passes and search only to recover a miss)."""
    from .evaluate import SpeedProbe
    from .search import Tuning, make_criterion, parse_budget

    lossy = any(not p.exact for p in passes)  # (a candidate recipe is gated whatever its passes: the branch before)
    explicit = tolerance is not None
    if tolerance is None and rec.candidates:
        tolerance = "1%"
        warn(f"recipe {rec.name!r} picks among candidates within a tolerance and none was given: using --tolerance 1%")
    elif tolerance is None and lossy:
        # no warning: the default gate is the normal case; the result line and the manifest say it was applied
        tolerance = "1%"
    crit = None
    if tolerance is not None:
        crit = make_criterion(tolerance, metric, model, samples.labels is not None)
    seconds = parse_budget(budget)
    probe = None
    if backend == "ort":
        from .evaluate import Evaluator

        probe = SpeedProbe(samples.feeds[0], evaluator or Evaluator(threads=threads))
    elif not force:
        warn(f"performance guard measures on ONNX Runtime; it is off for backend {backend!r}")
    return Tuning(criterion=crit, max_trials=max_trials, deadline=time.monotonic() + seconds if seconds else None,
                  guard=not force, probe=probe, search=explicit or bool(rec.candidates),
                  default_gate=crit is not None and not explicit, layer_search=explicit or not force)


def _served_check(name, backend, options, stage: Path, out_model: Path, compiled: dict, threads, shapes, result, evals,
                  eval_feeds) -> dict:
    """Open the artifact the way optkit.load will and require the outputs the accuracy gate judged: the gate and the
    served program must be one program. A backend that built nothing here (TensorRT without a GPU) is said so."""
    from .errors import PassError
    from .metrics import compare, within

    gated = result.outputs[:16]
    if not gated:
        return {"checked": False, "reason": "no feeds"}
    if name == "trt" and not compiled.get("engine_built"):
        return {"checked": False, "reason": "no TensorRT engine was built here; judged on ONNX Runtime with Q/DQ as float"}
    if name == "ort":
        path = stage / "compiled" / "model.ort.onnx"
        path = path if path.is_file() else out_model
    elif name == "tvm":
        path = stage / "compiled"
    else:
        path = out_model
    n = len(gated)
    feeds = (evals.feeds[:eval_feeds])[:n]
    with backend.load(path, threads=threads, options=options, shapes=shapes) as sess:
        outs = [sess.run(f) for f in feeds]
    d = compare(gated, outs)
    rtol, atol, cos = (1e-3, 1e-4, 0.99999) if name == "ort" else (2e-2, 1e-3, 0.999)
    ok = within(d, rtol, atol, cos)
    rec = {"checked": True, "path": str(path.relative_to(stage)), "feeds": n, "max_abs": d["max_abs"],
           "cosine": d["cosine"], "ok": ok}
    if not ok:
        raise PassError(f"the artifact as {name} serves it ({rec['path']}) gives other outputs than the model the accuracy "
                        f"gate judged (max-abs {d['max_abs']:.3g}, cosine {d['cosine']:.6f})",
                        "report the model; the gate's numbers would not describe what ships")
    return rec


def _serve_cpu(serve_isa: str | None) -> dict:
    """The CPU the INT8 types are chosen for: this host (measured), or the ISA the artifact will be served on
    (checked by OptimizeRequest)."""
    if serve_isa in (None, "host"):
        return cpu_features()
    isa = {"avx2": True, "avx512_vnni": serve_isa == "vnni"}
    return {**cpu_features(), "isa": isa, "serve_isa": serve_isa}


def _int8_record(log: list[dict], serve_isa: str | None = None) -> dict | None:
    """INT8 types the quantizers used and the ISA they were chosen for (optkit.load warns on a host that differs)."""
    from .hw import isa_label, ort_int8_kernels

    used = [e["metrics"]["int8"] for e in log if e.get("status") == "ok" and "int8" in (e.get("metrics") or {})]
    if not used:
        return None
    return {"passes": used, "built_on_isa": isa_label(), "chosen_for": serve_isa or "host",
            "u8s8_saturates_here": ort_int8_kernels()["u8s8_saturates"]}


def _accuracy(result, samples) -> dict:
    """The optimized model vs the input model on the sample feeds (and vs labels when there are some)."""
    if not result.reference_outputs:
        return {}
    from .metrics import compare

    n = len(result.reference_outputs)
    labels = samples.labels[:n] if samples.labels else None
    acc = {"feeds": n, "synthetic": samples.synthetic, "vs_input": without_outputs(compare(result.reference_outputs, result.outputs))}
    t_in, t_out = top1(result.reference_outputs, labels), top1(result.outputs, labels)
    if t_in is not None:
        acc.update({"top1_input": t_in, "top1_output": t_out, "top1_delta": t_out - t_in})
    return acc
