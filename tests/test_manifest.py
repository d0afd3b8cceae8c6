"""The manifest is typed data (optkit.manifest.Manifest) whose JSON schema is generated, not hand-written."""
from __future__ import annotations

import json

import pytest

import optkit
from conftest import cnn_data, tiny_cnn
from optkit.manifest import SCHEMA_PATH, Manifest, json_schema


def test_committed_schema_is_the_generated_one():
    assert json.loads(SCHEMA_PATH.read_text()) == json_schema(), \
        "run `python -m optkit.manifest --write-schema` after changing optkit/manifest.py"


@pytest.mark.parametrize("recipe", ["fp32-ort", "int8-ort"])
def test_a_written_manifest_follows_the_schema_and_reads_back_typed(tmp_path, recipe):
    jsonschema = pytest.importorskip("jsonschema")
    man = optkit.optimize(tiny_cnn(tmp_path / "m.onnx"), recipe, data=cnn_data(tmp_path / "d.npz", n=8),
                          output=tmp_path / "out", allow_miss=True)
    on_disk = json.loads((tmp_path / "out" / "m" / "1" / "manifest.json").read_text())
    jsonschema.validate(on_disk, json_schema())
    typed = Manifest.from_dict(on_disk)
    assert typed.data.feeds == 8 and typed.data.eval.feeds == 8 and typed.threads == 1
    assert (typed.tolerance is None) == (recipe == "fp32-ort")
    if typed.tolerance is not None:
        assert typed.tolerance.default_gate and typed.tolerance.trials >= 1
    assert typed.files and typed.output["path"] in typed.files
    assert Manifest.from_dict(typed.to_dict()).to_dict() == typed.to_dict()


def test_a_mistyped_manifest_is_named():
    jsonschema = pytest.importorskip("jsonschema")
    good = {"schema": 2, "created": "x", "input": {}, "ingest": {}, "output": {}, "recipe": {}, "shapes": {},
            "user_shapes": {}, "data": {"source": "s", "synthetic": False, "feeds": 1, "labels": False,
                                         "eval": {"source": "s", "feeds": 1, "labels": False}},
            "pass_log": [], "backend": {}, "backends": {}, "threads": 1, "optimize_seconds": 1.0,
            "guard": {"enabled": True}, "evaluator": {}, "environment": {}, "reproduce": {}}
    jsonschema.validate(good, json_schema())
    Manifest.from_dict(good)
    with pytest.raises(ValueError, match="'threads' is a str"):
        Manifest.from_dict({**good, "threads": "1"})
    with pytest.raises(ValueError, match="no 'pass_log'"):
        Manifest.from_dict({k: v for k, v in good.items() if k != "pass_log"})
    with pytest.raises(ValueError, match="'data.feeds' is a bool"):
        Manifest.from_dict({**good, "data": {**good["data"], "feeds": True}})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "threads": "1"}, json_schema())
