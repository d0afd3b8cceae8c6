"""The commands that measure and look: bench, report, inspect, recipes, passes, verify, cache."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from .common import (CONTEXT, Format, FormatOpt, ShapeOpt, _check_format, _examples, _guard, _print_json, _warn, app,
                     err, out)
from .render import print_cache, print_inspect, print_passes, print_recipes, print_verify
from .render_bench import _print_matrix, print_bench, print_report

@app.command(epilog=_examples(
    "optkit bench optkit-out/model/1 --data test.npz",
    "optkit bench optkit-out/model/1 --data test.npz --min-speedup 1.5 --min-top1 0.97   # CI gate: exit 8 on a miss",
    "optkit bench optkit-out/model/1 --backend all --export-times times.json"))
@_guard
def bench(
    target: Path = typer.Argument(..., help="ONNX model file or optkit artifact directory"),
    backend: Optional[str] = typer.Option(None, "--backend", help="ort | tvm | trt, a comma-separated list, or all (default: the artifact's backend)"),
    reference: Optional[Path] = typer.Option(None, "--reference", help="FP32 model to compare with (default: the artifact's input)"),
    data: Optional[Path] = typer.Option(None, "--data", help="feeds (+ 'labels' for top-1); default: the artifact's --data"),
    shape: Optional[List[str]] = ShapeOpt,
    threads: int = typer.Option(1, "--threads", help="intra-op threads (1 = the reported default)"),
    batch: Optional[int] = typer.Option(None, "--batch", help="regroup samples into batches of N along axis 0"),
    rounds: int = typer.Option(5, "--rounds", help="timing rounds (candidate and reference alternate)"),
    round_time: float = typer.Option(0.5, "--round-time", help="seconds per variant per round (at least 20 runs)"),
    json_file: Optional[Path] = typer.Option(None, "--json", help="also write the result to this JSON file"),
    min_speedup: Optional[float] = typer.Option(None, "--min-speedup", help="CI gate: exit 8 unless the median speedup vs the reference is >= X", rich_help_panel="Gates (exit 8 on a miss)"),
    min_cosine: Optional[float] = typer.Option(None, "--min-cosine", help="CI gate: exit 8 unless the cosine vs the reference is >= Y", rich_help_panel="Gates (exit 8 on a miss)"),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="CI gate: exit 8 unless the candidate's top-1 on labels is >= Z (0-1)", rich_help_panel="Gates (exit 8 on a miss)"),
    export_times: Optional[Path] = typer.Option(None, "--export-times", help="write every timed run (ms, in order, per model) to this JSON file"),
    fmt: Format = FormatOpt,
):
    """Latency percentiles and accuracy of a model or artifact, alternating with its FP32 reference.

    Ends with a verdict (ship / ship with caveats / do not ship) and warns when the timing is noisy (CV, round-to-round
    spread) or the machine is loaded. --min-speedup / --min-cosine / --min-top1 make it a CI gate: exit code 7."""
    from ..artifact import write_json
    from ..checks import check_threads
    from ..measure import bench as run
    from ..data import parse_shape_args
    from ..verdict import decide, noise_rules

    fmt = _check_format(fmt)
    check_threads(threads)
    res = run(target, backend=backend, reference=reference, data=data, shapes=parse_shape_args(shape) or None,
              threads=threads, batch=batch, rounds=rounds, round_time=round_time, warn=_warn,
              times=export_times is not None)
    if export_times is not None:
        times = res.pop("times_ms", None) or {}
        write_json(export_times, {"unit": "ms", "protocol": res.get("protocol"), "times_ms": times})
    man = None
    if "rows" not in res:
        from ..measure import resolve_target

        man = resolve_target(target)["manifest"]
        res["verdict"] = decide(man, res)
    if json_file:
        write_json(json_file, res)
    if fmt == "json":
        _print_json(res)
        _bench_gates(res, min_speedup, min_cosine, min_top1)
        return
    if "rows" in res:
        _print_matrix(res)
        ld = res.get("load") or {}
        if ld.get("cores") and max(ld.get("before", 0), ld.get("after", 0)) > 0.75 * ld["cores"]:
            _warn(f"machine loaded while timing: load average {max(ld['before'], ld['after']):.1f} on {ld['cores']} "
                  "core(s): every row carries other processes' noise")
        _bench_gates(res, min_speedup, min_cosine, min_top1)
        return
    for _, text in noise_rules(res):
        _warn(text)
    print_bench(res, man)
    _bench_gates(res, min_speedup, min_cosine, min_top1)


def _bench_gates(res: dict, min_speedup, min_cosine, min_top1) -> None:
    """--min-speedup / --min-cosine / --min-top1: each miss on its own line, then exit 8 (GateFailed)."""
    from ..errors import GateFailed

    if min_speedup is None and min_cosine is None and min_top1 is None:
        return
    rows = [r for r in res.get("rows", []) if r.get("status") == "ok" and r.get("variant") != "reference"] \
        if "rows" in res else [None]
    misses = []
    for r in rows:
        who = f"{r['backend']}: " if r else ""
        sp = (r.get("speedup_vs_reference") if r else res.get("speedup")) or {}
        acc = (r.get("accuracy") if r else res.get("accuracy")) or {}
        cos = (acc.get("vs_reference") or {}).get("cosine")
        top1 = acc.get("top1") if r else acc.get("top1_candidate")
        for flag, bound, value, fmt_ in (("--min-speedup", min_speedup, sp.get("median"), "{:.3f}x"),
                                        ("--min-cosine", min_cosine, cos, "{:.5f}"), ("--min-top1", min_top1, top1, "{:.4f}")):
            if bound is None:
                continue
            if value is None:
                misses.append(f"{who}{flag} {bound:g}: not measured (no reference or no labels)")
            elif value < bound:
                misses.append(f"{who}{flag} {bound:g}: measured " + fmt_.format(value))
    if misses:
        for m in misses:
            err.print(f"[bold red]gate missed:[/] {escape(m)}", markup=True, highlight=False)
        raise GateFailed(f"{len(misses)} bench gate(s) missed", "see the lines above; exit code 7")
    err.print("[green]all bench gates met[/]", markup=True, highlight=False)


@app.command(epilog=_examples(
    "optkit report optkit-out/model/1",
    "optkit report optkit-out/model/1 optkit-out/model/2 -o compare.html"))
@_guard
def report(
    artifacts: List[Path] = typer.Argument(..., help="artifact directories (OUT/<name>/<version>, or OUT/<name> for the latest)"),
    out_file: Optional[Path] = typer.Option(None, "--output", "-o", help="HTML file for a comparison (default: inside the artifact for one, optkit-report.html for several)"),
    out_alias: Optional[Path] = typer.Option(None, "--out", hidden=True),
    fmt: Format = FormatOpt,
):
    """Write report.html (self-contained) and report.json for one artifact, or a comparison of several."""
    from ..artifact import write_json
    from ..errors import InputError
    from ..report import build_report, render_html, write_report

    fmt = _check_format(fmt)
    out_file = out_file or out_alias
    if len(artifacts) == 1 and out_file is None:
        from ..predictor import resolve_artifact

        art, man, _ = resolve_artifact(artifacts[0])
        if man is None:
            raise InputError(f"{artifacts[0]} is a model file, not an artifact", "pass the directory optkit optimize wrote")
        jpath, hpath = write_report(art)
        rep = json.loads(jpath.read_text())
    else:
        rep = build_report(artifacts)
        hpath = out_file or Path("optkit-report.html")
        if hpath.suffix.lower() != ".html":
            raise InputError(f"--output {hpath} should end in .html", "name it report.html or similar")
        hpath.parent.mkdir(parents=True, exist_ok=True)
        hpath.write_text(render_html(rep), encoding="utf-8")
        jpath = hpath.with_suffix(".json")
        write_json(jpath, rep)
    if fmt == "json":
        _print_json(rep)
        return
    print_report(rep, hpath, jpath)


@app.command(epilog=_examples("optkit inspect model.onnx", "optkit inspect model.onnx --shape input=1x3x224x224 --format json"))
@_guard
def inspect(
    model: Path = typer.Argument(..., help="ONNX model file"),
    shape: Optional[List[str]] = ShapeOpt,
    fmt: Format = FormatOpt,
):
    """Signature, opsets, op histogram, parameters, FLOPs and size of an ONNX model."""
    from ..api import inspect as run
    from ..data import parse_shape_args

    fmt = _check_format(fmt)
    info = run(model, parse_shape_args(shape))
    if fmt == "json":
        _print_json(info)
        return
    print_inspect(model, info)


recipes_app = typer.Typer(context_settings=CONTEXT, rich_markup_mode="rich", no_args_is_help=False)
app.add_typer(recipes_app, name="recipes", help="List the built-in recipes; `optkit recipes show NAME` prints one resolved.",
              epilog=_examples("optkit recipes", "optkit recipes show int8-ort", "optkit recipes show my-recipe.yaml"))


@recipes_app.command("show", epilog=_examples("optkit recipes show int8-ort", "optkit recipes show auto-ort --format json"))
@_guard
def recipes_show(
    name: str = typer.Argument(..., help="built-in recipe name or a YAML file"),
    fmt: Format = FormatOpt,
):
    """Print a recipe resolved: every pass option spelled out (defaults included), as optimize will run it."""
    import yaml

    from ..recipe import load_recipe
    from ..verdict import recipe_sha256

    rec = load_recipe(name)
    d = rec.to_dict()
    if _check_format(fmt) == "json":
        _print_json({**d, "source": rec.source, "sha256": recipe_sha256(d)})
        return
    out.print(f"# {escape(rec.source or name)} (resolved; sha256 {recipe_sha256(d)[:12]})", highlight=False)
    out.print(escape(yaml.safe_dump(d, sort_keys=False)), highlight=False)


@recipes_app.callback(invoke_without_command=True)
@_guard
def recipes(ctx: typer.Context, fmt: Format = FormatOpt):
    """List the built-in recipes; `optkit recipes show NAME` prints one resolved."""
    from ..recipe import list_recipes

    if ctx.invoked_subcommand is not None:
        return
    fmt = _check_format(fmt)
    rows = list_recipes()
    if fmt == "json":
        _print_json(rows)
        return
    print_recipes(rows)


@app.command(epilog=_examples("optkit passes", "optkit passes --format json"))
@_guard
def passes(fmt: Format = FormatOpt):
    """List the passes with their options."""
    from ..passes import list_passes

    fmt = _check_format(fmt)
    rows = list_passes()
    if fmt == "json":
        _print_json(rows)
        return
    print_passes(rows)


@app.command()
@_guard
def verify(
    artifacts: List[Path] = typer.Argument(..., help="artifact directories (OUT/<name>/<version>; OUT/<name> checks every version)"),
    fmt: Format = FormatOpt,
):
    """Check every file of an artifact against the sha256 its manifest recorded at optimize (exit 7 on a mismatch).

    optkit.load, bench, report and tune do the same check before they use an artifact."""
    from ..artifact import MANIFEST, versions
    from ..artifact import verify as run
    from ..errors import InputError, IntegrityError

    fmt = _check_format(fmt)
    targets = []
    for a in artifacts:
        if not a.is_dir():
            raise InputError(f"{a} is not an artifact directory", "pass OUT/<name>/<version> as written by optkit optimize")
        if (a / MANIFEST).exists() or not versions(a):
            targets.append(a)
        else:
            targets += [a / str(v) for v in versions(a)]
    results = [run(t) for t in targets]
    if fmt == "json":
        _print_json(results if len(results) > 1 else results[0])
    else:
        for res in results:
            print_verify(res)
    bad = [(res["artifact"], r) for res in results for r in res["files"] if r["status"] != "ok"]
    if bad:
        art, r = bad[0]
        raise IntegrityError(f"{art}: {r['path']} is {r['status']}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                             "do not use this artifact; re-run `optkit optimize` to rebuild it")


@app.command()
@_guard
def cache(
    action: str = typer.Argument("info", help="info (where, entries, size) | clear (delete every entry) | prune (to the size cap)"),
    fmt: Format = FormatOpt,
):
    """The pass cache: reused pass results keyed by model, pass, config, data and versions (OPTKIT_CACHE_DIR)."""
    from ..cache import PassCache
    from ..errors import InputError

    fmt = _check_format(fmt)
    c = PassCache()
    if action == "clear":
        res = {**c.info(), "removed": c.clear()}
        res.update({"entries": 0, "bytes": 0})
    elif action == "prune":
        res = {"removed": c.prune(), **c.info()}
    elif action == "info":
        res = c.info()
    else:
        raise InputError(f"unknown cache action {action!r}", "use info, clear or prune")
    if fmt == "json":
        _print_json(res)
        return
    print_cache(res)
