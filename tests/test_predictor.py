"""optkit.load (artifact → predictor on its backend) and one recipe compared across backends (bench matrix,
optimize --backend)."""
from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

import optkit
from conftest import run_cli
from optkit.errors import BackendUnavailable, InputError


@pytest.fixture(scope="module")
def artifact(tmp_path_factory, ):
    from conftest import tiny_cnn

    base = tmp_path_factory.mktemp("pred")
    model = tiny_cnn(base / "cnn.onnx")
    rng = np.random.default_rng(0)
    np.savez(base / "data.npz", input=rng.standard_normal((8, 2, 3, 8, 8)).astype(np.float32))
    # force: keep the INT8 model even where the guard would find it slower (a tiny model), so it is QDQ for sure
    man = optkit.optimize(model, "int8-ort", data=base / "data.npz", output=base / "out", backends="ort,trt", force=True)
    return base, man


def test_load_runs_like_ort(artifact):
    base, man = artifact
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(man["artifact"] + "/model.onnx", providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with optkit.load(man["artifact"]) as p:
        assert p.backend == "ort" and [s.name for s in p.inputs] == ["input"] and p.manifest["recipe"]["name"] == "int8-ort"
        np.testing.assert_allclose(p.run({"input": x})["logits"], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(p([x])["logits"], want, rtol=1e-6, atol=1e-6)  # positional, and float64 is cast
        np.testing.assert_allclose(p.run({"input": x.astype(np.float64)})["logits"], want, rtol=1e-6, atol=1e-6)
        with pytest.raises(InputError, match="missing input"):
            p.run({"other": x})
    # OUT/<name> (the versions' parent) opens the latest version; a bare .onnx opens on ORT
    p = optkit.load(base / "out" / "cnn")
    assert p.path.name == "1"
    p.close()
    assert optkit.load(base / "cnn.onnx").manifest is None


def test_load_errors(artifact, tmp_path):
    base, man = artifact
    with pytest.raises(BackendUnavailable, match="trt"):
        optkit.load(man["artifact"], backend="trt")
    with pytest.raises(InputError, match="not found"):
        optkit.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="numbered versions"):
        optkit.load(tmp_path / "empty")


def test_optimize_for_several_backends_records_each(artifact):
    base, man = artifact
    assert set(man["backends"]) == {"ort", "trt"} and man["backend"]["backend"] == "ort"
    # the int8-ort model is asymmetric U8 QDQ: TensorRT cannot take it, and the manifest says why instead of hiding it
    trt = man["backends"]["trt"]
    assert trt["status"] == "failed" and "uint8" in trt["reason"] and "int8-trt" in trt["reason"]
    # an FP32 result is TensorRT-ready: the extra backend's directory holds the ONNX and the engine-build command
    man = optkit.optimize(base / "cnn.onnx", "fp32-ort", data=base / "data.npz", output=base / "out32", backends=["ort", "trt"])
    trt = man["backends"]["trt"]
    assert trt["status"] == "ok" and trt["engine_built"] is False and "TensorRT" in trt["reason"]
    assert "trtexec" in (base / "out32" / "cnn" / "1" / "compiled-trt" / "trtexec.sh").read_text()


def test_bench_matrix_lists_unavailable_backends(artifact):
    _, man = artifact
    res = optkit.bench(man["artifact"], backend="ort,trt", rounds=2, round_time=0.02)
    rows = {r["key"]: r for r in res["rows"]}
    assert set(rows) == {"ort/reference", "ort/candidate", "trt/candidate"}
    assert rows["ort/reference"]["precision"] == "fp32" and rows["ort/candidate"]["precision"] == "int8"
    assert rows["trt/candidate"]["status"] == "unavailable" and "TensorRT" in rows["trt/candidate"]["reason"]
    cand = rows["ort/candidate"]
    assert cand["status"] == "ok" and cand["latency"]["runs"] >= 40 and cand["speedup_vs_reference"]["median"] > 0
    assert cand["accuracy"]["vs_reference"]["cosine"] > 0.99 and res["protocol"]["alternating"]


def test_cli_bench_matrix_and_bad_backend(artifact):
    _, man = artifact
    r = run_cli("bench", man["artifact"], "--backend", "all", "--rounds", "1", "--round-time", "0.02")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())
    assert "│ ort │ reference │ fp32 │" in text and "│ ort │ candidate │ int8 │" in text
    assert "unavailable" in text and "tvm" in text and "trt" in text
    r = run_cli("bench", man["artifact"], "--backend", "ort,nope")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("bench", man["artifact"], "--backend", "trt", "--format", "json")
    assert r.returncode == 4 and "TensorRT" in r.stderr
    r = run_cli("bench", man["artifact"], "--backend", "ort,trt", "--rounds", "1", "--round-time", "0.02", "--format", "json")
    assert r.returncode == 0 and json.loads(r.stdout)["rows"][2]["status"] == "unavailable"
