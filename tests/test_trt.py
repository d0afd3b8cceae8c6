"""TensorRT backend: profiles, the TensorRT QDQ layout rules, the engine-build command, compile/load without
TensorRT (the command and the reason, no engine), and - where TensorRT and a CUDA GPU exist - real engines
compared with ONNX Runtime and timed with CUDA events."""
from __future__ import annotations

import json
import os
import shlex

import numpy as np
import onnx
import pytest
from conftest import cnn_data, tiny_cnn, tiny_matmul
from onnx import TensorProto, helper, numpy_helper

import optkit.backends.trt as trtmod
from optkit.backends import get_backend
from optkit.backends.trt import (Profile, TrtBackend, TrtError, TrtOptions, build_command, build_engine,
                                 check_trt_model, check_trt_qdq, derive_profiles, model_precision, parse_profile,
                                 prepare_trt_onnx, runtime_status)
from optkit.backends.ort import OrtSession
from optkit.data import load_samples
from optkit.errors import BackendUnavailable, InputError, RecipeError
from optkit.model import load_model, save_model, signature
from optkit.passes import Context, get_pass
from optkit.recipe import load_recipe, parse_recipe

STATUS = runtime_status()
needs_gpu = pytest.mark.skipif(not STATUS["ok"], reason=f"needs TensorRT >= 10 and a CUDA GPU: {STATUS['reason']}")
NO_TRT = "TensorRT is not installed (no 'tensorrt' Python module)"


@pytest.fixture
def no_trt(monkeypatch):
    """Behave as on a machine without TensorRT, whatever this one has."""
    monkeypatch.setattr(trtmod.gpu, "runtime_status", lambda: {"ok": False, "reason": NO_TRT, "tensorrt": None, "gpu": None,
                                                          "cuda_api": None})


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    path = tiny_cnn(d / "cnn.onnx")
    model = load_model(path)
    samples = load_samples(cnn_data(d / "calib.npz", n=8), model)
    return {"dir": d, "path": path, "model": model, "samples": samples, "cache": {}}


def _recipe_pass_options(recipe: str, name: str) -> dict:
    return dict(next(p.options for p in load_recipe(recipe).passes if p.name == name))


def _int8(cnn, **opts) -> onnx.ModelProto:
    key = json.dumps(opts, sort_keys=True)
    if key not in cnn["cache"]:
        cnn["cache"][key] = get_pass("int8-static")(opts).run(cnn["model"], Context(samples=cnn["samples"])).model
    return cnn["cache"][key]


def _int8_trt(cnn) -> onnx.ModelProto:
    return _int8(cnn, **_recipe_pass_options("int8-trt", "int8-static"))


def _inputs(path_or_model):
    m = path_or_model if isinstance(path_or_model, onnx.ModelProto) else load_model(path_or_model)
    return signature(m)[0]


# ---------------------------------------------------------------------------------------------------------------
# profiles
# ---------------------------------------------------------------------------------------------------------------


def test_profile_static_model(tmp_path):
    p = derive_profiles(_inputs(tiny_cnn(tmp_path / "s.onnx", batch=2)))["input"]
    assert (p.min, p.opt, p.max, p.dynamic) == ((2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8), False)


def test_profile_dynamic_batch_defaults_and_given_shape(tmp_path):
    inputs = _inputs(tiny_cnn(tmp_path / "d.onnx"))
    p = derive_profiles(inputs)["input"]
    assert (p.min, p.opt, p.max, p.dynamic_axes) == ((1, 3, 8, 8), (1, 3, 8, 8), (4, 3, 8, 8), (0,))
    p = derive_profiles(inputs, {"input": (2, 3, 8, 8)})["input"]
    assert (p.min, p.opt, p.max) == ((1, 3, 8, 8), (2, 3, 8, 8), (8, 3, 8, 8))
    p = derive_profiles(inputs, {"input": (2, 3, 8, 8)}, max_batch_multiple=16)["input"]
    assert p.max == (32, 3, 8, 8)


