"""Compression within a tolerance: every optkit recipe with --tolerance 1% vs plain onnxruntime.quantization
defaults, plus 30% structured pruning on its own, on the bundled models, in one run.

    python -m benchmarks.compression       # writes benchmarks/results/compression-<date>.{json,md}

Accuracy: top-1 on the 360 held-out digits for the CNN (calibration uses 128 training images, the tolerance is
judged on 180 of the held-out images);
cosine to FP32 for the encoder (random weights: fidelity is the only meaningful metric there).
All variants of a model are timed in the same alternating rounds, 1 thread.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

import numpy as np

import optkit
from optkit.data import load_samples
from optkit.env import environment
from optkit.errors import ToleranceMiss
from optkit.model import load_model
from optkit.recipe import parse_recipe

from .int8_vs_fp32 import RESULTS, measure, plain_dynamic, plain_static

RECIPES = ("int8-ort", "int8-dynamic-ort", "prune-int8-ort", "lowrank-int8-ort", "auto-ort")
PRUNE30 = {"passes": [{"fuse": {"model_type": "none"}}, {"prune": {"ratio": 0.3}}, "simplify"]}


def _variants(src: Path, data: Path, work: Path, tag: str, tolerance: str, eval_data: Path | None = None) -> tuple[dict, dict]:
    paths, info = {"fp32": src}, {}
    for recipe in RECIPES:
        try:
            man = optkit.optimize(src, recipe, data=data, output=work / "out", name=f"{tag}-{recipe}", tolerance=tolerance,
                                  eval_data=eval_data)
        except ToleranceMiss as e:
            info[recipe] = {"error": str(e)}
            continue
        paths[f"optkit {recipe}"] = Path(man["artifact"]) / "model.onnx"
        info[f"optkit {recipe}"] = {"tolerance_passed": man["tolerance"]["passed"], "optimize_s": man["optimize_seconds"],
                                    "trials": man["tolerance"]["trials"],
                                    "chosen": next((c["candidate"] for c in man["candidates"] or [] if c["chosen"]), None),
                                    "reverted": [e["pass"] for e in man["pass_log"] if e["status"] == "reverted"],
                                    "final_guard": man["guard"]["final"]}
    man = optkit.optimize(src, parse_recipe(PRUNE30, "bench", "prune30"), data=data, output=work / "out",
                          name=f"{tag}-prune30", force=True)
    paths["optkit prune 30% (no tolerance, forced)"] = Path(man["artifact"]) / "model.onnx"
    info["optkit prune 30% (no tolerance, forced)"] = {"optimize_s": man["optimize_seconds"],
                                                       "params": [man["input"]["info"]["params"], man["output"]["info"]["params"]]}
    return paths, info


def bench_digits(work: Path, rounds: int, round_time: float, tolerance: str) -> dict:
    from optkit.examples import digits

    d = digits.main(["--out", str(work / "digits")])
    src = Path(d["model"])
    m = load_model(src)
    calib, test = load_samples(d["calib"], m), load_samples(d["test"], m)
    # calibration: 128 training images; the tolerance is judged on the first half of the held-out images and the
    # table reports all 360 held-out images
    val = work / "digits_val.npz"
    with np.load(d["test"]) as z:
        np.savez(val, **{k: z[k][:180] for k in z.files})
    paths, info = _variants(src, Path(d["calib"]), work, "digits", tolerance, eval_data=val)
    paths["plain quantize_dynamic"] = plain_dynamic(src, work / "digits_plain_dyn.onnx")
    paths["plain quantize_static"] = plain_static(src, work / "digits_plain_static.onnx", calib.feeds)
    res = measure("digits CNN (1x1x32x32, batch 1)", paths, test.feeds, test.labels, test.feeds[0], rounds, round_time)
    res["optimize"] = info
    return res


def bench_encoder(work: Path, rounds: int, round_time: float, tolerance: str) -> dict:
    from optkit.examples import encoder

    src = work / "encoder.onnx"
    encoder.export(encoder.build_encoder(vocab=30522, hidden=384, layers=6, heads=12, ffn=1536), src, seq=128)
    np.savez(work / "enc.npz", **encoder.sample_feeds(32, seq=128, vocab=30522))
    samples = load_samples(work / "enc.npz", load_model(src))
    paths, info = _variants(src, work / "enc.npz", work, "enc", tolerance)
    paths["plain quantize_dynamic"] = plain_dynamic(src, work / "enc_plain_dyn.onnx")
    paths["plain quantize_static"] = plain_static(src, work / "enc_plain_static.onnx", samples.feeds)
    res = measure("BERT-style encoder (hidden 384, 6 layers, seq 128, batch 1)", paths, samples.feeds, None,
                  samples.feeds[0], rounds, round_time)
    res["optimize"] = info
    return res


def markdown(results: list[dict], tolerance: str) -> str:
    lines = [f"Tolerance {tolerance} (top-1 for the CNN, cosine for the encoder); 1 thread; alternating rounds.", ""]
    for r in results:
        lines += [f"**{r['model']}**", "", "| variant | p50 ms | speedup vs FP32 | top-1 | cosine vs FP32 | size | within tolerance | notes |",
                  "|---|---:|---:|---:|---:|---:|---|---|"]
        for k, v in r["variants"].items():
            o = r["optimize"].get(k, {})
            t = f"{v['top1']:.2%}" if v["top1"] is not None else "-"
            passed = {True: "yes", False: "NO"}.get(o.get("tolerance_passed"), "-")
            notes = []
            if o.get("chosen"):
                notes.append(f"chose {o['chosen']}")
            if o.get("reverted"):
                notes.append("guard reverted " + ", ".join(o["reverted"]))
            if o.get("final_guard") and not o["final_guard"].get("kept", True):
                notes.append("guard kept the input model")
            lines.append(f"| {k} | {v['p50_ms']:.3f} | {v['speedup_vs_fp32']:.2f}x | {t} | {v['cosine_vs_fp32']:.5f} | "
                         f"{v['bytes'] / 1e6:.2f} MB | {passed} | {'; '.join(notes)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--round-time", type=float, default=0.5)
    ap.add_argument("--tolerance", default="1%")
    ap.add_argument("--only", choices=("digits", "encoder"), default=None)
    a = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="optkit-bench-") as d:
        work = Path(d)
        results = []
        if a.only in (None, "digits"):
            results.append(bench_digits(work, a.rounds, a.round_time, a.tolerance))
        if a.only in (None, "encoder"):
            results.append(bench_encoder(work, a.rounds, a.round_time, a.tolerance))
    from . import result_path

    out = result_path("compression", RESULTS, reuse=bool(a.only))
    if a.only and out.exists():  # a partial run replaces its model's rows in today's file
        kept = [r for r in json.loads(out.read_text())["results"] if not r["model"].lower().startswith(a.only[:3])]
        results = sorted(kept + results, key=lambda r: not r["model"].startswith("digits"))
    out.write_text(json.dumps({"benchmark": "compression", "tolerance": a.tolerance, "threads": 1, "rounds": a.rounds,
                               "results": results, "environment": environment()}, indent=2, default=str))
    md = markdown(results, a.tolerance)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
