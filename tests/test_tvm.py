"""Apache TVM backend: compile + run + numerics vs ONNX Runtime (CNN, transformer encoder, QDQ INT8), clear refusals,
crash/timeout isolation of the child processes, and (slow) MetaSchedule tuning with tuning-database reuse.

Every compile here runs TVM in a child process (a few seconds each); the tuning test is marked slow.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed (pip install 'optkit[tvm]')")

from conftest import tiny_cnn  # noqa: E402

from optkit.backends import get_backend  # noqa: E402
from optkit.backends.ort import OrtSession  # noqa: E402
from optkit.backends.tvm import (  # noqa: E402
    LIB_FILE, META_FILE, TvmBackend, TvmOptions, cache_key, cache_root, parse_target)
from optkit.backends.tvm import runner as tvm_runner  # noqa: E402
from optkit.errors import BackendUnavailable, InputError, PassError, RecipeError  # noqa: E402
from fault_workers import faulty_tvm_worker  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _cache_env(tmp_path_factory):
    """Keep tuning databases and the host-CPU memo out of ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPTKIT_CACHE", str(tmp_path_factory.mktemp("optkit-cache")))
        yield


@pytest.fixture(scope="module")
def be() -> TvmBackend:
    return get_backend("tvm")


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("cnn") / "cnn.onnx")  # symbolic batch: compiled for batch 1


@pytest.fixture(scope="module")
def compiled_cnn(be, cnn, tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn-compiled")
    warned = []
    info = be.compile(cnn, out, TvmOptions(), threads=1, warn=warned.append)
    return out, info, warned


def _max_abs(a: dict, b: dict) -> float:
    return max(float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max()) for k in a)


# ---------------------------------------------------------------------------------------------------------------
# no TVM work
# ---------------------------------------------------------------------------------------------------------------


