"""The `optkit` command: parses arguments, calls the library, renders with rich. Nothing else lives here."""
from __future__ import annotations

import functools
import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .report import fmt_bytes, fmt_count, fmt_diff

CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, context_settings=CONTEXT,
                  rich_markup_mode="rich",
                  help="Offline inference optimization: ONNX passes, INT8/FP16 quantization, backends, measured latency and accuracy.")
# Piped output (CI logs, files) gets a wide console instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
# soft_wrap: an error stays one line however long it is
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160, soft_wrap=True)
_DEBUG = False



class Format(str, Enum):
    table = "table"
    json = "json"


class Exporter(str, Enum):
    auto = "auto"
    dynamo = "dynamo"
    torchscript = "torchscript"
    tf2onnx = "tf2onnx"


class Objective(str, Enum):
    throughput = "throughput"
    latency = "latency"
    cost = "cost"


class Sampler(str, Enum):
    auto = "auto"
    gp = "gp"
    tpe = "tpe"
    random = "random"
    grid = "grid"


def _check_metric(value: str) -> str:
    """--metric stays a string (OUTPUT=KIND lists) but is validated before any work."""
    from .errors import InputError
    from .fidelity import parse_metric

    try:
        parse_metric(value)
    except InputError as e:
        raise typer.BadParameter(str(e)) from None
    return value


def _examples(*lines: str) -> str:
    """An 'Examples' block for a command's help (rich markup mode keeps the lines)."""
    return "[bold]Examples[/]\n\n" + "\n\n".join(f"  [cyan]{escape(x)}[/]" for x in lines)


FormatOpt = typer.Option(Format.table, "--format", help="table (rich) or json", case_sensitive=False)
ShapeOpt = typer.Option(None, "--shape", help="static shape for an input, NAME=1x3x224x224 (repeatable)")
_IMPORT = "Import (PyTorch / TensorFlow models)"
ModuleOpt = typer.Option(None, "--module", help="pkg.mod:factory or file.py:factory that builds the model a state_dict belongs to", rich_help_panel=_IMPORT)
DtypeOpt = typer.Option(None, "--dtype", help="dtype of an input given by --shape, NAME=int64 (repeatable; default float32)", rich_help_panel=_IMPORT)
DynamicOpt = typer.Option(None, "--dynamic", help="dynamic axes: batch, seq, NAME:AXIS[=label], comma-separated; none = static (default batch)", rich_help_panel=_IMPORT)
OpsetOpt = typer.Option(None, "--opset", help="ONNX opset (default: 18 dynamo, 17 TorchScript/tf2onnx)", rich_help_panel=_IMPORT)
ExporterOpt = typer.Option(Exporter.auto, "--exporter", case_sensitive=False, help="auto = dynamo, then TorchScript", rich_help_panel=_IMPORT)
InNamesOpt = typer.Option(None, "--input-names", help="comma-separated input names, in forward() order", rich_help_panel=_IMPORT)
OutNamesOpt = typer.Option(None, "--output-names", help="comma-separated output names", rich_help_panel=_IMPORT)
SignatureOpt = typer.Option(None, "--signature", help="SavedModel signature key (default serving_default)", rich_help_panel=_IMPORT)
ParityOpt = typer.Option("1e-3,1e-4", "--parity-tol", help="RTOL,ATOL: ONNX Runtime must match the framework within ATOL + RTOL*max|ref|", rich_help_panel=_IMPORT)
TrustPickleOpt = typer.Option(False, "--trust-pickle", help="allow files whose loading runs code from the file (a torch.save'd whole model, a .pt2 program, a Keras Lambda layer); only for files you trust", rich_help_panel=_IMPORT)


def _import_options(module, dtype, dynamic, opset, exporter, input_names, output_names, signature, parity_tol,
                    trust_pickle: bool = False) -> dict:
    from .errors import InputError
    from .importers import parse_dtypes

    try:
        rtol, atol = (float(x) for x in parity_tol.split(","))
    except ValueError:
        raise InputError(f"bad --parity-tol {parity_tol!r}", "use RTOL,ATOL, e.g. --parity-tol 1e-3,1e-4") from None
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    opts = {"module": module, "dtypes": parse_dtypes(dtype), "dynamic": dynamic, "opset": opset,
            "exporter": getattr(exporter, "value", exporter).lower(), "input_names": split(input_names), "output_names": split(output_names),
            "signature": signature, "parity_tol": (rtol, atol), "trust_pickle": trust_pickle}
    return opts


def _guard(fn):
    """One actionable line and a non-zero exit for errors; the traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .errors import OptkitError

        try:
            return fn(*args, **kwargs)
        except OptkitError as e:
            if _DEBUG:
                raise
            err.print(f"[bold red]error:[/] {escape(str(e))}", markup=True, highlight=False)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:  # Ctrl-C, and SIGTERM/SIGHUP (main() turns them into this)
            if _DEBUG:
                raise
            from .artifact import committed

            what = (f"{committed[-1]} was complete and is kept" if committed else "nothing written")
            err.print(f"[bold red]interrupted[/], {escape(what)}", markup=True, highlight=False)
            raise typer.Exit(130)
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # an optkit bug or a library failure we did not anticipate
            if _DEBUG:
                raise
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            err.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(first)} (rerun with --debug for the traceback)",
                      markup=True, highlight=False)
            raise typer.Exit(1)

    return wrapper


def _warn(msg: str) -> None:
    logging.getLogger("optkit").warning(msg)


def _check_format(fmt) -> str:
    from .errors import InputError

    fmt = getattr(fmt, "value", fmt).lower()
    if fmt not in ("table", "json"):
        raise InputError(f"--format must be table or json, got {fmt!r}", "use --format table or --format json")
    return fmt


def _print_json(data) -> None:
    from .artifact import _jsonable

    sys.stdout.write(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"optkit {__version__}", highlight=False)
        raise typer.Exit()


class _RichLogHandler(logging.Handler):
    """The 'optkit' logger on stderr: progress lines dim, warnings yellow, errors red (rich renders around live bars)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = escape(record.getMessage())
            if record.levelno >= logging.ERROR:
                err.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False)
            elif record.levelno >= logging.WARNING:
                err.print(f"[yellow]warning:[/] {msg}", markup=True, highlight=False)
            else:
                err.print(f"[dim]{msg}[/]", markup=True, highlight=False)
        except Exception:  # logging must never take the command down
            self.handleError(record)


