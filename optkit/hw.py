"""Host facts: CPU model and ISA flags, and the INT8 data types they make fast."""
from __future__ import annotations

import functools
import os
import platform

_ISA = {
    "avx2": ("avx2",),
    "avx512f": ("avx512f",),
    "avx512_vnni": ("avx512_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni",),
    "avx512_bf16": ("avx512_bf16",),
    "amx_int8": ("amx_int8",),
    "amx_bf16": ("amx_bf16",),
    "f16c": ("f16c",),
    "neon": ("asimd", "neon"),
    "dotprod": ("asimddp",),
}


def _parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


@functools.lru_cache(maxsize=1)
def cpu_features() -> dict:
    """CPU model, core count and the ISA extensions optkit cares about (read from /proc/cpuinfo)."""
    text = ""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        pass
    model, flags = _parse_cpuinfo(text)
    isa = {name: any(a in flags for a in aliases) for name, aliases in _ISA.items()}
    return {
        "model": model,
        "arch": platform.machine(),
        "logical_cores": os.cpu_count() or 1,
        "isa": isa,
    }


def int8_choice(features: dict | None = None) -> dict:
    """Activation/weight INT8 types for ONNX Runtime on this host, with the reason.

    U8 activations x S8 weights is the VNNI/AMX fast path (S8S8 ran ~2x slower on Zen 4).
    Without VNNI, U8S8 can saturate the 16-bit intermediate of VPMADDUBSW, so ORT recommends
    reduce_range (7-bit weights) there.
    """
    isa = (features or cpu_features())["isa"]
    if features is None and (isa.get("amx_int8") or isa.get("avx512_vnni") or isa.get("avx_vnni")) \
            and ort_int8_kernels().get("u8s8_saturates"):
        # the flags say VNNI but ORT's kernels measurably saturate (an emulated or masked CPU): trust the measurement
        return {"activation": "uint8", "weight": "int8", "reduce_range": True,
                "reason": "ORT's U8S8 kernels saturate on this CPU (measured), although its flags list VNNI: "
                          "reduce_range avoids it"}
    if isa.get("amx_int8"):
        return {"activation": "uint8", "weight": "int8", "reduce_range": False,
                "reason": "AMX-INT8 present: U8S8"}
    if isa.get("avx512_vnni") or isa.get("avx_vnni"):
        return {"activation": "uint8", "weight": "int8", "reduce_range": False,
                "reason": "VNNI present: U8 activations x S8 weights is the fast path"}
    if isa.get("avx2") or isa.get("avx512f"):
        return {"activation": "uint8", "weight": "int8", "reduce_range": True,
                "reason": "AVX2/AVX-512 without VNNI: U8S8 with reduce_range avoids saturation"}
    return {"activation": "uint8", "weight": "int8", "reduce_range": False,
            "reason": "no x86 INT8 extensions detected: ORT defaults"}


@functools.lru_cache(maxsize=1)
def ort_int8_kernels() -> dict:
    """What ONNX Runtime's integer kernels do on this CPU, measured rather than read from the flags.

    ORT (MLAS) picks its INT8 GEMM kernel from CPUID at start-up and offers no switch to pick another. Without VNNI
    the U8S8 kernel multiplies with VPMADDUBSW, whose 16-bit sum of two u8*s8 products saturates (ORT's
    quantization docs: use reduce_range / 7-bit weights there); with VNNI (VPDPBUSD) it accumulates in 32 bits.
    This runs one MatMulInteger whose pairs overflow int16 (255*127*2) and says which behaviour this host has.
    The probe follows the CPU ORT really sees (an emulated one included), which /proc/cpuinfo may not.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    w = numpy_helper.from_array(np.full((k, 1), 127, np.int8), "B")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "u8s8_probe",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [1, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [1, 1])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        got = int(sess.run(None, {"A": np.full((1, k), 255, np.uint8)})[0].ravel()[0])
    except Exception as e:  # pragma: no cover - a build without MatMulInteger
        return {"u8s8_saturates": None, "probe": f"failed: {type(e).__name__}"}
    exact = k * 255 * 127
    return {"u8s8_saturates": got != exact, "probe": f"MatMulInteger u8 x s8, K={k}: {got} (exact {exact})",
            "onnxruntime": ort.__version__}


def isa_label(features: dict | None = None) -> str:
    """A short name of the INT8-relevant ISA for tables and results files, e.g. 'avx512_vnni', 'avx2 (no VNNI)'."""
    isa = (features or cpu_features())["isa"]
    for name in ("amx_int8", "avx512_vnni", "avx_vnni"):
        if isa.get(name):
            return name
    if isa.get("avx512f"):
        return "avx512f (no VNNI)"
    if isa.get("avx2"):
        return "avx2 (no VNNI)"
    return "neon" if isa.get("neon") else "baseline x86/other"
