"""Pipeline: per-pass log, numerics checks, and failures that name the pass."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import cnn_data, tiny_cnn
from optkit.data import load_samples
from optkit.errors import PassError
from optkit.model import load_model
from optkit.passes import Context, Pass, PassConfig, PassResult, get_pass
from optkit.pipeline import Pipeline


class Perturb(Pass):
    """Claims to be exact but scales the first weight: the pipeline must catch it."""

    name = "perturb"
    exact = True
    Config = PassConfig

    def run(self, model, ctx):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        t = m.graph.initializer[0]
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.5, t.name))
        return PassResult(m)


class Explodes(Pass):
    name = "explodes"
    Config = PassConfig

    def run(self, model, ctx):
        raise ValueError("kaboom")


@pytest.fixture
def setup(tmp_path):
    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    samples = load_samples(cnn_data(tmp_path / "d.npz", n=8), m)
    return m, Context(samples=samples)


def test_log_has_numbers_for_every_pass(setup):
    m, ctx = setup
    res = Pipeline([get_pass("simplify")(), get_pass("int8-static")()], ctx).run(m)
    assert [e["pass"] for e in res.log] == ["simplify", "int8-static"]
    for e in res.log:
        for key in ("nodes_before", "nodes_after", "bytes_before", "bytes_after", "seconds", "vs_previous", "vs_input", "notes"):
            assert key in e
        assert {"max_abs", "cosine", "top1_agreement"} <= set(e["vs_previous"])
        assert "top1" in e  # labels present in the data
    assert res.log[0]["vs_previous"]["max_abs"] < 1e-5
    assert res.log[1]["vs_previous"]["max_abs"] > 0  # quantization changes numerics and says how much


def test_exact_pass_that_changes_numerics_fails_naming_it(setup):
    m, ctx = setup
    with pytest.raises(PassError, match=r"pass 'perturb' should keep numerics .*\(after: simplify\)"):
        Pipeline([get_pass("simplify")(), Perturb()], ctx).run(m)


def test_non_exact_pass_may_change_numerics(setup):
    m, ctx = setup

    class LossyPerturb(Perturb):
        exact = False

    res = Pipeline([LossyPerturb()], ctx).run(m)
    assert res.log[0]["vs_previous"]["cosine"] < 0.9999999


def test_crashing_pass_is_named(setup):
    m, ctx = setup
    with pytest.raises(PassError, match=r"pass 'explodes' failed: ValueError: kaboom \(first pass\)"):
        Pipeline([Explodes()], ctx).run(m)
