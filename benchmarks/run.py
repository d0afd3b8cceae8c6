"""The benchmark suite: optkit's recipes vs the plain libraries by hand, on bundled and real models, in one run.

Everything runs on this machine in one command (`make bench`), bundled models and a real pretrained one from PyPI.

    python -m benchmarks.run                   # full run (<= 15 min on 2 cores) -> benchmarks/results/suite-<date>.{json,md}
    python -m benchmarks.run --quick           # small encoder, fewer feeds and rounds -> suite-quick-<date>.*
    python -m benchmarks.run --only ocr        # one model (comma list); replaces its entry in today's file
    python -m benchmarks.run --readme          # print the README 'Results' block from the latest full-run JSON
    python -m benchmarks.run --write-readme    # ...and write it between <!-- results:start --> / <!-- results:end -->

Models (benchmarks/suite/models.py): the digits CNN (top-1 on the held-out digits), the MiniLM-shaped encoder (cosine
to FP32, random weights) and ddddocr's FP32 OCR model (MIT; read from the ddddocr wheel, fetched with
`pip download ddddocr==1.6.1 --no-deps` into ~/.cache/optkit-bench when not installed; exact-match text accuracy on
captcha-like strings drawn with Pillow). Variants (benchmarks/suite/variants.py): FP32; ORT graph optimizer alone;
onnxsim alone; quantize_dynamic and quantize_static (QDQ) with defaults; for the encoder, ORT's transformer
optimizer; optkit fp32-ort, int8-ort and int8-dynamic-ort one shot, and auto-ort with --tolerance 1% --budget 2m
(judged on validation data; the table's accuracy is on separate test data). Per variant: p50 latency and
speedup vs FP32 (1 thread, batch 1, all variants of a model in the same alternating rounds), accuracy, size,
optimize wall time, achieved GFLOP/s or GOP/s and the roofline fraction (benchmarks/suite/roofline.py).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).resolve().parent.parent / "README.md"
MODELS = ("digits", "encoder", "ocr")
# auto-ort's search took 130 s (digits), 500 s (encoder) and 460 s (ocr) on this 2-core machine under load; the
# rest of the suite takes about 6 min on a quiet machine, so 2 min of search per model keeps the whole under 15.
AUTO_BUDGET = "2m"


def _log_factory(t0: float):
    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)
    return log


def _loadavg() -> list[float] | None:
    """1/5/15-minute load average at the end of the run: how shared the machine was (2 cores here)."""
    try:
        import os

        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def run_model(key: str, work: Path, a, peaks: dict, tolerance: float, log) -> dict:
    from optkit.model import load_model

    from .suite import measure, models, roofline, variants
    from .suite.report import headline

    t0, c0 = time.perf_counter(), time.process_time()
    log(f"{key}: preparing model and data")
    kwargs = {"cache": a.cache, "as_shipped": a.ocr_as_shipped} if key == "ocr" else {}
    (work / key).mkdir(parents=True, exist_ok=True)
    try:
        m = models.BUILDERS[key](work / key, a.quick, **kwargs)
    except Exception as e:  # e.g. no ddddocr wheel and no registry: the row says so, the other models run
        log(f"{key}: not run: {type(e).__name__}: {e}")
        return {"key": key, "name": key, "error": f"{type(e).__name__}: {str(e)[:300]}"}
    flops = roofline.model_flops(load_model(m.src, check=False), m.shapes, m.timed_feed)
    vs = variants.build(m, work / key, a.tolerance, log=log, auto_budget=a.auto_budget)
    rows = measure.measure(m, vs, flops["total"], peaks, a.rounds, a.round_time, log=log)
    res = {**m.describe(), "flops": flops, "variants": rows}
    res["headline"] = headline(res, tolerance)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["cpu_seconds"] = round(time.process_time() - c0, 1)
    log(f"{key}: done in {res['seconds']:.0f} s ({res['cpu_seconds']:.0f} s CPU); {res['headline']['verdict_text']}")
    return res


def main(argv=None) -> Path | None:
    from . import one_line_warnings

    one_line_warnings()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small encoder, fewer feeds and rounds (tests, smoke runs)")
    ap.add_argument("--only", default=None, help=f"comma list of models to run: {', '.join(MODELS)}")
    ap.add_argument("--rounds", type=int, default=None, help="alternating timing rounds (default 7; quick 3)")
    ap.add_argument("--round-time", type=float, default=None, help="seconds per variant per round (default 0.5; quick 0.2)")
    ap.add_argument("--tolerance", default="1%", help="optkit --tolerance and the headline's accuracy rule")
    ap.add_argument("--auto-budget", default=AUTO_BUDGET,
                    help=f"optkit --budget for auto-ort (default {AUTO_BUDGET}, what keeps the suite within 15 min on 2 "
                         "cores; 'none' lets every candidate run: 7-8 min per model here); candidates a budget cuts "
                         "are flagged in the notes")
    ap.add_argument("--peak-seconds", type=float, default=1.0, help="seconds per peak microbenchmark")
    ap.add_argument("--clock-ghz", type=float, default=None, help="clock for the computed peak (default: /proc/cpuinfo)")
    ap.add_argument("--cache", type=Path, default=None, help="where the ddddocr wheel is kept (default ~/.cache/optkit-bench)")
    ap.add_argument("--ocr-as-shipped", action="store_true", help="keep ddddocr's wrong output declaration (see models.py)")
    ap.add_argument("--results", type=Path, default=RESULTS)
    ap.add_argument("--readme", action="store_true", help="print the README Results block from the latest JSON and exit")
    ap.add_argument("--write-readme", action="store_true", help="write that block into README.md between the markers and exit")
    ap.add_argument("--from-json", type=Path, default=None, help="with --readme/--write-readme: this JSON, not the latest")
    a = ap.parse_args(argv)

    from .suite import report

    if a.readme or a.write_readme:
        src = a.from_json or report.latest_json(a.results)
        if src is None:
            print(f"no suite-*.json in {a.results}: run python -m benchmarks.run first", file=sys.stderr)
            return None
        block = report.readme_block(report.load(src), src.name)
        if a.write_readme:
            if not report.write_readme(README, block):
                print(f"{README} has no {report.START} ... {report.END} markers: add them where the section goes",
                      file=sys.stderr)
                return None
            print(f"wrote the Results block of {src.name} into {README}")
        else:
            print(block)
        return src

    import onnxruntime

    from optkit.env import environment
    from optkit.search import parse_tolerance

    from .suite import roofline, variants

    onnxruntime.set_default_logger_severity(3)  # the OCR model's declared output shape makes ORT warn on every run
    a.rounds = a.rounds or (3 if a.quick else 7)
    a.round_time = a.round_time or (0.2 if a.quick else 0.5)
    if str(a.auto_budget).lower() in ("none", "0", ""):
        a.auto_budget = None
    tol, absolute = parse_tolerance(a.tolerance)
    if absolute:
        ap.error("the suite's headline rule is relative: give --tolerance as a percentage, e.g. 1%")
    keys = MODELS if not a.only else tuple(k.strip() for k in a.only.split(",") if k.strip())
    bad = [k for k in keys if k not in MODELS]
    if bad:
        ap.error(f"--only: unknown model(s) {bad}; choose from {', '.join(MODELS)}")

    t0, c0 = time.perf_counter(), time.process_time()
    log = _log_factory(t0)
    started = dt.datetime.now(dt.timezone.utc)
    log("peak microbenchmarks (1 thread)")
    peaks = roofline.peaks(seconds=a.peak_seconds, clock_ghz=a.clock_ghz)
    log(f"peaks: fp32 {peaks['computed']['fp32'] or 0:.0f} computed / {peaks['measured']['fp32']:.0f} measured GFLOP/s, "
        f"int8 {peaks['computed']['int8'] or 0:.0f} / {peaks['measured']['int8']:.0f} GOP/s")
    results = []
    with tempfile.TemporaryDirectory(prefix="optkit-suite-") as d:
        for key in keys:
            results.append(run_model(key, Path(d), a, peaks, tol, log))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0

    a.results.mkdir(parents=True, exist_ok=True)
    date = started.date().isoformat()
    from . import result_path

    out = result_path(f"suite-{'quick-' if a.quick else ''}".rstrip("-"), a.results, reuse=bool(a.only))
    if a.only and out.exists():  # a partial run replaces its models' entries in today's file
        prev = json.loads(out.read_text())
        kept = {r["key"]: r for r in prev.get("models", []) if r["key"] not in keys}
        results = [kept.get(k) or next(r for r in results if r["key"] == k) for k in MODELS
                   if k in kept or k in keys]
    data = {"benchmark": "suite", "schema": 1, "date": date, "started": started.isoformat(timespec="seconds"),
            "quick": a.quick, "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "load_average": _loadavg(), "only": list(keys) if a.only else None,
            "protocol": {"threads": 1, "inter_op_threads": 1, "batch": 1, "rounds": a.rounds, "round_time_s": a.round_time,
                         "alternating": True, "ort_session_level": "all (ORT's default)", "tolerance": a.tolerance,
                         "tolerance_applies_to": "optkit auto-ort (the other recipes run one shot, as written)",
                         "auto_budget": a.auto_budget,
                         "headline": f"fastest variant with accuracy >= FP32 * (1 - {tol:g}) on test data; optkit vs "
                                     f"plain-library ties within +-{report.TIE_MARGIN:.0%}",
                         "speedup": "median of per-round p50 ratios to FP32 (optkit.measure.speedup)"},
            "peaks": peaks, "variant_descriptions": {k: v[1] for k, v in variants.VARIANTS.items()},
            "models": results, "environment": environment()}
    out.write_text(json.dumps(data, indent=2, default=str))
    md = report.markdown(data)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md').name} in {wall / 60:.1f} min")
    return out


if __name__ == "__main__":
    main()
