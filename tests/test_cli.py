"""The `optkit` command end to end on tiny models: recipes, passes, inspect, optimize, bench."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import yaml

from conftest import REPO, nonblank_lines, run_cli, sha256, tiny_cnn_flops, tiny_cnn_params

BUILTIN = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
ORT_RECIPES = ["int8-ort", "int8-dynamic-ort", "fp16-ort", "fp32-ort"]
PASS_NAMES = {"simplify", "fuse", "fp16", "int8-dynamic", "int8-static", "fix-shapes"}
PASS_LOG_KEYS = {"pass", "nodes_before", "nodes_after", "bytes_before", "bytes_after", "seconds", "vs_previous"}
N_FEEDS = 16


def _json(r):
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# --------------------------------------------------------------------------------------------------- recipes / passes


def test_recipes_table():
    r = run_cli("recipes")
    assert r.returncode == 0, r.stderr
    for name in BUILTIN:
        assert name in r.stdout


def test_recipes_json():
    rows = _json(run_cli("recipes", "--format", "json"))
    assert sorted(row["name"] for row in rows) == BUILTIN
    by_name = {row["name"]: row for row in rows}
    for name in BUILTIN:
        spec = yaml.safe_load((REPO / "recipes" / f"{name}.yaml").read_text())
        want = [p if isinstance(p, str) else next(iter(p)) for p in spec["passes"]]
        assert by_name[name]["passes"] == want
        assert by_name[name]["backend"] == spec["backend"]
        assert by_name[name]["description"]


def test_passes_table_and_json():
    r = run_cli("passes")
    assert r.returncode == 0, r.stderr
    for name in PASS_NAMES:
        assert name in r.stdout
    rows = _json(run_cli("passes", "--format", "json"))
    by_name = {row["name"]: row for row in rows}
    assert PASS_NAMES <= set(by_name)
    assert by_name["simplify"]["exact"] is True and by_name["int8-static"]["exact"] is False
    opts = {o["name"]: o for o in by_name["int8-static"]["options"]}
    assert opts["calibration"]["default"] == "minmax"
    assert set(opts["calibration"]["choices"]) == {"minmax", "entropy", "percentile"}
    assert opts["per_channel"]["type"] == "bool"


def test_bad_format_is_one_line_error():
    r = run_cli("recipes", "--format", "yaml")
    assert r.returncode != 0
    lines = nonblank_lines(r.stderr)
    assert len(lines) == 1 and "--format" in lines[0] and "Traceback" not in r.stderr


# --------------------------------------------------------------------------------------------------- inspect


def test_inspect_json(cnn_files):
    info = _json(run_cli("inspect", cnn_files["model"], "--format", "json"))
    for key in ("inputs", "outputs", "ops", "params", "flops"):
        assert key in info
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["batch", 3, 8, 8]}]
    assert info["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["batch", 10]}]
    assert info["ops"] == {"Conv": 1, "Relu": 1, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}
    assert info["params"] == tiny_cnn_params() == 314
    assert info["flops"]["total"] == tiny_cnn_flops(1) == 27808
    assert info["flops"]["by_op"] == {"Conv": 27648, "Gemm": 160}
    assert info["flops_shapes"] == {"input": [1, 3, 8, 8]}
    assert info["sha256"] == sha256(cnn_files["model"])
    assert info["opsets"] == {"ai.onnx": 17}


def test_inspect_json_with_shape(cnn_files):
    info = _json(run_cli("inspect", cnn_files["model"], "--shape", "input=4x3x8x8", "--format", "json"))
    assert info["flops"]["total"] == tiny_cnn_flops(4) == 4 * 27808
    assert info["flops_shapes"] == {"input": [4, 3, 8, 8]}


def test_inspect_table(cnn_files):
    r = run_cli("inspect", cnn_files["model"])
    assert r.returncode == 0, r.stderr
    for word in ("input", "logits", "float32", "Conv", "Gemm", "GlobalAveragePool", "params 314", "nodes 5"):
        assert word in r.stdout, word


def test_inspect_table_shows_symbolic_shapes(cnn_files):
    r = run_cli("inspect", cnn_files["model"])
    assert r.returncode == 0, r.stderr
    assert "[batch, 3, 8, 8]" in r.stdout and "[batch, 10]" in r.stdout


# --------------------------------------------------------------------------------------------------- optimize


@pytest.fixture(scope="module")
def optimized(cnn_files, tmp_path_factory):
    """optimized(recipe) -> (CompletedProcess, out dir): one run per recipe per module, with --data.

    --force: these tests check the structure a recipe produces; on a model this tiny INT8 is slower than FP32, and
    the performance guard (tested in test_tune.py) would rightly revert it."""
    cache = {}

    def get(recipe: str):
        if recipe not in cache:
            out = tmp_path_factory.mktemp(f"out-{recipe}")
            r = run_cli("optimize", cnn_files["model"], "-r", recipe, "--data", cnn_files["data"], "-o", out,
                        "--force", cwd=cnn_files["dir"])
            cache[recipe] = (r, out)
        return cache[recipe]

    return get


def _check_artifact(art: Path, recipe: str, model: Path, labels: bool = True) -> dict:
    assert art.is_dir(), f"no artifact at {art}"
    assert (art / "model.onnx").is_file()
    assert (art / "compiled" / "model.ort.onnx").is_file()
    onnx.checker.check_model(str(art / "model.onnx"))
    man = json.loads((art / "manifest.json").read_text())

    # recipe
    assert man["recipe"]["name"] == recipe
    assert man["recipe"]["backend"] == "ort"
    # pass log: one entry per pass, in recipe order
    want = [next(iter(p)) for p in man["recipe"]["passes"]]
    assert [e["pass"] for e in man["pass_log"]] == want
    spec = yaml.safe_load((REPO / "recipes" / f"{recipe}.yaml").read_text()) if recipe in BUILTIN else None
    if spec is not None:
        assert want == [p if isinstance(p, str) else next(iter(p)) for p in spec["passes"]]
    for e in man["pass_log"]:
        assert PASS_LOG_KEYS <= set(e), f"pass log entry {e['pass']} lacks {PASS_LOG_KEYS - set(e)}"
        assert isinstance(e["nodes_before"], int) and isinstance(e["nodes_after"], int)
        assert e["bytes_before"] > 0 and e["bytes_after"] > 0 and e["seconds"] >= 0
        assert {"max_abs", "cosine"} <= set(e["vs_previous"])
        assert e["vs_previous"]["max_abs"] >= 0
        assert -1.0 <= e["vs_previous"]["cosine"] <= 1.0 + 1e-9
    assert man["pass_log"][0]["nodes_before"] == 5
    for prev, nxt in zip(man["pass_log"], man["pass_log"][1:]):
        assert nxt["nodes_before"] == prev["nodes_after"]
    # accuracy vs the input model
    acc = man["accuracy"]
    assert acc["feeds"] == N_FEEDS and acc["synthetic"] is False
    assert acc["vs_input"]["cosine"] > 0.95
    if labels:
        assert {"top1_input", "top1_output", "top1_delta"} <= set(acc)
    # input fingerprint and environment
    assert man["input"]["sha256"] == sha256(model)
    assert man["output"]["sha256"] == sha256(art / "model.onnx")
    cpu = man["environment"]["cpu"]
    assert cpu["logical_cores"] >= 1 and "isa" in cpu and "arch" in cpu
    assert man["data"]["feeds"] == N_FEEDS and man["data"]["labels"] is labels
    return man


@pytest.mark.parametrize("recipe", ORT_RECIPES)
def test_optimize_builtin_recipe(recipe, optimized, cnn_files):
    digest = sha256(cnn_files["model"])
    r, out = optimized(recipe)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    art = out / "tiny_cnn" / "1"
    man = _check_artifact(art, recipe, cnn_files["model"])
    assert sorted(p.name for p in (out / "tiny_cnn").iterdir()) == ["1"]  # no staging dir left
    assert f"artifact: {art}" in r.stdout or str(art) in r.stdout
    assert sha256(cnn_files["model"]) == digest
    if recipe == "fp32-ort":
        assert man["accuracy"]["vs_input"]["cosine"] > 0.99999
    if recipe.startswith("int8"):
        ops = {n.op_type for n in onnx.load(str(art / "model.onnx")).graph.node}
        assert ops & {"QuantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QLinearConv"}
    if recipe == "fp16-ort":
        m = onnx.load(str(art / "model.onnx"))
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
        io = list(m.graph.input) + list(m.graph.output)
        assert all(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in io)  # keep_io_types
        assert man["accuracy"]["vs_input"]["cosine"] > 0.999


def test_second_run_is_version_2_and_version_1_again_fails(tmp_path, optimized, cnn_files):
    r, first_out = optimized("fp32-ort")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    shutil.copytree(first_out, out)
    v1 = out / "tiny_cnn" / "1"
    v1_manifest = (v1 / "manifest.json").read_bytes()

    r2 = run_cli("optimize", cnn_files["model"], "-r", "fp32-ort", "--data", cnn_files["data"], "-o", out,
                 cwd=tmp_path)
    assert r2.returncode == 0, r2.stderr
    _check_artifact(out / "tiny_cnn" / "2", "fp32-ort", cnn_files["model"])
    assert (v1 / "manifest.json").read_bytes() == v1_manifest

    r3 = run_cli("optimize", cnn_files["model"], "-r", "fp32-ort", "--data", cnn_files["data"], "-o", out,
                 "--version", "1", cwd=tmp_path)
    assert r3.returncode != 0
    lines = nonblank_lines(r3.stderr)
    assert len(lines) == 1 and "already exists" in lines[0] and "Traceback" not in r3.stderr
    assert sorted(p.name for p in (out / "tiny_cnn").iterdir()) == ["1", "2"]
    assert (v1 / "manifest.json").read_bytes() == v1_manifest


def test_synthetic_data_warns_and_json_format(tmp_path, cnn_files):
    """No --data: a 'synthetic' warning on stderr; --format json prints the manifest (plus 'artifact' and 'report')."""
    out = tmp_path / "out"
    r = run_cli("optimize", cnn_files["model"], "-r", "fp32-ort", "-o", out, "--format", "json", "--name", "cnn-json",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.lstrip().startswith("warning:") and "synthetic" in r.stderr, r.stderr
    man = json.loads(r.stdout)
    art = out / "cnn-json" / "1"
    assert Path(man["artifact"]) == art
    assert man == {**json.loads((art / "manifest.json").read_text()), "artifact": man["artifact"],
                   "report": str(art / "report.html")}
    assert man["data"]["synthetic"] is True and man["accuracy"]["synthetic"] is True
    assert man["data"]["path"] is None and man["accuracy"]["feeds"] >= 1
    assert any("synthetic" in w for w in man["warnings"])
    assert "top1_input" not in man["accuracy"]  # no labels, no top-1


def test_user_yaml_recipe(tmp_path, cnn_files):
    recipe = tmp_path / "my_recipe.yaml"
    recipe.write_text(
        "name: my-int8\n"
        "description: test recipe\n"
        "backend: ort\n"
        "passes:\n"
        "  - simplify\n"
        "  - int8-dynamic:\n"
        "      per_channel: false\n"
        "backend_options:\n"
        "  saved_level: basic\n")
    out = tmp_path / "out"
    r = run_cli("optimize", cnn_files["model"], "-r", recipe, "--data", cnn_files["data"], "-o", out, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    man = _check_artifact(out / "tiny_cnn" / "1", "my-int8", cnn_files["model"])
    assert man["recipe_source"] == str(recipe)
    assert man["recipe"]["passes"][1]["int8-dynamic"]["per_channel"] is False
    assert man["recipe"]["backend_options"]["saved_level"] == "basic"
    assert man["pass_log"][1]["config"]["per_channel"] is False


# --------------------------------------------------------------------------------------------------- bench


def _check_bench(res: dict, art: Path, cnn_model: Path) -> None:
    for role in ("candidate", "reference"):
        lat = res["latency"][role]
        for k in ("p50_ms", "p90_ms", "p99_ms"):
            assert lat[k] > 0, (role, k)
        assert lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
        assert lat["runs"] >= 2 * 20  # 2 rounds of at least 20 runs
        assert len(lat["round_p50_ms"]) == 2
    assert res["speedup"]["median"] > 0
    assert len(res["speedup"]["rounds"]) == 2
    acc = res["accuracy"]
    assert {"max_abs", "cosine"} <= set(acc["vs_reference"])
    assert acc["vs_reference"]["cosine"] > 0.95
    assert acc["feeds"] == N_FEEDS and acc["synthetic"] is False  # the artifact's --data is reused
    assert "top1_candidate" in acc and "top1_reference" in acc
    assert Path(res["reference"]) == cnn_model.resolve()
    assert Path(res["model"]) == art / "model.onnx"
    assert res["recipe"] == "int8-ort"
    assert res["protocol"]["rounds"] == 2 and res["protocol"]["alternating"] is True


def test_bench_artifact_json_and_json_file(tmp_path, optimized, cnn_files):
    r, out = optimized("int8-ort")
    assert r.returncode == 0, r.stderr
    art = out / "tiny_cnn" / "1"
    manifest_before = (art / "manifest.json").read_bytes()
    jf = tmp_path / "bench.json"
    rb = run_cli("bench", art, "--format", "json", "--rounds", "2", "--round-time", "0.05", "--json", jf,
                 cwd=tmp_path)
    res = _json(rb)
    _check_bench(res, art, cnn_files["model"])
    assert jf.is_file()
    assert json.loads(jf.read_text()) == res
    assert (art / "manifest.json").read_bytes() == manifest_before


def test_bench_table(tmp_path, optimized):
    r, out = optimized("int8-ort")
    assert r.returncode == 0, r.stderr
    art = out / "tiny_cnn" / "1"
    rb = run_cli("bench", art, "--rounds", "2", "--round-time", "0.02", cwd=tmp_path)
    assert rb.returncode == 0, rb.stderr
    assert "candidate: model.onnx" in rb.stdout and "reference: tiny_cnn.onnx" in rb.stdout
    assert "speedup vs reference" in rb.stdout and "vs reference on 16 feed(s)" in rb.stdout
