"""Recipes: built-ins load and validate; bad YAML names the key and the allowed values."""
from __future__ import annotations

import pytest

from optkit.errors import RecipeError
from optkit.recipe import builtin_names, list_recipes, load_recipe, parse_recipe

REQUIRED = {"int8-ort", "int8-dynamic-ort", "fp16-ort", "int8-trt", "fp16-trt", "int8-tvm", "fp32-tvm"}


def test_builtins_present_and_valid():
    assert REQUIRED <= set(builtin_names())
    for r in list_recipes():
        assert r["description"] and r["passes"]
        full = load_recipe(r["name"]).to_dict()  # every option resolved, defaults included
        assert all(len(p) == 1 for p in full["passes"])


def test_int8_ort_resolves_options():
    d = load_recipe("int8-ort").to_dict()
    static = next(p["int8-static"] for p in d["passes"] if "int8-static" in p)
    assert static["format"] == "qdq" and static["per_channel"] is True and static["activation_type"] == "auto"
    assert d["backend_options"]["graph_optimization_level"] == "all"


def test_trt_recipe_is_symmetric_s8():
    d = load_recipe("int8-trt").to_dict()
    static = next(p["int8-static"] for p in d["passes"] if "int8-static" in p)
    assert static["activation_type"] == static["weight_type"] == "int8"
    assert static["symmetric_activations"] and static["symmetric_weights"]


@pytest.mark.parametrize("data, match", [
    ({"passes": ["simplify"], "bogus": 1}, r"unknown key 'bogus'.*allowed keys: name, description, backend"),
    ({"passes": ["nope"]}, r"unknown pass 'nope'.*available passes:.*int8-static"),
    ({"passes": [{"int8-static": {"per_channel": "yes"}}]}, r"option 'per_channel' must be true or false"),
    ({"passes": [{"int8-static": {"calibration": "magic"}}]}, r"must be one of minmax, entropy, percentile"),
    ({"passes": [{"int8-static": {"max_samples": 1.5}}]}, r"must be an integer"),
    ({"passes": [{"int8-static": {"percentile": 200}}]}, r"'percentile' must be in \(0, 100\], got 200"),
    ({"passes": [{"int8-static": {"max_samples": 0}}]}, r"'max_samples' must be >= 1"),
    ({"passes": [{"int8-static": {"wat": 1}}]}, r"unknown option 'wat'.*allowed options:.*calibration"),
    ({"passes": "simplify"}, r"'passes' must be a list"),
    ({"backend": "cuda", "passes": []}, r"backend must be one of ort, tvm, trt"),
    ({"passes": [], "backend_options": {"graph_optimization_level": "max"}}, r"must be one of disable, basic, extended, all"),
    ({"passes": [{"simplify": {}, "fuse": {}}]}, r"one-key mapping"),
])
def test_bad_recipes_name_the_problem(data, match):
    with pytest.raises(RecipeError, match=match):
        parse_recipe(data)


def test_yaml_file_and_unknown_name(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("description: mine\npasses:\n  - simplify\n  - int8-dynamic: {per_channel: false}\n")
    r = load_recipe(str(p))
    assert r.name == "mine" and [s.name for s in r.passes] == ["simplify", "int8-dynamic"]
    with pytest.raises(RecipeError, match=r"unknown recipe 'int9-ort'.*built-in recipes: .*int8-ort"):
        load_recipe("int9-ort")
    (tmp_path / "bad.yaml").write_text("passes: [simplify\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(str(tmp_path / "bad.yaml"))
