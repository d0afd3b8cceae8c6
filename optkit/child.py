"""One way to run optkit work in a child process: the serving trials (``optkit.serving.worker``) and the TVM
compile/tune phases (``optkit.backends.tvm.worker``) both go through ``run_child``.

The child starts in a session (process group) of its own, so a timeout, or a crash that leaves grandchildren behind
(MetaSchedule's builder pools, an ONNX Runtime thread pool stuck in a kernel), is cleaned up with one
``os.killpg(SIGKILL)`` of the whole group; the caller never outlives a hung child and never leaks its helpers.

``worker`` is a module name (run as ``python -m NAME``) or the path of a ``.py`` file (run as ``python FILE``):
production code passes its own worker module; tests pass a test-only worker file that misbehaves on purpose.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # the directory holding the optkit package


@dataclass
class ChildResult:
    """How a child ended. ``returncode`` < 0 means a signal (``signal`` names it); ``timed_out``: it ran past the
    timeout and its process group was killed. ``stdout``/``stderr`` are the captured text (None when redirected)."""

    returncode: int | None
    timed_out: bool
    seconds: float
    stdout: str | None = None
    stderr: str | None = None

    @property
    def signal(self) -> str | None:
        return signal_name(self.returncode)

    def why(self) -> str:
        """'timed out', 'killed by SIGSEGV' or 'exited with code 3'."""
        if self.timed_out:
            return "timed out"
        if self.returncode is not None and self.returncode < 0:
            return f"killed by {self.signal}"
        return f"exited with code {self.returncode}"


def signal_name(rc: int | None) -> str | None:
    if rc is None or rc >= 0:
        return None
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def child_env(extra: dict | None = None, *, defaults: dict | None = None) -> dict:
    """This process's environment with the optkit package importable first (source checkouts too), warnings off by
    default, ``extra`` set and ``defaults`` set where the user did not."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONWARNINGS", "ignore")
    for k, v in (defaults or {}).items():
        env.setdefault(k, str(v))
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def worker_argv(worker: str, args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``python -m MODULE ARGS`` or ``python FILE.py ARGS``."""
    if worker.endswith(".py"):
        return [sys.executable, worker, *args]
    return [sys.executable, "-m", worker, *args]


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_child(argv: list[str], *, timeout: float | None = None, input: str | None = None,
              stdout: IO | None = None, env: dict | None = None, poll: float = 10.0,
              on_poll: Callable[[float], None] | None = None) -> ChildResult:
    """Run ``argv`` in a new session; wait at most ``timeout`` seconds, then kill its process group.

    ``input``: text written to its stdin (else stdin is /dev/null). ``stdout``: a binary file both stdout and stderr
    go to (a log); None captures them as text in the result. ``on_poll(elapsed_seconds)`` is called every ``poll``
    seconds while it runs (progress logging). A child that fails or times out has its
    whole group killed (helpers it left behind)."""
    t0 = time.monotonic()
    capture = stdout is None
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE if capture else stdout,
                            stderr=subprocess.PIPE if capture else subprocess.STDOUT,
                            text=capture, env=env, start_new_session=True)
    timed_out = False
    out = err = None
    pending = input
    try:
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - t0)
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(argv, timeout)
            wait = left if on_poll is None else (poll if left is None else min(poll, left))
            try:
                out, err = proc.communicate(pending, timeout=wait)
                break
            except subprocess.TimeoutExpired:
                pending = None  # the input went on the first call; a retry must not send it again
                if on_poll is not None and (left is None or left > poll):
                    on_poll(time.monotonic() - t0)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc)
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:  # an exception (Ctrl-C) while waiting: never leave the child running
            kill_group(proc)
            proc.wait()
    if timed_out or proc.returncode != 0:
        kill_group(proc)  # helpers a failed child left in its group (e.g. MetaSchedule's popen workers)
    return ChildResult(proc.returncode, timed_out, round(time.monotonic() - t0, 3), out, err)


__all__ = ["run_child", "ChildResult", "child_env", "worker_argv", "kill_group", "signal_name", "PACKAGE_ROOT"]
