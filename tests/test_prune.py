"""prune (structured channel/neuron pruning) and sparsify on tiny models built in code (no torch)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optkit.passes.prune as prune_mod
from optkit.data import Samples
from optkit.errors import PassError, RecipeError
from optkit.evaluate import Evaluator
from optkit.passes import Context
from optkit.passes.prune import Prune, Sparsify, prunable_layers
from optkit.pipeline import run_model

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------------------------
# model builders
# ---------------------------------------------------------------------------------------------------------------


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "m", inputs, outputs,
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name="optkit-tests")
    m.ir_version = 8 if opset < 20 else 9
    onnx.checker.check_model(m, full_check=True)
    return m


def _f(*shape, scale=0.3):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def cnn(c1=16, c2=16, classes=10, bn=True, dead1=(), dead2=()):
    """x [batch,3,8,8] -> Conv1 -> [BN] -> Relu -> Conv2 -> Relu -> GAP -> Flatten -> Gemm(transB) -> logits.

    ``dead1``/``dead2``: filters (and biases) of conv1/conv2 set to zero, so removing them is exact (without BN)."""
    w1, b1, w2, b2 = _f(c1, 3, 3, 3), _f(c1), _f(c2, c1, 3, 3), _f(c2)
    w1[list(dead1)], b1[list(dead1)], w2[list(dead2)], b2[list(dead2)] = 0, 0, 0, 0
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2, "fw": _f(classes, c2), "fb": _f(classes)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1])]
    a = "c1"
    if bn:
        inits.update({"s": RNG.uniform(0.5, 1.5, c1).astype(np.float32), "bb": _f(c1), "m": _f(c1),
                      "v": RNG.uniform(0.5, 2, c1).astype(np.float32)})
        nodes.append(helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["bn1"], name="bn1"))
        a = "bn1"
    nodes += [helper.make_node("Relu", [a], ["r1"], name="relu1"),
              helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], name="fc", transB=1)]
    return _model(nodes, [_vi("x", ["batch", 3, 8, 8])], [_vi("logits", ["batch", classes])], inits)


def mlp(hidden=32, act="Relu", dead=(), rank3=False, opset=17):
    """x -> MatMul W1 -> Add b1 -> act -> MatMul W2 -> Add b2 -> y. act: Relu | Gelu (op) | erf-gelu (torch subgraph)."""
    w1, b1, w2, b2 = _f(16, hidden), _f(hidden), _f(hidden, 8), _f(8)
    w1[:, list(dead)], b1[list(dead)] = 0, 0
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="add1")]
    if act == "erf-gelu":
        inits.update({"sqrt2": np.array(np.sqrt(2.0), np.float32), "one": np.array(1.0, np.float32),
                      "half": np.array(0.5, np.float32)})
        nodes += [helper.make_node("Div", ["hb", "sqrt2"], ["g1"]), helper.make_node("Erf", ["g1"], ["g2"]),
                  helper.make_node("Add", ["g2", "one"], ["g3"]), helper.make_node("Mul", ["hb", "g3"], ["g4"]),
                  helper.make_node("Mul", ["g4", "half"], ["a"])]
    else:
        nodes.append(helper.make_node(act, ["hb"], ["a"], name="act"))
    nodes += [helper.make_node("MatMul", ["a", "w2"], ["o"], name="fc2"),
              helper.make_node("Add", ["o", "b2"], ["y"], name="add2")]
    shape = ["batch", 4, 16] if rank3 else ["batch", 16]
    return _model(nodes, [_vi("x", shape)], [_vi("y", shape[:-1] + [8])], inits, opset=opset)


def _feeds(model, n=2, batch=2):
    out = []
    for _ in range(n):
        f = {}
        for vi in model.graph.input:
            dims = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
            f[vi.name] = RNG.standard_normal(dims).astype(np.float32)
        out.append(f)
    return out


def _run(model, **options):
    res = Prune(options).run(model, Context())
    onnx.checker.check_model(res.model, full_check=True)
    return res


def _w(model, node_name, idx=1):
    node = next(n for n in model.graph.node if n.name == node_name)
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == node.input[idx]))


def _max_diff(a, b, feeds):
    ra, rb = run_model(a, feeds), run_model(b, feeds)
    return max(float(np.abs(x[k] - y[k]).max()) for x, y in zip(ra, rb) for k in x)


# ---------------------------------------------------------------------------------------------------------------
# prune: CNN
# ---------------------------------------------------------------------------------------------------------------


def test_ratio_zero_is_identity():
    m = cnn()
    res = _run(m, ratio=0.0)
    assert res.modified is False
    assert _max_diff(m, res.model, _feeds(m)) == 0.0


def test_half_of_the_channels_shrinks_every_consumer():
    m = cnn()
    res = _run(m, ratio=0.5)
    assert res.modified
    out = res.model
    assert _w(out, "conv1").shape == (8, 3, 3, 3) and _w(out, "conv1", 2).shape == (8,)
    bn = next(n for n in out.graph.node if n.op_type == "BatchNormalization")
    inits = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert [inits[x].shape for x in bn.input[1:]] == [(8,)] * 4
    assert _w(out, "conv2").shape == (8, 8, 3, 3) and _w(out, "conv2", 2).shape == (8,)
    assert _w(out, "fc").shape == (10, 8)
    assert len(out.graph.value_info) == 0
    assert [d.dim_param or d.dim_value for d in out.graph.output[0].type.tensor_type.shape.dim] == ["batch", 10]
    feeds = _feeds(m)
    y = run_model(out, feeds)
    assert y[0]["logits"].shape == (2, 10)
    conv1 = dict(res.metrics["layers"]["conv1"])
    lost = conv1.pop("importance_lost")  # what the layer search ranks layers by: the importance share removed
    assert conv1 == {"kept": 8, "total": 16, "ratio": 0.5} and 0 < lost < 0.5  # the least important half went
    assert res.metrics["params_after"] < res.metrics["params_before"]
    assert res.metrics["importance"] == {"method": "l1", "scope": "layer", "bn_scaled": True}
    assert res.metrics["skipped"] == {"fc": {"reason": "graph_output", "via": "fc", "op": "Gemm"}}
    assert res.metrics["params_after"] == sum(int(np.prod(t.dims)) for t in out.graph.initializer) \
        < res.metrics["params_before"]
    # the input model is left as it was
    assert _w(m, "conv1").shape == (16, 3, 3, 3)


def test_removing_dead_channels_is_exact():
    """Zero filters (and biases) are the least important; removing them must not change the outputs."""
    dead1, dead2 = [1, 4, 5, 9, 10, 11, 14, 15], [0, 2, 3, 6, 8, 12, 13, 15]
    m = cnn(bn=False, dead1=dead1, dead2=dead2)
    res = _run(m, ratio=0.5, min_channels=1)
    assert _w(res.model, "conv1").shape[0] == 8 and _w(res.model, "conv2").shape[:2] == (8, 8)
    np.testing.assert_array_equal(_w(res.model, "conv1"), np.delete(_w(m, "conv1"), dead1, axis=0))
    assert _max_diff(m, res.model, _feeds(m)) < 1e-5


def test_min_channels_and_multiple_of():
    res = _run(cnn(), ratio=0.9, min_channels=12)
    assert _w(res.model, "conv1").shape[0] == 12 and _w(res.model, "conv2").shape[:2] == (12, 12)
    res = _run(cnn(), ratio=0.3, min_channels=1, multiple_of=4)  # 16 - round(4.8) = 11 -> 12
    assert res.metrics["layers"]["conv1"]["kept"] == 12
    res = _run(cnn(c1=6, c2=6), ratio=0.5)  # already under min_channels=8: nothing to do
    assert res.modified is False and res.metrics["kept_whole"] == ["conv1", "conv2"]
    assert res.metrics["params_after"] == res.metrics["params_before"]


def test_skip_and_per_layer_overrides():
    res = _run(cnn(), ratio=0.5, skip=["conv1"])
    assert _w(res.model, "conv1").shape[0] == 16 and _w(res.model, "conv2").shape[:2] == (8, 16)
    assert res.metrics["skipped"]["conv1"] == {"reason": "skip_list"} and "conv1" not in res.metrics["layers"]
    res = _run(cnn(), ratio=0.0, min_channels=1, layers={"conv2": 0.75})
    assert res.modified and _w(res.model, "conv1").shape[0] == 16 and _w(res.model, "conv2").shape[0] == 4
    assert {k: v for k, v in res.metrics["layers"]["conv2"].items() if k != "importance_lost"} == {"kept": 4, "total": 16, "ratio": 0.75}


def _conv_pair(w1):
    c = w1.shape[0]
    inits = {"w1": w1, "w2": _f(4, c, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    return _model(nodes, [_vi("x", [1, w1.shape[1], 4, 4])], [_vi("y", [1, 4, 4, 4])], inits)


def test_l1_and_l2_rank_filters_differently():
    w = np.full((8, 4, 1, 1), 5.0, np.float32)
    w[6, :, 0, 0] = [1, 1, 1, 1]  # L1 4, L2 2
    w[7, :, 0, 0] = [3, 0, 0, 0]  # L1 3, L2 3
    m = _conv_pair(w)
    r1 = _run(m, ratio=0.125, min_channels=1, importance="l1")
    r2 = _run(m, ratio=0.125, min_channels=1, importance="l2")
    np.testing.assert_array_equal(_w(r1.model, "conv1"), np.delete(w, 7, axis=0))
    np.testing.assert_array_equal(_w(r2.model, "conv1"), np.delete(w, 6, axis=0))
    assert r2.metrics["layers"]["conv1"]["kept"] == 7 and r2.metrics["importance"]["method"] == "l2"


def test_global_scope_takes_from_the_layer_with_weak_filters():
    w1 = np.ones((16, 3, 3, 3), np.float32)  # every filter alike
    m = cnn(bn=False)
    w2 = _w(m, "conv2").copy()
    w2[::2] *= 0.01  # half of conv2's filters are weak
    for t in m.graph.initializer:
        if t.name == "w1":
            t.CopyFrom(numpy_helper.from_array(w1, "w1"))
        if t.name == "w2":
            t.CopyFrom(numpy_helper.from_array(w2, "w2"))
    res = _run(m, ratio=0.25, scope="global", min_channels=1)  # 8 of 32 channels
    assert res.metrics["layers"]["conv1"]["kept"] == 16
    assert res.metrics["layers"]["conv2"]["kept"] == 8
    np.testing.assert_array_equal(_w(res.model, "conv2")[:, :, 0, 0], w2[1::2, :, 0, 0])


def test_residual_add_is_skipped_with_a_reason():
    inits = {"w1": _f(16, 3, 3, 3), "w2": _f(16, 16, 3, 3), "w3": _f(16, 16, 1, 1), "fw": _f(10, 16)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
             helper.make_node("Relu", ["c3"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fw"], ["y"], name="fc", transB=1)]
    m = _model(nodes, [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 10])], inits)
    res = _run(m, ratio=0.5)
    assert res.metrics["skipped"]["conv1"] == {"reason": "residual", "via": "add", "op": "Add"}
    assert res.metrics["skipped"]["conv2"]["reason"] == "residual"
    assert _w(res.model, "conv1").shape[0] == 16 and _w(res.model, "conv2").shape == (16, 16, 3, 3)
    assert _w(res.model, "conv3").shape == (8, 16, 1, 1) and _w(res.model, "fc").shape == (10, 8)
    assert prunable_layers(m) == ["conv3"]
    assert run_model(res.model, _feeds(m))[0]["y"].shape == (1, 10)


def test_concat_and_grouped_conv_are_skipped():
    inits = {"w1": _f(16, 3, 1, 1), "w2": _f(16, 3, 1, 1), "wg": _f(8, 8, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Conv", ["x", "w2"], ["c2"], name="conv2"),
             helper.make_node("Concat", ["c1", "c2"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "wg"], ["y"], name="gconv", group=4)]
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 8, 4, 4])], inits)
    res = _run(m, ratio=0.5)
    assert res.modified is False
    skipped = res.metrics["skipped"]
    assert skipped["conv1"] == skipped["conv2"] == {"reason": "unsupported_op", "via": "cat", "op": "Concat"}
    assert skipped["gconv"] == {"reason": "grouped_conv", "via": "gconv", "op": "Conv", "group": 4}


def test_depthwise_conv_follows_the_channels():
    dead = [0, 3, 4, 7, 9, 10, 12, 13]
    w1, wd, wp = _f(16, 3, 1, 1), _f(16, 1, 3, 3), _f(8, 16, 1, 1)
    w1[dead] = 0
    inits = {"w1": w1, "wd": wd, "bd": np.zeros(16, np.float32), "wp": wp}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "wd", "bd"], ["d"], name="dw", group=16, pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["d"], ["h"]),
             helper.make_node("Conv", ["h", "wp"], ["y"], name="pw")]
    m = _model(nodes, [_vi("x", [1, 3, 6, 6])], [_vi("y", [1, 8, 6, 6])], inits)
    res = _run(m, ratio=0.5)
    assert res.metrics["skipped"]["dw"] == {"reason": "grouped_conv", "via": "dw", "op": "Conv", "group": 16}
    dw = next(n for n in res.model.graph.node if n.name == "dw")
    assert helper.get_attribute_value(next(a for a in dw.attribute if a.name == "group")) == 8
    assert _w(res.model, "dw").shape == (8, 1, 3, 3) and _w(res.model, "pw").shape == (8, 8, 1, 1)
    assert _max_diff(m, res.model, _feeds(m)) < 1e-5


@pytest.mark.parametrize("kind", ["flatten", "reshape-const", "reshape-batch", "reshape-dynamic"])
def test_flatten_of_spatial_maps_slices_gemm_in_blocks(kind):
    """Conv [1,16,4,4] -> Flatten/Reshape [1, 256] -> Gemm: each channel owns 16 consecutive features."""
    dead = list(range(0, 16, 2))
    w1, fw = _f(16, 3, 3, 3), _f(256, 10)
    w1[dead] = 0
    inits = {"w1": w1, "fw": fw}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"])]
    if kind == "flatten":
        nodes.append(helper.make_node("Flatten", ["r1"], ["flat"]))
    elif kind in ("reshape-const", "reshape-batch"):
        inits["shape"] = np.array([1, 256] if kind == "reshape-const" else [0, -1], np.int64)
        nodes.append(helper.make_node("Reshape", ["r1", "shape"], ["flat"]))
    else:  # torch: x.view(x.size(0), -1)
        inits.update({"i0": np.array(0, np.int64), "ax": np.array([0], np.int64), "m1": np.array([-1], np.int64)})
        nodes += [helper.make_node("Shape", ["r1"], ["shp"]), helper.make_node("Gather", ["shp", "i0"], ["b"]),
                  helper.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
                  helper.make_node("Concat", ["b1", "m1"], ["shape"], axis=0),
                  helper.make_node("Reshape", ["r1", "shape"], ["flat"])]
    nodes.append(helper.make_node("Gemm", ["flat", "fw"], ["y"], name="fc"))
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 10])], inits)
    res = _run(m, ratio=0.5)
    assert _w(res.model, "conv1").shape[0] == 8
    keep = [c for c in range(16) if c not in dead]
    np.testing.assert_array_equal(_w(res.model, "fc"), fw.reshape(16, 16, 10)[keep].reshape(128, 10))
    assert _max_diff(m, res.model, _feeds(m)) < 1e-5


def test_reshape_mixing_channels_is_skipped():
    inits = {"w1": _f(16, 3, 1, 1), "shape": np.array([1, 4, 64], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Reshape", ["c1", "shape"], ["y"], name="rs")]
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 4, 64])], inits)
    res = _run(m, ratio=0.5)
    assert not res.modified
    assert res.metrics["skipped"]["conv1"] == {"reason": "mixes_channels", "via": "rs", "op": "Reshape"}


def test_per_channel_constants_and_silu_are_followed():
    """Conv -> Mul(per-channel scale) -> Add(scalar) -> SiLU (x * sigmoid(x)) -> Conv."""
    dead = [1, 2, 5, 6, 8, 11, 12, 15]
    w1 = _f(16, 3, 1, 1)
    w1[dead] = 0
    inits = {"w1": w1, "sc": _f(1, 16, 1, 1), "b": np.array(0.0, np.float32), "w2": _f(4, 16, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Mul", ["c1", "sc"], ["s1"]), helper.make_node("Add", ["s1", "b"], ["s2"]),
             helper.make_node("Sigmoid", ["s2"], ["sg"]), helper.make_node("Mul", ["s2", "sg"], ["silu"]),
             helper.make_node("Conv", ["silu", "w2"], ["y"], name="conv2")]
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 4, 4, 4])], inits)
    res = _run(m, ratio=0.5)
    inits_out = {t.name: numpy_helper.to_array(t) for t in res.model.graph.initializer}
    mul = next(n for n in res.model.graph.node if n.op_type == "Mul" and n.input[0] == "c1")
    assert inits_out[mul.input[1]].shape == (1, 8, 1, 1)
    assert _max_diff(m, res.model, _feeds(m)) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# prune: MLP / FFN
# ---------------------------------------------------------------------------------------------------------------


def test_mlp_hidden_features_shrink():
    m = mlp(hidden=32)
    res = _run(m, ratio=0.5)
    assert _w(res.model, "fc1").shape == (16, 16) and _w(res.model, "add1").shape == (16,)
    assert _w(res.model, "fc2").shape == (16, 8) and _w(res.model, "add2").shape == (8,)
    assert run_model(res.model, _feeds(m))[0]["y"].shape == (2, 8)
    assert res.metrics["skipped"]["fc2"]["reason"] == "graph_output" and "fc2" not in res.metrics["layers"]
    assert prunable_layers(m) == ["fc1"]


@pytest.mark.parametrize("act,opset", [("Relu", 17), ("Gelu", 20), ("erf-gelu", 17), ("Tanh", 17)])
def test_ffn_dead_neurons_are_removed_exactly(act, opset):
    dead = list(range(1, 32, 2))
    m = mlp(hidden=32, act=act, dead=dead, rank3=True, opset=opset)
    res = _run(m, ratio=0.5)
    assert {k: v for k, v in res.metrics["layers"]["fc1"].items() if k != "importance_lost"} == {"kept": 16, "total": 32, "ratio": 0.5}
    np.testing.assert_array_equal(_w(res.model, "fc2"), np.delete(_w(m, "fc2"), dead, axis=0))
    assert _max_diff(m, res.model, _feeds(m)) < 1e-5


def test_gemm_mlp_with_transb():
    w1, w2 = _f(32, 16), _f(8, 32)  # transB=1: [out, in]
    w1[:16] = 0
    inits = {"w1": w1, "b1": np.zeros(32, np.float32), "w2": w2, "b2": _f(8)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Sigmoid", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2", transB=1)]
    m = _model(nodes, [_vi("x", [2, 16])], [_vi("y", [2, 8])], inits)
    res = _run(m, ratio=0.5, importance="l2")
    assert _w(res.model, "fc1").shape == (16, 16) and _w(res.model, "fc2").shape == (8, 16)
    np.testing.assert_array_equal(_w(res.model, "fc2"), w2[:, 16:])


def test_attention_is_noted():
    inits = {"wq": _f(16, 16), "wk": _f(16, 16)}
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["y"], name="scores")]
    m = _model(nodes, [_vi("x", [1, 4, 16])], [_vi("y", [1, 4, 4])], inits)
    res = _run(m, ratio=0.5)
    assert not res.modified
    assert res.metrics["attention"] is True
    assert res.metrics["skipped"]["k"]["reason"] == "unsupported_op" and res.metrics["skipped"]["k"]["op"] == "Transpose"
    assert _run(cnn(), ratio=0.5).metrics["attention"] is False


def test_prunable_layers_on_the_cnn():
    assert prunable_layers(cnn()) == ["conv1", "conv2"]


# ---------------------------------------------------------------------------------------------------------------
# bias compensation and activation importance (need real samples)
# ---------------------------------------------------------------------------------------------------------------


def _samples(model, n=4, synthetic=False, const_channel=None):
    feeds = _feeds(model, n=n)
    if const_channel is not None:
        for f in feeds:
            f["x"][:, const_channel] = 1.0
    return Samples(feeds, synthetic=synthetic, source="test")


def _const_channels_cnn():
    """conv1 channels 0..7 are constant (zero filter, bias 0.5 -> relu 0.5): removing them loses only a constant,
    which bias compensation folds into conv2 (1x1, no bias) and so keeps the outputs exact."""
    w1, b1 = _f(16, 3, 3, 3), _f(16)
    w1[:8], b1[:8] = 0, 0.5
    inits = {"w1": w1, "b1": b1, "w2": _f(8, 16, 1, 1), "fw": _f(10, 8)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fw", "fb"], ["y"], name="fc", transB=1)]
    inits["fb"] = _f(10)
    return _model(nodes, [_vi("x", ["batch", 3, 8, 8])], [_vi("y", ["batch", 10])], inits)


def test_bias_compensation_folds_removed_constant_channels():
    m = _const_channels_cnn()
    feeds = _feeds(m)
    opts = dict(ratio=0.0, layers={"conv1": 0.5}, min_channels=1)
    plain = _run(m, **opts)
    assert _max_diff(m, plain.model, feeds) > 1e-3
    assert plain.metrics["compensation"] == {"applied": False, "why_not": "no_samples"}
    res = Prune(opts).run(m, Context(samples=_samples(m), evaluator=Evaluator()))
    onnx.checker.check_model(res.model, full_check=True)
    assert _w(res.model, "conv1").shape[0] == 8 and _w(res.model, "conv2").shape == (8, 8, 1, 1)
    assert _w(res.model, "conv2", 2).shape == (8,)  # a bias conv2 did not have
    assert res.metrics["compensation"] == {"applied": True, "consumers": 1, "samples": 4}
    assert _max_diff(m, res.model, feeds) < 1e-4


def test_bias_compensation_needs_real_samples():
    m = _const_channels_cnn()
    res = Prune(dict(ratio=0.0, layers={"conv1": 0.5})).run(m, Context(samples=_samples(m, synthetic=True)))
    assert res.metrics["compensation"] == {"applied": False, "why_not": "synthetic"}
    assert _max_diff(m, res.model, _feeds(m)) > 1e-3  # nothing folded: the removed constant channels are lost
    with pytest.raises(PassError, match="activation"):
        Prune(dict(ratio=0.5, importance="activation")).run(m, Context(samples=_samples(m, synthetic=True)))
    with pytest.raises(PassError, match="activation"):
        Prune(dict(ratio=0.5, importance="activation")).run(m, Context())


def test_bias_compensation_skipped_when_measuring_fails():
    """Samples the model cannot run: l1 pruning still happens, without compensation, and the facts say why."""
    m = _const_channels_cnn()
    bad = Samples([{"x": np.zeros((1, 5, 8, 8), np.float32)}], source="test")  # 5 channels, the model takes 3
    res = Prune(dict(ratio=0.0, layers={"conv1": 0.5}, min_channels=1)).run(m, Context(samples=bad, evaluator=Evaluator()))
    assert res.modified and _w(res.model, "conv1").shape[0] == 8
    assert res.metrics["compensation"]["applied"] is False and res.metrics["compensation"]["why_not"] == "measure_failed"
    conv2 = next(n for n in res.model.graph.node if n.name == "conv2")
    assert res.metrics["compensation"]["error"] and len(conv2.input) == 2  # no bias was added


@pytest.mark.parametrize("with_bias", [True, False])
def test_bias_compensation_on_an_mlp(with_bias):
    """Dead neurons with a positive bias output a constant: folded into fc2's bias Add, or an inserted Add."""
    m = mlp(hidden=32, dead=range(16))
    for t in m.graph.initializer:
        if t.name == "b1":
            b1 = numpy_helper.to_array(t).copy()
            b1[:16] = 0.7
            t.CopyFrom(numpy_helper.from_array(b1, "b1"))
    if not with_bias:  # fc2 writes the graph output itself
        nodes = [n for n in m.graph.node if n.name != "add2"]
        nodes[-1].output[0] = "y"
        del m.graph.node[:]
        m.graph.node.extend(nodes)
    feeds = _feeds(m)
    res = Prune({"ratio": 0.5, "min_channels": 1}).run(m, Context(samples=_samples(m), evaluator=Evaluator()))
    onnx.checker.check_model(res.model, full_check=True)
    assert _w(res.model, "fc1").shape == (16, 16)
    assert [o.name for o in res.model.graph.output] == ["y"]
    assert _max_diff(m, res.model, feeds) < 1e-4


