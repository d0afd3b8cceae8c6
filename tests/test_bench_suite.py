"""Pieces of the benchmark suite (benchmarks/run.py, benchmarks/suite/): roofline math, peaks from a given ISA and
clock, the headline rule, the README block and the JSON shape. Fast, no timing asserts."""
from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import run
from benchmarks.suite import models, report, roofline

ZEN4_FLAGS = "fpu fma avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16"
CPUINFO = f"""processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9554
cpu MHz\t\t: 2500.000
flags\t\t: {ZEN4_FLAGS}
"""


# ---------------------------------------------------------------------------------------------------------------
# peaks and roofline
# ---------------------------------------------------------------------------------------------------------------

def test_read_cpu_parses_vendor_flags_and_clock():
    cpu = roofline.read_cpu(CPUINFO, cpufreq_max_khz="")
    assert cpu["vendor"] == "AuthenticAMD" and cpu["family"] == 25 and cpu["model"] == 17
    assert cpu["clock_ghz"] == pytest.approx(2.5) and "cpuinfo" in cpu["clock_source"]
    assert roofline.isa_from_flags(cpu["flags"])["vnni"]
    # cpufreq's max wins over the "cpu MHz" snapshot when the kernel exposes it
    assert roofline.read_cpu(CPUINFO, cpufreq_max_khz="3700000\n")["clock_ghz"] == pytest.approx(3.7)


def test_zen4_peaks_from_isa_and_clock():
    isa = roofline.isa_from_flags(ZEN4_FLAGS.split())
    pc = roofline.per_cycle("AuthenticAMD", isa)
    assert (pc["fma_pipes"], pc["datapath_bits"]) == (2, 256)  # 512-bit ops double-pumped on 256-bit pipes
    assert pc["fp32_flop_per_cycle"] == 32  # 2 pipes * 8 lanes * 2
    assert pc["int8_op_per_cycle"] == 128  # VNNI: 2 pipes * 8 lanes * 4 MACs * 2 = 4x fp32
    p = roofline.computed_peaks("AuthenticAMD", isa, 2.5, cores=1)
    assert p["fp32"] == pytest.approx(80.0) and p["int8"] == pytest.approx(320.0)
    assert roofline.computed_peaks("AuthenticAMD", isa, 2.5, cores=2)["fp32"] == pytest.approx(160.0)


@pytest.mark.parametrize("vendor,flags,fp32,int8", [
    ("GenuineIntel", "fma avx2 avx512f avx512_vnni", 64, 256),  # two 512-bit FMA pipes
    ("GenuineIntel", "fma avx2 avx512f avx512_vnni amx_int8", 64, 2048),  # AMX tile op
    ("GenuineIntel", "fma avx2", 32, 32 * 4 / 3),  # no VNNI: pmaddubsw path
    ("AuthenticAMD", "fma avx2 avx_vnni", 32, 128),
])
def test_peak_per_cycle_other_isas(vendor, flags, fp32, int8):
    pc = roofline.per_cycle(vendor, roofline.isa_from_flags(flags.split()))
    assert pc["fp32_flop_per_cycle"] == fp32
    assert pc["int8_op_per_cycle"] == pytest.approx(int8)


def test_roofline_fraction_uses_the_precision_peak():
    peaks = {"computed": {"fp32": 80.0, "int8": 320.0}, "measured": {"fp32": 50.0, "int8": 200.0}}
    # 1 GFLOP in 25 ms = 40 GFLOP/s
    r = roofline.roofline(1e9, 25.0, "fp32", peaks)
    assert r["achieved_gops"] == pytest.approx(40.0)
    assert r["fraction_of_computed_peak"] == pytest.approx(0.5) and r["fraction_of_measured_peak"] == pytest.approx(0.8)
    r8 = roofline.roofline(1e9, 25.0, "int8", peaks)
    assert r8["peak_precision"] == "int8" and r8["fraction_of_computed_peak"] == pytest.approx(0.125)
    assert roofline.roofline(1e9, 25.0, "fp16", peaks)["peak_precision"] == "fp32"
    assert roofline.roofline(1e9, 25.0, "fp32", {"computed": {"fp32": None}})["fraction_of_computed_peak"] is None


def test_lstm_flops_counted(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    seq, batch, inp, hid = 5, 1, 16, 8
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((1, 4 * hid, inp)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((1, 4 * hid, hid)).astype(np.float32), "R")
    node = helper.make_node("LSTM", ["X", "W", "R"], ["Y"], hidden_size=hid)
    g = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["s", batch, inp])],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)], [w, r])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    f = roofline.model_flops(m, {"X": (seq, batch, inp)})
    assert f["lstm"] == 2 * seq * batch * 4 * hid * (inp + hid)
    assert f["total"] == f["lstm"] + f["matmul_conv"]


