"""Model handling (external data, FLOPs, signature) and sample inputs (npz forms, validation)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from conftest import cnn_data, tiny_cnn, tiny_cnn_flops, tiny_matmul
from optkit import model as M
from optkit.data import load_samples, parse_shape_args, resolve_shapes, synthetic_samples
from optkit.errors import InputError
from optkit.hw import _parse_cpuinfo, int8_choice


def test_external_data_round_trip(tmp_path, monkeypatch):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(64 * 64, dtype=np.float32).reshape(64, 64), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [w])
    m = helper.make_model(g)
    monkeypatch.setattr(M, "EXTERNAL_DATA_THRESHOLD", 100)  # pretend the tiny model is > 2 GB
    out = M.save_model(m, tmp_path / "big" / "model.onnx")
    files = M.model_files(out)
    assert [f.name for f in files] == ["model.onnx", "model.onnx.data"]
    again = M.load_model(out)
    a = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    b = {t.name: onnx.numpy_helper.to_array(t) for t in again.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    sha = M.sha256_file(out)
    (tmp_path / "big" / "model.onnx.data").write_bytes(b"x" * 10)
    assert M.sha256_file(out) != sha  # the hash covers the external weights


def test_info_signature_flops_params(tmp_path):
    m = M.load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    info = M.model_info(m, {"input": (4, 3, 8, 8)})
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 8, 8]}]
    assert info["flops"]["total"] == tiny_cnn_flops(4)
    assert info["ops"]["Conv"] == 1 and info["opsets"] == {"ai.onnx": 17}
    assert info["params"] == 8 * 3 * 9 + 8 + 10 * 8 + 10


def test_matmul_flops_use_given_shapes(tmp_path):
    m = M.load_model(tiny_matmul(tmp_path / "mm.onnx"))
    assert M.flops(m, {"x": (2, 5, 16)})["total"] == 2 * 2 * 5 * 8 * 16


def test_shape_args_and_resolution(tmp_path):
    assert parse_shape_args(["x=1x3x224x224", "ids= 2X128 "]) == {"x": (1, 3, 224, 224), "ids": (2, 128)}
    for bad in ["x", "x=", "x=1xa", "=1x2", "x=0x3", "x=2,128", "x=1xx3", "x=-1x3", "x=1x", "x=1 x 3", "x=+1"]:
        with pytest.raises(InputError, match="--shape"):
            parse_shape_args([bad])
    inputs, _ = M.signature(M.load_model(tiny_matmul(tmp_path / "mm.onnx")))
    with pytest.raises(InputError, match=r"symbolic dim 'seq' at axis 1.*--shape x=1xNx16"):
        resolve_shapes(inputs, None)
    assert resolve_shapes(inputs, {"x": (3, 7, 16)}) == {"x": (3, 7, 16)}
    with pytest.raises(InputError, match="fixes it to 16"):
        resolve_shapes(inputs, {"x": (1, 7, 15)})
    with pytest.raises(InputError, match="unknown input 'y'"):
        resolve_shapes(inputs, {"y": (1,)})


def test_one_shape_syntax_for_shape_args_tvm_and_trt():
    """--shape, TVM's shapes option and TensorRT profiles share optkit.data.parse_dims: the same strings pass and
    fail everywhere (',' separates MIN,OPT,MAX in a profile, never dims)."""
    from optkit.backends.trt import parse_profile, parse_shape
    from optkit.backends.tvm import TvmOptions
    from optkit.data import parse_dims
    from optkit.errors import RecipeError

    good = {"1x3x8x8": (1, 3, 8, 8), " 4X16 ": (4, 16), "7": (7,)}
    bad = ["", "x", "1xx3", "0x3", "1,3", "1x-3", "1xfour", "1.5x2", "1 x 3"]
    for text, dims in good.items():
        assert parse_dims(text) == parse_shape(text) == dims
        assert parse_shape_args([f"a={text}"]) == {"a": dims}
        assert TvmOptions.from_dict({"shapes": {"a": text}}).shapes == {"a": text}
    for text in bad:
        with pytest.raises(InputError):
            parse_dims(text)
        with pytest.raises(RecipeError):
            parse_shape(text)
        with pytest.raises(InputError):
            parse_shape_args([f"a={text}"])
        with pytest.raises(RecipeError, match="shapes"):
            TvmOptions.from_dict({"shapes": {"a": text}})
    assert parse_profile("1x3,2x3,4x3") == ((1, 3), (2, 3), (4, 3))
    with pytest.raises(RecipeError):
        parse_profile("1x3,2x3x")


def test_cnn_batch_dim_defaults_to_one(tmp_path):
    inputs, _ = M.signature(M.load_model(tiny_cnn(tmp_path / "cnn.onnx")))
    assert resolve_shapes(inputs, None) == {"input": (1, 3, 8, 8)}


def test_npz_forms(tmp_path):
    m = M.load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    stacked = load_samples(cnn_data(tmp_path / "s.npz", n=5, batch=2), m)
    assert len(stacked) == 5 and stacked.feeds[0]["input"].shape == (2, 3, 8, 8)
    assert stacked.labels[0].shape == (2,)
    single = load_samples(cnn_data(tmp_path / "one.npz", batch=3, stacked=False), m)
    assert len(single) == 1 and single.feeds[0]["input"].shape == (3, 3, 8, 8)
    d = tmp_path / "dir"
    for i in range(3):
        cnn_data(d / f"{i}.npz", batch=1, stacked=False, seed=i)
    many = load_samples(d, m)
    assert len(many) == 3 and not many.synthetic and many.labels is not None
    assert len(stacked.batched(4)) == 2 and stacked.batched(4).feeds[0]["input"].shape == (4, 3, 8, 8)


def test_npz_validation(tmp_path):
    m = M.load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    with pytest.raises(InputError, match=r"unknown \['image'\].*missing \['input'\]"):
        load_samples(cnn_data(tmp_path / "a.npz", name="image"), m)
    with pytest.raises(InputError, match="expects \\[batch, 3, 8, 8\\]"):
        load_samples(cnn_data(tmp_path / "b.npz", hw=9), m)
    np.savez(tmp_path / "c.npz", input=np.zeros((1, 3, 8, 8), np.int32))
    with pytest.raises(InputError, match="is int32, the model expects float32"):
        load_samples(tmp_path / "c.npz", m)
    with pytest.raises(InputError, match="not found"):
        load_samples(tmp_path / "nope.npz", m)


def test_synthetic_samples_respect_embedding_range(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    emb = numpy_helper.from_array(np.zeros((7, 4), np.float32), "emb")
    g = helper.make_graph([helper.make_node("Gather", ["emb", "ids"], ["y"])], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, 4])], [emb])
    s = synthetic_samples(helper.make_model(g), n=20)
    ids = np.stack([f["ids"] for f in s.feeds])
    assert s.synthetic and ids.min() >= 0 and ids.max() < 7 and ids.max() > 2
    assert "synthetic" in s.warnings[0]


def test_cpu_flags_and_int8_choice():
    model, flags = _parse_cpuinfo("model name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert model == "AMD EPYC 9R14" and "avx512_vnni" in flags
    vnni = int8_choice({"isa": {"avx512_vnni": True, "avx2": True}})
    assert (vnni["activation"], vnni["weight"], vnni["reduce_range"]) == ("uint8", "int8", False)
    assert int8_choice({"isa": {"avx2": True}})["reduce_range"] is True


def test_compare_flags_a_changed_output_shape():
    """Same numbers in another shape are not the same output (a CTC decoder reading [seq, 1, classes] breaks on
    [1, seq*classes]): compare flags it so an exact pass that reshapes an output fails instead of passing."""
    from optkit.metrics import compare, within

    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    d = compare([{"y": a}], [{"y": a.reshape(3, 2)}])
    assert d["outputs"]["y"]["shape_mismatch"] and not within(d, 1e-3, 1e-4, 0.999)
    assert within(compare([{"y": a}], [{"y": a.copy()}]), 1e-3, 1e-4, 0.999)
    # near-zero outputs that agree to atol element by element are equal, whatever their cosine says
    tiny = np.full((1, 64), 1e-7, np.float32)
    noisy = tiny + np.random.default_rng(0).normal(0, 1e-7, tiny.shape).astype(np.float32)
    d = compare([{"y": tiny}], [{"y": noisy}])
    assert d["outputs"]["y"]["cosine"] < 0.999 and within(d, 1e-3, 1e-4, 0.999)
    # a real change (beyond atol) with a low cosine still fails
    big = np.random.default_rng(1).normal(0, 1, (1, 64)).astype(np.float32)
    assert not within(compare([{"y": big}], [{"y": big + np.random.default_rng(2).normal(0, 0.5, big.shape).astype(np.float32)}]),
                      1e-3, 1e-4, 0.999)