def test_profile_explicit_option_wins(tmp_path):
    inputs = _inputs(tiny_cnn(tmp_path / "d.onnx"))
    p = derive_profiles(inputs, {"input": (2, 3, 8, 8)}, {"input": "1x3x8x8,8x3x8x8,32x3x8x8"})["input"]
    assert (p.min, p.opt, p.max) == ((1, 3, 8, 8), (8, 3, 8, 8), (32, 3, 8, 8))
    p = derive_profiles(inputs, None, {"input": "6x3x8x8"})["input"]
    assert p.min == p.opt == p.max == (6, 3, 8, 8)


def test_profile_sequence_dim(tmp_path):
    inputs = _inputs(tiny_matmul(tmp_path / "mm.onnx"))
    p = derive_profiles(inputs, {"x": (2, 16, 16)})["x"]
    assert (p.min, p.opt, p.max, p.dynamic_axes) == ((1, 1, 16), (2, 16, 16), (8, 16, 16), (0, 1))
    with pytest.raises(InputError, match=r"'x'.*seq.*--shape"):
        derive_profiles(inputs)


@pytest.mark.parametrize("spec, err, match", [
    ("1x3x8", InputError, r"profiles\['input'\] has rank 3"),
    ("1x3x8x8,2x3x8x8", RecipeError, r"2 shapes, expected one shape or MIN,OPT,MAX"),
    ("4x3x8x8,2x3x8x8,8x3x8x8", RecipeError, r"axis 0 needs min <= opt <= max, got 4, 2, 8"),
    ("1x3xbx8", RecipeError, r"bad shape '1x3xbx8'"),
    ("0x3x8x8", RecipeError, r"dims must be >= 1"),
    ("1x4x8x8,2x4x8x8,4x4x8x8", InputError, r"varies axis 1, which the model fixes to 3"),
    ("1x3x8x8,2x3x8x8,4x3x8x8x1", RecipeError, r"different ranks"),
])
def test_bad_profile_specs_are_clear(tmp_path, spec, err, match):
    inputs = _inputs(tiny_cnn(tmp_path / "d.onnx"))
    with pytest.raises(err, match=match):
        derive_profiles(inputs, None, {"input": spec})


def test_profile_and_shape_name_unknown_inputs(tmp_path):
    inputs = _inputs(tiny_cnn(tmp_path / "d.onnx"))
    with pytest.raises(InputError, match=r"profiles names unknown input 'images'.*\['input'\]"):
        derive_profiles(inputs, None, {"images": "1x3x8x8"})
    with pytest.raises(InputError, match=r"--shape names unknown input 'images'"):
        derive_profiles(inputs, {"images": (1, 3, 8, 8)})


def test_options_validate_profiles_at_recipe_load():
    opts = TrtOptions.from_dict({"profiles": {"input": "1x3x8x8,2x3x8x8,4x3x8x8"}, "workspace_mb": 256})
    assert parse_profile(opts.profiles["input"]) == ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    with pytest.raises(RecipeError, match=r"backend_options: profiles\['input'\]: axis 0 needs min <= opt <= max"):
        parse_recipe({"backend": "trt", "passes": ["simplify"],
                      "backend_options": {"profiles": {"input": "8x3x8x8,2x3x8x8,4x3x8x8"}}})
    with pytest.raises(RecipeError, match="builder_optimization_level' must be in 0-5"):
        TrtOptions.from_dict({"builder_optimization_level": 9})


# ---------------------------------------------------------------------------------------------------------------
# the TensorRT QDQ layout
# ---------------------------------------------------------------------------------------------------------------