def test_measured_peak_smoke():
    p = roofline.measure_peak(int8=True, size=64, seconds=0.01)
    assert p["gops"] > 0 and p["runs"] >= 5 and "MatMulInteger" in p["how"]


# ---------------------------------------------------------------------------------------------------------------
# headline
# ---------------------------------------------------------------------------------------------------------------

def _row(name, kind, speedup, acc, error=None):
    r = {"name": name, "kind": kind, "speedup_vs_fp32": speedup, "accuracy": acc, "p50_ms": 10 / speedup, "error": error}
    if error:
        r["speedup_vs_fp32"] = None
    return r


def test_headline_fastest_within_one_percent():
    res = {"metric": "top1", "variants": [
        _row("fp32", "reference", 1.0, 0.990),
        _row("ort-static", "baseline", 3.5, 0.970),  # fastest, but 2% lower: out
        _row("ort-dynamic", "baseline", 1.5, 0.985),
        _row("optkit int8-ort", "optkit", 3.2, 0.981),  # 0.99 * 0.99 = 0.9801: in
        _row("optkit auto-ort", "optkit", 9.0, None, error="boom"),
    ]}
    h = report.headline(res, 0.01)
    assert h["fastest_within_tolerance"]["name"] == "optkit int8-ort"
    assert h["best_plain"]["name"] == "ort-dynamic" and h["verdict"] == "optkit"
    assert h["threshold"] == pytest.approx(0.9801)
    flags = {r["name"]: r["within_tolerance"] for r in res["variants"]}
    assert flags == {"fp32": True, "ort-static": False, "ort-dynamic": True, "optkit int8-ort": True,
                     "optkit auto-ort": False}


def test_headline_says_when_plain_is_ahead_or_tied():
    plain = {"metric": "cosine", "variants": [_row("fp32", "reference", 1.0, 1.0), _row("ort-dynamic", "baseline", 2.4, 0.9999),
                                              _row("optkit int8-ort", "optkit", 1.8, 0.995)]}
    h = report.headline(plain, 0.01)
    assert h["verdict"] == "plain" and "plain library ahead" in h["verdict_text"]
    tie = {"metric": "cosine", "variants": [_row("fp32", "reference", 1.0, 1.0), _row("ort-dynamic", "baseline", 2.40, 0.9999),
                                            _row("optkit int8-dynamic-ort", "optkit", 2.45, 0.9999)]}
    assert report.headline(tie, 0.01)["verdict"] == "tie"
    none = {"metric": "cosine", "variants": [_row("fp32", "reference", 1.0, 1.0), _row("ort-static", "baseline", 2.0, 0.5)]}
    h = report.headline(none, 0.01)
    assert h["verdict"] == "none" and h["fastest_within_tolerance"]["name"] == "fp32"
    only_optkit = {"metric": "cosine", "variants": [_row("fp32", "reference", 1.0, 1.0), _row("ort-static", "baseline", 2.0, 0.5),
                                                    _row("optkit int8-ort", "optkit", 1.2, 0.999)]}
    assert report.headline(only_optkit, 0.01)["verdict"] == "optkit"


# ---------------------------------------------------------------------------------------------------------------
# JSON shape and rendering from a small fake result
# ---------------------------------------------------------------------------------------------------------------

def _full_row(name, kind, speedup, acc, prec="int8"):
    p50 = 2.0 / speedup
    return {"name": name, "kind": kind, "how": "x", "optimize_s": 1.5, "error": None, "load_ms": 12.0, "bytes": 1_000_000,
            "precision": prec, "metrics": {"top1": acc, "cosine": 0.999}, "accuracy": acc, "p50_ms": p50, "p90_ms": p50,
            "p99_ms": p50, "cv": 0.1, "runs": 100, "round_p50_ms": [p50] * 3, "speedup_vs_fp32": speedup,
            "speedup_range": [speedup, speedup],
            "roofline": roofline.roofline(2e7, p50, prec, {"computed": {"fp32": 80.0, "int8": 320.0},
                                                           "measured": {"fp32": 50.0, "int8": 200.0}})}


