"""`import optkit`, `optkit recipes` and `optkit passes` load no heavy library (each checked in a fresh interpreter)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnxruntime", "tensorflow", "tvm", "onnxsim", "neural_compressor", "optuna", "ray", "scipy",
         "sklearn", "tf2onnx", "tensorrt", "onnxslim", "onnxscript")

PROBE = """
import contextlib, io, json, sys
what = sys.argv[1]
if what == "import":
    import optkit
elif what == "load_recipe":
    import optkit
    optkit.load_recipe("int8-ort")
else:
    sys.argv = ["optkit", what]
    from optkit.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main()
        except SystemExit as e:
            assert not e.code, e.code
    assert out.getvalue().strip()
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.parametrize("what", ["import", "load_recipe", "recipes", "passes"])
def test_no_heavy_library_is_loaded(what):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", PROBE, what], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert "optkit" in loaded
    assert sorted(loaded & set(HEAVY)) == []


def test_import_optkit_loads_neither_numpy_nor_onnx():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-c", PROBE, "import"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1]))
    assert not loaded & {"numpy", "onnx", "yaml", "typer", "rich"}
