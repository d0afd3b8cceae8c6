"""Quiet, lazy TensorFlow for the TensorFlow importer (optkit.importers.tf): availability, the lazy import of
tensorflow + tf2onnx with their log output turned down, and the context managers that silence TF / absl / keras /
tf2onnx logging (and C++ lines on fd 2) while loading and converting."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from ..errors import InputError

INSTALL_HINT = "pip install 'optkit[tf]'"

_LOGGERS = ("tensorflow", "tf2onnx", "absl", "keras", "h5py")


# ---------------------------------------------------------------------------------------------------------------
# availability, quiet imports
# ---------------------------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = next((t.strip() for t in text if t.strip()), "")
    return line[:300] if line else type(e).__name__


def available() -> str | None:
    """None when tensorflow and tf2onnx import; else a one-line reason ending in the install hint."""
    import importlib.util

    missing = [m for m in ("tensorflow", "tf2onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return f"TensorFlow import needs {' and '.join(missing)}, not installed here; {INSTALL_HINT}"
    try:
        _modules()
    except Exception as e:  # a broken install: wrong protobuf, missing shared library, ...
        return f"TensorFlow import is unavailable ({type(e).__name__}: {_first_line(e)}); {INSTALL_HINT}"
    return None


# True when TensorFlow was imported by someone else before TF_CPP_MIN_LOG_LEVEL was set: its C++ logging then
# stays verbose (the level is read once), so conversion mutes file descriptor 2 instead.
_CPP_LOUD = False


def _modules():
    """Import tensorflow + tf2onnx with their log output turned down. Raises whatever the import raises."""
    global _CPP_LOUD
    first = "tensorflow" not in sys.modules
    if first:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ INFO/WARNING/ERROR off (read once by TF)
    elif "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        _CPP_LOUD = True
    loud = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") in ("0", "")  # the user asked for TF's logs: keep them
    with _quiet(), _mute_fd2(force=first and not loud):
        import tensorflow as tf
        import tf2onnx
        from tf2onnx import convert as _convert  # noqa: F401  (imports the converter, sets TF's log level)
    return tf, tf2onnx


def _require():
    try:
        return _modules()
    except ImportError as e:
        raise InputError(f"importing a TensorFlow model needs tensorflow and tf2onnx ({_first_line(e)})",
                         INSTALL_HINT) from e


class _Capture(logging.Handler):
    """Keeps tf2onnx's ERROR records (unsupported ops, failed nodes) so they can become one ExportError."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@contextlib.contextmanager
def _mute_fd2(force: bool = False):
    """Send C++ log lines written straight to stderr (fd 2) to a temporary file: while importing TF (its oneDNN
    banner ignores TF_CPP_MIN_LOG_LEVEL), and while converting when TF's own level could not be set (_CPP_LOUD)."""
    if not (force or _CPP_LOUD):
        yield
        return
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreter, ...)
        yield
        return
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


@contextlib.contextmanager
def _quiet(capture: _Capture | None = None):
    """Silence TF / absl / keras / tf2onnx logging and warnings; route any stray print() to stderr."""
    saved = []
    for name in _LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level, lg.propagate, list(lg.handlers)))
        lg.setLevel(logging.ERROR)
        if name == "tf2onnx":  # its records go to the capture only
            lg.propagate = False
            lg.handlers = [capture] if capture is not None else [logging.NullHandler()]
        elif name in ("absl", "tensorflow", "keras"):
            lg.setLevel(logging.CRITICAL)
    absl_level = None
    try:
        from absl import logging as absl_logging  # installed with tensorflow

        absl_level = absl_logging.get_verbosity()
        absl_logging.set_verbosity(absl_logging.ERROR)
    except Exception:
        absl_logging = None
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level, propagate, handlers in saved:
            lg.setLevel(level)
            lg.propagate = propagate
            lg.handlers = handlers
        if absl_logging is not None and absl_level is not None:
            absl_logging.set_verbosity(absl_level)