def fake_data():
    res = {"key": "digits", "name": "digits CNN", "metric": "top1", "metric_label": "top-1 (360)", "source": "here",
           "timed_shape": {"input": [1, 1, 32, 32]}, "test_feeds": 360,
           "flops": {"total": 20_000_000, "matmul_conv": 20_000_000, "lstm": 0, "by_op": {}, "nodes_without_shape": 0},
           "variants": [_full_row("fp32", "reference", 1.0, 0.99, "fp32"), _full_row("ort-static", "baseline", 3.3, 0.985),
                        _full_row("optkit int8-ort", "optkit", 3.4, 0.99),
                        {"name": "onnxsim", "kind": "baseline", "how": "x", "optimize_s": 0.2, "error": "RuntimeError: no"}]}
    res["headline"] = report.headline(res, 0.01)
    enc = {"key": "encoder", "name": "encoder", "metric": "cosine", "metric_label": "cosine", "source": "here",
           "flops": {"total": 10**9, "matmul_conv": 10**9, "lstm": 0},
           "variants": [_full_row("fp32", "reference", 1.0, 1.0, "fp32"), _full_row("ort-dynamic", "baseline", 2.4, 0.9999),
                        _full_row("optkit int8-ort", "optkit", 1.8, 0.996)]}
    enc["headline"] = report.headline(enc, 0.01)
    return {"benchmark": "suite", "schema": 1, "date": "2026-11-25", "quick": False, "wall_seconds": 600.0,
            "protocol": {"threads": 1, "batch": 1, "rounds": 7, "round_time_s": 0.5, "tolerance": "1%"},
            "peaks": {"cpu": {"model_name": "AMD EPYC", "clock_ghz": 2.5, "isa": {"vnni": True}},
                      "computed": {"fp32": 80.0, "int8": 320.0, "per_cycle": {"fp32_flop_per_cycle": 32, "int8_op_per_cycle": 128}},
                      "measured": {"fp32": 50.0, "int8": 200.0}},
            "variant_descriptions": {"fp32": "as exported"},
            "models": [res, enc, {"key": "ocr", "name": "ocr", "error": "FileNotFoundError: no wheel"}],
            "environment": {"cpu": {"logical_cores": 2}, "libraries": {"onnxruntime": "1.x"}}}


def test_readme_block_from_fake_json():
    data = json.loads(json.dumps(fake_data()))  # what a results file round-trips to
    block = report.readme_block(data, "suite-2026-11-25.json")
    assert block.startswith(report.START) and block.endswith(report.END)
    assert "## Results" in block and "suite-2026-11-25.json" in block and "suite-2026-11-25.md" in block
    assert "| digits CNN |" in block and "optkit int8-ort 3.40x" in block and "optkit ahead" in block
    assert "**plain library ahead**" in block  # the encoder row says so honestly
    assert "Where optkit is not ahead: encoder" in block
    assert "not run: FileNotFoundError" in block
    assert "FP32 80 GFLOP/s computed" in block and "INT8 320 GOP/s computed" in block


def test_write_readme_between_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nintro\n\n{report.START}\nold\n{report.END}\n\n## After\n")
    block = report.readme_block(fake_data(), "suite-2026-11-25.json")
    assert report.write_readme(readme, block)
    text = readme.read_text()
    assert "old" not in text and text.count(report.START) == 1 and text.endswith("## After\n") and "intro" in text
    bare = tmp_path / "R2.md"
    bare.write_text("# no markers\n")
    assert not report.write_readme(bare, block) and bare.read_text() == "# no markers\n"


def test_markdown_and_json_shape():
    data = fake_data()
    md = report.markdown(data)
    assert "## digits CNN" in md and "| optkit int8-ort |" in md and "FAILED: RuntimeError: no" in md
    assert "Headline:" in md
    s = json.dumps(data)  # JSON-serializable as the suite writes it
    back = json.loads(s)
    for m in back["models"]:
        if m.get("error"):
            continue
        assert {"key", "name", "metric", "flops", "variants", "headline"} <= set(m)
        assert {"fastest_within_tolerance", "best_optkit", "best_plain", "verdict", "threshold"} <= set(m["headline"])
        for r in m["variants"]:
            assert {"name", "kind", "optimize_s", "error"} <= set(r)
            if not r["error"]:
                assert {"p50_ms", "speedup_vs_fp32", "accuracy", "bytes", "precision", "roofline", "within_tolerance"} <= set(r)
                assert {"achieved_gops", "peak_precision", "fraction_of_computed_peak",
                        "fraction_of_measured_peak"} <= set(r["roofline"])


