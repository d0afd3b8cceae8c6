"""optkit optimize-many with the local executor, and the executor choice (Ray itself: tests/test_ray.py)."""
from __future__ import annotations

import builtins
import json

import pytest

from conftest import cnn_data, run_cli, tiny_cnn
from optkit.errors import InputError
from optkit.fleet import read_models
from optkit.ray_executor import parse_executor


def test_parse_executor_and_models_file(tmp_path):
    assert parse_executor("local") == ("local", None)
    assert parse_executor("ray") == ("ray", None)
    assert parse_executor("ray:ray://head:10001") == ("ray", "ray://head:10001")
    with pytest.raises(InputError, match="unknown --executor"):
        parse_executor("dask")
    (tmp_path / "a").mkdir()
    lst = tmp_path / "models.txt"
    lst.write_text("# fleet\na/m.onnx a/m.npz\nb/m.onnx   # same stem, other dir\n\n")
    units = read_models(lst)
    assert [u["name"] for u in units] == ["m", "m_2"]
    assert units[0]["data"] == tmp_path / "a" / "m.npz" and units[1]["data"] is None


def test_missing_ray_is_one_clear_line(monkeypatch):
    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from optkit import serving as sv

    with pytest.raises(InputError) as e:
        sv.make_executor("ray")
    assert "needs Ray" in e.value.what and "pip install" in e.value.hint


def test_optimize_many_local_one_broken_model(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    tiny_cnn(d / "good.onnx")
    cnn_data(d / "good.npz", n=8)
    (d / "broken.onnx").write_bytes(b"not a model")
    r = run_cli("optimize-many", d, "--recipe", "fp32-ort", "-o", tmp_path / "out", timeout=300)
    assert r.returncode == 1, r.stderr  # a failed row makes the command fail, after every model ran
    assert "good" in r.stdout and "broken" in r.stdout and "1 ok, 0 missed the tolerance, 1 failed" in r.stdout
    assert "[2/2]" in r.stderr
    summary = json.loads(next((tmp_path / "out").glob("fleet-*.json")).read_text())
    rows = {x["name"]: x for x in summary["rows"]}
    assert rows["good"]["status"] == "ok" and rows["good"]["artifact"].endswith("good/1")
    assert rows["broken"]["status"] == "failed" and rows["broken"]["exit_code"] != 0
    assert summary["executor"] == "local"
