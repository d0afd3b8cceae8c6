"""Fault injection for the artifact writer: `optkit optimize` in a subprocess, killed with SIGTERM or SIGKILL at chosen
points (a wrapper script pauses the run there: a test helper, no hook in optkit) and at seeded random times.

After every kill: each numbered version is complete and verifies; SIGTERM cleans its staging directory and exits 130
with one line; a SIGKILL's leftovers are removed by the next run, which takes the next clean version number."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, tiny_cnn
from trust_helpers import error_lines

from optkit.artifact import versions, verify

WRAPPER = '''
import pathlib, sys, time
phase, marker = sys.argv[1], pathlib.Path(sys.argv[2])

def pause():
    marker.write_text("ready")
    time.sleep(120)

import optkit.job as job, optkit.report as report
if phase == "staged":  # model.onnx is in the staging directory, nothing committed (optimize's steps save through job)
    _save = job.save_model
    def save_model(m, p):
        r = _save(m, p)
        pause()
        return r
    job.save_model = save_model
elif phase == "sealed":  # everything written and fsynced, right before the rename
    import optkit.artifact as art
    _sync = art.sync_tree
    def sync_tree(root):
        _sync(root)
        pause()
    art.sync_tree = sync_tree
elif phase == "report":  # the version is committed; the report is being written
    _write = report.write_report
    def write_report(a):
        pause()
        return _write(a)
    report.write_report = write_report
from optkit.cli import main
main(sys.argv[3:])
'''


def _env():
    env = dict(os.environ)
    env.update({"NO_COLOR": "1", "TERM": "dumb", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
                "PYTHONPATH": str(REPO)})
    return env


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("faults")
    (d / "fast.yaml").write_text("name: fast\nbackend: ort\npasses: []\n")
    (d / "wrapper.py").write_text(WRAPPER)
    return {"dir": d, "model": tiny_cnn(d / "m.onnx"), "recipe": d / "fast.yaml", "wrapper": d / "wrapper.py"}


def _optimize_args(setup, out, recipe=None):
    return ["optimize", setup["model"], "-r", recipe or setup["recipe"], "-o", out, "--force"]


def _all_versions_verify(base: Path) -> list[int]:
    vs = versions(base)
    for v in vs:
        res = verify(base / str(v))
        assert res["ok"] and res["sealed"], (v, res)
    return vs


def _staging(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.startswith(".staging-")) if base.is_dir() else []


def _kill_at(setup, out: Path, phase: str, sig: int) -> subprocess.CompletedProcess:
    marker = out.parent / f"marker-{phase}-{sig}"
    marker.unlink(missing_ok=True)
    p = subprocess.Popen([sys.executable, str(setup["wrapper"]), phase, str(marker),
                          *map(str, _optimize_args(setup, out))], env=_env(), cwd=str(REPO),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the run never reached the pause"
        time.sleep(0.05)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)


def test_kill_at_chosen_points(tmp_path, setup):
    out = tmp_path / "out"
    base = out / "m"
    # SIGTERM while staged: handled like Ctrl-C
    r = _kill_at(setup, out, "staged", signal.SIGTERM)
    assert r.returncode == 130, r.stderr
    assert error_lines(r.stderr) == ["interrupted, nothing written"], r.stderr
    assert _staging(base) == [] and versions(base) == []
    # SIGHUP right before the rename: same
    r = _kill_at(setup, out, "sealed", signal.SIGHUP)
    assert r.returncode == 130 and "nothing written" in r.stderr, r.stderr
    assert _staging(base) == [] and versions(base) == []
    # SIGKILL while staged: the staging directory stays, no version appears
    r = _kill_at(setup, out, "staged", signal.SIGKILL)
    assert r.returncode == -signal.SIGKILL
    left = _staging(base)
    assert len(left) == 1 and versions(base) == []
    # SIGKILL after the commit, while the report is written: the version is complete and verifies
    r = _kill_at(setup, out, "report", signal.SIGKILL)
    assert r.returncode == -signal.SIGKILL
    assert _all_versions_verify(base) == [1]
    assert left[0] not in _staging(base), "the killed run's staging directory was not cleaned by the next run"
    # SIGTERM after the commit: says what was kept
    r = _kill_at(setup, out, "report", signal.SIGTERM)
    assert r.returncode == 130 and error_lines(r.stderr) == [f"interrupted, {base / '2'} was complete and is kept"], \
        r.stderr
    # SIGKILL right before the rename, then a clean run: it removes the leftovers and takes version 3
    r = _kill_at(setup, out, "sealed", signal.SIGKILL)
    assert len(_staging(base)) == 1
    from trust_helpers import run_inproc

    r = run_inproc(*_optimize_args(setup, out))
    assert r.returncode == 0, r.stderr
    assert _staging(base) == [] and _all_versions_verify(base) == [1, 2, 3]


def test_kill_at_random_times(tmp_path, setup):
    """Seeded random kill times over a whole run (imports, passes, compile, commit, report) of a real recipe."""
    rng = random.Random(14)
    out = tmp_path / "out"
    base = out / "m"
    outcomes = []
    for i in range(3):
        sig = rng.choice([signal.SIGTERM, signal.SIGKILL])
        delay = rng.uniform(0.5, 4.0)
        p = subprocess.Popen([sys.executable, "-m", "optkit.cli", *map(str, _optimize_args(setup, out, "fp32-ort"))],
                             env=_env(), cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(sig)
        _, stderr = p.communicate(timeout=60)
        # -SIGTERM: killed while Python was still starting, before optkit installed its handler, or after the run,
        # while the interpreter shut down (it restores the default handler then): nothing to say, nothing half-written
        assert p.returncode in (0, 130, -signal.SIGKILL, -signal.SIGTERM), (i, sig, delay, p.returncode, stderr)
        outcomes.append((sig.name, round(delay, 2), p.returncode, _staging(base)))
        if p.returncode == 130:
            assert len(error_lines(stderr)) == 1 and "Traceback" not in stderr, stderr
        if p.returncode in (130, -signal.SIGTERM):
            assert "Traceback" not in stderr and _staging(base) == [], "SIGTERM left a traceback or its staging directory"
        _all_versions_verify(base) if base.is_dir() else None
    before = versions(base)
    from trust_helpers import run_inproc

    r = run_inproc(*_optimize_args(setup, out))
    assert r.returncode == 0, r.stderr
    assert _staging(base) == []
    assert _all_versions_verify(base) == before + [max(before, default=0) + 1]
    print("kills (signal, after s, exit, staging left):", outcomes)
