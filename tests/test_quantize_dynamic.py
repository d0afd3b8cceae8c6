"""Dynamic INT8 on a tiny BERT-like block built here: what the pass quantizes, and activation smoothing."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optkit.data import Samples
from optkit.passes import Context, get_pass
from optkit.passes.smoothing import smooth_model, smoothing_groups
from optkit.pipeline import run_model

H, T, FF = 32, 8, 64
OUTLIER = 3  # the LayerNorm channel with a large gain, as in BERT's outlier dimensions


def _bert_block(path=None, gemm_out: bool = False) -> onnx.ModelProto:
    """x [1, T, H] -> LayerNorm (one channel x30) -> q/k/v -> softmax(q.k^T).v -> o -> +x -> LayerNorm -> i -> Relu
    -> out (a Gemm with transB=1 on the 2-D view when ``gemm_out``) -> y [1, T, H]."""
    rng = np.random.default_rng(0)
    gamma = np.ones(H, np.float32)
    gamma[OUTLIER] = 30.0

    def w(*shape):
        return (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32)

    inits = {"g": gamma, "b0": np.zeros(H, np.float32), "wq": w(H, H), "wk": w(H, H), "wv": w(H, H), "wo": w(H, H),
             "wi": w(H, FF), "wout_t": w(FF, H).T.copy() if gemm_out else w(FF, H), "scale": np.float32(H ** -0.5),
             "shape2": np.array([T, FF], np.int64), "shape3": np.array([1, T, H], np.int64)}
    mk = helper.make_node
    nodes = [mk("LayerNormalization", ["x", "g", "b0"], ["ln1"], name="ln1", axis=-1),
             mk("MatMul", ["ln1", "wq"], ["q"], name="q"), mk("MatMul", ["ln1", "wk"], ["k"], name="k"),
             mk("MatMul", ["ln1", "wv"], ["v"], name="v"),
             mk("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             mk("MatMul", ["q", "kt"], ["qk"], name="qk"), mk("Mul", ["qk", "scale"], ["qks"], name="qks"),
             mk("Softmax", ["qks"], ["p"], name="softmax", axis=-1), mk("MatMul", ["p", "v"], ["ctx"], name="pv"),
             mk("MatMul", ["ctx", "wo"], ["o"], name="o"), mk("Add", ["o", "x"], ["r1"], name="res1"),
             mk("LayerNormalization", ["r1", "g", "b0"], ["ln2"], name="ln2", axis=-1),
             mk("MatMul", ["ln2", "wi"], ["i"], name="i"), mk("Relu", ["i"], ["act"], name="relu")]
    if gemm_out:
        nodes += [mk("Reshape", ["act", "shape2"], ["act2"], name="flat"),
                  mk("Gemm", ["act2", "wout_t"], ["out2"], name="out", transB=1),
                  mk("Reshape", ["out2", "shape3"], ["y"], name="unflat")]
    else:
        nodes += [mk("MatMul", ["act", "wout_t"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "bert_block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, H])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, H])],
                              initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="optkit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _samples(n: int = 12, seed: int = 1) -> Samples:
    rng = np.random.default_rng(seed)
    return Samples([{"x": rng.standard_normal((1, T, H)).astype(np.float32)} for _ in range(n)], source="test")


def _rel_err(model, ref_model, feeds) -> float:
    a = np.concatenate([o["y"].ravel() for o in run_model(ref_model, feeds)])
    b = np.concatenate([o["y"].ravel() for o in run_model(model, feeds)])
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


AVX2 = {"model": "test", "isa": {"avx2": True}}  # no VNNI: U8S8 with reduce_range (7-bit weights)


def test_dynamic_quantizes_constant_weight_matmuls_only():
    """The six weight MatMuls run in INT8; q.k^T and softmax.v (activation x activation) stay float MatMul."""
    m = _bert_block()
    res = get_pass("int8-dynamic")({"smooth_alpha": 0}).run(m, Context(samples=_samples(), cpu=AVX2))
    onnx.checker.check_model(res.model)
    ops = _ops(res.model)
    assert ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul") == 6
    float_mm = [n for n in res.model.graph.node if n.op_type == "MatMul"]
    assert sorted(n.name for n in float_mm) == ["pv", "qk"]
    assert "Mul" not in [n.op_type for n in res.model.graph.node if n.name.startswith("optkit_smooth")]


def test_smoothing_is_exact_in_float_and_finds_each_weight_group():
    m = _bert_block(gemm_out=True)
    groups = smoothing_groups(m, set())
    assert sorted(sorted(m.graph.node[k].name for k in g) for g in groups.values()) == \
        [["i"], ["k", "q", "v"], ["o"], ["out"]]
    feeds = _samples().feeds
    sm, done, total = smooth_model(m, feeds, 0.7, per_channel=True, qmax=64)
    onnx.checker.check_model(sm)
    assert total == 4 and done >= 1
    assert len([n for n in sm.graph.node if n.op_type == "Mul" and n.name.startswith("optkit_smooth")]) == done
    assert _rel_err(sm, m, feeds) < 1e-5  # the migration changes no float result
    # excluded (kept-in-float) nodes are not smoothed
    assert all("ln1" != t for t in smoothing_groups(m, {"q", "k", "v"}))


def test_smoothing_lowers_int8_error_with_an_outlier_channel():
    """With one LayerNorm channel 30x the rest, per-tensor activation INT8 loses the other channels; smoothing keeps
    them: the pass's default (smoothing on) is measurably closer to FP32 than smooth_alpha 0."""
    m = _bert_block()
    calib, evals = _samples(12, seed=1), _samples(8, seed=2).feeds
    plain = get_pass("int8-dynamic")({"smooth_alpha": 0}).run(m, Context(samples=calib, cpu=AVX2))
    smoothed = get_pass("int8-dynamic")().run(m, Context(samples=calib, cpu=AVX2))
    onnx.checker.check_model(smoothed.model)
    assert any(n.name.startswith("optkit_smooth") for n in smoothed.model.graph.node)
    assert any(n.startswith("activation smoothing (alpha 0.75)") for n in smoothed.notes)
    e_plain, e_smooth = _rel_err(plain.model, m, evals), _rel_err(smoothed.model, m, evals)
    assert e_smooth < 0.7 * e_plain, (e_smooth, e_plain)


