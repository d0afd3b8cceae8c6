"""Helpers for the trust-boundary tests (test_trust, test_fuzz, test_faults): the CLI in-process, and the checks every
failing command must pass (one line, no traceback, nothing left behind, inputs untouched)."""
from __future__ import annotations

import re

import contextlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

# exit codes the README documents: 0 ok, 2 input/recipe, 3 pass, 4 backend, 5 tolerance, 6 export, 7 integrity,
# 130 interrupted (1 = internal error, a bug: never expected)
DOCUMENTED = {0, 2, 3, 4, 5, 6, 7, 130}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_inproc(*args, cwd: Path | None = None) -> Result:
    """``optkit ARGS`` in this process (a few ms instead of a second of imports), with the CLI's own error mapping."""
    import typer  # noqa: F401

    from optkit import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    old = Path.cwd()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if cwd is not None:
            os.chdir(cwd)
        try:
            cli.app(args=[str(a) for a in args], prog_name="optkit", standalone_mode=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            os.chdir(old)
    from optkit import artifact

    artifact.committed.clear()
    return Result(code, out.getvalue(), err.getvalue())


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("warning:")
            and not ln.lstrip().startswith(("✓", "↶")) and not PROGRESS.match(ln)]


PROGRESS = re.compile(r"^\s*\[\d+(\.\d+)? s\] ")  # the CLI's progress log lines ("[1.3 s] pass 1/2 fuse: started")


def assert_clean_failure(r: Result, out: Path | None, context: str = "") -> str:
    """The one-line contract: exit code documented, exactly one 'error:' line on stderr, no traceback, nothing under
    ``out``. Returns the error line."""
    assert r.returncode in DOCUMENTED and r.returncode != 0, (context, r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, (context, r.stderr[-3000:])
    lines = error_lines(r.stderr)
    assert len(lines) == 1, (context, r.stderr[-3000:])
    assert lines[0].startswith(("error:", "interrupted")), (context, lines[0])
    if out is not None:
        assert_nothing_under(out, context)
    return lines[0]


def assert_nothing_under(out: Path, context: str = "") -> None:
    if not out.exists():
        return
    left = [str(p.relative_to(out)) for p in out.rglob("*") if not p.is_dir() or p.name.isdigit()
            or p.name.startswith((".staging", ".optkit"))]
    assert not left, (context, "left behind", left)
