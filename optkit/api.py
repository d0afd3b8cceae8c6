"""The library entry points behind the CLI: optimize and inspect (bench lives in bench.py)."""
from __future__ import annotations

import datetime as _dt
import re
import time
from pathlib import Path

import onnx

from .artifact import MANIFEST_SCHEMA, check_name, seal, staged_version
from .backends import get_backend
from .data import get_samples, resolve_shapes
from .env import environment
from .errors import InputError, PassError, ToleranceMiss
from .hw import cpu_features
from .metrics import top1
from .model import load_model, model_files, model_info, save_model, sha256_file, signature
from .passes import Context, Progress
from .pipeline import Pipeline, without_outputs
from .recipe import Recipe, load_recipe


def _model_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem) or "model"


def inspect(model: str | Path, shapes: dict | None = None) -> dict:
    """Signature, opsets, op histogram, parameter count, FLOPs and size of an ONNX file."""
    path = Path(model)
    m = load_model(path)
    inputs, _ = signature(m)
    static, unresolved = _flops_shapes(inputs, shapes)
    info = model_info(m, static)
    files = model_files(path)
    info.update({"path": str(path), "file_bytes": sum(f.stat().st_size for f in files if f.exists()),
                 "files": [str(f) for f in files], "sha256": sha256_file(path),
                 "flops_shapes": {k: list(v) for k, v in static.items()}})
    notes = [info["flops"]["note"]] if info["flops"].get("note") else []
    if unresolved:
        notes.insert(0, f"FLOPs use 1 for unresolved symbolic dims ({', '.join(unresolved)}); give --shape for real sizes")
    if notes:
        info["flops"]["note"] = "; ".join(notes)
    return info


def _flops_shapes(inputs, shapes: dict | None) -> tuple[dict, list[str]]:
    """Static input shapes for FLOPs: --shape where given, batch-like leading dims 1, and every other symbolic dim
    set to 1 (named in the returned list) rather than dropped: an encoder's FLOPs at seq=1, never a silent 0."""
    shapes = dict(shapes or {})
    names = {s.name for s in inputs}
    for name in shapes:
        if name not in names:
            raise InputError(f"--shape names unknown input {name!r}", f"the model's inputs are {sorted(names)}")
    static, unresolved = {}, []
    for s in inputs:
        if s.name in shapes:  # a bad --shape is still an error
            static.update(resolve_shapes([s], {s.name: shapes[s.name]}))
            continue
        try:
            static.update(resolve_shapes([s], {}))
        except InputError:
            static[s.name] = tuple(d if isinstance(d, int) else 1 for d in s.shape)
            unresolved += [f"{s.name}[{i}]={d if d is not None else '?'}" for i, d in enumerate(s.shape)
                           if not isinstance(d, int)]
    return static, unresolved


def export(model, example_inputs=None, out: str | Path | None = None, *, data=None, shapes: dict | None = None,
           dtypes: dict | None = None, input_names=None, output_names=None, dynamic=None, opset: int | None = None,
           exporter: str = "auto", module: str | None = None, signature: str | None = None,
           parity_tol: tuple[float, float] = (1e-3, 1e-4), warn=None, trust_pickle: bool = False):
    """Bring a PyTorch/TensorFlow model (object or file) to ONNX, checked against the framework (see
    ``optkit.importers.import_model``). Returns an ``Imported`` (``.model``, ``.info``); with ``out`` the ONNX file is
    also written there atomically (``info['path']``). ``parity_tol`` = (rtol, atol).

    ``trust_pickle``: allow files whose loading runs code from the file (a ``torch.save``d whole model, a
    torch.export .pt2 program, a Keras Lambda layer). Off by default: such a file is refused with an error."""
    from .importers import import_model

    rtol, atol = parity_tol
    imp = import_model(model, example_inputs=example_inputs, data=data, shapes=shapes, dtypes=dtypes,
                       input_names=input_names, output_names=output_names, dynamic=dynamic, opset=opset,
                       exporter=exporter, module=module, signature=signature, rtol=rtol, atol=atol, warn=warn,
                       trust_pickle=trust_pickle)
    if out is not None:
        imp.info["path"] = str(_write_atomic(imp.model, Path(out)))
    return imp