def setup_logging(quiet: bool = False, verbose: int = 0, log_file: Path | None = None) -> None:
    """Route logging.getLogger('optkit') to stderr through rich (-q: warnings only; -v: debug) and, with
    --log-file, everything with timestamps to that file."""
    log = logging.getLogger("optkit")
    for h in list(log.handlers):
        if isinstance(h, (_RichLogHandler, logging.FileHandler)):
            log.removeHandler(h)
    h = _RichLogHandler()
    h.setLevel(logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO)
    log.addHandler(h)
    level = h.level
    if log_file is not None:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(fh)
        level = logging.DEBUG
    log.setLevel(level)
    log.propagate = False  # rendered here; a root handler would print every line twice

    def showwarning(message, category, filename, lineno, file=None, line=None):
        # Python warnings from the libraries underneath (numpy, onnxruntime, torch): one line each, no source echo
        log.warning("%s (%s, from %s:%d)", str(message).strip().splitlines()[0] if str(message).strip() else "",
                    category.__name__, Path(filename).name, lineno)

    import warnings

    warnings.showwarning = showwarning


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print optkit's version and exit"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="only warnings and errors on stderr (no progress lines)"),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="more detail on stderr (debug log lines)"),
    log_file: Optional[Path] = typer.Option(None, "--log-file", help="also write every log line, with timestamps, to this file"),
    debug: bool = typer.Option(False, "--debug", help="show the Python traceback of an error (anywhere on the line)"),
):
    """Offline inference optimization: ONNX passes, INT8/FP16 quantization, backends, measured latency and accuracy.

    Progress and warnings go to stderr through the standard [bold]logging.getLogger("optkit")[/] (library users
    configure it like any other logger); results go to stdout."""
    global _DEBUG
    _DEBUG = _DEBUG or debug
    setup_logging(quiet, verbose, log_file)


