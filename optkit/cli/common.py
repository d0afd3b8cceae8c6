"""What every `optkit` command shares: the typer app, the consoles, the option types, the error guard (one line,
no traceback unless --debug), logging to stderr through rich, and the progress bar."""
from __future__ import annotations

import functools
import json
import logging
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

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
    from ..errors import InputError
    from ..fidelity import parse_metric

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
    from ..errors import InputError
    from ..importers import parse_dtypes

    try:
        rtol, atol = (float(x) for x in parity_tol.split(","))
    except ValueError:
        raise InputError(f"bad --parity-tol {parity_tol!r}", "use RTOL,ATOL, e.g. --parity-tol 1e-3,1e-4") from None
    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    opts = {"module": module, "dtypes": parse_dtypes(dtype), "dynamic": dynamic, "opset": opset,
            "exporter": getattr(exporter, "value", exporter).lower(), "input_names": split(input_names), "output_names": split(output_names),
            "signature": signature, "parity_tol": (rtol, atol), "trust_pickle": trust_pickle}
    return opts


def _caused_by_interrupt(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _interrupted() -> None:
    from ..artifact import committed

    what = (f"{committed[-1]} was complete and is kept" if committed else "nothing written")
    err.print(f"[bold red]interrupted[/], {escape(what)}", markup=True, highlight=False)
    raise typer.Exit(130)


def _guard(fn):
    """One actionable line and a non-zero exit for errors; the traceback only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ..errors import OptkitError

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
            _interrupted()
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # an optkit bug or a library failure we did not anticipate
            if _DEBUG:
                raise
            if _caused_by_interrupt(e):  # e.g. a pybind11 module's ImportError raised from an interrupted import
                _interrupted()
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            err.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(first)} (rerun with --debug for the traceback)",
                      markup=True, highlight=False)
            raise typer.Exit(1)

    return wrapper


def _warn(msg: str) -> None:
    logging.getLogger("optkit").warning(msg)


def _check_format(fmt) -> str:
    from ..errors import InputError

    fmt = getattr(fmt, "value", fmt).lower()
    if fmt not in ("table", "json"):
        raise InputError(f"--format must be table or json, got {fmt!r}", "use --format table or --format json")
    return fmt


def _print_json(data) -> None:
    from ..artifact import _jsonable

    sys.stdout.write(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _version(value: bool) -> None:
    if value:
        from .. import __version__

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


def _on_signal(signum, frame):
    """SIGTERM / SIGHUP end a run like Ctrl-C: the staging directory is removed and the exit code is 130."""
    import signal

    for s in (signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)):  # a second signal must not cut the cleanup
        signal.signal(s, signal.SIG_IGN)
    raise KeyboardInterrupt
