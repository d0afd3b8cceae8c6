"""Peak compute of one core, computed from the ISA and the clock and measured with ONNX Runtime GEMMs, and the
roofline fraction of a timed model (achieved GFLOP/s or GOP/s over the peak of its precision).

Computed peak (per core; the suite runs 1 thread, so cores = 1):

    fp32 FLOP/cycle = fma_pipes * (datapath_bits / 32) * 2            (one FMA = a multiply and an add)
    int8 OP/cycle   = fp32 FLOP/cycle * 4    with VNNI (VPDPBUSD: 4 u8*s8 MACs per 32-bit lane, same pipes)
                    = fp32 FLOP/cycle * 4/3  without VNNI (VPMADDUBSW + VPMADDWD + VPADDD: 3 uops per 4 MACs/lane)
                    = 2048                   with AMX-INT8 (one TMUL tile op: 1024 MACs/cycle)
    peak GFLOP/s    = cores * clock_GHz * (FLOP or OP)/cycle

Zen 4 (AMD with AVX-512) runs 512-bit instructions on two 256-bit FMA pipes (double-pumped): 2 * 8 * 2 = 32 FP32
FLOP/cycle, and VPDPBUSD issues on the same two pipes (one zmm or two ymm per cycle): 2 * 8 * 4 * 2 = 128 INT8
OP/cycle. Intel cores with AVX-512 are taken as two 512-bit FMA pipes (64 FLOP/cycle; some SKUs have one), AVX2
cores as two 256-bit pipes. The clock is /proc/cpuinfo's "cpu MHz" (under a hypervisor often the nominal clock;
boost can exceed it, which is why the measured peak can be above the computed one), or cpufreq's max when present.

Measured peak: the best run of a 512^3 MatMul (FP32) and MatMulInteger (u8 x s8 -> s32, the VNNI kernel) in ONNX
Runtime's MLAS at 1 thread, repeated for about a second: what this runtime reaches on this core, the ceiling an ORT
model can hope for. (512: the operands stay in L2, and a run of a few ms is rarely preempted on a shared machine;
1024^3 measured 40-60% lower under load.) The measured FP32 peak also gives the clock the core really runs at
(measured / FLOP per cycle): under a hypervisor /proc/cpuinfo reports the nominal clock, and boost runs above it.

Achieved = the FP32 model's FLOPs at the timed shape (Conv/Gemm/MatMul from ``optkit.model.flops`` plus LSTM gates,
counted here) / p50 latency. Pruned or low-rank variants do less work, so their figure is an *effective* rate.
"""
from __future__ import annotations

import time

import numpy as np

FP32_PER_FMA = 2  # multiply + add
VNNI_MACS_PER_LANE = 4  # VPDPBUSD: four u8*s8 products summed into one 32-bit lane
NO_VNNI_INT8_FACTOR = 4 / 3  # VPMADDUBSW + VPMADDWD + VPADDD: 3 uops for the 4 MACs a lane
AMX_INT8_OPS_PER_CYCLE = 2048  # 1024 MACs per cycle per core (Sapphire Rapids TMUL)


