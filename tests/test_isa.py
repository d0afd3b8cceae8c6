"""What ONNX Runtime's INT8 kernels do on this CPU, stated per ISA and measured, never guessed.

ORT (MLAS) picks its INT8 GEMM kernel from CPUID when it starts and has no switch (environment variable or session
option) to pick another; ``hw.ort_int8_kernels`` runs a one-node probe to find out which one this process got. With
VNNI/AMX the U8S8 kernel accumulates in 32 bits and the integer path matches the float fake-quant of the same QDQ
graph up to requantization rounding; without VNNI it multiplies with VPMADDUBSW, whose 16-bit pair sums saturate
unless weights use 7 bits (``reduce_range``), as ORT's quantization docs say.

To see on a VNNI machine what an AVX2-only machine will do, ``make test-isa`` runs this file under QEMU user-mode
emulation (``qemu-x86_64 -cpu max``: QEMU's TCG has AVX2 but no AVX-512 or VNNI), with
``OPTKIT_TEST_EMULATED_CPU=avx2`` telling the tests that /proc/cpuinfo (the host's) is not the CPU ORT sees.
"""
from __future__ import annotations

import os
import platform

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from optkit.backends.ort import OrtSession
from optkit.hw import cpu_features, int8_choice, ort_int8_kernels

pytestmark = pytest.mark.isa

K, N = 64, 16
EMULATED = os.environ.get("OPTKIT_TEST_EMULATED_CPU")  # set by `make test-isa` only
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _flags_say_saturating() -> bool:
    if EMULATED:
        return EMULATED == "avx2"
    isa = cpu_features()["isa"]
    return not (isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("amx_int8"))


def _qdq_matmul(weights: np.ndarray, sx: float = 1 / 255, sw: float = 0.01):
    """x [1, K] -> Q/DQ (uint8, zero point 0) -> MatMul with DQ(int8 weights [K, N]) -> y [1, N]."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    inits = [numpy_helper.from_array(np.array(sx, np.float32), "sx"), numpy_helper.from_array(np.array(0, np.uint8), "zx"),
             numpy_helper.from_array(weights.astype(np.int8), "wq"), numpy_helper.from_array(np.array(sw, np.float32), "sw")]
    graph = helper.make_graph(nodes, "qdq_matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _fake_quant(x: np.ndarray, weights: np.ndarray, sx: float = 1 / 255, sw: float = 0.01) -> np.ndarray:
    xq = np.clip(np.rint(x / np.float32(sx)), 0, 255)
    return (xq * sx).astype(np.float64) @ (weights.astype(np.float64) * sw)


def _case(bits: int):
    rng = np.random.default_rng(0)
    hi = 2 ** (bits - 1) - 1
    w = rng.integers(-hi, hi + 1, size=(K, N))
    x = np.ones((1, K), np.float32)  # uint8 activations at 255: where VPMADDUBSW pair sums overflow int16
    return _qdq_matmul(w), x, _fake_quant(x, w)


@pytest.mark.skipif(not X86, reason="VPMADDUBSW saturation is an x86 kernel property")
def test_probe_matches_the_cpu_ort_sees():
    assert ort_int8_kernels()["u8s8_saturates"] == _flags_say_saturating()


def test_fake_quant_session_is_the_graph_on_every_isa():
    model, x, want = _case(8)
    got = OrtSession(model, fake_quant=True).run({"x": x})["y"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.skipif(not X86, reason="VPMADDUBSW saturation is an x86 kernel property")
def test_integer_kernels_per_isa():
    model, x, want = _case(8)
    got = OrtSession(model).run({"x": x})["y"]  # level all: Q/DQ + MatMul fused into an integer kernel
    step = 255 * (1 / 255) * 0.01  # one weight step times the largest activation
    if ort_int8_kernels()["u8s8_saturates"]:
        # full 8-bit weights: pair sums over 32767 are clipped, the result is off by many steps
        assert np.abs(got - want).max() > 50 * step
    else:
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    # ORT's documented remedy: 7-bit weights (reduce_range) keep every pair sum inside int16, on every ISA
    model7, x7, want7 = _case(7)
    got7 = OrtSession(model7).run({"x": x7})["y"]
    assert np.abs(got7 - want7).max() <= 1e-5 * np.abs(want7).max()


@pytest.mark.skipif(not X86, reason="x86 INT8 type choice")
def test_int8_choice_follows_the_measured_kernels():
    assert int8_choice()["reduce_range"] == bool(ort_int8_kernels()["u8s8_saturates"])