def test_options_targets_and_cache_key(monkeypatch, tmp_path):
    assert TvmOptions.from_dict({"tune": True, "tune_trials": 16, "target": "llvm -mcpu=znver4 -num-cores=2"}).tune
    for bad in ({"tune_trials": 0}, {"target": "cuda"}, {"shapes": {"x": "1xfoo"}}, {"max_trials_per_task": -1},
                {"opt_level": 7}, {"nope": 1}):
        with pytest.raises(RecipeError):
            TvmOptions.from_dict(bad)
    assert parse_target("llvm -mcpu=znver4 -num-cores=2", 1) == {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
    assert parse_target('{"kind": "llvm", "mcpu": "znver4"}', 3) == {"kind": "llvm", "mcpu": "znver4", "num-cores": 3}
    a = cache_key("0" * 64, {"kind": "llvm", "mcpu": "znver4", "num-cores": 1})
    assert a == cache_key("0" * 64, {"num-cores": 1, "mcpu": "znver4", "kind": "llvm"})  # key order does not matter
    assert a != cache_key("0" * 64, {"kind": "llvm", "mcpu": "znver4", "num-cores": 2})
    assert a != cache_key("1" * 64, {"kind": "llvm", "mcpu": "znver4", "num-cores": 1})
    monkeypatch.setenv("OPTKIT_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" / "tvm"
    assert cache_root(str(tmp_path / "opt")) == tmp_path / "opt"  # the option wins over the environment
    monkeypatch.delenv("OPTKIT_CACHE")
    monkeypatch.delenv("OPTKIT_CACHE_DIR", raising=False)
    assert cache_root() == Path.home() / ".cache" / "optkit" / "tvm"


def test_missing_tvm_is_backend_unavailable(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tvm" else real(name, *a))
    with pytest.raises(BackendUnavailable, match="apache-tvm is not installed") as e:
        get_backend("tvm")
    assert "pip install 'optkit[tvm]'" in str(e.value)


def test_import_is_cheap():
    code = "import sys, optkit.backends.tvm, optkit.backends.tvm.worker; print('tvm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------------------------------
# compile + run
# ---------------------------------------------------------------------------------------------------------------


def test_cnn_compile_run_matches_ort(compiled_cnn, be, cnn):
    out, info, warned = compiled_cnn
    assert (out / LIB_FILE).is_file() and (out / META_FILE).is_file()
    meta = json.loads((out / META_FILE).read_text())
    assert meta["target"]["kind"] == "llvm" and meta["target"]["num-cores"] == 1 and meta["tvm"]
    assert meta["inputs"] == [{"name": "input", "dtype": "float32", "shape": [1, 3, 8, 8]}]
    assert meta["outputs"] == [{"name": "logits", "dtype": "float32", "shape": [1, 10]}]
    assert info["tuning"] == {"enabled": False, "status": "off"}
    assert meta["conv_layout"] == info["conv_layout"] == "NHWC"  # auto: channels-last kernels, same model IO
    assert info["numerics"]["passed"] and info["numerics"]["max_abs"] < 1e-4
    assert any("without tuning" in w for w in warned)  # an untuned build says so
    rng = np.random.default_rng(0)
    ref = OrtSession(cnn)
    with be.load(out, threads=1) as s:
        assert [i.name for i in s.inputs] == ["input"] and [o.name for o in s.outputs] == ["logits"]
        for _ in range(3):
            feed = {"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
            got = s.run(feed)
            assert got["logits"].shape == (1, 10)
            assert _max_abs(got, ref.run(feed)) < 1e-4
        # a non-contiguous / float64 feed is staged, not rejected
        odd = {"input": np.asfortranarray(rng.standard_normal((1, 3, 8, 8)))}
        assert _max_abs(s.run(odd), ref.run({"input": odd["input"].astype(np.float32)})) < 1e-4
        with pytest.raises(InputError, match="compiled for"):
            s.run({"input": np.zeros((2, 3, 8, 8), np.float32)})
        with pytest.raises(InputError, match="missing input"):
            s.run({})


def test_load_artifact_model_onnx_uses_compiled_dir(compiled_cnn, be, cnn, tmp_path):
    out, _, _ = compiled_cnn
    art = tmp_path / "art"
    (art / "compiled").mkdir(parents=True)
    (art / "model.onnx").write_bytes(cnn.read_bytes())
    for f in out.iterdir():
        (art / "compiled" / f.name).write_bytes(f.read_bytes())
    with be.load(art / "model.onnx") as s:  # the artifact's build (same source sha), no recompile
        assert s._tmp is None and Path(s.meta["lib"]).name == LIB_FILE
    with be.load(art) as s:
        assert s._tmp is None


def test_load_raw_onnx_compiles_untuned(be, cnn):
    feed = {"input": np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    with be.load(cnn, threads=1) as s:
        assert s._tmp is not None and s.meta["tuning"]["status"] == "off"
        tmp = Path(s._tmp.name)
        assert _max_abs(s.run(feed), OrtSession(cnn).run(feed)) < 1e-4
    assert not tmp.exists()  # the temporary build goes with the session


def test_encoder_compile_run_matches_ort(be, tmp_path):
    pytest.importorskip("torch")
    from optkit.examples import encoder

    src = tmp_path / "enc.onnx"
    encoder.export(encoder.build_encoder(vocab=100, hidden=32, layers=1, heads=2, ffn=64), src, seq=16)
    with pytest.raises(InputError, match="static input shapes"):  # symbolic seq and no shape given
        be.compile(src, tmp_path / "nope", TvmOptions(), 1, warn=lambda m: None)
    info = be.compile(src, tmp_path / "c", TvmOptions(), 1, shapes={"input_ids": (1, 16), "attention_mask": (1, 16)},
                      warn=lambda m: None)
    assert info["shapes"] == {"input_ids": [1, 16], "attention_mask": [1, 16]} and info["numerics"]["passed"]
    assert info["conv_layout"] == "NCHW"  # no convolutions: nothing converted
    feeds = encoder.sample_feeds(3, seq=16, vocab=100)
    ref = OrtSession(src)
    with be.load(tmp_path / "c") as s:
        for i in range(3):
            feed = {k: v[i] for k, v in feeds.items()}  # padded masks
            got = s.run(feed)
            assert got["last_hidden_state"].shape == (1, 16, 32)
            assert _max_abs(got, ref.run(feed)) < 1e-4


@pytest.mark.isa
def test_qdq_int8_runs_as_fake_quant_and_says_so(be, cnn, tmp_path):
    """TVM runs Q/DQ as float fake-quant, so it is judged against ORT running them as float too (like with like, on
    every ISA). ORT's *integer* kernels are another program whose numbers depend on the CPU: S8 activations go through
    the U8S8 kernel, and without VNNI VPMADDUBSW saturates its 16-bit pair sums (``hw.ort_int8_kernels`` measures
    which this host does). ``make test-isa`` reruns this under QEMU as an AVX2-only CPU (ORT has no switch of its own
    to pick the non-VNNI kernels)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from optkit.hw import ort_int8_kernels

    rng = np.random.default_rng(2)
    feeds = [{"input": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]

    class Reader:
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    static = tmp_path / "cnn_static.onnx"
    onnx.save(onnx.shape_inference.infer_shapes(onnx.load(cnn)), static)
    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(static), str(qdq), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    warned = []
    info = be.compile(qdq, tmp_path / "c", TvmOptions(), 1, warn=warned.append)
    assert info["int8"]["qdq_nodes"] > 0 and "fake-quant" in info["int8"]["kernels"]
    assert any("no INT8 QDQ fusion" in w for w in warned)
    assert info["numerics"]["passed"] and "fake-quant" in info["numerics"]["vs"]  # the reference it used, said
    fake = OrtSession(qdq, fake_quant=True).run(feeds[0])
    scale = max(float(np.abs(v).max()) for v in fake.values())
    with be.load(tmp_path / "c") as s:  # the same program: float rounding apart, the same numbers
        assert _max_abs(s.run(feeds[0]), fake) <= 1e-4 * scale + 1e-6
    # ORT's integer path, judged against what ORT documents for this host's kernels
    kernels = OrtSession(qdq).run(feeds[0])
    if ort_int8_kernels()["u8s8_saturates"]:
        # VPMADDUBSW pair sums saturate: the integer path is not the fake-quant program (this is why optkit never
        # judges an integer-kernel build by a fake-quant reference, nor the other way round)
        assert _max_abs(kernels, fake) > 0.01 * scale
    else:  # VNNI/AMX accumulate in 32 bits: only the requantization rounding differs, a few quantization steps
        assert _max_abs(kernels, fake) <= 0.05 * scale + 1e-3


def test_qoperator_model_fails_naming_the_ops(be, cnn, tmp_path):
    from onnxruntime.quantization import QuantFormat, quantize_static

    class Reader:
        def __init__(self):
            self.it = iter([{"input": np.ones((1, 3, 8, 8), np.float32)}])

        def get_next(self):
            return next(self.it, None)

    qop = tmp_path / "qop.onnx"
    quantize_static(str(cnn), str(qop), Reader(), quant_format=QuantFormat.QOperator)
    with pytest.raises(PassError, match="QLinearConv") as e:
        be.compile(qop, tmp_path / "c", TvmOptions(), 1, warn=lambda m: None)
    assert "fp32-tvm" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# child-process isolation
# ---------------------------------------------------------------------------------------------------------------


def test_tuning_crash_falls_back_untuned_loudly(be, cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(tvm_runner, "WORKER", faulty_tvm_worker(tmp_path / "w", "tune", "segv"))
    warned = []
    opts = TvmOptions(tune=True, tune_trials=8, cache_dir=str(tmp_path / "cache"), conv_layout="NCHW")
    info = be.compile(cnn, tmp_path / "c", opts, 1, warn=warned.append)  # the parent survives a SIGSEGV child
    assert info["conv_layout"] == "NCHW"
    t = info["tuning"]
    assert t["status"] == "crashed" and t["signal"] == "SIGSEGV" and t["db"] is None
    assert Path(t["log"]).is_file() and "failing on purpose" in Path(t["log"]).read_text()
    assert any("TUNING FAILED" in w and t["log"] in w for w in warned)
    meta = json.loads((tmp_path / "c" / META_FILE).read_text())
    assert meta["tuning"]["status"] == "crashed"  # never recorded as tuned
    assert not any(p.name == t["cache_key"] for p in (tmp_path / "cache").iterdir())  # half DB moved aside
    feed = {"input": np.ones((1, 3, 8, 8), np.float32)}
    with be.load(tmp_path / "c") as s:
        assert _max_abs(s.run(feed), OrtSession(cnn).run(feed)) < 1e-4


def test_tuning_timeout_falls_back_untuned(be, cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(tvm_runner, "WORKER", faulty_tvm_worker(tmp_path / "w", "tune", "hang"))
    warned = []
    opts = TvmOptions(tune=True, tune_timeout_s=2, cache_dir=str(tmp_path / "cache"))
    info = be.compile(cnn, tmp_path / "c", opts, 1, warn=warned.append)
    assert info["tuning"]["status"] == "timeout" and any("tune_timeout_s" in w for w in warned)


def test_build_crash_is_a_clear_error(be, cnn, tmp_path, monkeypatch):
    monkeypatch.setattr(tvm_runner, "WORKER", faulty_tvm_worker(tmp_path / "w", "build", "exit"))
    with pytest.raises(PassError, match="crashed") as e:
        be.compile(cnn, tmp_path / "c", TvmOptions(), 1, warn=lambda m: None)
    assert str(tmp_path / "c" / "build.log") in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# tuning (slow: MetaSchedule measures real kernels)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_tuning_tiny_budget_then_database_reuse(be, cnn, tmp_path):
    cache = tmp_path / "cache"
    opts = TvmOptions(tune=True, tune_trials=8, cache_dir=str(cache))
    first = be.compile(cnn, tmp_path / "a", opts, 1, warn=lambda m: None)
    t1 = first["tuning"]
    assert t1["status"] == "tuned" and t1["db"] == "new"
    assert 0 < t1["trials_run"] <= 8 + t1["tasks"]  # MetaSchedule finishes the per-task batch it started
    db = Path(t1["db_dir"])
    assert db.parent == cache and (db / "database_tuning_record.json").is_file() and (db / "optkit-tuning.json").is_file()
    assert t1["tuned_tasks"]["tuned"] >= 1

    second = be.compile(cnn, tmp_path / "b", opts, 1, warn=lambda m: None)
    t2 = second["tuning"]
    assert t2["status"] == "reused" and t2["db"] == "reused" and t2["cache_key"] == t1["cache_key"]
    assert t2["tuned_tasks"] == t1["tuned_tasks"]
    assert second["compile_seconds"] < first["compile_seconds"]  # no tuning the second time

    feed = {"input": np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)}
    with be.load(tmp_path / "a") as a, be.load(tmp_path / "b") as b:
        np.testing.assert_allclose(a.run(feed)["logits"], b.run(feed)["logits"], rtol=1e-5, atol=1e-6)
        assert _max_abs(a.run(feed), OrtSession(cnn).run(feed)) < 1e-4

    bigger = be.compile(cnn, tmp_path / "c", TvmOptions(tune=True, tune_trials=12, cache_dir=str(cache)), 1,
                        warn=lambda m: None)  # a larger budget than the database holds tunes on into it
    assert bigger["tuning"]["status"] == "tuned" and bigger["tuning"]["db"] == "extended"
