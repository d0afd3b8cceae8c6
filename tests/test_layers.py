"""The layers in pyproject.toml ([tool.importlinter]) hold, and a wall violation breaks them (so the check can fail)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ("layers", "wall", "evaluation-seam")


def _lint(root: Path, contract: str | None = None) -> subprocess.CompletedProcess:
    limit = (contract,) if contract else ()
    code = ("import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports("
            f"config_filename='pyproject.toml', limit_to_contracts={limit!r}, no_cache=True, no_logo=True))")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_are_kept():
    r = _lint(ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert f"{len(CONTRACTS)} kept, 0 broken" in r.stdout


@pytest.mark.parametrize("module,line,broken", [
    # a pass that opens a backend itself: the wall, the layers and the evaluation seam all break
    ("passes/fuse.py", "from ..backends import ort as _ort  # noqa", {"layers", "wall", "evaluation-seam"}),
    # the pipeline reaching up into the api
    ("pipeline.py", "from . import api as _api  # noqa", {"layers"}),
    # the bottom layer importing one above it
    ("errors.py", "from . import config as _config  # noqa", {"layers"}),
])
def test_a_violation_breaks_the_contracts(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "optkit", tmp_path / "optkit", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "optkit" / module
    target.write_text(target.read_text() + "\n" + line + "\n")
    got = {c for c in CONTRACTS if _lint(tmp_path, c).returncode != 0}
    assert got == broken
