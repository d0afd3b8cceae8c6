"""Test-only child-process workers that fail on purpose, to exercise crash and timeout handling.

Production code has no fault hooks: its runners take the worker to start (``optkit.serving.executors.WORKER``,
``optkit.backends.tvm.runner.WORKER``, a module name or a ``.py`` file), and these helpers write a ``.py`` file that
misbehaves for the chosen trials / phase and otherwise hands over to the real worker. Tests monkeypatch ``WORKER``
(or pass ``LocalExecutor(worker=...)``) to it.
"""
from __future__ import annotations

from pathlib import Path

_TRIAL = '''import io, json, os, signal, sys
CRASH = {keys!r}
text = sys.stdin.read()
if "*" in CRASH or json.loads(text).get("key") in CRASH:  # die the way a segfaulting backend would
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin = io.StringIO(text)
from optkit.serving.worker import main
sys.exit(main())
'''

_TVM = '''import json, os, signal, sys, time
PHASE, HOW = {phase!r}, {how!r}
spec = json.loads(open(sys.argv[1]).read())
if spec["phase"] == PHASE:
    print(f"test fault worker: failing on purpose in phase {{PHASE!r}} ({{HOW}})", flush=True)
    if HOW == "exit":
        os._exit(70)
    if HOW == "hang":
        time.sleep(3600)
    os.kill(os.getpid(), signal.SIGSEGV)
from optkit.backends.tvm import worker
sys.exit(worker.main())
'''


def crashing_trial_worker(directory: Path, keys) -> str:
    """A serving trial worker whose child SIGKILLs itself for the trial keys in ``keys`` ('*': every trial)."""
    path = Path(directory) / "crashing_trial_worker.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_TRIAL.format(keys=sorted(keys) if not isinstance(keys, str) else [keys]))
    return str(path)


def faulty_tvm_worker(directory: Path, phase: str, how: str = "segv") -> str:
    """A TVM worker that, in ``phase`` ('tune' | 'build'), dies by SIGSEGV ('segv'), exits 70 ('exit') or hangs
    ('hang'); other phases run the real worker."""
    path = Path(directory) / f"faulty_tvm_worker_{phase}_{how}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_TVM.format(phase=phase, how=how))
    return str(path)
