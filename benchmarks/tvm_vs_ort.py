"""ONNX Runtime FP32 vs Apache TVM (relax, llvm for this CPU) untuned vs MetaSchedule-tuned, on the bundled models.

    python -m benchmarks.tvm_vs_ort      # writes benchmarks/results/tvm_vs_ort-<date>.json and .md

Models: the bundled digits CNN (optkit.examples.digits.build_cnn, UNTRAINED: seeded random weights - speed does not
depend on them - fed real held-out digit images; top-1 agreement with ORT is reported instead of accuracy) and a small
BERT-style encoder (hidden 128, 2 layers, 4 heads, seq 64; random weights, padded sample masks). Each
model: ORT FP32 (graph optimizations 'all'), TVM untuned (default schedules) and TVM tuned with a stated trial budget
(a fresh tuning database unless --cache-dir), all at batch 1, 1 thread, timed in the same alternating rounds
(optkit.measure.time_sessions). Tuning time and the per-kernel results of the tuner are recorded too.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from optkit.backends.ort import OrtSession
from optkit.backends.tvm import TUNE_LOG, TvmBackend, TvmOptions, tvm_version
from optkit.env import environment
from optkit.measure import speedup, time_sessions
from optkit.metrics import compare

RESULTS = Path(__file__).parent / "results"


def tuner_table(log: str | None) -> list[dict]:
    """The last per-task table MetaSchedule printed: task, FLOP, GFLOPS, latency, trials."""
    if not log or not Path(log).is_file():
        return []
    text = Path(log).read_text(errors="replace")
    start = text.rfind(" ID |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not re.match(r"^\s*\d+ \|", line):
            break
        c = [x.strip() for x in line.split("|")]
        rows.append({"task": c[1], "flop": int(c[2]), "gflops": _num(c[4]), "latency_us": _num(c[5]), "trials": int(c[7])})
    return rows


def _num(s: str):
    try:
        return float(s)
    except ValueError:
        return None


def measure(name: str, src: Path, shapes: dict, eval_feeds: list, budget: dict, work: Path, cache: Path | None,
            rounds: int, round_time: float, conv_layout: str = "auto") -> dict:
    be = TvmBackend()
    notes: list[str] = []
    t0 = time.perf_counter()
    untuned = be.compile(src, work / "untuned", TvmOptions(), 1, shapes=shapes, warn=notes.append)
    untuned_s = time.perf_counter() - t0
    opts = TvmOptions(tune=True, tune_trials=budget["tune_trials"], max_trials_per_task=budget["max_trials_per_task"],
                      cache_dir=str(cache or work / "tvm-cache"), conv_layout=conv_layout)
    t0 = time.perf_counter()
    tuned = be.compile(src, work / "tuned", opts, 1, shapes=shapes, warn=notes.append)
    tuned_s = time.perf_counter() - t0
    sessions = {"ort fp32": OrtSession(src, 1), "tvm untuned": be.load(work / "untuned", 1),
                "tvm tuned": be.load(work / "tuned", 1)}
    try:
        outs = {k: [s.run(f) for f in eval_feeds] for k, s in sessions.items()}
        timing = time_sessions(sessions, eval_feeds[0], rounds=rounds, round_time=round_time)
    finally:
        for s in sessions.values():
            s.close()
    rows = {}
    for k in sessions:
        d = compare(outs["ort fp32"], outs[k])
        rows[k] = {"p50_ms": timing[k]["p50_ms"], "p99_ms": timing[k]["p99_ms"], "mean_ms": timing[k]["mean_ms"],
                   "cv": timing[k]["cv"], "runs": timing[k]["runs"],
                   "vs_ort_latency_ratio": 1.0 / speedup(timing["ort fp32"]["round_p50_ms"], timing[k]["round_p50_ms"])["median"],
                   "max_abs_vs_ort": d["max_abs"], "cosine_vs_ort": d["cosine"],
                   "top1_agreement_vs_ort": d.get("top1_agreement")}
    t = tuned["tuning"]
    return {
        "model": name, "eval_feeds": len(eval_feeds), "variants": rows,
        "compile": {"untuned_seconds": round(untuned_s, 1), "tuned_seconds": round(tuned_s, 1),
                    "tuning_seconds": t.get("seconds"), "build_seconds": tuned.get("build_seconds")},
        "tuning": {"budget": budget, "status": t.get("status"), "db": t.get("db"), "trials_run": t.get("trials_run"),
                   "tasks": t.get("tasks"), "tuned_tasks": t.get("tuned_tasks"), "max_trials_per_task_used":
                   t.get("max_trials_per_task"), "search_population": t.get("search_population"),
                   "per_task": tuner_table(str(work / "tuned" / TUNE_LOG))},
        "target": tuned["target"], "target_source": tuned["target_source"], "conv_layout": tuned["conv_layout"],
        "warnings": notes,
    }


def bench_digits(work: Path, cache, budget: dict, rounds: int, round_time: float, n_eval: int, layout: str) -> dict:
    import torch

    from optkit.examples import digits

    torch.manual_seed(0)
    src = work / "digits_cnn.onnx"
    digits.export(digits.build_cnn().eval(), src)  # untrained: latency does not depend on the weights
    _, (xte, _) = digits.load_digits_32()
    feeds = [{"input": xte[i:i + 1]} for i in range(n_eval)]
    res = measure("digits CNN (1x1x32x32, batch 1; untrained weights)", src, {"input": (1, 1, 32, 32)}, feeds, budget,
                  work / "digits", cache, rounds, round_time, layout)
    res["weights"] = "untrained (torch.manual_seed(0)); inputs: held-out digit images"
    return res


def bench_encoder(work: Path, cache, budget: dict, rounds: int, round_time: float, n_eval: int) -> dict:
    from optkit.examples import encoder

    seq, vocab = 64, 1000
    src = work / "encoder.onnx"
    encoder.export(encoder.build_encoder(vocab=vocab, hidden=128, layers=2, heads=4, ffn=512), src, seq=seq)
    stacked = encoder.sample_feeds(n_eval, seq=seq, vocab=vocab)
    feeds = [{k: v[i] for k, v in stacked.items()} for i in range(n_eval)]
    return measure(f"BERT-style encoder (hidden 128, 2 layers, 4 heads, seq {seq}, batch 1)", src,
                   {"input_ids": (1, seq), "attention_mask": (1, seq)}, feeds, budget, work / "encoder", cache,
                   rounds, round_time)


def markdown(results: list[dict], meta: dict) -> str:
    lines = [f"# TVM vs ONNX Runtime ({meta['date']})", "",
             f"1 thread, batch 1, {meta['rounds']} alternating rounds of >= {meta['round_time_s']} s; CPU: "
             f"{meta['cpu']}; target `{results[0]['target']}` ({results[0]['target_source']}); TVM {meta['tvm']}. "
             "Tuned = MetaSchedule with the budget shown, fresh tuning database.", ""]
    for r in results:
        t, c = r["tuning"], r["compile"]
        lines += [f"**{r['model']}** ({r['eval_feeds']} eval feeds)", "",
                  "| variant | p50 ms | p99 ms | latency / ORT | max abs vs ORT | top-1 agreement |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, v in r["variants"].items():
            t1 = f"{v['top1_agreement_vs_ort']:.2%}" if v.get("top1_agreement_vs_ort") is not None else "-"
            lines.append(f"| {k} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['vs_ort_latency_ratio']:.2f}x | "
                         f"{v['max_abs_vs_ort']:.2e} | {t1} |")
        tt = t.get("tuned_tasks") or {}
        lines += ["", f"Tuning ({r['conv_layout']} convolutions): {t['budget']['tune_trials']} trials budget "
                  f"(max {t['max_trials_per_task_used']} per task), "
                  f"{t['trials_run']} measured over {t['tasks']} tasks ({tt.get('tuned', '?')}/{tt.get('tasks', '?')} "
                  f"kernels from the database), status {t['status']}; tuning {c['tuning_seconds']:.0f} s, untuned "
                  f"compile {c['untuned_seconds']:.0f} s, tuned compile (tuning + build) {c['tuned_seconds']:.0f} s.", ""]
        if t["per_task"]:
            lines += ["| tuned kernel | MFLOP | GFLOPS | latency us | trials |", "|---|---:|---:|---:|---:|"]
            for row in sorted(t["per_task"], key=lambda x: -(x["latency_us"] or 0))[:8]:
                lines.append(f"| {row['task']} | {row['flop'] / 1e6:.2f} | {row['gflops'] or 0:.1f} | "
                             f"{row['latency_us'] or 0:.1f} | {row['trials']} |")
            lines.append("")
    return "\n".join(lines)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-time", type=float, default=0.5)
    ap.add_argument("--eval", type=int, default=32, help="eval feeds per model (untuned TVM is slow)")
    ap.add_argument("--cnn-trials", type=int, default=384)
    ap.add_argument("--cnn-per-task", type=int, default=64)
    ap.add_argument("--cnn-layout", choices=("auto", "NCHW", "NHWC"), default="auto", help="backend option conv_layout")
    ap.add_argument("--enc-trials", type=int, default=64)
    ap.add_argument("--enc-per-task", type=int, default=8)
    ap.add_argument("--cache-dir", type=Path, default=None, help="reuse a tuning-database root (default: a fresh one)")
    ap.add_argument("--only", choices=("digits", "encoder"), default=None)
    a = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="optkit-bench-tvm-") as d:
        work = Path(d)
        if a.only in (None, "digits"):
            results.append(bench_digits(work, a.cache_dir, {"tune_trials": a.cnn_trials, "max_trials_per_task": a.cnn_per_task},
                                        a.rounds, a.round_time, a.eval, a.cnn_layout))
        if a.only in (None, "encoder"):
            results.append(bench_encoder(work, a.cache_dir, {"tune_trials": a.enc_trials, "max_trials_per_task": a.enc_per_task},
                                         a.rounds, a.round_time, a.eval))
    env = environment()
    cpu = env.get("cpu") or {}
    from . import result_path, stamp

    st = stamp()
    meta = {"date": st["date"], "isa": st["isa"], "versions": st["versions"], "rounds": a.rounds, "round_time_s": a.round_time, "tvm": tvm_version(),
            "cpu": f"{cpu.get('model')}, {cpu.get('logical_cores')} logical cores (shared machine)"}
    out = result_path("tvm_vs_ort", RESULTS)
    out.write_text(json.dumps({"benchmark": "tvm_vs_ort", "threads": 1, **meta, "results": results,
                               "wall_seconds": round(time.perf_counter() - started, 1), "environment": env}, indent=2,
                              default=str))
    md = markdown(results, meta)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} ({time.perf_counter() - started:.0f} s)")
    return out


if __name__ == "__main__":
    main()
