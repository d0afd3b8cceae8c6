"""What a user sees (issue 15): CLI conventions, enum validation, --dry-run, bench gates and noise warnings, the
verdict, the report page (text checks here; a headless-Chromium render in the slow test)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import nonblank_lines, run_cli


@pytest.fixture(scope="module")
def fp32_artifact(cnn_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("ux-out")
    r = run_cli("optimize", cnn_files["model"], "-r", "int8-ort", "--data", cnn_files["data"], "-o", out, "--force",
                cwd=cnn_files["dir"])
    assert r.returncode == 0, r.stderr
    return out / "tiny_cnn" / "1", r


# ------------------------------------------------------------------------------------------------ conventions
def test_version_and_short_help():
    r = run_cli("--version")
    assert r.returncode == 0 and re.fullmatch(r"optkit \d+\.\d+\.\d+\S*", r.stdout.strip())
    h = run_cli("-h")
    assert h.returncode == 0 and "--debug" in h.stdout and "--quiet" in h.stdout and "--log-file" in h.stdout
    for cmd in ("optimize", "bench", "tune", "import", "report", "inspect", "passes"):
        r = run_cli(cmd, "-h")
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Examples" in r.stdout and f"optkit {cmd}" in r.stdout, cmd


@pytest.mark.parametrize("args, flag", [
    (("recipes", "--format", "yaml"), "--format"),
    (("tune", "m.onnx", "--objective", "fastest"), "--objective"),
    (("tune", "m.onnx", "--sampler", "cmaes"), "--sampler"),
    (("import", "m.pt", "-o", "m.onnx", "--exporter", "onnxmltools"), "--exporter"),
    (("optimize", "m.onnx", "-r", "int8-ort", "--metric", "accuracy"), "--metric"),
])
def test_choices_are_validated_before_any_work(args, flag):
    r = run_cli(*args)
    assert r.returncode == 2, r.stderr
    lines = nonblank_lines(r.stderr)
    assert len(lines) == 1 and flag in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_choices_are_listed_in_help_and_case_insensitive(cnn_files):
    h = run_cli("tune", "-h").stdout
    assert "throughput|latency|cost" in h and "auto|gp|tpe|random|grid" in h
    assert "--backend " in h and "--backends" not in h  # one spelling; the old one is a hidden alias
    assert run_cli("inspect", cnn_files["model"], "--format", "JSON").returncode == 0
    ok = run_cli("optimize", cnn_files["model"], "-r", "int8-ort", "--metric", "logits=cosine", "--dry-run",
                 cwd=cnn_files["dir"])
    assert ok.returncode == 0, ok.stderr  # OUTPUT=KIND lists stay accepted


def test_one_output_spelling_with_hidden_aliases():
    for cmd in ("optimize", "tune", "import", "report"):
        h = run_cli(cmd, "-h").stdout
        assert "--output" in h and "-o" in h, cmd
        assert not re.search(r"--out\b(?!put)", h), cmd  # --out still works, but is not advertised


def test_passes_keeps_bracketed_choices():
    assert "[minmax|entropy|percentile]" in run_cli("passes").stdout


def test_recipes_show_prints_the_resolved_yaml():
    r = run_cli("recipes", "show", "int8-ort")
    assert r.returncode == 0, r.stderr
    body = yaml.safe_load(r.stdout)
    assert body["name"] == "int8-ort" and body["backend"] == "ort"
    static = next(p["int8-static"] for p in body["passes"] if "int8-static" in p)
    assert static["calibration"] == "minmax" and "max_samples" in static  # defaults spelled out
    assert "sha256" in r.stdout
    assert run_cli("recipes", "show", "nope").returncode == 2


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, cnn_files):
    out = tmp_path / "never"
    r = run_cli("optimize", cnn_files["model"], "-r", "int8-ort", "--data", cnn_files["data"], "-o", out, "--dry-run",
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
    for word in ("int8-static", "calibration=minmax", "backend ort", "default accuracy gate 1%", "judged on",
                 str(out / "tiny_cnn" / "1"), "dry run"):
        assert word in r.stdout, word
    assert "no --eval-data" in r.stderr or "--eval-data" in r.stdout
    j = run_cli("optimize", cnn_files["model"], "-r", "int8-ort", "--data", cnn_files["data"], "-o", out, "--dry-run",
                "--eval-data", cnn_files["data"], "--format", "json", cwd=tmp_path)
    plan = json.loads(j.stdout)
    assert plan["backends"] == ["ort"] and [p["pass"] for p in plan["passes"]] == ["fuse", "simplify", "int8-static"]
    assert "held out" in plan["judged_on"] and len(plan["recipe_sha256"]) == 64
    bad = run_cli("optimize", cnn_files["model"], "-r", "int8-ort", "--data", tmp_path / "missing.npz", "--dry-run")
    assert bad.returncode == 2 and "missing.npz" in bad.stderr


def test_tune_without_optuna_fails_before_any_work(tmp_path, cnn_files):
    # a sitecustomize that hides optuna: the error must come before any variant is built
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nclass _Hide:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'optuna' or name.startswith('optuna.'):\n            raise ImportError('hidden')\n"
        "sys.meta_path.insert(0, _Hide())\n")
    import os
    import sys

    from conftest import REPO

    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}", "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "optkit.cli", "tune", str(cnn_files["model"]), "--data",
                        str(cnn_files["data"]), "-o", str(tmp_path / "o"), "--sampler", "tpe"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "pip install 'optkit[tune]'" in r.stderr and not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ manifest / verdict
def test_manifest_records_reproduce_and_optimize_ends_with_the_verdict(fp32_artifact):
    art, r = fp32_artifact
    man = json.loads((art / "manifest.json").read_text())
    rp = man["reproduce"]
    assert rp["command"].startswith("optkit optimize ") and "-r int8-ort" in rp["command"]
    assert len(rp["recipe_sha256"]) == 64 and rp["optkit_version"]
    tail = r.stdout.strip().splitlines()
    verdict_at = max(i for i, line in enumerate(tail) if line.startswith("verdict: "))
    assert any("reproduce: optkit optimize" in line for line in tail[verdict_at:])
    assert "pass 3/3 int8-static: started" in r.stderr  # progress: every pass as it starts


def test_bench_gates_export_times_and_verdict(tmp_path, fp32_artifact, cnn_files):
    art, _ = fp32_artifact
    times = tmp_path / "times.json"
    r = run_cli("bench", art, "--rounds", "2", "--round-time", "0.02", "--min-cosine", "0.5", "--export-times", times,
                "--data", cnn_files["data"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "95% interval" in r.stdout and "all bench gates met" in r.stderr
    assert "verdict: " in r.stdout.strip().splitlines()[-2] or any(x.startswith("verdict: ") for x in r.stdout.splitlines())
    assert "bench round 2/2" in r.stderr  # progress
    t = json.loads(times.read_text())
    assert t["unit"] == "ms" and set(t["times_ms"]) == {"candidate", "reference"}
    assert all(len(v) >= 2 * 20 and min(v) > 0 for v in t["times_ms"].values())
    miss = run_cli("bench", art, "--rounds", "2", "--round-time", "0.02", "--min-speedup", "1000", "--min-top1", "1.01",
                   cwd=tmp_path)
    assert miss.returncode == 8, miss.stderr
    assert "--min-speedup 1000" in miss.stderr and "--min-top1 1.01" in miss.stderr
    j = run_cli("bench", art, "--rounds", "2", "--round-time", "0.02", "--format", "json", "--min-speedup", "1000",
                cwd=tmp_path)
    assert j.returncode == 8 and json.loads(j.stdout)["verdict"]["verdict"] in ("ship", "ship with caveats", "do not ship")


def test_bench_without_data_says_it_used_the_calibration_data(tmp_path, fp32_artifact):
    art, _ = fp32_artifact
    r = run_cli("bench", art, "--rounds", "2", "--round-time", "0.02", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "the calibration data optimize tuned on" in r.stdout
    low = r.stdout.lower()
    assert "verdict: ship with caveats" in low or "verdict: do not ship" in low
    assert "bench accuracy on the calibration data" in r.stdout  # the caveat that says why


def test_noise_warning_on_a_loaded_machine(monkeypatch):
    from optkit.verdict import noise_rules

    res = {"latency": {"candidate": {"cv": 0.4}, "reference": {"cv": 0.05}},
           "speedup": {"min": 1.96, "max": 5.75, "median": 4.57}, "load": {"before": 5.5, "after": 5.2, "cores": 2}}
    texts = [t for _, t in noise_rules(res)]
    assert len(texts) == 3 and "CV 40.0%" in texts[0] and "1.96-5.75x" in texts[1] and "load average 5.5" in texts[2]


# ------------------------------------------------------------------------------------------------ report page
_REPR = re.compile(r"\{'|'\}|\['|'\]|: \{|\(\d+, \d+\)|\[\d+\]|None\b|True\b|False\b")


def _page_text(html: str) -> str:
    no_tags = re.sub(r"<style>.*?</style>", "", html, flags=re.S)
    no_tags = re.sub(r"<pre class=\"?cmd\"?>.*?</pre>", "", no_tags, flags=re.S)
    no_tags = re.sub(r"<td class=[\"']l small[\"']>\{.*?</td>", "", no_tags)  # the trial configs are JSON on purpose
    return re.sub(r"<[^>]+>", " ", no_tags)


def check_report_html(html: str) -> None:
    """No Python reprs on the page, a verdict block first, every chart axis labelled."""
    text = _page_text(html)
    bad = _REPR.findall(text)
    assert not bad, f"Python reprs on the page: {bad[:5]}"
    # as written (id=verdict) or as a browser serializes its DOM (id="verdict")
    v = re.search(r"id=\"?verdict", html)
    assert v and v.start() < html.index("<h2>Latency")
    assert re.search(r"Verdict: (ship|ship with caveats|do not ship)", html)
    assert "Reproduce" in html
    for svg in re.findall(r"<svg.*?</svg>", html, flags=re.S):
        assert re.search(r'class="axis-x"[^>]*>[^<]{3,}<', svg) and re.search(r'class="axis-y"[^>]*>[^<]{3,}<', svg), svg[:120]


def test_report_html_text(tmp_path, fp32_artifact, cnn_files):
    art, _ = fp32_artifact
    r = run_cli("bench", art, "--rounds", "2", "--round-time", "0.02", "--data", cnn_files["data"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    html = (art / "report.html").read_text()
    check_report_html(html)
    assert "95% interval" in html and "measured on (data · protocol)" in html
    rep = json.loads((art / "report.json").read_text())
    assert rep["artifacts"][0]["verdict"]["verdict"] in ("ship", "ship with caveats", "do not ship")


def test_comparison_notices_the_same_fp32_file_twice(tmp_path, fp32_artifact, cnn_files):
    art, _ = fp32_artifact
    other = tmp_path / "copy" / "tiny_cnn" / "1"
    shutil.copytree(art, other)
    for a in (art, other):
        assert run_cli("bench", a, "--rounds", "2", "--round-time", "0.02", cwd=tmp_path).returncode == 0
    r = run_cli("report", art, other, "-o", tmp_path / "cmp.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    html = (tmp_path / "cmp.html").read_text()
    assert "was measured" in html and "run-to-run noise" in html
    check_report_html(html)


def test_trials_chart_one_threshold_per_pass():
    from optkit.report import svg_trials

    trials = [{"pass": "int8-static", "trial": k, "value": 0.99 - k * 0.01, "threshold": 0.985, "ok": k < 1,
               "chosen": k == 0, "metric": "cosine"} for k in range(3)]
    trials += [{"pass": "prune", "trial": k, "value": 0.97, "threshold": 0.96, "ok": True, "chosen": k == 1,
                "metric": "cosine"} for k in range(2)]
    svg = svg_trials(trials)
    assert "int8-static threshold 0.985" in svg and "prune threshold 0.96" in svg
    assert 'class="axis-y"' in svg and 'class="axis-x"' in svg
    # labels live in the right margin, past every marker
    xs_text = [float(x) for x in re.findall(r'<text x="([\d.]+)"[^>]*>[^<]*threshold', svg)]
    xs_dots = [float(x) for x in re.findall(r'<circle cx="([\d.]+)"', svg)]
    assert min(xs_text) > max(xs_dots) + 7


def test_scatter_legend_with_one_pareto_point():
    from optkit.report import svg_scatter

    pts = [{"key": "a", "artifact": "a (r)", "backend": "ort", "variant": "candidate", "precision": "int8", "status": "ok",
            "latency": {"p50_ms": 1.0}, "accuracy": {"metric": "top1", "value": 0.99}},
           {"key": "b", "artifact": "a (r)", "backend": "ort", "variant": "reference", "precision": "fp32", "status": "ok",
            "latency": {"p50_ms": 2.0}, "accuracy": {"metric": "top1", "value": 0.98}}]
    svg = svg_scatter(pts, ["a"], "top1")
    assert "<path" not in svg and "one point: no line" in svg


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path, fp32_artifact, cnn_files):
    art, _ = fp32_artifact
    assert run_cli("bench", art, "--rounds", "2", "--round-time", "0.02", "--data", cnn_files["data"]).returncode == 0
    prof = tmp_path / "profile"
    r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={prof}",
                        "--dump-dom", (art / "report.html").resolve().as_uri()], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = r.stdout
    check_report_html(dom)  # the DOM as the browser built it
    shot = tmp_path / "page.png"
    s = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={prof}2",
                        f"--screenshot={shot}", "--window-size=1280,2400", (art / "report.html").resolve().as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert s.returncode == 0 and shot.stat().st_size > 10_000


def test_digits_example_without_torch_says_what_to_install(tmp_path):
    import os
    import sys

    from conftest import REPO

    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nclass _Hide:\n    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n            raise ImportError('hidden')\n"
        "sys.meta_path.insert(0, _Hide())\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    r = subprocess.run([sys.executable, "-m", "optkit.examples.digits", "--out", str(tmp_path / "d")], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "pip install 'optkit[dev]'" in r.stderr and not (tmp_path / "d").exists()


def test_benchmark_results_never_overwrite(tmp_path):
    from benchmarks import result_path, stamp

    st = stamp()
    assert st["date"] and st["isa"] and "onnxruntime" in st["versions"]
    first = result_path("tvm_vs_ort", tmp_path)
    assert first.name.startswith(f"tvm_vs_ort-{st['date']}-")
    first.write_text("{}")
    second = result_path("tvm_vs_ort", tmp_path)
    assert second != first and second.name.endswith("-2.json")
    assert result_path("tvm_vs_ort", tmp_path, reuse=True) == first
    assert "DATE = " not in (Path(__file__).parent.parent / "benchmarks" / "tvm_vs_ort.py").read_text()


def test_quiet_and_log_file(tmp_path, fp32_artifact):
    art, _ = fp32_artifact
    log = tmp_path / "optkit.log"
    r = run_cli("-q", "--log-file", log, "bench", art, "--rounds", "2", "--round-time", "0.02", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "bench round" not in r.stderr  # -q: progress off on stderr ...
    text = log.read_text()
    assert "bench round 1/2" in text and "INFO optkit" in text  # ... but every line, timestamped, in the file


def test_library_users_get_progress_through_logging(caplog, cnn_files):
    import logging

    import optkit

    with caplog.at_level(logging.INFO, logger="optkit"):
        logging.getLogger("optkit").propagate = True
        optkit.bench(cnn_files["model"], rounds=2, round_time=0.02, save=False)
    assert any("bench round 2/2" in r.getMessage() for r in caplog.records)