class _RichProgress:
    """optkit.passes.Progress backed by a rich progress bar on stderr."""

    def __init__(self):
        self._p = None
        self._task = None

    def start(self, description, total=None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if not err.is_terminal:  # piped (CI logs, files): the log lines say what runs; a bar would leave blank lines
            return

        self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           console=err, transient=True)
        self._p.start()
        self._task = self._p.add_task(description, total=total)

    def advance(self, n=1):
        if self._p is not None:
            self._p.advance(self._task, n)

    def stop(self):
        if self._p is not None:
            self._p.stop()
            self._p = None


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
    from .api import optimize as run
    from .artifact import check_name
    from .checks import check_threads
    from .data import parse_shape_args

    fmt = _check_format(fmt)
    check_threads(threads)
    if name is not None:
        check_name(name)
    shapes = parse_shape_args(shape)
    imp_opts = None
    if model.suffix.lower() != ".onnx":
        imp_opts = _import_options(module, dtype, dynamic, opset, exporter, input_names, output_names, signature, parity_tol,
                                   trust_pickle)
    elif module or dtype or dynamic or opset or exporter != Exporter.auto or input_names or output_names or signature:
        from .errors import InputError

        raise InputError(f"{model.name} is already ONNX: the import options (--module, --dynamic, --opset, ...) do not apply",
                         "drop them, or pass the PyTorch/TensorFlow model instead")
    if dry_run:
        from .plan import plan as make_plan

        p = make_plan(model, recipe, data=data, eval_data=eval_data, shapes=shapes, output=output, version=version,
                      name=name, tolerance=tolerance, metric=metric, budget=budget, max_trials=max_trials, force=force,
                      backends=backend, threads=threads)
        _print_json(p) if fmt == "json" else _print_plan(p)
        return
    progress = _RichProgress()

    def on_pass(entry):
        if fmt == "table":
            mark = "[green]✓[/]" if entry["status"] == "ok" else "[yellow]↶ reverted[/]"
            err.print(f"{mark} {entry['pass']}: {entry['nodes_before']} → {entry['nodes_after']} nodes, "
                      f"{entry['seconds']:.2f} s" + (f", {len(entry['trials'])} trials" if entry.get("trials") else ""),
                      markup=True, highlight=False)

    man = run(model, recipe, data=data, shapes=shapes, output=output, threads=threads, version=version, name=name,
              progress=progress, warn=_warn, on_pass=on_pass, tolerance=tolerance, metric=metric, budget=budget,
              max_trials=max_trials, allow_miss=allow_miss, force=force, eval_data=eval_data, import_options=imp_opts,
              backends=backend, serve_isa=serve_isa, cache=False if no_cache else None)
    if fmt == "json":
        _print_json(man)
        return
    if man.get("import"):
        _print_import(man["import"])
    t = Table(title=f"optkit optimize · {man['recipe']['name']} · {model.name}", title_justify="left")
    for col in ("pass", "nodes", "size", "time", "vs previous: max-abs / cosine / top-1 agree", "vs input", "top-1"):
        t.add_column(col)
    for e in man["pass_log"]:
        t.add_row(e["pass"] + ("" if e["status"] == "ok" else f" ({e['status']})") + (" (cached)" if e.get("cached") else ""), f"{e['nodes_before']} → {e['nodes_after']}",
                  f"{fmt_bytes(e['bytes_before'])} → {fmt_bytes(e['bytes_after'])}", f"{e['seconds']:.2f} s",
                  fmt_diff(e.get("vs_previous")), fmt_diff(e.get("vs_input")), f"{e['top1']:.2%}" if "top1" in e else "-")
    out.print(t)
    for e in man["pass_log"]:
        for note in e["notes"]:
            out.print(f"  [bold]{e['pass']}[/]: {note}", markup=True, highlight=False)
    acc = man["accuracy"]
    if acc:
        line = f"vs input model on {acc['feeds']} feed(s) of {escape(data_label(man))}: " \
               f"max-abs {acc['vs_input']['max_abs']:.3g}, cosine {acc['vs_input']['cosine']:.5f}"
        if "top1_agreement" in acc["vs_input"]:
            line += f", top-1 agreement {acc['vs_input']['top1_agreement']:.2%}"
        if "top1_input" in acc:
            line += f"; top-1 {acc['top1_input']:.2%} → {acc['top1_output']:.2%} ({acc['top1_delta']:+.2%})"
        out.print(line, highlight=False)
    tol = man.get("tolerance")
    if tol:
        gate = "accuracy gate (default)" if tol.get("default_gate") else "tolerance"
        out.print(f"{gate} {tol['criterion']}: {'[green]met[/]' if tol['passed'] else '[red]MISSED[/] by ' + ', '.join(tol['missed_by'])}"
                  f" ({tol['trials']} trials, judged on {escape(tol['judged_on'])})", markup=True, highlight=False)
        judged = next((e["tolerance"] for e in reversed(man["pass_log"]) if "tolerance" in e), None)
        for name, o in ((judged or {}).get("outputs") or {}).items():
            checks = ", ".join(f"{c['metric']} {c['value']:.4g} ({'>=' if not c['metric'].startswith('max_') else '<='} "
                               f"{c['threshold']:.4g})" for c in o["checks"])
            out.print(f"  output {escape(name)} judged as {o['kind']}: {checks}", highlight=False)
        ev = man.get("evaluator") or {}
        if ev.get("describe"):
            out.print(f"  judged on: {escape(ev['describe'])}", highlight=False)
    for c in man.get("candidates") or []:
        if "skipped" in c:
            out.print(f"  candidate {c['candidate']}: skipped ({c['skipped']})", highlight=False)
            continue
        speed = f"{c['speedup_vs_input']:.2f}x" if c["speedup_vs_input"] is not None else "-"
        if "error" in c:
            out.print(f"  candidate {c['candidate']}: failed ({escape(c['error'])}); the other candidates went on",
                      highlight=False)
            continue
        out.print(f"  candidate {c['candidate']}: {speed} vs input, {'within' if c['passed'] else 'MISSES'} tolerance"
                  + (f", guard reverted {', '.join(c['reverted'])}" if c["reverted"] else "") + (" ← chosen" if c["chosen"] else ""),
                  highlight=False)
    final = (man.get("guard") or {}).get("final")
    if final:
        iv = f" (95% interval {final['interval'][0]:.2f}-{final['interval'][1]:.2f}x, {final['verdict']})" \
            if final.get("interval") else ""
        out.print(f"performance guard: optimized model {final['speedup_vs_input']:.2f}x vs input{iv}"
                  + ("" if final["kept"] else f" - {final['note']}"), highlight=False)
    i, o = man["input"]["info"], man["output"]["info"]
    out.print(f"size {fmt_bytes(i['bytes'])} → {fmt_bytes(o['bytes'])}, nodes {i['nodes']} → {o['nodes']}, "
              f"optimize {man['optimize_seconds']:.1f} s", highlight=False)
    out.print(f"artifact: [bold]{man['artifact']}[/]  (measure it: optkit bench {man['artifact']})", markup=True, highlight=False)
    if man.get("report"):
        out.print(f"report: {man['report']}", highlight=False)
    if len(man.get("backends") or {}) > 1:
        from .measure import bench as run_bench

        for bname, info in man["backends"].items():
            if info.get("status") in ("unavailable", "failed"):
                out.print(f"  backend {bname}: {info['status']}: {escape(str(info.get('reason')))}", highlight=False)
        res = run_bench(man["artifact"], backend=",".join(man["backends"]), rounds=3, round_time=0.3, warn=_warn)
        _print_matrix(res)
    be = man.get("backend") or {}
    if be.get("backend") == "trt":
        if be.get("engine_built"):
            out.print(f"TensorRT engine: {man['artifact']}/compiled/{be['engine']} ({be.get('precision')}, built in "
                      f"{be.get('build_seconds', 0):.1f} s)  (measure it: optkit bench {man['artifact']} --backend trt)",
                      highlight=False)
        else:
            out.print(f"[yellow]no TensorRT engine was built[/]: {escape(str(be.get('reason')))}", markup=True, highlight=False)
            out.print(f"  the TensorRT-ready ONNX and the exact build command are in {man['artifact']}/compiled/ "
                      "(trtexec.sh, build_engine.txt): run it where TensorRT >= 10 and an NVIDIA GPU exist", highlight=False)
    from .verdict import decide

    _print_verdict(decide(man, None))


