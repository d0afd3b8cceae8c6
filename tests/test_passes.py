"""Each pass on a tiny model built in code: the structural change, numerics on ONNX Runtime, onnx.checker."""
from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import cnn_data, tiny_cnn, tiny_matmul
from optkit.data import load_samples, synthetic_samples
from optkit.metrics import compare
from optkit.model import load_model
from optkit.passes import Context, get_pass
from optkit.pipeline import run_model


def _ctx(model, samples=None, **kw):
    return Context(samples=samples if samples is not None else synthetic_samples(model, n=4), **kw)


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _run(name, model, ctx, **options):
    out = get_pass(name)(options).run(model, ctx)
    onnx.checker.check_model(out.model)
    return out


def conv_bn_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.standard_normal(4).astype(np.float32)
    mean, var = rng.standard_normal(4).astype(np.float32), rng.uniform(0.5, 2, 4).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "w"), (scale, "s"), (bias, "b"), (mean, "m"), (var, "v"))]
    # a foldable constant branch: (c1 + c2) * x
    inits += [numpy_helper.from_array(np.full((1,), 0.5, np.float32), "c1"), numpy_helper.from_array(np.full((1,), 1.5, np.float32), "c2")]
    nodes = [helper.make_node("Add", ["c1", "c2"], ["c"]),
             helper.make_node("Mul", ["x", "c"], ["xs"]),
             helper.make_node("Conv", ["xs", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["y", "s", "b", "m", "v"], ["z"]),
             helper.make_node("Relu", ["z"], ["out"])]
    g = helper.make_graph(nodes, "convbn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 4, 8, 8])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_simplify_folds_constants_and_is_exact():
    m = conv_bn_model()
    ctx = _ctx(m)
    res = _run("simplify", m, ctx)
    assert len(res.model.graph.node) < len(m.graph.node)
    assert "Add" not in _ops(res.model)
    assert res.metrics["engine"] == "onnxsim" and res.metrics["failed"] == []
    delta = collections.Counter(_ops(res.model))
    delta.subtract(collections.Counter(_ops(m)))
    assert res.metrics["ops"] == {op: d for op, d in delta.items() if d} and res.metrics["ops"]["Add"] < 0
    d = compare(run_model(m, ctx.samples.feeds), run_model(res.model, ctx.samples.feeds))
    assert d["max_abs"] < 1e-4 and d["cosine"] > 0.99999


def test_simplify_falls_back_to_onnxslim(monkeypatch):
    import optkit.passes.simplify as simp

    def broken(model):
        raise RuntimeError("onnxsim exploded")

    monkeypatch.setattr(simp, "_onnxsim", broken)
    m = conv_bn_model()
    res = _run("simplify", m, _ctx(m))
    assert res.metrics["engine"] == "onnxslim" and res.metrics["failed"] == ["onnxsim"]
    assert "onnxsim exploded" in res.metrics["errors"][0]  # the engine's own error is kept
    assert len(res.model.graph.node) < len(m.graph.node)


def test_fix_shapes_makes_dims_static(tmp_path):
    m = load_model(tiny_matmul(tmp_path / "mm.onnx"))
    res = _run("fix-shapes", m, _ctx(m, synthetic_samples(m, {"x": (2, 5, 16)}), shapes={"x": (2, 5, 16)}))
    dims = [d.dim_value for d in res.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 5, 16]


def test_fuse_folds_batchnorm_into_conv_and_reports_it():
    m = conv_bn_model()
    ctx = _ctx(m)
    res = _run("fuse", m, ctx)
    assert "BatchNormalization" not in _ops(res.model)
    assert res.metrics["ops"]["BatchNormalization"] == -1 and res.metrics["graph_patterns"] is True
    assert res.metrics["model_type"] == "none" and res.metrics["detected"] is True
    d = compare(run_model(m, ctx.samples.feeds), run_model(res.model, ctx.samples.feeds))
    assert d["cosine"] > 0.99999


def test_fp16_converts_weights_keeps_io(tmp_path):
    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    ctx = _ctx(m)
    res = _run("fp16", m, ctx)
    assert {t.data_type for t in res.model.graph.initializer if len(t.dims) > 1} == {TensorProto.FLOAT16}
    assert res.model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert res.model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    d = compare(run_model(m, ctx.samples.feeds), run_model(res.model, ctx.samples.feeds))
    assert 0 < d["max_abs"] < 0.05 and d["cosine"] > 0.999


def test_fp16_blocklist_keeps_ops_in_float32(tmp_path):
    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    res = _run("fp16", m, _ctx(m), op_blocklist=["Gemm"])
    gemm = next(n for n in res.model.graph.node if n.op_type == "Gemm")
    w = next(t for t in res.model.graph.initializer if t.name == gemm.input[1])
    assert w.data_type == TensorProto.FLOAT


def test_int8_dynamic_quantizes_matmul(tmp_path):
    m = load_model(tiny_matmul(tmp_path / "mm.onnx"))
    ctx = _ctx(m, synthetic_samples(m, {"x": (1, 4, 16)}))
    res = _run("int8-dynamic", m, ctx)
    assert "MatMulInteger" in _ops(res.model) or "DynamicQuantizeMatMul" in _ops(res.model)
    d = compare(run_model(m, ctx.samples.feeds), run_model(res.model, ctx.samples.feeds))
    assert d["cosine"] > 0.999


def _qparams(model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return inits, [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_int8_static_u8s8_per_channel_on_vnni(tmp_path):
    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    samples = load_samples(cnn_data(tmp_path / "d.npz", n=16), m)
    vnni = {"model": "test", "isa": {"avx512_vnni": True, "avx2": True}}
    res = _run("int8-static", m, _ctx(m, samples, cpu=vnni))
    inits, qdq = _qparams(res.model)
    act_zp = [inits[n.input[2]] for n in qdq if n.op_type == "QuantizeLinear"]
    assert act_zp and all(z.dtype == np.uint8 for z in act_zp)
    conv_w = next(n for n in qdq if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                  and inits[n.input[0]].ndim == 4)
    assert inits[conv_w.input[0]].dtype == np.int8
    assert inits[conv_w.input[1]].shape == (8,)  # one scale per output channel
    d = compare(run_model(m, samples.feeds), run_model(res.model, samples.feeds))
    assert d["cosine"] > 0.99
    assert any("calibration: minmax on 16 feed(s)" in n for n in res.notes)
    assert res.metrics["int8"]["reduce_range"] is False  # VNNI: the full u8 x s8 range


def test_int8_static_host_without_vnni_uses_reduce_range(tmp_path):
    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    samples = load_samples(cnn_data(tmp_path / "d.npz", n=4), m)
    res = _run("int8-static", m, _ctx(m, samples, cpu={"model": "old", "isa": {"avx2": True}}))
    assert res.metrics["int8"]["reduce_range"] is True


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_int8_static_calibration_methods(tmp_path, method):
    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    samples = load_samples(cnn_data(tmp_path / "d.npz", n=8), m)
    res = _run("int8-static", m, _ctx(m, samples), calibration=method)
    assert "QuantizeLinear" in _ops(res.model)
    assert any(f"calibration: {method}" in n for n in res.notes)


def test_int8_static_symmetric_s8_for_tensorrt(tmp_path):
    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    samples = load_samples(cnn_data(tmp_path / "d.npz", n=8), m)
    res = _run("int8-static", m, _ctx(m, samples), activation_type="int8", weight_type="int8",
               symmetric_activations=True, symmetric_weights=True)
    inits, qdq = _qparams(res.model)
    zps = [inits[n.input[2]] for n in qdq if len(n.input) > 2]
    assert zps and not any(z.any() for z in zps)  # symmetric: every zero point is 0
    assert {z.dtype for z in zps} <= {np.dtype(np.int8), np.dtype(np.int32)}  # S8 tensors, int32 biases
    assert np.dtype(np.int8) in {z.dtype for z in zps}


def test_int8_static_without_samples_is_a_clear_error(tmp_path):
    from optkit.errors import PassError

    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    with pytest.raises(PassError, match="calibration samples"):
        get_pass("int8-static")().run(m, Context(samples=None))


def test_int8_dynamic_leaves_conv_in_float_by_default(tmp_path):
    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    ctx = _ctx(m)
    res = _run("int8-dynamic", m, ctx)
    assert "ConvInteger" not in _ops(res.model) and "Conv" in _ops(res.model)
    assert any("left in float: Conv" in n for n in res.notes)
    forced = _run("int8-dynamic", m, ctx, op_types=["Conv"])
    assert "ConvInteger" in _ops(forced.model)


def test_no_pass_changes_its_input_model(tmp_path):
    """A pass returns a new model and leaves the one it was given as it was: the pipeline keeps using the input (the
    reference, the speed baseline, other candidates) and the pass cache keys it by its bytes. (onnxslim.slim edited
    fuse's input in place: every cache key downstream changed and a re-run missed the cache.)"""
    import onnx

    from conftest import cnn_data, tiny_cnn, tiny_matmul
    from optkit.data import load_samples
    from optkit.model import model_digest
    from optkit.passes import Context, get_pass

    def const_of_shape(path):  # an attribute tensor without a name: onnxslim writes name "" into it in place
        from onnx import TensorProto, helper

        nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
                 helper.make_node("ConstantOfShape", ["s"], ["z"], name="cos",
                                  value=helper.make_tensor("", TensorProto.FLOAT, [1], [0.5])),
                 helper.make_node("Add", ["x", "z"], ["y"], name="add")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
        g.node[1].attribute[0].t.ClearField("name")
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    for build, data in ((tiny_cnn, True), (tiny_matmul, False), (const_of_shape, False)):
        m = onnx.load(str(build(tmp_path / f"{build.__name__}.onnx")))
        ctx = Context(samples=load_samples(cnn_data(tmp_path / "d.npz", n=4), m) if data else None)
        for name in ("fuse", "simplify", "fp16", "int8-dynamic", "lowrank", "prune") + (("int8-static",) if data else ()):
            before = model_digest(m)
            get_pass(name)().run(m, ctx)
            assert model_digest(m) == before, f"{name} changed its input model"
