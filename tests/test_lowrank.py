"""The lowrank pass (truncated SVD of MatMul/Gemm/1x1-Conv weights) on tiny models built in code."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optkit.passes.lowrank  # noqa: F401  (registers the pass)
from optkit.errors import RecipeError
from optkit.passes import Context
from optkit.passes.lowrank import LowRank, factorizable_layers
from optkit.pipeline import run_model

RNG = np.random.default_rng(0)


def low_rank(k: int, n: int, r: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((k, r)) @ rng.standard_normal((r, n)) / np.sqrt(r)).astype(np.float32)


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "lr", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def matmul_model(w: np.ndarray, name: str = "fc1"):
    k, n = w.shape
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"], name=name)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, k])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5, n])], {"w": w})


def mlp_model(w1: np.ndarray, w2: np.ndarray):
    k, h = w1.shape
    n = w2.shape[1]
    return _model([helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
                   helper.make_node("Relu", ["h"], ["hr"], name="relu"),
                   helper.make_node("MatMul", ["hr", "w2"], ["y"], name="fc2")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], {"w1": w1, "w2": w2})


def _feeds(model, n=3):
    rng = np.random.default_rng(1)
    x = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 2 for d in x]
    return [{model.graph.input[0].name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _run(model, **options):
    res = LowRank(options).run(model, Context())
    onnx.checker.check_model(res.model)
    return res


def _max_diff(a, b, feeds):
    ra, rb = run_model(a, feeds), run_model(b, feeds)
    return max(float(np.abs(x[k] - y[k]).max()) for x, y in zip(ra, rb) for k in x)


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _unique_names(model):
    g = model.graph
    inits = [t.name for t in g.initializer]
    outs = [o for n in g.node for o in n.output]
    names = [n.name for n in g.node]
    assert len(set(inits)) == len(inits) and len(set(outs)) == len(outs) and len(set(names)) == len(names)
    assert not set(inits) & set(outs)


def test_registered_and_not_exact():
    assert LowRank.name == "lowrank" and LowRank.exact is False and LowRank.doc
    from optkit.passes import _REGISTRY

    assert _REGISTRY["lowrank"] is LowRank


def test_energy_finds_exact_rank_and_keeps_output():
    m = matmul_model(low_rank(64, 96, 8))
    res = _run(m, energy=0.999)
    assert res.modified
    ops = [n.op_type for n in res.model.graph.node]
    assert ops == ["MatMul", "MatMul"]
    shapes = sorted(v.shape for v in _inits(res.model).values())
    assert shapes == [(8, 96), (64, 8)]
    assert "w" not in _inits(res.model)  # the original weight is gone
    _unique_names(res.model)
    assert _max_diff(m, res.model, _feeds(m)) < 1e-4
    lm = res.metrics["layers"]["fc1"]
    assert (lm["k"], lm["n"], lm["rank"]) == (64, 96, 8)
    assert lm["rel_error"] < 1e-5 and lm["energy"] > 0.999
    assert lm["flops_ratio"] == pytest.approx(8 * (64 + 96) / (64 * 96))
    assert lm["factorized"] is True and lm["max_useful_rank"] == 38 and lm["source"] == "energy"
    assert res.metrics["factorized"] == 1 and res.metrics["flops_kept"] == pytest.approx(8 * 160 / (64 * 96))
    assert res.metrics["unknown_ranks"] == []
    # the input model is left untouched
    assert [n.op_type for n in m.graph.node] == ["MatMul"]


def test_explicit_ranks_override():
    m = matmul_model(low_rank(64, 96, 8))
    res = _run(m, energy=0.999, ranks={"fc1": 4})
    assert sorted(v.shape for v in _inits(res.model).values()) == [(4, 96), (64, 4)]
    assert res.metrics["layers"]["fc1"]["rank"] == 4 and res.metrics["layers"]["fc1"]["source"] == "ranks"
    assert 0 < res.metrics["layers"]["fc1"]["rel_error"] < 1


def test_unknown_rank_name_is_reported():
    m = matmul_model(low_rank(64, 96, 8))
    warned = []
    res = LowRank({"energy": 0.999, "ranks": {"nope": 3}}).run(m, Context(warn=warned.append))
    assert res.metrics["unknown_ranks"] == ["nope"] and len(warned) == 1 and "nope" in warned[0]
    assert res.metrics["layers"]["fc1"]["rank"] == 8  # the other layers are factorized as if it were not there


def test_keep_flops_rank():
    w = RNG.standard_normal((64, 96)).astype(np.float32)
    res = _run(matmul_model(w), keep_flops=0.5)
    expected = int(np.floor(0.5 * 64 * 96 / (64 + 96)))  # 19
    assert res.metrics["layers"]["fc1"]["rank"] == expected == 19
    assert res.metrics["layers"]["fc1"]["source"] == "keep_flops"
    # keep_flops overrides energy
    assert _run(matmul_model(w), keep_flops=0.5, energy=0.1).metrics["layers"]["fc1"]["rank"] == expected


def test_multiple_of_rounds_up_but_not_past_the_no_gain_bound():
    w = RNG.standard_normal((64, 96)).astype(np.float32)
    assert _run(matmul_model(w), keep_flops=0.5, multiple_of=8).metrics["layers"]["fc1"]["rank"] == 24
    # max useful rank of 64x96 is 38; keep_flops 0.99 -> 38; rounding to 40 would save nothing
    res = _run(matmul_model(w), keep_flops=0.99, multiple_of=8)
    assert res.metrics["layers"]["fc1"]["rank"] == 38 and res.modified
    assert res.metrics["layers"]["fc1"]["not_rounded_to"] == 40
    assert "not_rounded_to" not in _run(matmul_model(w), keep_flops=0.5, multiple_of=8).metrics["layers"]["fc1"]


def test_min_rank():
    w = RNG.standard_normal((64, 96)).astype(np.float32)
    assert _run(matmul_model(w), keep_flops=0.05, min_rank=12).metrics["layers"]["fc1"]["rank"] == 12


def test_no_flop_gain_keeps_layer_with_note():
    w = RNG.standard_normal((64, 96)).astype(np.float32)  # full rank 64, flat-ish spectrum
    m = matmul_model(w)
    res = _run(m, energy=0.99)
    assert not res.modified
    assert [n.op_type for n in res.model.graph.node] == ["MatMul"]
    lm = res.metrics["layers"]["fc1"]
    assert lm["requested_rank"] > lm["max_useful_rank"] == 38 and lm["rank"] == 64
    assert lm["factorized"] is False and lm["flops_ratio"] == 1.0 and lm["rel_error"] == 0.0


def test_mixed_layers_one_kept_one_factorized():
    m = mlp_model(low_rank(64, 128, 4), RNG.standard_normal((128, 96)).astype(np.float32))
    res = _run(m, energy=0.999)
    assert res.modified
    assert res.metrics["layers"]["fc1"]["factorized"] and not res.metrics["layers"]["fc2"]["factorized"]
    fc2 = res.metrics["layers"]["fc2"]
    assert fc2["requested_rank"] > fc2["max_useful_rank"] and res.metrics["factorized"] == 1
    assert [n.op_type for n in res.model.graph.node] == ["MatMul", "MatMul", "Relu", "MatMul"]
    assert _max_diff(m, res.model, _feeds(m)) < 1e-4


def test_energy_one_changes_nothing():
    m = matmul_model(low_rank(64, 96, 8))
    res = _run(m, energy=1.0)
    assert res.modified is False
    assert [n.op_type for n in res.model.graph.node] == ["MatMul"]


def test_shared_weight_factorized_once():
    w = low_rank(64, 96, 8)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["a"], name="m1"),
                helper.make_node("MatMul", ["x", "w"], ["b"], name="m2"),
                helper.make_node("Add", ["a", "b"], ["y"], name="add")],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 64])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 96])], {"w": w})
    res = _run(m, energy=0.999)
    assert len(res.model.graph.initializer) == 2
    _unique_names(res.model)
    assert _max_diff(m, res.model, _feeds(m)) < 1e-4


def gemm_model(w, c, trans_b=1, alpha=1.0, beta=1.0, trans_a=0, opset=17):
    n, k = w.shape if trans_b else w.shape[::-1]
    xs = [k, 3] if trans_a else [3, k]
    ins = ["x", "w"] + (["c"] if c is not None else [])
    inits = {"w": w, **({"c": c} if c is not None else {})}
    return _model([helper.make_node("Gemm", ins, ["y"], name="gemm", transB=trans_b, transA=trans_a, alpha=alpha, beta=beta)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, xs)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])], inits, opset)


@pytest.mark.parametrize("trans_b,alpha,beta,trans_a,bias", [(1, 1.0, 1.0, 0, True), (1, 0.5, 2.0, 0, True),
                                                              (0, 1.5, 1.0, 0, False), (1, 1.0, 1.0, 1, True)])
def test_gemm_exact_for_low_rank_weight(trans_b, alpha, beta, trans_a, bias):
    wt = low_rank(64, 96, 6)  # [k x n]
    w = wt.T.copy() if trans_b else wt
    c = RNG.standard_normal(96).astype(np.float32) if bias else None
    m = gemm_model(w, c, trans_b, alpha, beta, trans_a)
    res = _run(m, energy=0.9999)
    assert res.modified and res.metrics["layers"]["gemm"]["rank"] == 6
    assert (res.metrics["layers"]["gemm"]["k"], res.metrics["layers"]["gemm"]["n"]) == (64, 96)
    assert len(res.model.graph.node) == 2
    _unique_names(res.model)
    assert _max_diff(m, res.model, _feeds(m)) < 1e-4


def conv_model(w, b, strides=(1, 1), pads=(0, 0, 0, 0)):
    cout, cin = w.shape[:2]
    ins = ["x", "w"] + (["b"] if b is not None else [])
    hw = 6
    out_hw = (hw + pads[0] + pads[2] - 1) // strides[0] + 1
    return _model([helper.make_node("Conv", ins, ["y"], name="conv", kernel_shape=[1, 1], strides=list(strides),
                                    pads=list(pads))],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, hw, hw])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out_hw, out_hw])],
                  {"w": w, **({"b": b} if b is not None else {})})


@pytest.mark.parametrize("strides,pads", [((1, 1), (0, 0, 0, 0)), ((2, 2), (0, 0, 0, 0)), ((1, 1), (1, 1, 1, 1))])
def test_conv1x1_exact_for_low_rank_weight(strides, pads):
    w = low_rank(96, 64, 5).reshape(96, 64, 1, 1)  # [Cout, Cin, 1, 1]
    b = RNG.standard_normal(96).astype(np.float32)
    m = conv_model(w, b, strides, pads)
    res = _run(m, energy=0.9999)
    assert res.modified
    convs = [n for n in res.model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 2 and len(convs[0].input) == 2 and convs[1].input[2] == "b"
    inits = _inits(res.model)
    assert inits[convs[0].input[1]].shape == (5, 64, 1, 1) and inits[convs[1].input[1]].shape == (96, 5, 1, 1)
    lm = res.metrics["layers"]["conv"]
    assert (lm["k"], lm["n"], lm["rank"]) == (64, 96, 5)
    assert _max_diff(m, res.model, _feeds(m)) < 1e-4


def test_conv_3x3_and_grouped_are_not_candidates():
    w = RNG.standard_normal((96, 64, 3, 3)).astype(np.float32)
    m = _model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv3", kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64, 4, 4])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 96, 4, 4])], {"w": w})
    assert factorizable_layers(m) == []
    assert _run(m, energy=0.5).modified is False


def test_min_size_and_skip():
    w = low_rank(64, 96, 8)  # 6144 elements
    res = _run(matmul_model(w), energy=0.999, min_size=10000)
    assert not res.modified and res.metrics["skipped"]["fc1"] == {"reason": "min_size", "elements": 6144,
                                                                  "min_size": 10000}
    assert res.metrics["layers"] == {} and [n.op_type for n in res.model.graph.node] == ["MatMul"]
    res = _run(matmul_model(w), energy=0.999, skip=["fc1"])
    assert not res.modified and res.metrics["skipped"]["fc1"] == {"reason": "skip_list"}
    assert _run(matmul_model(w), energy=0.999).modified  # default min_size 4096 lets it through


@pytest.mark.parametrize("options,needle", [({"energy": 1.5}, "energy"), ({"keep_flops": -1}, "keep_flops"),
                                            ({"keep_flops": 2}, "keep_flops"), ({"energy": 0}, "energy"),
                                            ({"min_rank": 0}, "min_rank"), ({"multiple_of": 0}, "multiple_of"),
                                            ({"ranks": {"fc1": 0}}, "ranks"), ({"ranks": {"fc1": "x"}}, "ranks"),
                                            ({"rank": 3}, "rank")])
def test_config_validation(options, needle):
    with pytest.raises(RecipeError, match=needle):
        LowRank.Config.from_dict(options)
    with pytest.raises(RecipeError):
        LowRank(options)


def test_factorizable_layers_lists_candidates():
    m = mlp_model(low_rank(64, 128, 4), RNG.standard_normal((128, 96)).astype(np.float32))
    layers = factorizable_layers(m)
    assert [d["name"] for d in layers] == ["fc1", "fc2"]
    fc1, fc2 = layers
    assert (fc1["k"], fc1["n"], fc2["k"], fc2["n"]) == (64, 128, 128, 96)
    assert fc1["max_useful_rank"] == (64 * 128 - 1) // (64 + 128) == 42
    assert fc1["singular_values"].shape == (64,) and np.all(np.diff(fc1["singular_values"]) <= 1e-9)
    assert np.sum(fc1["singular_values"] > 1e-3 * fc1["singular_values"][0]) == 4
    assert [d["name"] for d in factorizable_layers(m, skip=["fc2"])] == ["fc1"]
    assert factorizable_layers(m, min_size=20000) == []
    assert "singular_values" not in factorizable_layers(m, singular_values=False)[0]
