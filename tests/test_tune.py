"""--tolerance search and the performance guard: behaviour on models built to need them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optkit
from optkit.errors import InputError, ToleranceMiss
from optkit.recipe import parse_recipe
from optkit.search import Criterion, parse_budget, parse_tolerance


def _save(model, path):
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def sensitive_mlp(path, hidden=64):
    """x[.,64] -> fc1 -> Relu -> fc2 -> fc3. fc1 writes one huge channel (~1000) beside small ones (~1); fc2 reads
    the small ones with normal weights and the huge one with a tiny weight. With 8-bit activations the scale of
    fc1's output is set by the outlier, so quantizing fc2's input wipes out everything else: fc2 is the one node that
    must stay in float."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((64, hidden)).astype(np.float32) * 0.2
    w1[:, 0] = np.abs(w1[:, 0]) * 400  # the outlier channel
    w2 = rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.3
    w2[0, :] = 1e-3
    w3 = rng.standard_normal((hidden, 10)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"), helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
             helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"), helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
             helper.make_node("MatMul", ["a2", "w3"], ["y"], name="fc3")]
    g = helper.make_graph(nodes, "sensitive", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def slow_int8_cnn(path):
    """Two 3x3 convs, 32/64 channels on 32x32: dynamic INT8 Conv (ConvInteger) runs several times slower than FP32."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((32, 3, 3, 3)).astype(np.float32) * 0.2
    w2 = rng.standard_normal((64, 32, 3, 3)).astype(np.float32) * 0.05
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "slowint8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64, 32, 32])],
                          [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def _data(path, name, shape, n=16, seed=1):
    rng = np.random.default_rng(seed)
    np.savez(path, **{name: np.abs(rng.standard_normal((n, *shape))).astype(np.float32)})
    return path


STATIC = parse_recipe({"passes": [{"int8-static": {"per_channel": True}}]}, "test", "static")


def test_plain_quantization_misses_and_the_tuner_falls_the_sensitive_node_back(tmp_path):
    model = sensitive_mlp(tmp_path / "s.onnx")
    data = _data(tmp_path / "d.npz", "x", (1, 64))
    # the recipe's configuration alone is far off: without --tolerance the default 1% gate refuses it (exit 5)...
    with pytest.raises(ToleranceMiss):
        optkit.optimize(model, STATIC, data=data, output=tmp_path / "plain", force=True, max_trials=1)
    plain = optkit.load(tmp_path / "plain" / "s").manifest
    assert plain["tolerance"]["default_gate"] and plain["accuracy"]["vs_input"]["cosine"] < 0.99
    # ...and, given trials, recovers the way the explicit search does
    gated = optkit.optimize(model, STATIC, data=data, output=tmp_path / "gated", force=True)
    assert gated["tolerance"]["passed"] and gated["tolerance"]["default_gate"]
    assert next(t for t in gated["pass_log"][0]["trials"] if t.get("chosen"))["fallback_float"][0] == "fc2"
    man = optkit.optimize(model, STATIC, data=data, output=tmp_path / "tuned", tolerance="1%", force=True)
    entry = man["pass_log"][0]
    chosen = next(t for t in entry["trials"] if t.get("chosen"))
    assert chosen["ok"] and chosen["fallback_float"][0] == "fc2"
    assert man["tolerance"]["passed"] and man["accuracy"]["vs_input"]["cosine"] >= 0.99
    assert all("value" in t and "config" in t for t in entry["trials"])  # every trial recorded
    ops = {n.name: n.op_type for n in onnx.load(man["artifact"] + "/model.onnx").graph.node}
    assert ops["fc2"] == "MatMul" and "QuantizeLinear" in ops.values()


def test_nothing_passes_saves_best_and_fails_unless_allowed(tmp_path):
    model = sensitive_mlp(tmp_path / "s.onnx")
    data = _data(tmp_path / "d.npz", "x", (1, 64))
    with pytest.raises(ToleranceMiss, match=r"tolerance missed .* best candidate is saved at .*tight[/\\]s[/\\]1"):
        optkit.optimize(model, STATIC, data=data, output=tmp_path / "tight", tolerance="abs:0", metric="max_abs",
                        max_trials=3, force=True)
    assert (tmp_path / "tight" / "s" / "1" / "model.onnx").is_file()
    man = optkit.optimize(model, STATIC, data=data, output=tmp_path / "tight", tolerance="abs:0", metric="max_abs",
                          max_trials=3, allow_miss=True, force=True)
    assert man["tolerance"]["passed"] is False and man["tolerance"]["missed_by"] == ["int8-static"]
    assert len(man["pass_log"][0]["trials"]) == 3


def test_guard_reverts_int8_that_is_slower(tmp_path):
    model = slow_int8_cnn(tmp_path / "c.onnx")
    data = _data(tmp_path / "d.npz", "x", (1, 3, 32, 32), n=4)
    dyn_conv = parse_recipe({"passes": [{"int8-dynamic": {"op_types": ["Conv"]}}]}, "test", "dynconv")
    man = optkit.optimize(model, dyn_conv, data=data, output=tmp_path / "out")
    entry = man["pass_log"][0]
    assert entry["status"] == "reverted" and entry["guard"]["speedup_vs_before"] < 1.0
    assert any("performance guard" in n for n in entry["notes"])
    ops = {n.op_type for n in onnx.load(man["artifact"] + "/model.onnx").graph.node}
    assert "ConvInteger" not in ops and man["accuracy"]["vs_input"]["max_abs"] == 0
    forced = optkit.optimize(model, dyn_conv, data=data, output=tmp_path / "out", force=True)
    assert "ConvInteger" in {n.op_type for n in onnx.load(forced["artifact"] + "/model.onnx").graph.node}
    assert forced["pass_log"][0]["status"] == "ok"


def test_layer_search_compresses_tolerant_layers_only(tmp_path):
    """Two layers: one exactly low-rank (tolerant), one full-rank random (sensitive). keep_flops 0.3 on both misses
    1%; the search must compress the tolerant one and leave the other."""
    rng = np.random.default_rng(0)
    low = (rng.standard_normal((256, 8)) @ rng.standard_normal((8, 256))).astype(np.float32) / 16
    full = rng.standard_normal((256, 256)).astype(np.float32) / 16
    nodes = [helper.make_node("MatMul", ["x", "wl"], ["h"], name="tolerant"), helper.make_node("Relu", ["h"], ["a"], name="r"),
             helper.make_node("MatMul", ["a", "wf"], ["y"], name="sensitive")]
    g = helper.make_graph(nodes, "lr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 256])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
                          [numpy_helper.from_array(low, "wl"), numpy_helper.from_array(full, "wf")])
    model = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "lr.onnx")
    data = _data(tmp_path / "d.npz", "x", (4, 256))
    recipe = parse_recipe({"passes": [{"lowrank": {"keep_flops": 0.3, "min_size": 0}}]}, "test", "lr")
    man = optkit.optimize(model, recipe, data=data, output=tmp_path / "out", tolerance="1%", force=True)
    entry = man["pass_log"][0]
    chosen = next(t for t in entry["trials"] if t.get("chosen"))
    assert chosen["layers"] == ["tolerant"]
    # ranked once from the SVD truncation errors of the all-layers build: no layer compressed alone to probe it
    assert not any(t.get("probe") == "sensitivity" for t in entry["trials"]) and "ranking" in entry["trials"][0]
    assert set(entry["metrics"]["layers"]) >= {"tolerant"} and man["tolerance"]["passed"]
    names = {n.name for n in onnx.load(man["artifact"] + "/model.onnx").graph.node}
    assert "sensitive" in names and "tolerant" not in names


def test_tolerance_and_budget_parsing():
    assert parse_tolerance("1%") == (0.01, False)
    assert parse_tolerance("0.02") == (0.02, False)
    assert parse_tolerance("abs:0.005") == (0.005, True)
    for bad in ("x", "150%", "-1%", "abs:"):
        with pytest.raises(InputError):
            parse_tolerance(bad)
    assert parse_budget("10m") == 600 and parse_budget("90s") == 90 and parse_budget("1h") == 3600 and parse_budget("5") == 5
    with pytest.raises(InputError):
        parse_budget("soon")


def test_criterion_judgements():
    ref = [{"y": np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)}]
    near = [{"y": np.array([[0.99, 0.01], [0.0, 1.0]], np.float32)}]
    flip = [{"y": np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)}]
    labels = [np.array([0, 1])]
    assert Criterion("top1", 0.01).judge(ref, near, labels)["ok"]
    assert not Criterion("top1", 0.01).judge(ref, flip, labels)["ok"]
    assert Criterion("top1", 0.5, absolute=True).judge(ref, flip, labels)["ok"]
    assert Criterion("cosine", 0.01).judge(ref, near, labels)["ok"]
    assert not Criterion("agreement", 0.01).judge(ref, flip, labels)["ok"]
    assert Criterion("max_abs", 0.02, absolute=True).judge(ref, near, labels)["ok"]
    assert not Criterion("max_abs", 0.005, absolute=True).judge(ref, near, labels)["ok"]


def test_candidates_keep_the_fastest_within_tolerance(tmp_path):
    model = slow_int8_cnn(tmp_path / "c.onnx")
    data = _data(tmp_path / "d.npz", "x", (1, 3, 32, 32), n=8)
    recipe = parse_recipe({"passes": ["simplify"], "candidates": {
        "dynconv": [{"int8-dynamic": {"op_types": ["Conv"]}}],
        "static": ["int8-static"]}}, "test", "auto")
    man = optkit.optimize(model, recipe, data=data, output=tmp_path / "out", tolerance="5%", force=True)
    rows = {r["candidate"]: r for r in man["candidates"]}
    assert rows["static"]["chosen"] and not rows["dynconv"]["chosen"]
    assert rows["static"]["speedup_vs_input"] > rows["dynconv"]["speedup_vs_input"]
    assert [e["pass"] for e in man["pass_log"]] == ["simplify", "int8-static"]
    assert man["pass_log"][-1]["candidate"] == "static"
    assert man["recipe"]["candidates"]["static"][0]["int8-static"]["calibration"] == "minmax"


def test_candidate_recipe_without_tolerance_uses_one_percent(tmp_path):
    model = slow_int8_cnn(tmp_path / "c.onnx")
    data = _data(tmp_path / "d.npz", "x", (1, 3, 32, 32), n=4)
    recipe = parse_recipe({"candidates": {"fp32": [], "static": ["int8-static"]}}, "test", "auto")
    warnings = []
    man = optkit.optimize(model, recipe, data=data, output=tmp_path / "out", warn=warnings.append, force=True)
    assert any("--tolerance 1%" in w for w in warnings)
    assert man["tolerance"]["metric"] == "auto" and man["tolerance"]["criterion"].endswith("within 0.01 relative")
    # a [1, 10] float output without labels: judged as class scores (argmax agreement and per-example cosine)
    judged = next(e["tolerance"] for e in man["pass_log"] if "tolerance" in e)
    assert judged["threshold"] == pytest.approx(0.99)


def test_a_failing_configuration_costs_one_trial(tmp_path, monkeypatch):
    """An ORT calibrator bug in one configuration (seen: entropy on an encoder) must not end the search."""
    from optkit.errors import PassError
    from optkit.passes import quantize

    real = quantize.Int8Static.run

    def flaky(self, model, ctx):
        if self.config.calibration == "minmax":
            raise PassError("int8-static: onnxruntime.quantization failed: ValueError: Too many bins", "x")
        return real(self, model, ctx)

    monkeypatch.setattr(quantize.Int8Static, "run", flaky)
    model = slow_int8_cnn(tmp_path / "c.onnx")
    data = _data(tmp_path / "d.npz", "x", (1, 3, 32, 32), n=4)
    man = optkit.optimize(model, STATIC, data=data, output=tmp_path / "out", tolerance="5%", force=True)
    trials = man["pass_log"][0]["trials"]
    assert "Too many bins" in trials[0]["error"] and not trials[0]["ok"]
    assert any(t.get("chosen") and t["config"].get("calibration") != "minmax" for t in trials)


def test_layer_passes_are_gated_at_one_percent_by_default(tmp_path):
    model = sensitive_mlp(tmp_path / "s.onnx")
    data = _data(tmp_path / "d.npz", "x", (1, 64))
    recipe = parse_recipe({"passes": [{"lowrank": {"keep_flops": 0.3, "min_size": 0}}]}, "test", "lr")
    warnings = []
    man = optkit.optimize(model, recipe, data=data, output=tmp_path / "out", warn=warnings.append, allow_miss=True)
    assert man["tolerance"]["metric"] == "auto" and man["tolerance"]["default_gate"]
    assert man["tolerance"]["criterion"].endswith("within 0.01 relative")
    # --force applies the ratios as written (no layer search) but the gate still judges the result
    forced = optkit.optimize(model, recipe, data=data, output=tmp_path / "out", force=True, allow_miss=True)
    assert forced["tolerance"]["default_gate"] and "trials" not in forced["pass_log"][0]
    assert "tolerance" in forced["pass_log"][0]


def test_layer_search_leaves_half_the_tolerance_to_later_lossy_passes(tmp_path):
    model = sensitive_mlp(tmp_path / "s.onnx")
    data = _data(tmp_path / "d.npz", "x", (1, 64))
    recipe = parse_recipe({"passes": [{"lowrank": {"keep_flops": 0.3, "min_size": 0}}, "int8-dynamic"]}, "test", "lr")
    man = optkit.optimize(model, recipe, data=data, output=tmp_path / "out", tolerance="2%", force=True, allow_miss=True)
    lr = man["pass_log"][0]
    assert any("half the tolerance" in n and "int8-dynamic" in n for n in lr["notes"])
    assert all(t["threshold"] == pytest.approx(0.99) for t in lr["trials"] if "threshold" in t)


def test_fallback_search_gallops_then_bisects_to_any_k():
    """k float-kept nodes: 1, 2, 4, 8 (first pass) then bisect to the smallest passing k = 5 (never reachable with
    the old 1, 2, 3, 4, 8 schedule); 6 validations for 10 ranked nodes."""
    from optkit.search.quant import fallback_search
    from optkit.search.trials import Tuning

    calls = []

    @dataclass(frozen=True)
    class Cfg:
        exclude_nodes: tuple = ()

    class P:  # a Configurable pass: restrict() keeps nodes in float
        name = "p"

        def __init__(self, config=Cfg()):
            self.config = config

        def restrict(self, nodes):
            return P(Cfg(tuple(self.config.exclude_nodes) + tuple(nodes)))

    class FakeJudge:
        def __init__(self, tuning):
            self.tuning = tuning

        def trial(self, p, label):
            k = label["k"]
            assert list(p.config.exclude_nodes) == label["fallback_float"] and len(label["fallback_float"]) == k
            calls.append(k)
            self.tuning.trials_run += 1
            ok = k >= 5
            judged = {"ok": ok, "margin": k - 5.0, "metric": "cosine", "value": 0.99, "threshold": 0.99}
            return object(), judged, {**label, "ok": ok, "margin": k - 5.0}

    ranking = [(f"n{i}", 1.0 / (i + 1)) for i in range(10)]
    found, misses = fallback_search(P(), P(), ranking, FakeJudge(Tuning(max_trials=50)), [])
    assert calls == [1, 2, 4, 8, 6, 5]
    assert found[3]["k"] == 5 and found[3]["fallback_float"] == ["n0", "n1", "n2", "n3", "n4"]
    assert "smallest passing k = 5" in found[3]["search"] and len(misses) == 3
    # a budget of 3 stops the search early; the best pass so far (k = 4 misses, none passes) is None
    calls.clear()
    found, _ = fallback_search(P(), P(), ranking, FakeJudge(Tuning(max_trials=3)), [])
    assert calls == [1, 2, 4] and found is None


def test_static_configurations_share_one_calibration(tmp_path):
    from conftest import cnn_data, tiny_cnn
    from optkit.data import load_samples
    from optkit.model import load_model
    from optkit.cache import PassCache
    from optkit.passes import Context, get_pass

    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    # a cache of its own: without one, ranges are shared for the process's lifetime (other tests calibrate this model)
    ctx = Context(samples=load_samples(cnn_data(tmp_path / "c.npz", n=8), m), cache=PassCache(tmp_path / "cache"))
    first = get_pass("int8-static")({"calibration": "percentile"}).run(m, ctx)
    assert not any("reused" in n for n in first.notes)
    for cfg in ({"calibration": "percentile", "per_channel": False}, {"calibration": "percentile", "format": "qoperator"},
                {"calibration": "percentile", "op_types": ["Conv", "MatMul", "Gemm"]}):
        res = get_pass("int8-static")(cfg).run(m, ctx)
        assert any("calibration ranges reused" in n for n in res.notes), cfg
    other = get_pass("int8-static")({"calibration": "minmax"}).run(m, ctx)  # another method: calibrated again
    assert not any("reused" in n for n in other.notes)


def test_passes_join_the_search_through_protocols_not_names():
    """The search dispatches on optkit.search.protocols, never on a pass's name: INT8 passes are Configurable, the
    layer-wise passes Layered, exact passes neither; restrict()/only() build the restricted pass without touching
    the original's config."""
    from optkit.passes import get_pass
    from optkit.search import Configurable, Layered

    static, dyn = get_pass("int8-static")(), get_pass("int8-dynamic")()
    assert isinstance(static, Configurable) and isinstance(dyn, Configurable) and not isinstance(static, Layered)
    for name in ("prune", "lowrank"):
        p = get_pass(name)()
        assert isinstance(p, Layered) and not isinstance(p, Configurable)
        q = p.only(["a"], ["a", "b", "c"])
        assert list(q.config.skip) == ["b", "c"] and list(p.config.skip) == []
    for name in ("simplify", "fuse", "fp16"):
        assert not isinstance(get_pass(name)(), (Configurable, Layered))
    space = static.search_space()
    assert space[0] == static.config and len(space) == len(set(map(repr, space)))
    r = static.restrict(["n1", "n2"])
    assert list(r.config.exclude_nodes) == ["n1", "n2"] and list(static.config.exclude_nodes) == []
    assert static.alternative().name == "int8-dynamic" and dyn.alternative() is None


def test_sensitivity_ranks_only_nodes_the_quantizer_changed():
    """A float activation x activation MatMul (Q.K^T) that dynamic INT8 leaves alone is never ranked: keeping it in
    float would change nothing, and the fallback search would spend validations on it."""
    from optkit.evaluate import Evaluator
    from optkit.passes import Context, get_pass
    from optkit.search.quant import node_sensitivity

    rng = np.random.default_rng(0)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["q"], name="proj"),
             helper.make_node("Transpose", ["q"], ["qt"], name="t", perm=[1, 0]),
             helper.make_node("MatMul", ["q", "qt"], ["y"], name="qk")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], [numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    q = get_pass("int8-dynamic")({"smooth_alpha": 0}).run(m, Context()).model
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(2)]
    ranked = [name for name, _ in node_sensitivity(m, q, feeds, Evaluator())]
    assert ranked == ["proj"]