def _write_atomic(model, out: Path) -> Path:
    """Write next to ``out`` under a temporary name, then rename: an interrupted write leaves no half file."""
    import os
    import shutil

    from .artifact import check_writable, clean_stale, make_temp_dir, sync_tree

    if out.suffix.lower() != ".onnx":
        raise InputError(f"--out {out} should end in .onnx", "name the output file model.onnx or similar")
    check_writable(out.parent)
    clean_stale(out.parent, ".optkit-import-")
    tmp = make_temp_dir(out.parent, ".optkit-import-")
    try:
        save_model(model, tmp / out.name)
        sync_tree(tmp)
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == out.name):  # data files first, the .onnx last
            os.replace(f, out.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


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
        return load_model(src), {"path": str(src.resolve()), "sha256": sha256_file(src)}, None, name or _model_name(src)
    if not isinstance(model, (str, Path)) and not is_framework_object(model):
        raise InputError(f"optimize takes an ONNX/PyTorch/TensorFlow model or file, not a {type(model).__name__}",
                         "pass a path or a torch.nn.Module / Keras model")
    imp = export(model, example_inputs, warn=warn, **opts)  # trust_pickle, if given, is one of opts
    if isinstance(model, (str, Path)):
        src = Path(model)
        desc = {"source_path": str(src.resolve()), "source_sha256": _source_sha(src)}
        default_name = _model_name(src)
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


def optimize(model, recipe: str | Path | Recipe, *, data: str | Path | None = None,
             shapes: dict | None = None, output: str | Path = "optkit-out", threads: int = 1,
             version: int | None = None, name: str | None = None, progress: Progress | None = None,
             warn=None, on_pass=None, tolerance: str | None = None, metric: str = "auto", budget: str | None = None,
             max_trials: int = 24, allow_miss: bool = False, force: bool = False,
             eval_data: str | Path | None = None, eval_feeds: int = 512, example_inputs=None,
             import_options: dict | None = None, backends: str | list[str] | None = None,
             serve_isa: str | None = None, cache=None) -> dict:
    """Run ``recipe`` on a model and write ``output/<name>/<version>/`` (model.onnx, compiled/, manifest.json).

    Returns the manifest (with ``artifact`` = the version directory). Validation happens before anything is
    written; a failure leaves no partial artifact behind and never touches the input file.

    ``tolerance`` ('1%', 'abs:0.005') turns on the accuracy-aware search for quantization/pruning/low-rank passes
    (``metric``: auto|top1|cosine|agreement|max_abs; ``budget`` '10m'; ``max_trials``). When nothing passes, the best
    candidate is still saved and ToleranceMiss is raised unless ``allow_miss``. The performance guard (on unless
    ``force``) reverts a lossy pass that made the model slower and, at the end, keeps the input model if the result
    is slower than it.

    ``eval_data`` (same forms as ``data``): the feeds the numerics checks and the tolerance are judged on (up to
    ``eval_feeds``). Without it they are judged on ``data``, the calibration feeds, which flatters the result.

    ``model`` may be an ONNX file, a PyTorch/TensorFlow file or an in-memory ``nn.Module`` / Keras model: those are
    imported first (``example_inputs``, or shapes from ``data``/``shapes``; ``import_options`` are ``export``'s
    keywords: module, dynamic, opset, exporter, dtypes, input_names, output_names, signature, parity_tol, trust_pickle), the
    imported ONNX is kept in the artifact as ``input.onnx`` and the manifest's ``import`` holds exporter, opset and
    parity.

    ``backends`` ('tvm', 'ort,tvm,trt', 'all', or a list) compiles the result for those backends instead of the
    recipe's: the first into ``compiled/`` (the artifact's backend), the others into ``compiled-<name>/``; a
    backend that cannot compile here is recorded in the manifest's ``backends`` with the reason.

    ``cache``: the pass cache (``optkit.cache``): None = ``OPTKIT_CACHE_DIR`` or ``~/.cache/optkit`` (off when
    ``OPTKIT_NO_CACHE`` is set), False = off, a path = a cache rooted there. A pass answered from it is marked
    ``"cached": true`` in the pass log.
    """
    from .measure import parse_backends

    from .checks import check_threads

    warn = warn or (lambda msg: None)
    check_threads(threads)
    if name is not None:
        check_name(name)
    rec = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    targets = parse_backends(",".join(backends) if isinstance(backends, (list, tuple)) else backends, rec.backend)
    backend = get_backend(targets[0])  # a missing primary backend fails here, before any work
    backend_opts = rec.backend_config() if targets[0] == rec.backend else backend.Options()
    passes = rec.build_passes()
    if not (isinstance(model, (str, Path)) and Path(model).suffix.lower() == ".onnx"):
        # a framework model: the import traces with the same data/shapes the pipeline will use
        import_options = {"data": data, "shapes": shapes, **(import_options or {})}
    m_in, input_desc, import_info, name = _load_input(model, name, example_inputs, import_options, warn)
    m, ingest_entry, samples = _ingest(m_in, model, data, shapes, threads)
    inputs, _ = signature(m)
    static_shapes = resolve_shapes(inputs, samples.shapes(), source=f"--data {Path(data).name}" if data else "--shape")
    for w in samples.warnings:
        warn(w)
    evals = get_samples(m, eval_data, shapes) if eval_data else samples
    if tolerance is not None and eval_data is None and not samples.synthetic:
        warn("--tolerance is judged on the calibration data (--data); pass --eval-data with held-out feeds for an "
             "honest judgment")
    from .evaluate import Evaluator

    evaluator = Evaluator.for_backend(targets[0], backend_opts, threads)  # every decision runs the model as served
    cpu = _serve_cpu(serve_isa)
    from .cache import make_cache

    pass_cache = make_cache(cache)
    ctx = Context(samples=samples, shapes=dict(shapes or {}), threads=threads, cpu=cpu,
                  progress=progress or Progress(), warn=warn, evaluator=evaluator, cache=pass_cache)
    tuning = _tuning(m, rec, passes, evals, threads, tolerance, metric, budget, max_trials, force, warn, evaluator,
                     targets[0])
    out_root = Path(output)
    started = time.perf_counter()
    with staged_version(out_root, name, version) as staged:
        if import_info is not None:  # the imported ONNX is the reference that bench compares with
            save_model(m_in, staged.stage / "input.onnx")
            input_desc.update({"path": "input.onnx", "sha256": sha256_file(staged.stage / "input.onnx")})
        if ingest_entry["modified"] and on_pass is not None:
            on_pass(ingest_entry)
        result = Pipeline(passes, ctx, tuning=tuning, eval_samples=evals, max_check_feeds=eval_feeds).run(m, on_pass=on_pass)
        candidates = None
        if rec.candidates:
            from .search.candidates import pick_candidate

            result, candidates = pick_candidate(result, rec.build_candidates(), ctx, tuning, m, on_pass, evals,
                                                eval_feeds)
        if ingest_entry["modified"]:  # a clean model adds no row; its ingest entry is in the manifest's "ingest"
            result.log.insert(0, ingest_entry)
        out_model = staged.stage / "model.onnx"
        save_model(result.model, out_model)
        t0 = time.perf_counter()
        import inspect as _inspect

        extra = {"warn": warn} if "warn" in _inspect.signature(backend.compile).parameters else {}
        compiled = backend.compile(out_model, staged.stage / "compiled", backend_opts, threads, shapes=static_shapes, **extra)
        compiled["seconds"] = round(time.perf_counter() - t0, 3)
        served = _served_check(targets[0], backend, backend_opts, staged.stage, out_model, compiled, threads, static_shapes,
                               result, evals, eval_feeds)
        all_compiled = {targets[0]: compiled}
        for extra in targets[1:]:
            all_compiled[extra] = _compile_extra(extra, rec, out_model, staged.stage / f"compiled-{extra}", threads,
                                                 static_shapes, warn)
        accuracy = _accuracy(result, evals)
        manifest = {
            "schema": MANIFEST_SCHEMA,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "input": {**input_desc, "info": model_info(m_in, static_shapes)},
            "ingest": ingest_entry,
            "import": import_info,
            "output": {"path": "model.onnx", "sha256": sha256_file(out_model), "info": model_info(result.model, static_shapes)},
            "recipe": rec.to_dict(),
            "recipe_source": rec.source,
            "shapes": {k: list(v) for k, v in static_shapes.items()},
            "user_shapes": {k: list(v) for k, v in (shapes or {}).items()},
            "data": {"source": samples.source, "synthetic": samples.synthetic, "feeds": len(samples),
                     "labels": samples.labels is not None, "path": str(Path(data).resolve()) if data else None,
                     "eval": {"source": evals.source, "feeds": min(len(evals), eval_feeds), "labels": evals.labels is not None,
                              "path": str(Path(eval_data).resolve()) if eval_data else None}},
            "pass_log": result.log,
            "accuracy": accuracy,
            "backend": compiled,
            "backends": all_compiled,
            "threads": threads,
            "optimize_seconds": round(time.perf_counter() - started, 3),
            "tolerance": ({"criterion": tuning.criterion.describe(), "metric": tuning.criterion.metric,
                           "default_gate": tuning.default_gate,
                           "passed": not result.missed, "missed_by": result.missed,
                           "judged_on": evals.source + (" (calibration data)" if evals is samples else ""),
                           "trials": tuning.trials_run + sum(c.get("trials", 0) for c in candidates or [])}
                          if tuning.criterion else None),
            "guard": {"enabled": tuning.guard and tuning.probe is not None, "final": result.final_guard},
            "evaluator": evaluator.to_dict(),
            "served_check": served,
            "int8": _int8_record(result.log, serve_isa),
            "candidates": candidates,
            "warnings": list(samples.warnings),
            "cache": ({"root": str(pass_cache.root), **pass_cache.stats()} if pass_cache is not None else None),
            "environment": environment(),
            "reproduce": _reproduce(model, recipe, rec, data, eval_data, tolerance, metric, targets, threads, output),
        }
        seal(staged.stage, manifest)  # the sha256 of every file written above, checked whenever it is used
    manifest["artifact"] = str(staged.path)
    try:
        from .report import write_report

        manifest["report"] = str(write_report(staged.path)[1])
    except Exception as e:  # the artifact is complete without it; say so rather than fail the run
        warn(f"could not write the report ({type(e).__name__}: {e}); `optkit report {staged.path}` retries")
    if result.missed and not allow_miss:
        raise ToleranceMiss(f"tolerance missed ({tuning.criterion.describe()}) by pass(es) {', '.join(result.missed)}; "
                            f"the best candidate is saved at {staged.path}",
                            "raise --tolerance or --budget, or pass --allow-miss to accept it")
    return manifest


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

    lossy = [p.name for p in passes if not p.exact] + [q.name for _, cps in rec.build_candidates() for q in cps
                                                       if not q.exact] if rec.candidates else \
        [p.name for p in passes if not p.exact]
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
    if max_trials < 1:
        raise InputError(f"--max-trials must be >= 1, got {max_trials}", "give a positive number of trials")
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


SERVE_ISAS = ("host", "avx2", "vnni")


def _serve_cpu(serve_isa: str | None) -> dict:
    """The CPU the INT8 types are chosen for: this host (measured), or the ISA the artifact will be served on."""
    if serve_isa in (None, "host"):
        return cpu_features()
    if serve_isa not in SERVE_ISAS:
        raise InputError(f"--serve-isa must be one of {', '.join(SERVE_ISAS)}; got {serve_isa!r}",
                         "host (default), avx2 (no VNNI: 7-bit weights) or vnni (AVX-512/AVX VNNI, AMX)")
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


def compare_backends(man: dict, warn=None) -> dict | None:
    """After ``optimize`` compiled for several backends (``--backend ort,tvm`` / ``all``): bench them side by side on
    the artifact (the backend matrix of ``optkit bench``). None when there was one backend: nothing to compare."""
    if len(man.get("backends") or {}) <= 1:
        return None
    from .measure import bench

    return bench(man["artifact"], backend=",".join(man["backends"]), rounds=3, round_time=0.3, warn=warn)