def test_smoothing_needs_samples_and_keys_the_cache_on_them():
    m = _bert_block()
    p = get_pass("int8-dynamic")()
    res = p.run(m, Context(samples=None, cpu=AVX2))
    assert not any(n.name.startswith("optkit_smooth") for n in res.model.graph.node)
    assert any("activation smoothing skipped: no samples" in n for n in res.notes)
    assert p.reads_samples and not get_pass("int8-dynamic")({"smooth_alpha": 0}).reads_samples


@pytest.mark.parametrize("alpha", [-0.1, 1.5])
def test_smooth_alpha_out_of_range_is_a_recipe_error(alpha):
    from optkit.errors import RecipeError

    with pytest.raises(RecipeError, match="smooth_alpha"):
        get_pass("int8-dynamic")({"smooth_alpha": alpha})


def test_tolerance_variants_try_other_smoothing_before_u8u8_and_per_tensor():
    p = get_pass("int8-dynamic")()
    seq = [(c.smooth_alpha, c.weight_type, c.per_channel) for c in p.search_space()]
    assert seq == [(0.75, "auto", True), (0.85, "auto", True), (0.5, "auto", True), (0.0, "auto", True),
                   (0.75, "uint8", True), (0.75, "auto", False)]
    off = get_pass("int8-dynamic")({"smooth_alpha": 0})
    assert [c.smooth_alpha for c in off.search_space()][:2] == [0.0, 0.75]


def test_a_gemm_kept_in_float_stays_float():
    """quantize_dynamic renames Gemm 'out' to MatMul 'out_MatMul' before it matches nodes_to_exclude: the pass must
    exclude it under both names, or the per-node float fallback silently quantizes it anyway."""
    m = _bert_block(gemm_out=True)
    ctx = Context(samples=_samples(), cpu=AVX2)
    every = get_pass("int8-dynamic")().run(m, ctx)
    kept = get_pass("int8-dynamic")({"exclude_nodes": ["out"]}).run(m, ctx)
    n_int = [sum(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in _ops(r.model)) for r in (every, kept)]
    assert n_int == [6, 5]
    assert any(n.op_type in ("Gemm", "MatMul") and n.name in ("out", "out_MatMul") for n in kept.model.graph.node)