def read_cpu(cpuinfo: str | None = None, cpufreq_max_khz: str | None = None) -> dict:
    """Vendor, family, model, ISA flags and clock (GHz, with its source) from /proc/cpuinfo text (read when None)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    if cpufreq_max_khz is None:
        try:
            with open("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") as f:
                cpufreq_max_khz = f.read()
        except OSError:
            cpufreq_max_khz = ""
    out = {"vendor": "", "family": None, "model": None, "model_name": "", "flags": set(), "clock_ghz": None,
           "clock_source": None}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "vendor_id" and not out["vendor"]:
            out["vendor"] = value
        elif key == "cpu family" and out["family"] is None:
            out["family"] = int(value) if value.isdigit() else None
        elif key == "model" and out["model"] is None:
            out["model"] = int(value) if value.isdigit() else None
        elif key == "model name" and not out["model_name"]:
            out["model_name"] = value
        elif key in ("flags", "features") and not out["flags"]:
            out["flags"] = set(value.split())
        elif key == "cpu mhz" and out["clock_ghz"] is None:
            try:
                out["clock_ghz"], out["clock_source"] = float(value) / 1000, "/proc/cpuinfo cpu MHz"
            except ValueError:
                pass
    if cpufreq_max_khz.strip().isdigit():
        out["clock_ghz"], out["clock_source"] = int(cpufreq_max_khz) / 1e6, "cpufreq cpuinfo_max_freq"
    return out


def isa_from_flags(flags) -> dict:
    f = set(flags)
    return {"fma": "fma" in f, "avx2": "avx2" in f, "avx512f": "avx512f" in f,
            "vnni": bool({"avx512_vnni", "avx512vnni", "avx_vnni"} & f), "amx_int8": "amx_int8" in f,
            "neon": bool({"asimd", "neon"} & f), "dotprod": "asimddp" in f}


def core_datapath(vendor: str, isa: dict) -> dict:
    """FMA pipes and datapath width of one core, with the reason (see the module docstring)."""
    amd = "amd" in vendor.lower()
    if isa.get("avx512f") and amd:
        return {"fma_pipes": 2, "datapath_bits": 256, "why": "AMD with AVX-512 (Zen 4): 512-bit ops on two 256-bit FMA pipes"}
    if isa.get("avx512f"):
        return {"fma_pipes": 2, "datapath_bits": 512, "why": "Intel AVX-512: two 512-bit FMA pipes assumed"}
    if isa.get("avx2") and isa.get("fma"):
        return {"fma_pipes": 2, "datapath_bits": 256, "why": "AVX2 + FMA: two 256-bit FMA pipes"}
    if isa.get("neon"):
        return {"fma_pipes": 2, "datapath_bits": 128, "why": "Arm NEON: two 128-bit FMA pipes assumed"}
    return {"fma_pipes": 1, "datapath_bits": 128, "why": "SSE-class core: one 128-bit pipe assumed"}


def per_cycle(vendor: str, isa: dict) -> dict:
    """FP32 FLOP/cycle and INT8 OP/cycle of one core, with the formulas used."""
    dp = core_datapath(vendor, isa)
    lanes = dp["datapath_bits"] // 32
    fp32 = dp["fma_pipes"] * lanes * FP32_PER_FMA
    if isa.get("amx_int8"):
        int8, how = AMX_INT8_OPS_PER_CYCLE, "AMX-INT8 TMUL: 1024 MACs/cycle * 2"
    elif isa.get("vnni") or isa.get("dotprod"):
        int8 = dp["fma_pipes"] * lanes * VNNI_MACS_PER_LANE * 2
        how = f"VNNI: {dp['fma_pipes']} pipes * {lanes} lanes * {VNNI_MACS_PER_LANE} MACs * 2 = 4x fp32"
    else:
        int8, how = fp32 * NO_VNNI_INT8_FACTOR, "no VNNI: VPMADDUBSW+VPMADDWD+VPADDD, 4/3x fp32"
    return {**dp, "fp32_flop_per_cycle": fp32, "int8_op_per_cycle": int8,
            "fp32_formula": f"{dp['fma_pipes']} FMA pipes * {lanes} fp32 lanes * 2 = {fp32}", "int8_formula": how}


def computed_peaks(vendor: str, isa: dict, clock_ghz: float, cores: int = 1) -> dict:
    """{'fp32': GFLOP/s, 'int8': GOP/s, ...} = cores * clock * ops/cycle."""
    pc = per_cycle(vendor, isa)
    return {"fp32": cores * clock_ghz * pc["fp32_flop_per_cycle"], "int8": cores * clock_ghz * pc["int8_op_per_cycle"],
            "cores": cores, "clock_ghz": clock_ghz, "per_cycle": pc}


def achieved_gops(flops: int | float, p50_ms: float) -> float:
    """FLOPs (or integer ops) per run / p50 seconds, in G/s."""
    return float(flops) / (p50_ms * 1e-3) / 1e9 if p50_ms > 0 else 0.0


def roofline(flops: int | float, p50_ms: float, precision: str, peaks: dict) -> dict:
    """Achieved G/s and its fraction of each available peak for ``precision`` (int8 uses the INT8 peak; fp16 and
    fp32 use the FP32 peak: this CPU has no fp16 arithmetic, ORT converts). ``peaks``:
    {'computed': {'fp32': x, 'int8': y}, 'measured': {'fp32': x, 'int8': y}} (either may be missing)."""
    ach = achieved_gops(flops, p50_ms)
    key = "int8" if precision == "int8" else "fp32"
    out = {"achieved_gops": ach, "precision": precision, "peak_precision": key}
    for src in ("computed", "measured"):
        peak = (peaks.get(src) or {}).get(key)
        out[f"peak_{src}_gops"] = peak
        out[f"fraction_of_{src}_peak"] = ach / peak if peak else None
    return out


COUNTED = {"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM"}


def _runtime_shapes(model, names: list[str], feed: dict) -> dict:
    """Shapes of intermediate values, by running the model once with them exposed as outputs."""
    import onnx

    from optkit.backends.ort import OrtSession

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    with OrtSession(m, threads=1) as s:
        out = s.run(feed)
    return {n: (tuple(out[n].shape), out[n].dtype) for n in names if n in out}


def with_runtime_shapes(model, shapes: dict, feed: dict):
    """A copy of ``model`` whose value_info carries the run-time shapes of the Conv/Gemm/MatMul/LSTM inputs and
    outputs that static inference leaves unknown (shapes computed at run time, e.g. ddddocr's Reshape before its
    LSTM and Gemm), so FLOP counting sees every compute node. Best effort: the model itself when the run fails."""
    import onnx

    from optkit.model import infer_value_shapes

    vs = infer_value_shapes(model, shapes)
    names = []
    for n in model.graph.node:
        if n.op_type in COUNTED:
            names += [x for x in list(n.input[:1]) + list(n.output[:1]) if x and vs.get(x) is None and x not in names]
    if not names:
        return model
    try:
        found = _runtime_shapes(model, names, feed)
    except Exception:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {v.name for v in m.graph.value_info}
    for name, (shape, dtype) in found.items():
        if name in known:
            m.graph.value_info.remove(next(v for v in m.graph.value_info if v.name == name))
        m.graph.value_info.append(onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(dtype), list(shape)))
    return m


def lstm_flops(model, shapes: dict) -> int:
    """2 * seq * batch * directions * 4H * (input + H) per LSTM node (optkit.model.flops counts Conv/Gemm/MatMul only)."""
    from optkit.model import infer_value_shapes

    vs = infer_value_shapes(model, shapes)
    total = 0
    for n in model.graph.node:
        if n.op_type not in ("LSTM", "DynamicQuantizeLSTM"):
            continue
        x, w, r = (vs.get(n.input[i]) for i in range(3))
        if not (x and w and r) or len(x) != 3 or len(w) != 3:
            continue
        seq, batch, _ = x
        dirs, four_h, inp = w
        hidden = r[2]
        total += 2 * seq * batch * dirs * four_h * (inp + hidden)
    return int(total)


def model_flops(model, shapes: dict, feed: dict | None = None) -> dict:
    """FLOPs of the FP32 graph at ``shapes``: optkit's Conv/Gemm/MatMul count plus LSTM gates; with ``feed``, shapes
    static inference misses are taken from one run."""
    from optkit.model import flops

    if feed is not None:
        model = with_runtime_shapes(model, shapes, feed)
    f = flops(model, shapes)
    extra = lstm_flops(model, shapes)
    return {"total": f["total"] + extra, "matmul_conv": f["total"], "lstm": extra, "by_op": f["by_op"],
            "nodes_without_shape": f["nodes_without_shape"]}


def _gemm_model(m: int, k: int, n: int, int8: bool):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        b = numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "B")
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        a_t, y_t = TensorProto.UINT8, TensorProto.INT32
    else:
        b = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "B")
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        a_t, y_t = TensorProto.FLOAT, TensorProto.FLOAT
    g = helper.make_graph([node], "peak", [helper.make_tensor_value_info("A", a_t, [m, k])],
                          [helper.make_tensor_value_info("Y", y_t, [m, n])], [b])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), a_t


def measure_peak(int8: bool, size: int = 512, seconds: float = 1.0) -> dict:
    """Best and median G/s of a size^3 GEMM in ONNX Runtime at 1 thread (MatMul fp32 / MatMulInteger u8s8)."""
    from onnx import TensorProto

    from optkit.backends.ort import OrtSession

    model, a_t = _gemm_model(size, size, size, int8)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (size, size)).astype(np.uint8) if a_t == TensorProto.UINT8 else \
        rng.standard_normal((size, size)).astype(np.float32)
    ops = 2 * size ** 3
    times = []
    with OrtSession(model, threads=1) as s:
        for _ in range(3):
            s.run({"A": a})
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 5:
            t0 = time.perf_counter()
            s.run({"A": a})
            times.append(time.perf_counter() - t0)
    best, med = min(times), float(np.median(times))
    return {"gops": ops / best / 1e9, "gops_median": ops / med / 1e9, "runs": len(times),
            "how": f"ONNX Runtime {'MatMulInteger u8 x s8 -> s32' if int8 else 'MatMul fp32'} {size}x{size}x{size}, "
                   "1 thread, best run (median run in gops_median)"}


def peaks(seconds: float = 1.0, size: int = 512, clock_ghz: float | None = None) -> dict:
    """Computed and measured peaks of one core of this machine, with how each was obtained."""
    cpu = read_cpu()
    isa = isa_from_flags(cpu["flags"])
    clock = clock_ghz or cpu["clock_ghz"]
    out = {"cpu": {"vendor": cpu["vendor"], "family": cpu["family"], "model": cpu["model"], "model_name": cpu["model_name"],
                   "isa": isa, "clock_ghz": clock, "clock_source": "--clock-ghz" if clock_ghz else cpu["clock_source"]},
           "cores_used": 1}
    if clock:
        c = computed_peaks(cpu["vendor"], isa, clock, cores=1)
        out["computed"] = {"fp32": c["fp32"], "int8": c["int8"], "per_cycle": c["per_cycle"],
                           "formula": "cores(1) * clock_GHz * ops_per_cycle"}
    else:
        out["computed"] = {"fp32": None, "int8": None, "note": "no clock found"}
    fp, i8 = measure_peak(False, size, seconds), measure_peak(True, size, seconds)
    out["measured"] = {"fp32": fp["gops"], "int8": i8["gops"], "fp32_detail": fp, "int8_detail": i8}
    out.update(clock_check(out))
    out["fractions"] = ("every row's roofline has fraction_of_measured_peak (the primary figure: what ORT reaches on "
                        "this core) and fraction_of_computed_peak (ISA x clock), each against the peak of the row's "
                        "precision (peak_precision)")
    return out


def clock_check(p: dict) -> dict:
    """The clock the measured FP32 peak implies (measured / FLOP per cycle), and a note when the computed peak is
    below the measured one (the core boosts above the clock /proc/cpuinfo reports, as under a hypervisor)."""
    pc = (p.get("computed") or {}).get("per_cycle") or {}
    meas, comp = (p.get("measured") or {}).get("fp32"), (p.get("computed") or {}).get("fp32")
    out = {}
    if meas and pc.get("fp32_flop_per_cycle"):
        out["implied_clock_ghz"] = meas / pc["fp32_flop_per_cycle"]
        if comp and meas > comp:
            out["clock_note"] = (f"the measured FP32 peak ({meas:.0f} GFLOP/s) is above the computed one ({comp:.0f}): "
                                 f"the core runs at >= {out['implied_clock_ghz']:.2f} GHz, above the "
                                 f"{p['cpu']['clock_ghz']:.2f} GHz of {p['cpu']['clock_source']} (boost); computed "
                                 "fractions above 100% come from that; --clock-ghz sets the clock")
    return out
