"""FP32 vs optkit INT8 vs plain onnxruntime.quantization (library defaults), on the bundled models, in one run.

    python -m benchmarks.int8_vs_fp32            # writes benchmarks/results/int8_vs_fp32-<date>.json

Models: the digits CNN (trained here on scikit-learn's digits; top-1 on the 360 held-out images) and a
BERT-style encoder (MiniLM geometry: hidden 384, 6 layers, 12 heads, seq 128; random weights, so fidelity
to FP32 is the metric). All variants of a model are timed in the same alternating rounds, 1 thread.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

import numpy as np

import optkit
from optkit.backends.ort import OrtSession
from optkit.data import load_samples
from optkit.env import environment
from optkit.measure import speedup, time_sessions
from optkit.metrics import compare, top1
from optkit.model import load_model

RESULTS = Path(__file__).parent / "results"


def plain_dynamic(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(src), str(dst))
    return dst


def plain_static(src: Path, dst: Path, feeds) -> Path:
    from onnxruntime.quantization import quantize_static

    class Reader:
        def __init__(self):
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), Reader())
    return dst


def run_model(path, feeds):
    with OrtSession(path) as s:
        return [s.run(f) for f in feeds]


def measure(name: str, variants: dict[str, Path], eval_feeds, labels, time_feed, rounds: int, round_time: float) -> dict:
    outs = {k: run_model(p, eval_feeds) for k, p in variants.items()}
    sessions = {k: OrtSession(p) for k, p in variants.items()}
    timing = time_sessions(sessions, time_feed, rounds=rounds, round_time=round_time)
    for s in sessions.values():
        s.close()
    rows = {}
    for k, p in variants.items():
        d = compare(outs["fp32"], outs[k])
        rows[k] = {"p50_ms": timing[k]["p50_ms"], "p99_ms": timing[k]["p99_ms"], "cv": timing[k]["cv"],
                   "speedup_vs_fp32": speedup(timing["fp32"]["round_p50_ms"], timing[k]["round_p50_ms"])["median"],
                   "cosine_vs_fp32": d["cosine"], "max_abs_vs_fp32": d["max_abs"],
                   "top1": top1(outs[k], labels), "bytes": p.stat().st_size}
        if "top1_agreement" in d:
            rows[k]["top1_agreement_vs_fp32"] = d["top1_agreement"]
    return {"model": name, "eval_feeds": len(eval_feeds), "variants": rows}


def bench_digits(work: Path, rounds: int, round_time: float) -> dict:
    from optkit.examples import digits

    info = digits.main(["--out", str(work / "digits")])
    src = Path(info["model"])
    m = load_model(src)
    calib = load_samples(info["calib"], m)
    test = load_samples(info["test"], m)
    v = {"fp32": src}
    for recipe in ("int8-ort", "int8-dynamic-ort"):
        man = optkit.optimize(src, recipe, data=info["calib"], output=work / "out", name=f"digits-{recipe}")
        v[f"optkit {recipe}"] = Path(man["artifact"]) / "model.onnx"
    v["plain quantize_dynamic"] = plain_dynamic(src, work / "digits_plain_dyn.onnx")
    v["plain quantize_static"] = plain_static(src, work / "digits_plain_static.onnx", calib.feeds)
    res = measure("digits CNN (1x1x32x32, batch 1)", v, test.feeds, test.labels, test.feeds[0], rounds, round_time)
    res["train"] = {k: info[k] for k in ("epochs", "train_seconds", "test_top1_torch", "test_images")}
    return res


def bench_encoder(work: Path, rounds: int, round_time: float) -> dict:
    from optkit.examples import encoder

    src = work / "encoder.onnx"
    encoder.export(encoder.build_encoder(vocab=30522, hidden=384, layers=6, heads=12, ffn=1536), src, seq=128)
    np.savez(work / "enc_samples.npz", **encoder.sample_feeds(32, seq=128, vocab=30522))
    m = load_model(src)
    samples = load_samples(work / "enc_samples.npz", m)
    v = {"fp32": src}
    for recipe in ("int8-dynamic-ort", "int8-ort"):
        man = optkit.optimize(src, recipe, data=work / "enc_samples.npz", output=work / "out", name=f"enc-{recipe}")
        v[f"optkit {recipe}"] = Path(man["artifact"]) / "model.onnx"
    try:
        v["plain quantize_dynamic"] = plain_dynamic(src, work / "enc_plain_dyn.onnx")
    except Exception as e:  # recorded, not hidden
        print(f"plain quantize_dynamic failed on the encoder: {type(e).__name__}: {e}")
    v["plain quantize_static"] = plain_static(src, work / "enc_plain_static.onnx", samples.feeds)
    return measure("BERT-style encoder (hidden 384, 6 layers, seq 128, batch 1)", v, samples.feeds, None,
                   samples.feeds[0], rounds, round_time)


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        lines += [f"**{r['model']}** ({r['eval_feeds']} eval feeds)", "",
                  "| variant | p50 ms | p99 ms | speedup vs FP32 | top-1 | cosine vs FP32 | size |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for k, v in r["variants"].items():
            t = f"{v['top1']:.2%}" if v["top1"] is not None else "-"
            lines.append(f"| {k} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} | {v['speedup_vs_fp32']:.2f}x | {t} | "
                         f"{v['cosine_vs_fp32']:.5f} | {v['bytes'] / 1e6:.2f} MB |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-time", type=float, default=0.5)
    a = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optkit-bench-") as d:
        work = Path(d)
        results = [bench_digits(work, a.rounds, a.round_time), bench_encoder(work, a.rounds, a.round_time)]
    from . import result_path

    out = result_path("int8_vs_fp32", RESULTS)
    out.write_text(json.dumps({"benchmark": "int8_vs_fp32", "threads": 1, "rounds": a.rounds,
                               "round_time_s": a.round_time, "results": results, "environment": environment()}, indent=2))
    md = markdown(results)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
