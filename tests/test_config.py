"""Typed pass configs: deep-frozen, hashable, ranges declared once in option(...) and checked on every construction."""
from __future__ import annotations

import dataclasses
import json
import pickle

import pytest
import yaml

from optkit.config import FrozenDict, PassConfig, option
from optkit.errors import RecipeError
from optkit.passes import _REGISTRY, get_pass, list_passes
from optkit.passes.prune import Prune, PruneConfig
from optkit.passes.quantize import StaticConfig

list_passes()  # loads every pass module
CONFIGS = sorted({c.Config for c in _REGISTRY.values()}, key=lambda c: c.__name__)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_is_deep_frozen_and_hashable(cls):
    cfg = cls()
    assert hash(cfg) == hash(cls())
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        assert not isinstance(v, list)
        assert not isinstance(v, dict) or isinstance(v, FrozenDict)
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    d = cfg.to_dict()
    assert yaml.safe_load(yaml.safe_dump(d)) == d == json.loads(json.dumps(d))


def test_list_and_mapping_options_cannot_be_mutated():
    cfg = PruneConfig.from_dict({"skip": ["conv1"], "layers": {"conv2": 0.5}})
    assert cfg.skip == ("conv1",)
    with pytest.raises(AttributeError):
        cfg.skip.append("conv3")  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        cfg.layers["conv3"] = 0.1
    with pytest.raises(TypeError):
        cfg.layers.update({"conv3": 0.1})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ratio = 0.5  # type: ignore[misc]
    assert PruneConfig().skip == () and hash(cfg) != hash(PruneConfig())


def test_replace_and_direct_construction_freeze_lists():
    cfg = dataclasses.replace(PruneConfig(skip=["a"]), skip=["a", "b"])
    assert cfg.skip == ("a", "b") and hash(cfg) == hash(PruneConfig(skip=("a", "b")))
    assert StaticConfig(exclude_nodes=["n1"]) == StaticConfig.from_dict({"exclude_nodes": ["n1"]})


def _outside(bounds: dict):
    if "min" in bounds:
        return bounds["min"] - 1
    if "gt" in bounds:
        return bounds["gt"]
    if "max" in bounds:
        return bounds["max"] + 1
    return bounds["lt"]


BOUNDED = [(cls, o) for cls in CONFIGS for o in cls.describe() if o["bounds"]]


def test_ranges_are_declared():
    names = {(cls.__name__, o["name"]) for cls, o in BOUNDED}
    assert {("PruneConfig", "ratio"), ("PruneConfig", "layers"), ("LowRankConfig", "energy"),
            ("StaticConfig", "percentile"), ("SparsifyConfig", "sparsity")} <= names
    ratio = next(o for o in PruneConfig.describe() if o["name"] == "ratio")
    assert ratio["bounds"] == {"min": 0, "lt": 1} and ratio["range"] == "[0, 1)"
    shown = {o["name"]: o["range"] for p in list_passes() if p["name"] == "int8-static" for o in p["options"]}
    assert shown["percentile"] == "(0, 100]" and shown["max_samples"] == ">= 1" and shown["calibration"] == ""


@pytest.mark.parametrize("cls,opt", BOUNDED, ids=lambda x: getattr(x, "__name__", None) or x["name"])
def test_a_value_outside_the_declared_range_is_refused(cls, opt):
    bad = _outside(opt["bounds"])
    default = opt["default"]
    value = {"k": bad} if isinstance(default, dict) else [bad] if isinstance(default, list) else bad
    with pytest.raises(RecipeError, match=opt["name"]):
        cls(**{opt["name"]: value})  # direct construction
    with pytest.raises(RecipeError, match=opt["name"]):
        cls.from_dict({opt["name"]: value}, where="pass x: ")  # a recipe
    for edge in (opt["bounds"].get("min"), opt["bounds"].get("max")):  # inclusive ends are allowed
        if edge is not None and not isinstance(default, (dict, list)):
            assert getattr(cls(**{opt["name"]: type(default)(edge)}), opt["name"]) == edge


def test_a_pass_refuses_another_pass_config():
    with pytest.raises(RecipeError, match="PruneConfig"):
        Prune(StaticConfig())
    assert Prune(PruneConfig(ratio=0.5)).config.ratio == 0.5
    assert get_pass("prune")({"ratio": 0.5}).config == PruneConfig(ratio=0.5)


def test_option_ranges_on_a_new_config():
    @dataclasses.dataclass(frozen=True)
    class C(PassConfig):
        n: int = option(2, "n", min=1, max=3)
        xs: tuple[float, ...] = option((0.5,), "xs", gt=0, lt=1)

    assert C(n=3).n == 3
    for bad in ({"n": 0}, {"n": 4}, {"xs": [0.0]}, {"xs": [0.5, 1.0]}, {"n": float("nan")}):
        with pytest.raises(RecipeError):
            C.from_dict(bad)
