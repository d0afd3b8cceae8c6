"""Shared fixtures: tiny ONNX models built in code (no torch), sample data, and a CLI runner.

The builders are plain functions (usable from any test module via ``from conftest import ...``) and are
also exposed as fixtures returning those functions, so tests can write::

    def test_x(tmp_path, tiny_cnn):
        model = tiny_cnn(tmp_path / "cnn.onnx")
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

# The pass cache (optkit.cache) is off in the suite, in-process and in the CLI subprocesses: tests that monkeypatch a
# pass or count its runs must see it run. tests/test_cache.py turns it on with a cache of its own.
os.environ.setdefault("OPTKIT_NO_CACHE", "1")

# ---------------------------------------------------------------------------------------------------------------
# tiny models
# ---------------------------------------------------------------------------------------------------------------

# Geometry of tiny_cnn: input [batch, 3, 8, 8] -> Conv(8, 3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten
# -> Gemm(8 -> 10) -> logits [batch, 10].
CNN_IN_CH, CNN_HW, CNN_OUT_CH, CNN_K, CNN_CLASSES = 3, 8, 8, 3, 10


def tiny_cnn_flops(batch: int = 1) -> int:
    """Hand-computed multiply-accumulate FLOPs (2 per MAC) of tiny_cnn, Conv + Gemm only (what optkit counts)."""
    conv_out = batch * CNN_OUT_CH * CNN_HW * CNN_HW          # output elements (stride 1, 'same' padding)
    conv_macs_per_out = CNN_IN_CH * CNN_K * CNN_K            # Cin/groups * kh * kw
    gemm_macs = batch * CNN_CLASSES * CNN_OUT_CH             # M * N * K
    return 2 * conv_out * conv_macs_per_out + 2 * gemm_macs  # = 2*512*27 + 2*80 = 27808 for batch 1


def tiny_cnn_params() -> int:
    return (CNN_OUT_CH * CNN_IN_CH * CNN_K * CNN_K + CNN_OUT_CH) + (CNN_CLASSES * CNN_OUT_CH + CNN_CLASSES)


def _save(model: onnx.ModelProto, path) -> Path:
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def tiny_cnn(path, opset: int = 17, batch="batch", seed: int = 0) -> Path:
    """A Conv+Relu+GlobalAveragePool+Flatten+Gemm classifier; input 'input' [batch, 3, 8, 8], output 'logits'.

    ``batch`` is the first input dim: a symbolic name (str) or a fixed int."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((CNN_OUT_CH, CNN_IN_CH, CNN_K, CNN_K)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(CNN_OUT_CH) * 0.1).astype(np.float32)
    fw = (rng.standard_normal((CNN_CLASSES, CNN_OUT_CH)) * 0.5).astype(np.float32)
    fb = (rng.standard_normal(CNN_CLASSES) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "conv.w", "conv.b"], ["conv"], name="conv", pads=[1, 1, 1, 1],
                         kernel_shape=[CNN_K, CNN_K], strides=[1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, CNN_IN_CH, CNN_HW, CNN_HW])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, CNN_CLASSES])],
        initializer=[numpy_helper.from_array(w, "conv.w"), numpy_helper.from_array(b, "conv.b"),
                     numpy_helper.from_array(fw, "fc.w"), numpy_helper.from_array(fb, "fc.b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="optkit-tests")
    model.ir_version = min(model.ir_version, 8)  # loadable by any onnxruntime >= 1.20
    return _save(model, path)


MATMUL_HIDDEN, MATMUL_OUT = 16, 8


def tiny_matmul(path, opset: int = 17, batch="batch", seq="seq", input_name: str = "x", seed: int = 0) -> Path:
    """x [batch, seq, 16] -> MatMul(16x8) -> Add(bias) -> y [batch, seq, 8]; 'seq' is a symbolic non-batch dim."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((MATMUL_HIDDEN, MATMUL_OUT)) * 0.3).astype(np.float32)
    b = (rng.standard_normal(MATMUL_OUT) * 0.1).astype(np.float32)
    nodes = [helper.make_node("MatMul", [input_name, "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "b"], ["y"], name="add")]
    graph = helper.make_graph(
        nodes, "tiny_matmul",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, seq, MATMUL_HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, seq, MATMUL_OUT])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="optkit-tests")
    model.ir_version = min(model.ir_version, 8)
    return _save(model, path)


def cnn_data(path, n: int = 16, batch: int = 1, labels: bool = True, name: str = "input",
             hw: int = CNN_HW, seed: int = 1, stacked: bool = True) -> Path:
    """A stacked .npz for tiny_cnn: ``name`` [n, batch, 3, hw, hw] float32 (+ 'labels' [n, batch] int64).

    With ``stacked=False``: a single feed ``name`` [batch, 3, hw, hw] (+ 'labels' [batch])."""
    rng = np.random.default_rng(seed)
    shape = (n, batch, CNN_IN_CH, hw, hw) if stacked else (batch, CNN_IN_CH, hw, hw)
    arrays = {name: rng.standard_normal(shape).astype(np.float32)}
    if labels:
        arrays["labels"] = rng.integers(0, CNN_CLASSES, size=shape[:2] if stacked else shape[:1]).astype(np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# running the CLI
# ---------------------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m optkit.cli ARGS`` in a subprocess (text mode; a wide, colourless, non-interactive terminal)."""
    env = dict(os.environ)
    env.update({"NO_COLOR": "1", "TERM": "dumb", "PYTHONWARNINGS": "ignore",
                "OMP_NUM_THREADS": "1"})
    for var in ("FORCE_COLOR", "COLUMNS", "LINES"):  # piped, like CI logs: rich picks its own width
        env.pop(var, None)
    return subprocess.run([sys.executable, "-m", "optkit.cli", *map(str, args)], cwd=str(cwd or REPO), env=env,
                          capture_output=True, text=True, timeout=timeout)


def nonblank_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(name="tiny_cnn")
def tiny_cnn_fixture():
    """The ``tiny_cnn(path, opset=17, batch='batch')`` builder."""
    return tiny_cnn


@pytest.fixture(name="tiny_matmul")
def tiny_matmul_fixture():
    """The ``tiny_matmul(path, opset=17, batch='batch', seq='seq', input_name='x')`` builder."""
    return tiny_matmul


@pytest.fixture(name="cnn_data")
def cnn_data_fixture():
    """The ``cnn_data(path, n=16, batch=1, labels=True, name='input', hw=8, stacked=True)`` builder."""
    return cnn_data


@pytest.fixture(name="cli")
def cli_fixture():
    """The ``run_cli(*args, cwd=None)`` helper."""
    return run_cli


@pytest.fixture(scope="session")
def cnn_files(tmp_path_factory):
    """A session-wide tiny CNN and its calibration data: {'model': Path, 'data': Path, 'dir': Path}."""
    d = tmp_path_factory.mktemp("cnn")
    return {"dir": d, "model": tiny_cnn(d / "tiny_cnn.onnx"), "data": cnn_data(d / "calib.npz")}
