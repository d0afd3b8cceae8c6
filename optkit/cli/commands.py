"""The commands that build: optimize, import, tune, optimize-many. Each parses its arguments, calls the library
and hands the result to the renderers."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from .common import (DtypeOpt, DynamicOpt, Exporter, ExporterOpt, Format, FormatOpt, InNamesOpt, ModuleOpt,
                     Objective, OpsetOpt, OutNamesOpt, ParityOpt, Sampler, ShapeOpt, SignatureOpt, TrustPickleOpt,
                     _check_format, _check_metric, _examples, _guard, _import_options, _print_json, _RichProgress, _warn,
                     app, err, out)
from .render import (_print_import, _print_plan, _print_verdict, print_accuracy, print_backend_statuses,
                     print_candidates, print_outcome, print_pass_done, print_pass_log, print_signature, print_tolerance,
                     print_trt)
from .render_bench import _print_matrix, _print_tune, print_many, print_many_row, print_trial

@app.command(epilog=_examples(
    "optkit optimize model.onnx -r int8-ort --data calib.npz --eval-data test.npz",
    "optkit optimize model.onnx -r auto-ort --data calib.npz --eval-data test.npz --tolerance 1% --budget 10m",
    "optkit optimize model.onnx -r int8-ort --data calib.npz --dry-run      # print the plan, write nothing",
    "optkit optimize model.pt -r int8-ort --data calib.npz --shape input=1x3x224x224"))
@_guard
def optimize(
    model: Path = typer.Argument(..., help="ONNX model, PyTorch file (.pt/.pth/.pt2), Keras .keras/.h5 or SavedModel dir"),
    recipe: str = typer.Option(..., "--recipe", "-r", help="built-in recipe name (see `optkit recipes`) or a YAML file"),
    data: Optional[Path] = typer.Option(None, "--data", help=".npz file, stacked .npz, or directory of .npz feeds (+ optional 'labels')"),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="held-out feeds for the numerics checks and --tolerance (default: --data)"),
    shape: Optional[List[str]] = ShapeOpt,
    output: Path = typer.Option(Path("optkit-out"), "--output", "-o", help="artifacts go to OUTPUT/<model-name>/<version>/"),
    threads: int = typer.Option(1, "--threads", help="intra-op threads for checks and compilation"),
    version: Optional[int] = typer.Option(None, "--version", help="artifact version (default: next free)"),
    name: Optional[str] = typer.Option(None, "--name", help="artifact name (default: the model file's stem)"),
    tolerance: Optional[str] = typer.Option(None, "--tolerance", help="accuracy the lossy passes may lose: 1% (relative) or abs:0.005; turns on the search"),
    metric: str = typer.Option("auto", "--metric", callback=_check_metric, help="auto (a metric per output: argmax agreement/top-1 + cosine for class scores, pooled per-example cosine for token states, IoU for probability maps, per-step agreement for sequences) | top1 | agreement | cosine | max_abs | iou | step_agreement | OUTPUT=KIND,... (ignore leaves one out)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="time budget for the search, e.g. 10m"),
    max_trials: int = typer.Option(24, "--max-trials", help="trials at most for the search"),
    allow_miss: bool = typer.Option(False, "--allow-miss", help="exit 0 even when no candidate meets --tolerance"),
    force: bool = typer.Option(False, "--force", help="keep passes that made the model slower (turns the performance guard off)"),
    backend: Optional[str] = typer.Option(None, "--backend", help="compile for these backends instead of the recipe's: tvm, ort,tvm,trt or all (then bench them side by side)"),
    serve_isa: str = typer.Option("host", "--serve-isa", help="INT8 types for the CPU the model will be served on: host (measured here) | avx2 (no VNNI: 7-bit weights) | vnni"),
    module: Optional[str] = ModuleOpt,
    dtype: Optional[List[str]] = DtypeOpt,
    dynamic: Optional[str] = DynamicOpt,
    opset: Optional[int] = OpsetOpt,
    exporter: Exporter = ExporterOpt,
    input_names: Optional[str] = InNamesOpt,
    output_names: Optional[str] = OutNamesOpt,
    signature: Optional[str] = SignatureOpt,
    parity_tol: str = ParityOpt,
    trust_pickle: bool = TrustPickleOpt,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan (passes and options, backend, data, gate, "
                                 "what would be written) and exit 0 without writing anything"),
    no_cache: bool = typer.Option(False, "--no-cache", help="recompute every pass (the pass cache is OPTKIT_CACHE_DIR or ~/.cache/optkit; see `optkit cache info`)"),
    fmt: Format = FormatOpt,
):
    """Run a recipe's passes on MODEL, check numerics after each, compile for the backend, write a versioned artifact.

    A PyTorch or TensorFlow MODEL is imported to ONNX first (with a parity check), as `optkit import` does."""
    from ..api import optimize as run
    from ..artifact import check_name
    from ..checks import check_threads
    from ..data import parse_shape_args

    fmt = _check_format(fmt)
    check_threads(threads)
    if name is not None:
        check_name(name)
    shapes = parse_shape_args(shape)
    imp_opts = _model_import_options(model, module, dtype, dynamic, opset, exporter, input_names, output_names,
                                     signature, parity_tol, trust_pickle)
    if dry_run:
        from ..plan import plan as make_plan

        p = make_plan(model, recipe, data=data, eval_data=eval_data, shapes=shapes, output=output, version=version,
                      name=name, tolerance=tolerance, metric=metric, budget=budget, max_trials=max_trials, force=force,
                      backends=backend, threads=threads)
        _print_json(p) if fmt == "json" else _print_plan(p)
        return
    man = run(model, recipe, data=data, shapes=shapes, output=output, threads=threads, version=version, name=name,
              progress=_RichProgress(), warn=_warn, on_pass=print_pass_done if fmt == "table" else None, tolerance=tolerance, metric=metric, budget=budget,
              max_trials=max_trials, allow_miss=allow_miss, force=force, eval_data=eval_data, import_options=imp_opts,
              backends=backend, serve_isa=serve_isa, cache=False if no_cache else None)
    if fmt == "json":
        _print_json(man)
        return
    _print_optimize(man, model.name)


def _model_import_options(model: Path, module, dtype, dynamic, opset, exporter, input_names, output_names,
                          signature, parity_tol, trust_pickle) -> dict | None:
    """The import options for a PyTorch/TensorFlow MODEL; for an ONNX one none may be given."""
    if model.suffix.lower() != ".onnx":
        return _import_options(module, dtype, dynamic, opset, exporter, input_names, output_names, signature,
                               parity_tol, trust_pickle)
    if module or dtype or dynamic or opset or exporter != Exporter.auto or input_names or output_names or signature:
        from ..errors import InputError

        raise InputError(f"{model.name} is already ONNX: the import options (--module, --dynamic, --opset, ...) do "
                         "not apply", "drop them, or pass the PyTorch/TensorFlow model instead")
    return None


def _print_optimize(man: dict, model_name: str) -> None:
    from ..api import compare_backends
    from ..verdict import decide

    if man.get("import"):
        _print_import(man["import"])
    print_pass_log(man, model_name)
    print_accuracy(man)
    print_tolerance(man)
    print_candidates(man)
    print_outcome(man)
    matrix = compare_backends(man, warn=_warn)  # optimize for several backends: api benches them side by side
    if matrix is not None:
        print_backend_statuses(man)
        _print_matrix(matrix)
    print_trt(man)
    _print_verdict(decide(man, None))


@app.command("import", epilog=_examples(
    "optkit import model.pt -o model.onnx --data feeds.npz",
    "optkit import weights.pth --module mypkg.models:build --shape input=1x3x224x224 -o model.onnx",
    "optkit import saved_model_dir/ -o model.onnx"))
@_guard
def import_(
    model: Path = typer.Argument(..., help="PyTorch file (.pt/.pth TorchScript, pickled model or state_dict; .pt2), Keras .keras/.h5, or SavedModel dir"),
    out_file: Optional[Path] = typer.Option(None, "--output", "-o", help="the ONNX file to write (required)"),
    out_alias: Optional[Path] = typer.Option(None, "--out", hidden=True),
    data: Optional[Path] = typer.Option(None, "--data", help=".npz feeds to trace and check parity with (names = input names)"),
    shape: Optional[List[str]] = ShapeOpt,
    module: Optional[str] = ModuleOpt,
    dtype: Optional[List[str]] = DtypeOpt,
    dynamic: Optional[str] = DynamicOpt,
    opset: Optional[int] = OpsetOpt,
    exporter: Exporter = ExporterOpt,
    input_names: Optional[str] = InNamesOpt,
    output_names: Optional[str] = OutNamesOpt,
    signature: Optional[str] = SignatureOpt,
    parity_tol: str = ParityOpt,
    trust_pickle: bool = TrustPickleOpt,
    fmt: Format = FormatOpt,
):
    """Export a PyTorch or TensorFlow model to ONNX and check ONNX Runtime against the framework on the same inputs."""
    from ..api import export
    from ..data import parse_shape_args

    fmt = _check_format(fmt)
    out_file = out_file or out_alias
    if out_file is None:
        from ..errors import InputError

        raise InputError("optkit import needs the ONNX file to write", "give it with -o/--output FILE.onnx")
    opts = _import_options(module, dtype, dynamic, opset, exporter, input_names, output_names, signature, parity_tol,
                           trust_pickle)
    imp = export(model, None, out_file, data=data, shapes=parse_shape_args(shape), warn=_warn, **opts)
    if fmt == "json":
        _print_json(imp.info)
        return
    _print_import(imp.info)
    print_signature(imp.info, f"{out_file}")
    out.print(f"wrote [bold]{escape(str(out_file))}[/]  (next: optkit optimize {escape(str(out_file))} --recipe int8-ort)",
              markup=True, highlight=False)


@app.command(epilog=_examples(
    "optkit tune model.onnx --data calib.npz --slo 'p99<20ms'",
    "optkit tune optkit-out/model/1 --backend ort,tvm --precisions fp32,int8 --objective latency --budget 10m",
    "optkit tune model.onnx --sampler grid --threads 1,2 --batch 1,8    # measure every point"))
@_guard
def tune(
    model: Path = typer.Argument(..., help="ONNX model, or an artifact directory (its input model is the FP32 source and reference)"),
    backends: str = typer.Option("ort", "--backend", help="comma-separated: ort, tvm, trt (unavailable ones are listed, not searched)"),
    backends_alias: Optional[str] = typer.Option(None, "--backends", hidden=True),
    precisions: str = typer.Option("fp32,int8", "--precisions", help="comma-separated: fp32, fp16, int8"),
    threads: Optional[str] = typer.Option(None, "--threads", help="intra-op thread counts, e.g. 1,2,4 (default 1, 2, 4, ... up to the cores)"),
    batch: Optional[str] = typer.Option(None, "--batch", help="batch sizes, e.g. 1,2,4,8,16,32 (the default; a fixed-batch model: its own)"),
    slo: Optional[str] = typer.Option(None, "--slo", help="bounds a spec must meet: 'p99<20ms', 'p50<=5ms', 'throughput>=500' (comma-separated)"),
    objective: Objective = typer.Option(Objective.throughput, "--objective", case_sensitive=False, help="throughput = max items/s, latency = min p99, cost = max items/s per core"),
    tolerance: str = typer.Option("1%", "--tolerance", help="accuracy a variant may lose vs the input model (top-1 with labels, else cosine)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="'30', '30 trials', '25%', '10m' or '30 trials,10m' (default 25% of the space, at least 6)"),
    sampler: Sampler = typer.Option(Sampler.auto, "--sampler", case_sensitive=False, help="auto = gp when torch is installed, else tpe; grid = measure every point (no optuna needed)"),
    seed: int = typer.Option(0, "--seed", help="sampler seed"),
    data: Optional[Path] = typer.Option(None, "--data", help="feeds for calibration and timing (+ 'labels'); default: the artifact's, else synthetic"),
    eval_data: Optional[Path] = typer.Option(None, "--eval-data", help="held-out feeds the tolerance is judged on (default: --data)"),
    shape: Optional[List[str]] = ShapeOpt,
    output: Path = typer.Option(Path("optkit-out"), "--output", "-o", help="for an ONNX model: files go to OUTPUT/<name>/tune/"),
    executor: str = typer.Option("local", "--executor", help="where trials run: local (a child process per trial) | ray (a local Ray cluster: one trial slot) | ray:ADDRESS (an existing cluster; one trial at a time per node advertising a 'trial_slot' resource)"),
    workers: int = typer.Option(1, "--workers", help="trials at once; > 1 shares cores and distorts every timing (ray: the cluster's trial slots)"),
    rounds: int = typer.Option(3, "--rounds", help="timing rounds per trial"),
    round_time: float = typer.Option(0.3, "--round-time", help="seconds per round (at least 10 runs)"),
    trial_timeout: float = typer.Option(120.0, "--trial-timeout", help="seconds before a trial's child is killed (recorded as failed)"),
    fresh: bool = typer.Option(False, "--fresh", help="measure again even points in the trial cache"),
    fmt: Format = FormatOpt,
):
    """Search backend × precision × threads × batch for the best serving spec under an SLO (Bayesian optimization;
    a fraction of the grid is measured). Writes serving.json and serving.svg (throughput vs p99, Pareto front)."""
    from ..data import parse_shape_args
    from ..serving import tune as run

    fmt = _check_format(fmt)
    backends = backends_alias or backends
    objective, sampler = objective.value, sampler.value
    res = run(model, backends=backends, precisions=precisions, threads=threads, batches=batch, slo=slo,
              objective=objective.lower(), tolerance=tolerance, budget=budget, seed=seed, output=output, data=data,
              eval_data=eval_data, shapes=parse_shape_args(shape) or None, executor=executor, workers=workers,
              sampler=sampler.lower(), rounds=rounds, round_time=round_time, trial_timeout=trial_timeout, fresh=fresh,
              warn=_warn, on_trial=None if fmt == "json" else print_trial,
              on_status=lambda m: err.print(f"[dim]{escape(m)}[/]", markup=True, highlight=False))
    if fmt == "json":
        _print_json(res)
        return
    _print_tune(res)


@app.command("optimize-many")
@_guard
def optimize_many(
    models: Path = typer.Argument(..., help="a directory of .onnx files (NAME.npz beside NAME.onnx is its --data) or a text file: one 'MODEL [DATA]' per line"),
    recipe: str = typer.Option(..., "--recipe", "-r", help="built-in recipe name or a YAML file, for every model"),
    output: Path = typer.Option(Path("optkit-out"), "--output", "-o", help="artifacts go to OUTPUT/<model-name>/<version>/"),
    executor: str = typer.Option("local", "--executor", help="local (child processes on this machine) | ray (a local Ray cluster) | ray:ADDRESS (an existing one; paths must be reachable from its nodes)"),
    threads: int = typer.Option(1, "--threads", help="intra-op threads per model (a Ray task requests that many CPUs)"),
    jobs: int = typer.Option(1, "--jobs", help="local executor: models at once"),
    data: Optional[Path] = typer.Option(None, "--data", help="feeds for models that have none of their own"),
    tolerance: Optional[str] = typer.Option(None, "--tolerance", help="as for optimize"),
    no_cache: bool = typer.Option(False, "--no-cache", help="recompute every pass"),
    timeout: float = typer.Option(3600.0, "--timeout", help="seconds per model before its process is killed (a failed row)"),
    fmt: Format = FormatOpt,
):
    """Optimize many models with one recipe, each in a process of its own (a crash is one failed row); a summary
    table at the end and OUTPUT/fleet-<time>.json."""
    from ..fleet import optimize_many as run

    fmt = _check_format(fmt)
    res = run(models, recipe, output=output, executor=executor, threads=threads, data=data, jobs=jobs,
              tolerance=tolerance, no_cache=no_cache, timeout=timeout,
              on_done=None if fmt == "json" else print_many_row,
              on_start=lambda i: err.print(f"[dim]Ray cluster: {i.get('cluster_cpus'):g} CPUs[/]", markup=True,
                                           highlight=False) if fmt != "json" else None)
    if fmt == "json":
        _print_json(res)
    else:
        print_many(res)
    if res["failed"] or res["missed"]:
        raise typer.Exit(1)