def test_int8_trt_recipe_output_is_trt_layout(cnn):
    q = _int8_trt(cnn)
    raw = check_trt_qdq(q)  # onnxruntime.quantization quantizes biases to int32: the only thing TensorRT cannot take
    assert raw and all("int32 input (a quantized bias)" in p for p in raw), raw
    ready, notes = prepare_trt_onnx(q)
    assert check_trt_qdq(ready) == [] and check_trt_model(ready) == []
    assert notes and "folded 2 int32 bias DequantizeLinear" in notes[0]
    assert model_precision(ready) == "int8"
    # the layout itself: int8 zero points all 0, per-channel Conv weights on axis 0, opset >= 13, no QOperator ops
    inits = {t.name: numpy_helper.to_array(t) for t in ready.graph.initializer}
    qdq = [n for n in ready.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(inits[n.input[2]].dtype == np.int8 and not inits[n.input[2]].any() for n in qdq)
    conv = next(n for n in ready.graph.node if n.op_type == "Conv")
    wdq = next(n for n in qdq if n.output[0] == conv.input[1])
    assert inits[wdq.input[0]].dtype == np.int8 and inits[wdq.input[1]].shape == (8,)
    assert next(a.i for a in wdq.attribute if a.name == "axis") == 0
    assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32  # the folded bias
    assert not {n.op_type for n in ready.graph.node} & {"QLinearConv", "ConvInteger", "DynamicQuantizeLinear"}
    assert {o.domain or "ai.onnx": o.version for o in ready.opset_import}["ai.onnx"] >= 13
    # the fold is the arithmetic ONNX Runtime did: identical outputs
    feed = cnn["samples"].feeds[0]
    a, b = OrtSession(q).run(feed), OrtSession(ready).run(feed)
    assert np.array_equal(a["logits"], b["logits"])


def test_int8_trt_recipe_options():
    opts = _recipe_pass_options("int8-trt", "int8-static")
    assert opts["format"] == "qdq" and opts["per_channel"] is True and opts["reduce_range"] == "no"
    assert opts["activation_type"] == opts["weight_type"] == "int8"
    assert opts["symmetric_activations"] is True and opts["symmetric_weights"] is True
    assert load_recipe("int8-trt").backend == load_recipe("fp16-trt").backend == "trt"


def test_uint8_asymmetric_model_fails(cnn):
    q = _int8(cnn, activation_type="uint8", weight_type="int8", symmetric_activations=False, reduce_range="no")
    problems = check_trt_qdq(prepare_trt_onnx(q)[0])
    assert any("QuantizeLinear 'input_QuantizeLinear': uint8 quantization (asymmetric U8)" in p for p in problems), problems
    assert any("zero point(s) not 0" in p and "symmetric only" in p for p in problems), problems


def test_qoperator_model_fails(cnn):
    q = _int8(cnn, format="qoperator", activation_type="int8", weight_type="int8", symmetric_activations=True,
              reduce_range="no")
    problems = check_trt_qdq(q)
    assert any(p.startswith("QLinearConv") and "QOperator-format op" in p and "format: qdq" in p for p in problems), problems


def test_per_tensor_conv_weights_fail(cnn):
    q = _int8(cnn, per_channel=False, activation_type="int8", weight_type="int8", symmetric_activations=True,
              reduce_range="no")
    problems = check_trt_qdq(prepare_trt_onnx(q)[0])
    assert any(p.startswith("Conv 'conv': per-tensor weight scale") and "per_channel: true" in p for p in problems), problems


def test_dynamic_quantization_fails(tmp_path):
    m = load_model(tiny_matmul(tmp_path / "mm.onnx"))
    q = get_pass("int8-dynamic")().run(m, Context()).model
    problems = check_trt_qdq(q)
    assert any(p.startswith("DynamicQuantizeLinear") and "dynamic (run-time) quantization" in p for p in problems), problems
    assert any(p.startswith("MatMulInteger") and "QOperator-format op" in p for p in problems), problems


def _qdq_conv(*, axis=0, opset=13, act_zp=True, zp_value=0, w_min=-127, scale=0.02, contrib=False) -> onnx.ModelProto:
    """input -> Q/DQ -> Conv(DQ(int8 W, per-channel scale)) -> out, built by hand."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, size=(8, 3, 3, 3)).astype(np.int8)
    w.flat[0] = w_min
    inits = [numpy_helper.from_array(w, "w_q"),
             numpy_helper.from_array(np.full(8 if axis == 0 else 3, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(8 if axis == 0 else 3, np.int8), "w_zp"),
             numpy_helper.from_array(np.array(scale, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(zp_value, np.int8), "x_zp")]
    q_in = ["input", "x_scale", "x_zp"] if act_zp else ["input", "x_scale"]
    nodes = [helper.make_node("QuantizeLinear", q_in, ["xq"], name="q_in"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"] if act_zp else ["xq", "x_scale"], ["xd"],
                              name="dq_in"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=axis),
             helper.make_node("Conv", ["xd", "w"], ["out"], name="conv", pads=[1, 1, 1, 1])]
    if contrib:
        nodes.append(helper.make_node("Gelu", ["out"], ["gelu"], name="gelu", domain="com.microsoft"))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("gelu" if contrib else "out", TensorProto.FLOAT, None)],
                              initializer=inits)
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    return helper.make_model(graph, opset_imports=imports)


@pytest.mark.parametrize("kwargs, expect", [
    ({}, None),
    ({"axis": 1}, "Conv 'conv': weights quantized per channel on axis 1 (DequantizeLinear 'dq_w'); TensorRT expects axis 0"),
    ({"act_zp": False}, "QuantizeLinear 'q_in': no zero point, so ONNX quantizes to uint8"),
    ({"zp_value": 3}, "QuantizeLinear 'q_in': zero point(s) not 0 (max |zp| = 3)"),
    ({"w_min": -128}, "DequantizeLinear 'dq_w': int8 weight value -128"),
    ({"scale": -0.5}, "QuantizeLinear 'q_in': scale has zero, negative or non-finite values"),
    ({"opset": 12}, "opset 12: QuantizeLinear/DequantizeLinear with a per-channel axis need opset >= 13"),
])
def test_hand_built_layout_rules(kwargs, expect):
    problems = check_trt_qdq(_qdq_conv(**kwargs))
    if expect is None:
        assert problems == []
    else:
        assert any(p.startswith(expect) for p in problems), problems


def test_contrib_ops_are_rejected_for_tensorrt():
    m = _qdq_conv(contrib=True)
    assert check_trt_qdq(m) == []
    assert any(p.startswith("com.microsoft.Gelu 'gelu': ONNX Runtime contrib op") for p in check_trt_model(m))


def test_fp16_trt_recipe_output_passes(cnn):
    opts = _recipe_pass_options("fp16-trt", "fp16")
    m = get_pass("fp16")(opts).run(cnn["model"], Context()).model
    assert check_trt_model(m) == [] and model_precision(m) == "fp16" and prepare_trt_onnx(m)[1] == []
    assert signature(m)[0][0].dtype == "float32"  # IO kept float32: fine for a strongly typed network


# ---------------------------------------------------------------------------------------------------------------
# the engine-build command
# ---------------------------------------------------------------------------------------------------------------


def test_build_command_dynamic_exact():
    cmd = build_command("model.trt.onnx", "engine.plan", {"input": "1x3x8x8,4x3x8x8,16x3x8x8"}, "int8", 2048, "timing.cache")
    assert cmd == ["trtexec", "--onnx=model.trt.onnx", "--saveEngine=engine.plan", "--stronglyTyped",
                   "--minShapes=input:1x3x8x8", "--optShapes=input:4x3x8x8", "--maxShapes=input:16x3x8x8",
                   "--timingCacheFile=timing.cache", "--memPoolSize=workspace:2048M", "--builderOptimizationLevel=3",
                   "--noTF32", "--skipInference"]
    assert not any(f in cmd for f in ("--int8", "--fp16", "--best"))  # strongly typed: types come from the ONNX


def test_build_command_static_multi_input_and_flags():
    profs = {"ids": Profile("ids", (1, 128), (1, 128), (1, 128)),
             "mask:0": ((1, 16), (2, 64), (4, 128)),
             "pos": ("1x16", "2x64", "4x128")}
    cmd = build_command("../model.onnx", "engine.plan", profs, "fp16", 512, None, builder_optimization_level=5, tf32=True)
    assert cmd == ["trtexec", "--onnx=../model.onnx", "--saveEngine=engine.plan", "--stronglyTyped",
                   "--minShapes='mask:0':1x16,pos:1x16", "--optShapes='mask:0':2x64,pos:2x64",
                   "--maxShapes='mask:0':4x128,pos:4x128", "--memPoolSize=workspace:512M",
                   "--builderOptimizationLevel=5", "--skipInference"]
    static = build_command("m.onnx", "e.plan", {"input": "2x3x8x8"}, "fp32", 1024, "t.cache")
    assert not any(a.startswith(("--minShapes", "--optShapes", "--maxShapes")) for a in static)
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, int8"):
        build_command("m.onnx", "e.plan", {}, "int4", 1024)


# ---------------------------------------------------------------------------------------------------------------
# compile and load without TensorRT
# ---------------------------------------------------------------------------------------------------------------


def test_check_never_raises_and_load_refuses(no_trt, cnn):
    backend = get_backend("trt")  # check() must let the recipe's passes run
    with pytest.raises(BackendUnavailable, match=r"cannot build or run TensorRT engines here: TensorRT is not installed"):
        backend.load(cnn["path"])
    with pytest.raises(BackendUnavailable) as e:
        backend.load(cnn["dir"] / "engine.plan")
    assert e.value.exit_code == 4 and "optkit[tensorrt]" in str(e.value)


def test_compile_without_tensorrt_writes_command_and_reason(no_trt, cnn, tmp_path):
    model = save_model(_int8_trt(cnn), tmp_path / "model.onnx")
    out = tmp_path / "compiled"
    info = TrtBackend().compile(model, out, TrtOptions(), shapes={"input": (2, 3, 8, 8)})
    assert info["engine"] is None and info["engine_built"] is False and info["reason"] == NO_TRT
    assert "no TensorRT engine was built" in info["message"]
    assert info["precision"] == "int8" and info["layout_check"] == "passed" and info["onnx"] == "model.trt.onnx"
    expected = build_command("model.trt.onnx", "engine.plan", {"input": "1x3x8x8,2x3x8x8,8x3x8x8"}, "int8", 1024,
                             "timing.cache")
    assert info["command"] == expected
    assert info["profiles"]["input"] == {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [8, 3, 8, 8], "dynamic_axes": [0]}
    assert sorted(p.name for p in out.iterdir()) == ["build_engine.txt", "model.trt.onnx", "trtexec.sh"]
    assert not list(tmp_path.rglob("*.plan"))  # no fake engine
    script = (out / "trtexec.sh").read_text()
    assert os.access(out / "trtexec.sh", os.X_OK) and script.startswith("#!/bin/sh")
    assert shlex.split(script.split("\nexec ", 1)[1].replace("\\\n", " "))[1:] == expected[1:]
    text = (out / "build_engine.txt").read_text()
    assert f"No engine was built here: {NO_TRT}." in text and " ".join(expected) in text
    assert "from optkit.backends.trt import build_engine" in text and "folded 2 int32 bias" in text
    assert check_trt_model(load_model(out / "model.trt.onnx")) == []
    json.dumps(info)  # goes into the manifest as is


def test_trt_qdq_layout_pass_folds_and_the_backend_only_verifies(no_trt, cnn, tmp_path):
    """The rewrite as a pass (trt-qdq-layout): exact under ONNX Runtime, idempotent; after it the backend finds
    nothing to change and builds from the model itself (no model.trt.onnx)."""
    q = _int8_trt(cnn)
    res = get_pass("trt-qdq-layout")().run(q, Context())
    assert res.modified and res.metrics == {"folded": 2, "trt_problems": 0}
    assert check_trt_model(res.model) == [] and check_trt_model(q) != []
    feed = {"input": cnn["samples"].feeds[0]["input"]}
    a, b = OrtSession(q).run(feed), OrtSession(res.model).run(feed)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-5
    again = get_pass("trt-qdq-layout")().run(res.model, Context())
    assert not again.modified and again.model is res.model and again.metrics["folded"] == 0
    info = TrtBackend().compile(save_model(res.model, tmp_path / "model.onnx"), tmp_path / "c", TrtOptions())
    assert info["onnx_changes"] == [] and info["onnx"] == "../model.onnx" and info["layout_check"] == "passed"
    assert not (tmp_path / "c" / "model.trt.onnx").exists()
    bad = onnx.ModelProto()
    bad.CopyFrom(res.model)
    w = next(t for t in bad.graph.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4)
    w.CopyFrom(numpy_helper.from_array(np.full(tuple(w.dims), -128, np.int8), w.name))  # outside [-127, 127]
    assert get_pass("trt-qdq-layout")().run(bad, Context()).metrics["trt_problems"] > 0  # reported, not fixed
    with pytest.raises(TrtError, match="not TensorRT-ready"):
        TrtBackend().compile(save_model(bad, tmp_path / "bad.onnx"), tmp_path / "c2", TrtOptions())


def test_compile_fp16_references_the_model(no_trt, cnn, tmp_path):
    m = get_pass("fp16")().run(cnn["model"], Context()).model
    model = save_model(m, tmp_path / "model.onnx")
    info = TrtBackend().compile(model, tmp_path / "compiled", TrtOptions(timing_cache=False))
    assert info["onnx"] == "../model.onnx" and (tmp_path / "compiled" / info["onnx"]).is_file()
    assert info["precision"] == "fp16" and not any(a.startswith("--timingCacheFile") for a in info["command"])
    assert info["files"] == ["trtexec.sh", "build_engine.txt"]


def test_compile_rejects_a_model_tensorrt_cannot_take(no_trt, cnn, tmp_path):
    q = _int8(cnn, activation_type="uint8", weight_type="int8", symmetric_activations=False, reduce_range="no")
    model = save_model(q, tmp_path / "model.onnx")
    with pytest.raises(TrtError, match=r"not TensorRT-ready \(\d+ problem\(s\)\): .*uint8 quantization") as e:
        TrtBackend().compile(model, tmp_path / "compiled", TrtOptions())
    assert e.value.exit_code == 3 and not (tmp_path / "compiled").exists()
    with pytest.raises(BackendUnavailable, match="cannot build the engine here"):
        TrtBackend().compile(save_model(_int8_trt(cnn), tmp_path / "ok.onnx"), tmp_path / "c2",
                             TrtOptions(require_engine=True))


def test_optimize_int8_trt_end_to_end_without_tensorrt(no_trt, cnn, tmp_path):
    from optkit.api import optimize
    from optkit.measure import bench

    man = optimize(cnn["path"], "int8-trt", data=cnn["dir"] / "calib.npz", output=tmp_path / "out")
    art = tmp_path / "out" / "cnn" / "1"
    assert man["backend"]["engine_built"] is False and man["backend"]["reason"] == NO_TRT
    assert (art / "compiled" / "trtexec.sh").is_file() and not (art / "compiled" / "engine.plan").exists()
    with pytest.raises(BackendUnavailable, match="TensorRT is not installed"):
        bench(art, backend="trt", rounds=1, round_time=0.01)


# ---------------------------------------------------------------------------------------------------------------
# GPU: real engines (skipped without TensorRT and a CUDA GPU)
# ---------------------------------------------------------------------------------------------------------------


def _cosine(a, b) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@needs_gpu
def test_gpu_fp32_engine_matches_ort_and_times_with_cuda_events(cnn, tmp_path):
    out = tmp_path / "compiled"
    info = TrtBackend().compile(cnn["path"], out, TrtOptions(cache_dir=str(tmp_path / "cache")),
                                shapes={"input": (2, 3, 8, 8)})
    assert info["engine_built"] is True and (out / "engine.plan").is_file() and (out / "timing.cache").is_file()
    ref = OrtSession(cnn["path"])
    rng = np.random.default_rng(0)
    with TrtBackend().load(out / "engine.plan") as sess:
        assert [s.name for s in sess.inputs] == ["input"] and [s.name for s in sess.outputs] == ["logits"]
        for batch in (1, 2, 8):  # the profile: 1 / 2 / 8
            x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
            got, want = sess.run({"input": x})["logits"], ref.run({"input": x})["logits"]
            assert got.shape == want.shape and np.abs(got - want).max() < 1e-3  # --noTF32: FP32 numerics
        with pytest.raises(InputError, match="outside the engine's profile"):
            sess.run({"input": np.zeros((9, 3, 8, 8), np.float32)})
        times = sess.time_ms({"input": x}, runs=20, warmup=5)
        assert len(times) == 20 and all(t > 0 for t in times)


@needs_gpu
def test_gpu_int8_engine_close_to_ort(cnn, tmp_path):
    q = _int8_trt(cnn)
    model = save_model(q, tmp_path / "model.onnx")
    info = TrtBackend().compile(model, tmp_path / "compiled", TrtOptions(cache_dir=str(tmp_path / "cache")))
    assert info["engine_built"] and info["precision"] == "int8"
    ref = OrtSession(q)
    with TrtBackend().load(tmp_path / "compiled" / "engine.plan") as sess:
        for feed in cnn["samples"].feeds[:4]:
            assert _cosine(sess.run(feed)["logits"], ref.run(feed)["logits"]) > 0.99


@needs_gpu
def test_gpu_fp16_engine_close_to_ort(cnn, tmp_path):
    m = get_pass("fp16")().run(cnn["model"], Context()).model
    model = save_model(m, tmp_path / "model.onnx")
    info = TrtBackend().compile(model, tmp_path / "compiled", TrtOptions(cache_dir=str(tmp_path / "cache")))
    assert info["engine_built"] and info["precision"] == "fp16"
    with TrtBackend().load(tmp_path / "compiled" / "engine.plan") as sess:
        feed = cnn["samples"].feeds[0]
        assert _cosine(sess.run(feed)["logits"], OrtSession(cnn["path"]).run(feed)["logits"]) > 0.999


@needs_gpu
def test_gpu_timing_cache_is_reused(cnn, tmp_path):
    opts = TrtOptions(cache_dir=str(tmp_path / "cache"))
    TrtBackend().compile(cnn["path"], tmp_path / "a", opts)
    second = TrtBackend().compile(cnn["path"], tmp_path / "b", opts)
    assert second["timing_cache"]["reused"] and list((tmp_path / "cache").glob("timing-trt*.cache"))
    assert (tmp_path / "b" / "timing.cache").is_file()


@needs_gpu
def test_gpu_load_onnx_builds_and_caches_the_engine(cnn, tmp_path):
    opts = TrtOptions(cache_dir=str(tmp_path / "cache"))
    feed = cnn["samples"].feeds[0]
    with TrtBackend().load(cnn["path"], options=opts) as sess:
        first = sess.run(feed)["logits"]
    engines = list((tmp_path / "cache" / "engines").glob("*.plan"))
    assert len(engines) == 1
    with TrtBackend().load(cnn["path"], options=opts) as sess:
        assert np.array_equal(sess.run(feed)["logits"], first)
    assert list((tmp_path / "cache" / "engines").glob("*.plan")) == engines


@needs_gpu
def test_gpu_parse_error_names_the_node(tmp_path):
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"], name="mystery_node", domain="optkit.test")],
                              "bad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("optkit.test", 1)])
    onnx.save(m, tmp_path / "bad.onnx")
    with pytest.raises(TrtError, match="mystery_node"):
        build_engine(tmp_path / "bad.onnx", tmp_path / "bad.plan", timing_cache=None)


@needs_gpu
def test_gpu_optimize_and_bench_end_to_end(cnn, tmp_path, monkeypatch):
    from optkit.api import optimize
    from optkit.measure import bench

    monkeypatch.setenv("OPTKIT_CACHE_DIR", str(tmp_path / "cache"))
    man = optimize(cnn["path"], "int8-trt", data=cnn["dir"] / "calib.npz", output=tmp_path / "out")
    assert man["backend"]["engine_built"] is True
    res = bench(tmp_path / "out" / "cnn" / "1", backend="trt", rounds=1, round_time=0.01)
    assert res["latency"]["candidate"]["p50_ms"] > 0 and res["accuracy"]["vs_reference"]["cosine"] > 0.99