def data_label(man: dict) -> str:
    """Which data judged optimize's accuracy numbers: held-out (--eval-data) or the calibration data itself."""
    from .verdict import judged_data_label

    return judged_data_label(man.get("data"))


_VERDICT_STYLE = {"ship": "bold green", "ship with caveats": "bold yellow", "do not ship": "bold red"}
_LEVEL_MARK = {"ok": "[green]✓[/]", "caveat": "[yellow]![/]", "block": "[red]✗[/]"}


def _print_verdict(v: dict) -> None:
    """The verdict, last in the terminal: one line per reason, then how to reproduce."""
    out.print(f"verdict: [{_VERDICT_STYLE[v['verdict']]}]{v['verdict'].upper()}[/]", markup=True, highlight=False)
    for r in v["reasons"]:
        out.print(f"  {_LEVEL_MARK[r['level']]} {escape(r['text'])}", markup=True, highlight=False)
    rp = v.get("reproduce")
    if rp:
        out.print(f"  reproduce: {escape(rp['command'])}  (optkit {rp['optkit_version']}, recipe sha256 "
                  f"{rp['recipe_sha256'][:12]})", markup=True, highlight=False)


def _print_plan(p: dict) -> None:
    out.print(f"[bold]plan[/] (dry run: nothing was written) · recipe {escape(p['recipe'])} · backend {escape(', '.join(p['backends']))}",
              markup=True, highlight=False)
    t = Table(title="passes, in order", title_justify="left")
    for col in ("#", "pass", "exact", "options"):
        t.add_column(col, overflow="fold")
    for i, x in enumerate(p["passes"], 1):
        t.add_row(str(i), escape(x["pass"]) + (f" [dim]({escape(x['candidate'])})[/]" if x.get("candidate") else ""),
                  "yes" if x["exact"] else "no", escape(", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in x["options"].items()) or "-"))
    out.print(t)
    for k in ("model", "calibration", "judged_on", "gate", "search", "guard", "writes"):
        out.print(f"  {k.replace('_', ' ')}: {escape(str(p[k]))}", highlight=False)
    for w in p.get("warnings", []):
        _warn(w)


def _print_import(info: dict) -> None:
    p = info["parity"]
    dyn = p.get("dynamic_check")
    failed = [a for a in info["attempts"] if not a.get("parity")]
    out.print(f"imported {escape(info['source'])} with {info['exporter']} (opset {info['opset']}, {info['seconds']:.1f} s); "
              f"parity vs {info['framework']} on {p['feeds']} feed(s) ({escape(p['feeds_source'])}): max-abs {p['max_abs']:.3g}, "
              f"cosine {p['cosine']:.7f}"
              + (f"; dynamic axes checked at {dyn['shapes']}: max-abs {dyn['max_abs']:.3g}" if dyn else ""),
              highlight=False)
    for a in failed:
        out.print(f"  {a['exporter']} rejected: {escape(a.get('error', ''))}", highlight=False)


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
    from .api import export
    from .data import parse_shape_args

    fmt = _check_format(fmt)
    out_file = out_file or out_alias
    if out_file is None:
        from .errors import InputError

        raise InputError("optkit import needs the ONNX file to write", "give it with -o/--output FILE.onnx")
    opts = _import_options(module, dtype, dynamic, opset, exporter, input_names, output_names, signature, parity_tol,
                           trust_pickle)
    imp = export(model, None, out_file, data=data, shapes=parse_shape_args(shape), warn=_warn, **opts)
    if fmt == "json":
        _print_json(imp.info)
        return
    _print_import(imp.info)
    sig = Table(title=f"{out_file}", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        sig.add_column(col)
    for kind in ("inputs", "outputs"):
        for s in imp.info[kind]:
            sig.add_row(kind[:-1], s["name"], s["dtype"], escape("[" + ", ".join(str(d) for d in s["shape"]) + "]"))
    out.print(sig)
    out.print(f"wrote [bold]{escape(str(out_file))}[/]  (next: optkit optimize {escape(str(out_file))} --recipe int8-ort)",
              markup=True, highlight=False)


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
    from .artifact import write_json
    from .checks import check_threads
    from .measure import bench as run
    from .data import parse_shape_args
    from .verdict import decide, noise_rules

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
        from .measure import resolve_target

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
    t = Table(title=f"optkit bench · {res['backend']} · {res['threads']} thread(s) · batch {res['batch']}", title_justify="left")
    for col in ("model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "CV", "items/s", "load ms", "cold ms", "top-1"):
        t.add_column(col, justify="left" if col == "model" else "right")
    acc = res["accuracy"]
    for role in ("reference", "candidate"):
        if role not in res["latency"]:
            continue
        s = res["latency"][role]
        label = Path(res["model" if role == "candidate" else "reference"]).name
        t.add_row(f"{role}: {label}", f"{s['p50_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s['mean_ms']:.3f}",
                  f"{s['cv']:.1%}", f"{s['throughput']:.1f}", f"{res['load_ms'][role]:.0f}", f"{res['cold_run_ms'][role]:.1f}",
                  f"{acc[f'top1_{role}']:.2%}" if f"top1_{role}" in acc else "-")
    out.print(t)
    if "speedup" in res:
        sp = res["speedup"]
        ci = sp.get("ci95") or [sp["min"], sp["max"]]
        verdict = {"tie": "not separated from 1.0x: within this run's noise"}.get(sp.get("verdict"), sp.get("verdict", ""))
        bold = "bold" if sp.get("verdict") == "faster" else "yellow"
        out.print(f"speedup vs reference: [{bold}]{sp['median']:.2f}x[/], 95% interval {ci[0]:.2f}-{ci[1]:.2f}x ({verdict}); "
                  f"median of {len(sp['rounds'])} alternating rounds of {res['protocol']['round_time_s']:g} s, "
                  f"{res['threads']} thread(s), round range {sp['min']:.2f}-{sp['max']:.2f}x", markup=True, highlight=False)
    if "vs_reference" in acc or any(k.startswith("top1_") for k in acc):
        out.print(f"accuracy data: {escape(_bench_data_label(acc, man))}", highlight=False)
    if "vs_reference" in acc:
        d = acc["vs_reference"]
        line = f"vs reference on {acc['feeds']} feed(s){' (synthetic)' if acc['synthetic'] else ''}: max-abs {d['max_abs']:.3g}, cosine {d['cosine']:.5f}"
        if "top1_agreement" in d:
            line += f", top-1 agreement {d['top1_agreement']:.2%}"
        if "top1_delta" in acc:
            line += f"; top-1 delta {acc['top1_delta']:+.2%}"
        out.print(line, highlight=False)
    if res.get("report"):
        out.print(f"report: {res['report']}", highlight=False)
    _print_verdict(res["verdict"])
    _bench_gates(res, min_speedup, min_cosine, min_top1)


def _bench_data_label(acc: dict, man: dict | None) -> str:
    src = f"{acc.get('feeds')} feed(s) from {acc.get('source')}"
    if acc.get("synthetic"):
        return src + " (synthetic: accuracy numbers mean nothing; pass --data)"
    calib = ((man or {}).get("data") or {}).get("path")
    if calib and acc.get("data_path") == calib:
        return src + " (the calibration data optimize tuned on, used because no --data was given: pass --data HELD_OUT.npz)"
    ev = (((man or {}).get("data") or {}).get("eval") or {}).get("path")
    return src + (" (the held-out data optimize judged on)" if ev and acc.get("data_path") == ev else " (--data)")


def _bench_gates(res: dict, min_speedup, min_cosine, min_top1) -> None:
    """--min-speedup / --min-cosine / --min-top1: each miss on its own line, then exit 8 (GateFailed)."""
    from .errors import GateFailed

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


def _print_matrix(res: dict) -> None:
    t = Table(title=f"optkit bench · {', '.join(res['backends'])} · {res['threads']} thread(s) · batch {res['batch']}"
                    + (f" · {res['recipe']}" if res.get("recipe") else ""), title_justify="left")
    for col in ("backend", "variant", "precision", "p50 ms", "p90 ms", "p99 ms", "items/s", "vs ref", "cosine vs ref",
                "top-1", "load/compile"):
        t.add_column(col, justify="left" if col in ("backend", "variant", "precision") else "right")
    notes = []
    for r in res["rows"]:
        if r.get("status") != "ok":
            notes.append(f"{r['backend']} {r['variant']}: {r.get('status')}: {r.get('reason')}")
            t.add_row(r["backend"], r["variant"], r["precision"], f"[yellow]{r.get('status')} ({len(notes)})[/]",
                      *([""] * 7))
            continue
        s, acc = r["latency"], r.get("accuracy", {})
        sp = r.get("speedup_vs_reference")
        comp = f"{r['load_ms'] / 1e3:.1f} s" + (f" (+{r['compile_s']:.1f} s at optimize)" if (r.get("compile_s") or 0) >= 0.05 else "")
        t.add_row(r["backend"], r["variant"], r["precision"], f"{s['p50_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{s['p99_ms']:.3f}",
                  f"{s['throughput']:.1f}", f"{sp['median']:.2f}x" if sp else "-",
                  f"{acc['vs_reference']['cosine']:.5f}" if "vs_reference" in acc else "-",
                  f"{acc['top1']:.2%}" if "top1" in acc else "-", comp)
    out.print(t)
    for i, n in enumerate(notes, 1):
        out.print(f"  ({i}) {escape(n)}", highlight=False)
    d = res["data"]
    out.print(f"accuracy on {d['feeds']} feed(s) from {escape(d['source'])}{' (synthetic)' if d['synthetic'] else ''}; "
              "speedups are medians of per-round ratios against ORT running the reference, all rows alternating",
              highlight=False)
    if res.get("report"):
        out.print(f"report: {res['report']}", highlight=False)


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
    from .artifact import write_json
    from .errors import InputError
    from .report import build_report, render_html, write_report

    fmt = _check_format(fmt)
    out_file = out_file or out_alias
    if len(artifacts) == 1 and out_file is None:
        from .predictor import resolve_artifact

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
    t = Table(title=f"optkit report · {len(rep['artifacts'])} artifact(s)", title_justify="left")
    for col in ("variant", "precision", "p50 ms", "p99 ms", "vs FP32", "accuracy", "Pareto"):
        t.add_column(col, justify="left" if col in ("variant", "precision", "Pareto") else "right")
    for p in rep["variants"]:
        if p.get("status") != "ok":
            t.add_row(p["key"], p["precision"], f"{p.get('status')}", "", "", "", "")
            continue
        acc = p.get("accuracy")
        t.add_row(p["key"], p["precision"], f"{p['latency']['p50_ms']:.3f}", f"{p['latency']['p99_ms']:.3f}",
                  f"{p['speedup_vs_reference']:.2f}x" if p.get("speedup_vs_reference") else "-",
                  "-" if not acc else (f"{acc['value']:.2%}" if acc["metric"] == "top1" else f"{acc['value']:.5f}"),
                  "★" if p.get("pareto") else "")
    if rep["variants"]:
        out.print(t)
        for d in rep.get("same_model_twice") or []:
            _warn(f"the same model {d['model']} was measured {len(d['keys'])} times: p50 "
                  f"{', '.join(f'{x:.3f}' for x in d['p50_ms'])} ms ({d['spread']:.0%} apart) - run-to-run noise between "
                  "separate bench runs; compare the speedups (each alternating with its reference), not p50s across runs")
    else:
        out.print("no bench results in these artifacts yet: run optkit bench ARTIFACT to add latency to the report",
                  highlight=False)
    out.print(f"report: [bold]{escape(str(hpath))}[/]  (+ {escape(jpath.name)})", markup=True, highlight=False)


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
    from .data import parse_shape_args
    from .serving import tune as run

    fmt = _check_format(fmt)
    backends = backends_alias or backends
    objective, sampler = objective.value, sampler.value

    def on_trial(t):
        if fmt == "json":
            return
        what = (f"p50 {t['p50_ms']:.3f} ms, p99 {t['p99_ms']:.3f} ms, {t['throughput']:.1f} items/s"
                if t.get("throughput") is not None else escape(str(t.get("error"))))
        flag = {"ok": "[green]ok[/]", "infeasible": "[yellow]SLO miss[/]", "failed": "[red]failed[/]"}[t["status"]]
        err.print(f"  trial {t['n']:>3} {t['key']:<22} {flag} {what}" + (" (cached)" if t["source"] == "cache" else ""),
                  markup=True, highlight=False)

    res = run(model, backends=backends, precisions=precisions, threads=threads, batches=batch, slo=slo,
              objective=objective.lower(), tolerance=tolerance, budget=budget, seed=seed, output=output, data=data,
              eval_data=eval_data, shapes=parse_shape_args(shape) or None, executor=executor, workers=workers,
              sampler=sampler.lower(), rounds=rounds, round_time=round_time, trial_timeout=trial_timeout, fresh=fresh,
              warn=_warn, on_trial=on_trial, on_status=lambda m: err.print(f"[dim]{escape(m)}[/]", markup=True, highlight=False))
    if fmt == "json":
        _print_json(res)
        return
    _print_tune(res)


def _print_tune(res: dict) -> None:
    s, rec = res["search"], res.get("recommended")
    rec_key = f"{rec['backend']}-{rec['precision']}/t{rec['threads']}/b{rec['batch']}" if rec else None
    front = {p["key"] for p in res["pareto"]}
    t = Table(title=f"optkit tune · {res['model']['name']} · objective {res['objective']}"
                    + (f" · SLO {', '.join(res['slo'])}" if res["slo"] else "") + f" · {s['sampler']} · {s['trials']} of "
                    f"{res['space']['size']} points ({s['measured']} measured, {s['from_cache']} cached)", title_justify="left")
    for col in ("#", "backend", "precision", "threads", "batch", "p50 ms", "p99 ms", "items/s", "items/s/core", "status", ""):
        t.add_column(col, justify="left" if col in ("backend", "precision", "status", "") else "right")
    for x in sorted(res["trials"], key=lambda x: x["n"]):
        measured = x.get("throughput") is not None
        status = {"ok": "[green]ok[/]", "infeasible": "[yellow]" + escape("; ".join(x.get("reasons") or [])) + "[/]",
                  "failed": "[red]failed: " + escape(str(x.get("error"))[:60]) + "[/]"}[x["status"]]
        mark = ("★ recommended" if x["key"] == rec_key else "") + (" · Pareto" if x["key"] in front else "")
        t.add_row(str(x["n"]), x["backend"], x["precision"], str(x["threads"]), str(x["batch"]),
                  f"{x['p50_ms']:.3f}" if measured else "-", f"{x['p99_ms']:.3f}" if measured else "-",
                  f"{x['throughput']:.1f}" if measured else "-", f"{x['throughput_per_core']:.1f}" if measured else "-",
                  status, mark.strip(" ·"))
    out.print(t)
    for v in res["variants"]:
        acc = v.get("accuracy") or {}
        line = f"variant {v['variant']}: {v['status']}"
        if acc:
            line += f", {acc['metric']} {acc['value']:.5g} (threshold {acc['threshold']:.5g})"
        if v.get("build_seconds") is not None:
            line += f", {'built in' if v.get('built') else 'reused, built in'} {v['build_seconds']:.1f} s"
        if v.get("reason"):
            line += f" - {v['reason']}"
        out.print(escape(line), highlight=False)
    for u in res["unavailable"]:
        out.print(f"backend {u['backend']}: unavailable - {escape(u['reason'])}", highlight=False)
    for n in res["notes"]:
        out.print(f"[yellow]note:[/] {escape(n)}", markup=True, highlight=False)
    if rec:
        e = rec["expected"]
        out.print(f"recommended: [bold]{rec['backend']} {rec['precision']}, {rec['threads']} thread(s), batch {rec['batch']}[/]"
                  f" - p50 {e['p50_ms']:.3f} ms, p99 {e['p99_ms']:.3f} ms, {e['throughput']:.1f} items/s "
                  f"({e['throughput_per_core']:.1f} per core)", markup=True, highlight=False)
        out.print(f"  artifact: {escape(rec['artifact'])}", highlight=False)
    out.print(f"stopped: {s['stopped']} after {s['search_seconds']:.1f} s of trials ({s['total_seconds']:.1f} s in all); "
              f"{s['ok']} ok, {s['infeasible']} SLO miss, {s['failed']} failed", highlight=False)
    out.print(f"wrote [bold]{escape(res['serving_json'])}[/] and {escape(res['plot'])}", markup=True, highlight=False)


@app.command(epilog=_examples("optkit inspect model.onnx", "optkit inspect model.onnx --shape input=1x3x224x224 --format json"))
@_guard
def inspect(
    model: Path = typer.Argument(..., help="ONNX model file"),
    shape: Optional[List[str]] = ShapeOpt,
    fmt: Format = FormatOpt,
):
    """Signature, opsets, op histogram, parameters, FLOPs and size of an ONNX model."""
    from .api import inspect as run
    from .data import parse_shape_args

    fmt = _check_format(fmt)
    info = run(model, parse_shape_args(shape))
    if fmt == "json":
        _print_json(info)
        return
    out.print(f"[bold]{model}[/]  IR {info['ir_version']}, opsets {info['opsets']}, producer {info['producer'] or '-'}",
              markup=True, highlight=False)
    sig = Table(title="signature", title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        sig.add_column(col)
    for kind in ("inputs", "outputs"):
        for s in info[kind]:
            sig.add_row(kind[:-1], s["name"], s["dtype"], escape("[" + ", ".join(str(d) for d in s["shape"]) + "]"))
    out.print(sig)
    ops = Table(title="ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for k, v in info["ops"].items():
        ops.add_row(k, str(v))
    out.print(ops)
    fl = info["flops"]
    out.print(f"nodes {info['nodes']}, params {info['params']:,}, size {fmt_bytes(info['file_bytes'])}, "
              f"FLOPs {fmt_count(fl['total'])} (Conv/Gemm/MatMul at {info['flops_shapes']})"
              + (f" - {fl['note']}" if fl.get("note") else ""), highlight=False)


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

    from .recipe import load_recipe
    from .verdict import recipe_sha256

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
    from .recipe import list_recipes

    if ctx.invoked_subcommand is not None:
        return
    fmt = _check_format(fmt)
    rows = list_recipes()
    if fmt == "json":
        _print_json(rows)
        return
    t = Table(title="built-in recipes (or pass --recipe path/to/recipe.yaml)", title_justify="left")
    for col in ("recipe", "backend", "passes", "description"):
        t.add_column(col, overflow="fold")
    for r in rows:
        flow = " → ".join(r["passes"])
        if r.get("candidates"):
            flow += " → best of {" + " | ".join(" → ".join(v) or k for k, v in r["candidates"].items()) + "}"
        t.add_row(r["name"], r["backend"], flow, r["description"])
    out.print(t)


@app.command(epilog=_examples("optkit passes", "optkit passes --format json"))
@_guard
def passes(fmt: Format = FormatOpt):
    """List the passes with their options."""
    from .passes import list_passes

    fmt = _check_format(fmt)
    rows = list_passes()
    if fmt == "json":
        _print_json(rows)
        return
    t = Table(title="passes", title_justify="left", show_lines=True)
    for col in ("pass", "exact", "description", "options (default)"):
        t.add_column(col, overflow="fold")
    for r in rows:
        opts = "\n".join(f"{o['name']} = {o['default']!r}" + (f" [{'|'.join(map(str, o['choices']))}]" if o["choices"] else "")
                         + f": {o['doc']}" for o in r["options"])
        t.add_row(escape(r["name"]), "yes" if r["exact"] else "no", escape(r["doc"]), escape(opts) or "-")
    out.print(t)


@app.command()
@_guard
def verify(
    artifacts: List[Path] = typer.Argument(..., help="artifact directories (OUT/<name>/<version>; OUT/<name> checks every version)"),
    fmt: Format = FormatOpt,
):
    """Check every file of an artifact against the sha256 its manifest recorded at optimize (exit 7 on a mismatch).

    optkit.load, bench, report and tune do the same check before they use an artifact."""
    from .artifact import MANIFEST, versions
    from .artifact import verify as run
    from .errors import InputError, IntegrityError

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
            t = Table(title=f"optkit verify · {res['artifact']}" + ("" if res["sealed"] else " (older artifact: only the "
                      "model and input carry a sha256)"), title_justify="left")
            for col in ("file", "bytes", "sha256", "status"):
                t.add_column(col, justify="right" if col == "bytes" else "left")
            for r in res["files"]:
                st = "[green]ok[/]" if r["status"] == "ok" else f"[bold red]{r['status'].upper()}[/]"
                t.add_row(escape(r["path"]), fmt_bytes(r["bytes"]) if r.get("bytes") is not None else "-",
                          (r.get("sha256") or r.get("expected") or "-")[:16], st)
            out.print(t)
            n_ok = sum(r["status"] == "ok" for r in res["files"])
            out.print(f"{escape(res['artifact'])}: {n_ok} of {len(res['files'])} file(s) match the manifest",
                      highlight=False)
    bad = [(res["artifact"], r) for res in results for r in res["files"] if r["status"] != "ok"]
    if bad:
        art, r = bad[0]
        raise IntegrityError(f"{art}: {r['path']} is {r['status']}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""),
                             "do not use this artifact; re-run `optkit optimize` to rebuild it")


def _on_signal(signum, frame):
    """SIGTERM / SIGHUP end a run like Ctrl-C: the staging directory is removed and the exit code is 130."""
    import signal

    for s in (signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):  # a second signal must not cut the cleanup
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt


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
    from .fleet import optimize_many as run

    fmt = _check_format(fmt)

    def on_done(row, done, total):
        if fmt == "json":
            return
        what = ((f"{row['speedup']:.2f}x vs input" if row.get("speedup") else "")
                + (f" cosine {row['cosine']:.5f}" if row.get("cosine") is not None else "")).strip() \
            if row["status"] == "ok" else escape(row.get("error", ""))
        flag = {"ok": "[green]ok[/]", "missed": "[yellow]missed[/]", "failed": "[red]failed[/]"}[row["status"]]
        err.print(f"  [{done}/{total}] {escape(row['name'])} {flag} {what} ({row['seconds']:.1f} s)", markup=True,
                  highlight=False)

    res = run(models, recipe, output=output, executor=executor, threads=threads, data=data, jobs=jobs,
              tolerance=tolerance, no_cache=no_cache, timeout=timeout, on_done=on_done,
              on_start=lambda i: err.print(f"[dim]Ray cluster: {i.get('cluster_cpus'):g} CPUs[/]", markup=True,
                                           highlight=False) if fmt != "json" else None)
    if fmt == "json":
        _print_json(res)
    else:
        t = Table(title=f"optkit optimize-many · {res['recipe']} · {len(res['rows'])} models · {res['executor']}",
                  title_justify="left")
        for col in ("model", "status", "speedup", "cosine", "time", "cached", "artifact / error"):
            t.add_column(col, overflow="fold")
        for r in res["rows"]:
            t.add_row(r["name"], r["status"], f"{r['speedup']:.2f}x" if r.get("speedup") else "-",
                      f"{r['cosine']:.5f}" if r.get("cosine") is not None else "-", f"{r['seconds']:.1f} s",
                      f"{r['cached_passes']}/{r['passes']}" if "passes" in r else "-",
                      escape(str(r.get("artifact") or r.get("error") or "")))
        out.print(t)
        out.print(f"{res['ok']} ok, {res['missed']} missed the tolerance, {res['failed']} failed; wall {res['seconds']:.1f} s "
                  f"(sum of units {res['unit_seconds']:.1f} s); summary: {res['summary_path']}", highlight=False)
    if res["failed"] or res["missed"]:
        raise typer.Exit(1)


@app.command()
@_guard
def cache(
    action: str = typer.Argument("info", help="info (where, entries, size) | clear (delete every entry) | prune (to the size cap)"),
    fmt: Format = FormatOpt,
):
    """The pass cache: reused pass results keyed by model, pass, config, data and versions (OPTKIT_CACHE_DIR)."""
    from .cache import PassCache
    from .errors import InputError

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
    out.print(f"pass cache {res['path']}: {res['entries']} entries, {fmt_bytes(res['bytes'])} of {fmt_bytes(res['max_bytes'])}"
              + (f"; removed {res['removed']}" if "removed" in res else ""), highlight=False)


def main(argv: list[str] | None = None) -> None:
    global _DEBUG
    import signal
    import threading

    from . import log as _log

    args = list(sys.argv[1:] if argv is None else argv)
    _log.COMMAND = list(args)  # the reproduce record in the manifest is this exact command line
    if "--debug" in args:  # anywhere on the line, also after the command
        _DEBUG = True
        args.remove("--debug")
    _log.reset()
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if s is not None and signal.getsignal(s) in (signal.SIG_DFL, None):
                signal.signal(s, _on_signal)
    from typer._click import exceptions as click_exc

    try:
        try:
            rc = typer.main.get_command(app).main(args=args, prog_name="optkit", standalone_mode=False)
        except click_exc.NoArgsIsHelpError as e:  # `optkit` / `optkit recipes`-style groups without a command: the help
            from typer import rich_utils

            rich_utils.rich_format_error(e)
            sys.exit(e.exit_code)
        except click_exc.UsageError as e:  # one line, like every other error, and where to look
            where = e.ctx.command_path if e.ctx is not None else "optkit"
            err.print(f"[bold red]error:[/] {escape(e.format_message())} (see `{escape(where)} -h`)", markup=True,
                      highlight=False)
            sys.exit(e.exit_code)
        except click_exc.ClickException as e:
            err.print(f"[bold red]error:[/] {escape(e.format_message())}", markup=True, highlight=False)
            sys.exit(e.exit_code)
        except typer.Abort:  # click's form of a KeyboardInterrupt that arrived outside a command's own handling
            err.print("interrupted, nothing written", highlight=False)
            sys.exit(130)
        sys.exit(rc if isinstance(rc, int) else 0)
    except SystemExit as e:
        if e.code == 130:
            # Interrupted. Exit 130 as documented: CPython 3.11 remembers a KeyboardInterrupt that passed through
            # some C extensions even when optkit handled it, and would end the process with SIGINT instead (-2).
            import atexit
            import os

            sys.stdout.flush()
            sys.stderr.flush()
            atexit._run_exitfuncs()
            os._exit(130)
        raise


if __name__ == "__main__":
    main()