def test_latest_json_skips_quick_runs(tmp_path):
    for name in ("suite-2026-11-24.json", "suite-2026-11-25.json", "suite-quick-2026-11-26.json"):
        (tmp_path / name).write_text("{}")
    assert report.latest_json(tmp_path).name == "suite-2026-11-25.json"
    assert report.latest_json(tmp_path / "none") is None


def test_cli_readme_prints_block(tmp_path, capsys):
    (tmp_path / "suite-2026-11-25.json").write_text(json.dumps(fake_data()))
    assert run.main(["--readme", "--results", str(tmp_path)]).name == "suite-2026-11-25.json"
    assert capsys.readouterr().out.strip().startswith(report.START)


# ---------------------------------------------------------------------------------------------------------------
# the real model's helpers (no download here)
# ---------------------------------------------------------------------------------------------------------------

def test_licence_and_charset_and_ctc():
    meta = ("Metadata-Version: 2.4\nName: ddddocr\nLicense: The MIT License (MIT)\n        Copyright\n        \n"
            "        Permission is hereby granted\nClassifier: License :: OSI Approved :: MIT License\n\n"
            "# body License: GPL\n")
    lic = models.licence_of(meta)
    assert lic["permissive"] and lic["license"].startswith("The MIT License")
    assert lic["classifiers"] == ["License :: OSI Approved :: MIT License"]
    assert not models.licence_of("Name: x\nLicense: GPL-3.0\n\n")["permissive"]
    chars = models.charset("A = 1\nCHARSET_BETA = ['', 'a', 'b', 'c']\n")
    assert chars == ["", "a", "b", "c"]
    logits = np.full((7, 1, 4), -5.0, np.float32)
    for t, i in enumerate([1, 1, 0, 1, 2, 2, 3]):  # a a _ a b b c -> "aabc"
        logits[t, 0, i] = 5.0
    assert models.ctc_decode(logits, chars) == "aabc"


def test_rendered_text_images():
    pytest.importorskip("PIL")
    x, texts = models.render_texts(3, seed=0)
    assert x.shape == (3, 1, 1, 64, 160) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert all(4 <= len(t) <= 6 and set(t) <= set(models.OCR_ALPHABET) for t in texts)
    x2, t2 = models.render_texts(3, seed=0)
    assert t2 == texts and np.array_equal(x, x2)  # deterministic


def test_ocr_output_declaration_fixed():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # x [s, 4] -> Gemm(4 -> 6) -> Reshape to [s, 1, 6], declared (wrongly) as [1, seqlen] like ddddocr's common.onnx
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 6)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(6, np.float32), "B"),
             numpy_helper.from_array(np.array([-1, 1, 6], np.int64), "S")]
    nodes = [helper.make_node("Gemm", ["x", "W", "B"], ["g"]), helper.make_node("Reshape", ["g", "S"], ["y"])]
    g = helper.make_graph(nodes, "ocr", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["s", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seqlen"])], inits)
    raw = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    fixed, what = models.fix_output_declaration(raw)
    out = onnx.load_from_string(fixed).graph.output[0]
    dims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
    assert dims == ["seqlen", 1, 6] and what["declared"] == [1, "seqlen"]
    again, none = models.fix_output_declaration(fixed)  # already 3-D: left alone
    assert none is None and again == fixed


def test_like_for_like_pairs():
    res = {"metric": "top1", "variants": [
        _row("fp32", "reference", 1.0, 0.99), _row("ort-opt", "baseline", 1.01, 0.99), _row("onnxsim", "baseline", 0.99, 0.99),
        _row("ort-static", "baseline", 3.3, 0.95), _row("ort-dynamic", "baseline", 0.25, 0.99),
        _row("optkit fp32-ort", "optkit", 1.0, 0.99), _row("optkit int8-ort", "optkit", 3.0, 0.99),
        _row("optkit int8-dynamic-ort", "optkit", 0.2, 0.99)]}
    h = report.headline(res, 0.01)
    got = {c["optkit"]: (c["plain"], c["verdict"]) for c in h["like_for_like"]}
    assert got == {"optkit fp32-ort": ("ort-opt", "tie"),  # the faster of ort-opt and onnxsim
                   "optkit int8-ort": ("ort-static", "optkit"),  # ort-static is faster but misses 1%
                   "optkit int8-dynamic-ort": ("ort-dynamic", "plain")}
    block = report.readme_block({**fake_data(), "models": [{**res, "key": "m", "name": "m", "metric_label": "x",
                                                            "headline": h}]}, "suite-x.json")
    assert "m, one shot: fp32-ort 1.00x ties ort-opt 1.01x, int8-dynamic-ort 0.20x is behind ort-dynamic 0.25x" in block
