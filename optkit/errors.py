"""Errors a user can act on: one line saying what is wrong and what to do next."""
from __future__ import annotations


class OptkitError(Exception):
    """Base class. ``str(err)`` is the one line the CLI prints (no traceback unless --debug)."""

    exit_code = 2

    def __init__(self, what: str, hint: str | None = None):
        self.what = what
        self.hint = hint
        super().__init__(what)

    def __str__(self) -> str:
        return f"{self.what}; {self.hint}" if self.hint else self.what


class InputError(OptkitError):
    """The model file, data, shapes or output directory the user gave cannot be used."""


class RecipeError(OptkitError):
    """A recipe (or a pass name / option in it) is unknown or invalid."""


class PassError(OptkitError):
    """A pass failed or broke numerics; the message names the pass and the passes before it."""

    exit_code = 3


class Unsupported(PassError):
    """The model holds a construct a pass refuses (INT8 on float16 compute, say): said at once, before any search, and
    not retried with other configurations; exit 2 like any other input the user must change."""

    exit_code = 2


class BackendUnavailable(OptkitError):
    """A backend's library or hardware is missing here."""

    exit_code = 4


class ToleranceMiss(OptkitError):
    """The result was produced but misses the accuracy the user asked for."""

    exit_code = 5


class ExportError(OptkitError):
    """A framework model could not be brought to ONNX, or the ONNX export disagrees with the framework
    (parity check) beyond the tolerance."""

    exit_code = 6


class IntegrityError(OptkitError):
    """An artifact's files do not match the sha256 its manifest recorded (changed, missing or unexpected files):
    nothing in it is loaded or run."""

    exit_code = 7


class Interrupted(OptkitError):
    """Ctrl-C, SIGTERM or SIGHUP; the message says what was (not) written."""

    exit_code = 130


class GateFailed(OptkitError):
    """A CI gate of ``optkit bench`` (--min-speedup / --min-cosine / --min-top1) was missed."""

    exit_code = 8
