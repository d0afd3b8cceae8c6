"""Reports: report.json follows its schema, report.html is one self-contained file with the plots, bench results
are kept with the artifact, the Pareto front is right, and `optkit report` compares artifacts."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest

import optkit
from conftest import run_cli, tiny_cnn
from optkit.report import build_report, pareto, validate

jsonschema = pytest.importorskip("jsonschema", reason="schema validation needs jsonschema (in the [dev] extra)")


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    base = tmp_path_factory.mktemp("report")
    model = tiny_cnn(base / "cnn.onnx")
    rng = np.random.default_rng(0)
    np.savez(base / "data.npz", input=rng.standard_normal((6, 1, 3, 8, 8)).astype(np.float32),
             labels=rng.integers(0, 10, (6, 1)))
    a1 = optkit.optimize(model, "int8-ort", data=base / "data.npz", output=base / "out", force=True)
    a2 = optkit.optimize(model, "fp32-ort", data=base / "data.npz", output=base / "out")
    return base, a1, a2


def test_optimize_writes_a_valid_report_without_bench(arts):
    _, a1, _ = arts
    rep = json.loads(open(a1["artifact"] + "/report.json").read())
    validate(rep)
    assert rep["variants"] == [] and rep["artifacts"][0]["recipe"] == "int8-ort"
    assert [p["pass"] for p in rep["artifacts"][0]["passes"]] == ["fuse", "simplify", "int8-static"]
    html = open(a1["report"]).read()
    assert "No bench results yet" in html and "int8-static" in html


def test_bench_is_kept_and_the_report_shows_it(arts):
    _, a1, _ = arts
    res = optkit.bench(a1["artifact"], rounds=2, round_time=0.02)
    assert res["saved"].endswith("bench/1.json") and res["report"].endswith("report.html")
    rep = json.loads(open(a1["artifact"] + "/report.json").read())
    validate(rep)
    keys = {(v["backend"], v["variant"]): v for v in rep["variants"]}
    assert set(keys) == {("ort", "candidate"), ("ort", "reference")}
    cand = keys[("ort", "candidate")]
    assert cand["precision"] == "int8" and cand["accuracy"]["metric"] == "top1"
    assert sum(cand["latency"]["hist"]["counts"]) + cand["latency"]["hist"]["above"] == cand["latency"]["runs"]
    assert rep["pareto"] and all(k in {v["key"] for v in rep["variants"]} for k in rep["pareto"])
    html = open(res["report"]).read()
    # self-contained: no scripts, stylesheets or images fetched from anywhere
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "<script" not in html
    assert html.count("<svg") >= 2 and "Pareto" in html and "Latency distribution" in html


def test_pareto_front():
    def pt(key, ms, acc, metric="top1"):
        return {"key": key, "status": "ok", "latency": {"p50_ms": ms}, "accuracy": {"metric": metric, "value": acc}}

    pts = [pt("fast-bad", 1.0, 0.90), pt("slow-good", 3.0, 0.99), pt("dominated", 3.5, 0.95), pt("mid", 2.0, 0.97),
           pt("tie-slower", 2.5, 0.97), pt("other-metric", 9.0, 0.5, "cosine"),
           {"key": "down", "status": "unavailable", "reason": "x"}]
    assert sorted(pareto(pts)) == ["fast-bad", "mid", "other-metric", "slow-good"]


def test_cli_report_compares_artifacts(arts, tmp_path):
    base, a1, a2 = arts
    optkit.bench(a2["artifact"], backend="ort,trt", rounds=2, round_time=0.02)
    r = run_cli("report", a1["artifact"], a2["artifact"], "--out", tmp_path / "cmp.html")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cmp.html").exists() and (tmp_path / "cmp.json").exists()
    rep = json.loads((tmp_path / "cmp.json").read_text())
    validate(rep)
    assert len(rep["artifacts"]) == 2
    trt = next(v for v in rep["variants"] if v["backend"] == "trt")
    assert trt["status"] == "unavailable" and "TensorRT" in trt["reason"]
    assert "unavailable" in r.stdout and "report:" in r.stdout
    r = run_cli("report", base / "out" / "cnn", "--format", "json")  # OUT/<name>: the latest version
    assert r.returncode == 0 and json.loads(r.stdout)["artifacts"][0]["recipe"] == "fp32-ort"
    r = run_cli("report", base / "cnn.onnx")
    assert r.returncode == 2 and "not an artifact" in r.stderr


def test_build_report_needs_artifacts(tmp_path):
    from optkit.errors import InputError

    with pytest.raises(InputError):
        build_report([])
    with pytest.raises(InputError, match="numbered versions"):
        build_report([tmp_path])


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless chromium is not installed (apt-get install chromium)")
def test_report_renders_in_chromium(arts, tmp_path):
    """The HTML as a person sees it: headless chromium renders it to a PNG that is not blank."""
    _, a1, _ = arts
    png = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'chr'}", "--window-size=1280,2000",
                    f"--screenshot={png}", "file://" + a1["report"]], capture_output=True, timeout=120, check=True)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a blank page compresses to a few KB