@pytest.mark.parametrize("bias", [None, "scalar", "vector"])
def test_bias_compensation_into_a_gemm_after_flatten(bias):
    w1, b1 = _f(16, 3, 3, 3), _f(16)
    w1[::2], b1[::2] = 0, 0.5
    inits = {"w1": w1, "b1": b1, "fw": _f(256, 10)}
    if bias:
        inits["fb"] = np.array([0.1], np.float32) if bias == "scalar" else _f(10)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]), helper.make_node("Flatten", ["r1"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fw"] + (["fb"] if bias else []), ["y"], name="fc", beta=2.0)]
    m = _model(nodes, [_vi("x", [1, 3, 4, 4])], [_vi("y", [1, 10])], inits)
    res = Prune({"ratio": 0.5}).run(m, Context(samples=_samples(m), evaluator=Evaluator()))
    onnx.checker.check_model(res.model, full_check=True)
    assert _w(res.model, "fc").shape == (128, 10) and _w(res.model, "fc", 2).shape == (10,)
    assert _max_diff(m, res.model, _feeds(m)) < 1e-4


def test_activation_importance_removes_constant_channels_with_big_weights():
    """Channels 0..7 only read input channel 2, which the samples hold constant: big filters, zero variance."""
    w1 = _f(16, 3, 1, 1)
    w1[:8] = 0
    w1[:8, 2] = 5.0
    inits = {"w1": w1, "w2": _f(8, 16, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    m = _model(nodes, [_vi("x", [2, 3, 4, 4])], [_vi("y", [2, 8, 4, 4])], inits)
    samples = _samples(m, const_channel=2)
    by_l1 = Prune({"ratio": 0.5, "min_channels": 1}).run(m, Context(samples=samples, evaluator=Evaluator()))
    np.testing.assert_array_equal(_w(by_l1.model, "conv1"), w1[:8])  # L1 keeps the big constant filters
    res = Prune({"ratio": 0.5, "min_channels": 1, "importance": "activation"}).run(m, Context(samples=samples, evaluator=Evaluator()))
    np.testing.assert_array_equal(_w(res.model, "conv1"), w1[8:])
    assert res.metrics["importance"]["method"] == "activation"
    assert _max_diff(m, res.model, samples.feeds) < 1e-4



def test_prune_measures_activations_through_the_context_evaluator():
    """The pass opens no backend: the activation statistics come from ctx.evaluate (the deployed evaluator)."""
    m = _const_channels_cnn()
    seen = []

    class Spy:
        def run(self, model, feeds):
            seen.append(len(feeds))
            return Evaluator().run(model, feeds)

    opts = dict(ratio=0.0, layers={"conv1": 0.5}, min_channels=1)
    res = Prune(opts).run(m, Context(samples=_samples(m), evaluator=Spy()))
    ref = Prune(opts).run(m, Context(samples=_samples(m), evaluator=Evaluator()))
    assert seen and seen[0] > 0
    assert _max_diff(m, res.model, _feeds(m)) < 1e-4
    for a, b in zip(res.model.graph.initializer, ref.model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    with pytest.raises(PassError, match="evaluator"):
        Prune(dict(ratio=0.5, importance="activation")).run(m, Context(samples=_samples(m)))


def test_the_tracer_follows_the_rule_table(monkeypatch):
    """Channel propagation is table-driven: an op without a rule stops the trace; giving it one (here: Shrink, an
    elementwise op, the unary rule) makes the layer before it prunable, and the rewrite stays exact."""
    from optkit.passes.prune import rules

    m = mlp(hidden=32, act="Shrink", dead=range(16))
    assert "fc1" not in prunable_layers(m)
    assert "Shrink" not in rules.RULES
    monkeypatch.setitem(rules.RULES, "Shrink", rules.RULES["Relu"])
    assert "fc1" in prunable_layers(m)
    res = _run(m, ratio=0.5, min_channels=1)
    assert _w(res.model, "fc1").shape == (16, 16) and _w(res.model, "fc2").shape == (16, 8)
    assert _max_diff(m, res.model, _feeds(m)) < 1e-5

# ---------------------------------------------------------------------------------------------------------------
# config and sparsify
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options,match", [
    ({"ratio": 1.5}, "ratio"), ({"ratio": -0.1}, "ratio"), ({"importance": "l3"}, "importance"),
    ({"min_channels": 0}, "min_channels"), ({"layers": {"conv1": 1.0}}, "layers"), ({"multiple_of": 0}, "multiple_of"),
    ({"max_samples": 0}, "max_samples"), ({"skip": "conv1"}, "skip"),
])
def test_config_validation(options, match):
    with pytest.raises(RecipeError, match=match):
        Prune.Config.from_dict(options)


def test_registered_names():
    assert Prune.name == "prune" and Sparsify.name == "sparsify"
    assert not Prune.exact and not Sparsify.exact
    assert prune_mod.Prune is Prune


def test_sparsify_unstructured_half():
    m = cnn()
    res = Sparsify({"sparsity": 0.5}).run(m, Context())
    onnx.checker.check_model(res.model)
    for name in ("conv1", "conv2", "fc"):
        w = _w(res.model, name)
        assert abs((w == 0).mean() - 0.5) < 0.01
        assert res.metrics["layers"][name]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert res.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert prune_mod.sparsify.SPARSE_NOTE in res.notes and res.metrics["skipped"] == {}  # the speed caveat is shown
    assert run_model(res.model, _feeds(m))[0]["logits"].shape == (2, 10)
    assert _w(m, "conv1").all()  # input untouched


def test_sparsify_two_four():
    m = cnn()
    w2 = _w(m, "conv2")
    res = Sparsify({"pattern": "2:4"}).run(m, Context())
    out = _w(res.model, "conv2")  # [16, 16, 3, 3]: groups of 4 along the input channels
    groups = np.moveaxis(out, 1, -1).reshape(-1, 4)
    assert ((groups == 0).sum(axis=1) == 2).all()
    kept = np.moveaxis(w2, 1, -1).reshape(-1, 4)
    assert np.allclose(np.sort(np.abs(groups), axis=1)[:, 2:], np.sort(np.abs(kept), axis=1)[:, 2:])
    fc = _w(res.model, "fc")  # Gemm transB=1 [10, 16]: groups along axis 1
    assert ((fc.reshape(10, 4, 4) == 0).sum(axis=2) == 2).all()
    assert res.metrics["skipped"] == {"conv1": {"reason": "reduction_axis", "size": 3}}  # 3 input channels
    assert "conv1" not in res.metrics["layers"] and np.array_equal(_w(res.model, "conv1"), _w(m, "conv1"))


def test_sparsify_zero_is_noop():
    m = mlp()
    res = Sparsify({"sparsity": 0.0}).run(m, Context())
    assert res.modified is False and res.model is m
