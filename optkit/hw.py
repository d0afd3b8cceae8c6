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
