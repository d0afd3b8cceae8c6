"""The shared child-process runner (optkit.child): timeouts kill the whole process group, crashes are named, input
and output travel; and both users of it (serving trials, the TVM worker) get those guarantees."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from optkit.child import child_env, run_child, worker_argv


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by init) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _gone(pid: int, within: float = 5.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


def test_timeout_kills_the_child_and_its_grandchildren(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    code = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    t0 = time.monotonic()
    res = run_child([sys.executable, "-c", code], timeout=3.0)
    assert res.timed_out and res.why() == "timed out"
    assert time.monotonic() - t0 < 30
    grandchild = int(pidfile.read_text())
    assert _gone(grandchild)  # a plain subprocess timeout would leave it sleeping


def test_crash_is_named_by_its_signal():
    res = run_child([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"], timeout=60)
    assert not res.timed_out and res.returncode < 0 and res.signal == "SIGSEGV"
    assert res.why() == "killed by SIGSEGV"
    res = run_child([sys.executable, "-c", "import sys; sys.exit(3)"], timeout=60)
    assert res.returncode == 3 and res.signal is None and res.why() == "exited with code 3"


def test_input_output_and_progress_polls(tmp_path):
    res = run_child([sys.executable, "-c", "import sys; d = sys.stdin.read(); print(d[::-1]); print('e', file=sys.stderr)"],
                    input="abc", timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "cba" and res.stderr.strip() == "e"
    polls = []
    log = tmp_path / "log.txt"
    with open(log, "wb") as out:
        res = run_child([sys.executable, "-c", "import time; print('hi', flush=True); time.sleep(1.2)"], stdout=out,
                        timeout=60, poll=0.3, on_poll=polls.append)
    assert res.returncode == 0 and res.stdout is None and log.read_text().strip() == "hi"
    assert len(polls) >= 2 and polls == sorted(polls)


def test_child_env_puts_this_optkit_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = child_env({"A": 1}, defaults={"PYTHONWARNINGS": "default", "B": "2"})
    root = str(Path(__file__).resolve().parents[1])
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [root, "/elsewhere"]
    assert env["A"] == "1" and env["B"] == "2" and env["PYTHONWARNINGS"] == "ignore"
    assert worker_argv("pkg.mod", ["x"]) == [sys.executable, "-m", "pkg.mod", "x"]
    assert worker_argv("/t/w.py") == [sys.executable, "/t/w.py"]


def test_a_hanging_trial_costs_that_trial_only(tmp_path):
    from optkit.serving import LocalExecutor, TrialSpec

    hang = tmp_path / "hang.py"
    hang.write_text("import time; time.sleep(60)\n")
    ex = LocalExecutor(worker=str(hang))
    res = ex.submit(TrialSpec("ort-fp32", 1, 1, timeout=2))
    assert res["status"] == "failed" and res["cause"] == "timeout"
    bad = tmp_path / "bad.py"
    bad.write_text("import sys; print('no result here'); print('boom', file=sys.stderr); sys.exit(4)\n")
    res = LocalExecutor(worker=str(bad)).submit(TrialSpec("ort-fp32", 1, 1, timeout=30))
    assert res["status"] == "failed" and (res["cause"], res["returncode"], res["signal"]) == ("exit", 4, None)
    assert "boom" in res["error"]  # the child's last stderr line travels with the failure
    crash = tmp_path / "crash.py"
    crash.write_text("import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n")
    res = LocalExecutor(worker=str(crash)).submit(TrialSpec("ort-fp32", 1, 1, timeout=30))
    assert (res["status"], res["cause"], res["signal"]) == ("failed", "signal", "SIGKILL")
