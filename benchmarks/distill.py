"""Distillation vs plain fine-tuning after structured pruning, on the bundled digits CNN, in one run.

    python -m benchmarks.distill            # writes benchmarks/results/distill-<date>.{json,md}
    python -m benchmarks.distill --tune     # T/alpha sweep on a validation split carved from train (no test data)

Teacher: ``optkit.examples.digits.train`` (the bundled CNN on scikit-learn's digits, 1437 train / 360 held-out
images). Student: the teacher pruned structurally by ``optkit.torch.prune`` to <= 50% of its FLOPs. From that
same pruned starting point the student is fine-tuned (a) with the task loss only and (b) with distillation from
the teacher (``optkit.torch.fit``, T and alpha below; (c), KD plus feature matching on the last conv block, is
extra), with identical epochs, lr, optimizer, schedule, batches and seed per run. Three data settings: the full
train split, and stratified subsets of 10% and 3% of it (the realistic case: the teacher was trained on data
you no longer have in full, or labels are scarce). Each setting is repeated over several seeds (the seed picks
the subset, the batch order and any projection init; the teacher and the pruned starting point are the same
for all). Top-1 is on the 360 held-out images and is only read after training (nothing is selected on it; the
epoch counts were chosen on a validation split carved from train, see PROTOCOL_NOTES). The distilled student of
the first seed (full data) is exported to ONNX and scored with onnxruntime. Torch and ORT use 2 threads.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from optkit.env import environment

RESULTS = Path(__file__).parent / "results"
THREADS = 2
# How the settings were chosen (recorded with the results). Nothing here looked at the held-out test split.
PROTOCOL_NOTES = [
    "T=4, alpha=0.7 are the textbook defaults, fixed before any run; not tuned.",
    "Prune ratio 0.5 per layer: 25% of the FLOPs (<= 50% asked), chance-level top-1 before fine-tuning.",
    "Epoch counts for the subsets were chosen on a validation split carved from train (a fixed 20% of it, 288 "
    "images; the subsets are drawn, with the same per-class counts, from the other 80%). 10% subset, 40 epochs "
    "(200 steps of batch 32), 2 seeds: val top-1 (a) 97.74%, (b) T=4/alpha=0.7 99.13%, (b) T=2/alpha=0.5 98.96%. "
    "3% subset, 100 epochs (200 steps), 3 seeds: (a) 96.41%, (b) T=4/alpha=0.7 98.38%. Exploratory runs with short "
    "budgets (ratio 0.7: 3% of train for 20 epochs, 10% for 10 epochs; 40-50 steps) had distillation BEHIND plain "
    "fine-tuning on val (94.1% vs 88.4%, 95.3% vs 94.2%): soft targets need more steps than hard labels.",
    "The 3% setting was added after a first run of this benchmark (full + 10% only) showed plain fine-tuning on "
    "10% already at 99.26% held-out top-1 (teacher 99.72%), leaving almost no room; that first run's numbers are "
    "the same protocol and reproduce as the 'full' and 'limited' rows here.",
    "The full-data epoch count (3) was fixed a priori (the teacher itself trains in 4).",
    "One teacher and one pruned starting point for all seeds; the seed picks the limited subset, the batch order "
    "and (with features) the projection init. Both arms of a seed see the same images in the same order.",
]
ARMS = {"a": "fine-tune (task loss only)", "b": "fine-tune + distillation", "c": "distillation + features"}


def top1(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = np.concatenate([model(torch.from_numpy(x[i:i + 256])).argmax(1).numpy() for i in range(0, len(x), 256)])
    return float((pred == y).mean())


def params(model) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def stratified(y: np.ndarray, frac: float, seed: int) -> np.ndarray:
    """``frac`` of each class's indices (at least 2 each), chosen with ``seed``; sorted."""
    rng = np.random.default_rng(seed)
    out = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        out.append(rng.choice(idx, size=max(2, round(frac * len(idx))), replace=False))
    return np.sort(np.concatenate(out))


def mean_std(v: list[float]) -> dict:
    return {"mean": float(statistics.fmean(v)), "std": float(statistics.stdev(v)) if len(v) > 1 else 0.0,
            "min": float(min(v)), "max": float(max(v)), "n": len(v)}


def train_arm(arm: str, student0, teacher, x, y, cfg: dict, epochs: int, seed: int):
    from optkit.torch import fit

    s = copy.deepcopy(student0)
    kw = dict(epochs=epochs, lr=cfg["lr"], batch_size=cfg["batch_size"], optimizer=cfg["optimizer"],
              weight_decay=cfg["weight_decay"], schedule=cfg["schedule"], seed=seed)
    if arm == "a":
        hist = fit(s, (x, y), **kw)
    elif arm == "b":
        hist = fit(s, (x, y), teacher=teacher, T=cfg["T"], alpha=cfg["alpha"], **kw)
    else:
        hist = fit(s, (x, y), teacher=teacher, T=cfg["T"], alpha=cfg["alpha"], features=cfg["features"],
                   feature_weight=cfg["feature_weight"], **kw)
    return s, hist


def export_and_check(model, x: np.ndarray, y: np.ndarray, work: Path) -> dict:
    import onnxruntime as ort
    import torch

    path = work / "student_distilled.onnx"
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 32, 32),), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ort_logits = np.concatenate([sess.run(None, {"input": x[i:i + 128]})[0] for i in range(0, len(x), 128)])
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x)).numpy()
    return {"onnx_bytes": path.stat().st_size, "opset": 17, "ort_top1": float((ort_logits.argmax(1) == y).mean()),
            "torch_top1": float((torch_logits.argmax(1) == y).mean()),
            "top1_agreement_ort_vs_torch": float((ort_logits.argmax(1) == torch_logits.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(ort_logits - torch_logits).max()),
            "matches_torch": bool(np.allclose(ort_logits, torch_logits, rtol=1e-3, atol=1e-4))}


def build(cfg: dict):
    """(teacher, teacher info, pruned student, prune report, splits)."""
    import torch

    from optkit.examples import digits
    from optkit.torch import count_flops, prune

    teacher, info, (xtr, ytr), (xte, yte) = digits.train(epochs=cfg["teacher_epochs"], seed=0, threads=THREADS)
    teacher.eval()
    ex = (torch.zeros(1, 1, 32, 32),)
    t0 = time.perf_counter()
    student0, rep = prune(teacher, cfg["ratio"], example_inputs=ex, importance=cfg["importance"])
    prune_s = time.perf_counter() - t0
    fb, fa = int(rep.get("flops_before", count_flops(teacher, ex))), int(rep.get("flops_after", count_flops(student0, ex)))
    if fa > 0.5 * fb:
        raise SystemExit(f"ratio {cfg['ratio']} leaves {fa / fb:.1%} of the FLOPs; the benchmark needs <= 50%")
    prune_info = {"ratio": cfg["ratio"], "importance": cfg["importance"], "flops_before": fb, "flops_after": fa,
                  "flops_ratio": fa / fb, "params_before": params(teacher), "params_after": params(student0),
                  "prune_seconds": round(prune_s, 2),
                  "layers": {k: [v["before"], v["after"]] for k, v in rep.get("layers", {}).items()},
                  "skipped": rep.get("skipped", {}), "notes": rep.get("notes", [])}
    return teacher, info, student0, prune_info, (xtr, ytr), (xte, yte)


def tune(cfg: dict, seeds: list[int], setting: str, grid_T=(2.0, 4.0, 8.0), grid_alpha=(0.5, 0.7, 0.9)) -> dict:
    """Subset KD with a (T, alpha) grid, scored on a validation split carved from train (never the test split).

    Note the teacher saw the validation images in its own training (it is the bundled example's teacher); the
    student never does."""
    teacher, _, student0, _, (xtr, ytr), _ = build(cfg)
    rng = np.random.default_rng(1234)
    perm = rng.permutation(len(ytr))
    cut = int(0.8 * len(ytr))
    (xa, ya), (xv, yv) = (xtr[perm[:cut]], ytr[perm[:cut]]), (xtr[perm[cut:]], ytr[perm[cut:]])
    frac, epochs = cfg["settings"][setting]["frac"], cfg["settings"][setting]["epochs"]
    rows = []
    base = []
    for seed in seeds:
        idx = stratified(ya, frac * len(ytr) / cut, seed)  # the same per-class counts as the real setting
        s, _ = train_arm("a", student0, teacher, xa[idx], ya[idx], cfg, epochs, seed)
        base.append(top1(s, xv, yv))
    for T in grid_T:
        for alpha in grid_alpha:
            accs = []
            for seed in seeds:
                idx = stratified(ya, frac * len(ytr) / cut, seed)
                s, _ = train_arm("b", student0, teacher, xa[idx], ya[idx], dict(cfg, T=T, alpha=alpha), epochs, seed)
                accs.append(top1(s, xv, yv))
            rows.append({"T": T, "alpha": alpha, "val_top1": mean_std(accs)})
            print(f"T={T} alpha={alpha}: val top-1 {statistics.fmean(accs):.2%}  (fine-tune only {statistics.fmean(base):.2%})")
    return {"setting": setting, "val_images": int(len(yv)), "seeds": seeds, "finetune_val_top1": mean_std(base),
            "grid": rows}


def run(cfg: dict, seeds: list[int], arms: list[str]) -> dict:
    t_start, load_start = time.perf_counter(), _load()
    teacher, tinfo, student0, pinfo, (xtr, ytr), (xte, yte) = build(cfg)
    res = {"teacher": {"test_top1": top1(teacher, xte, yte), "train_seconds": tinfo["train_seconds"],
                       "epochs": tinfo["epochs"], "params": params(teacher)},
           "pruned": dict(pinfo, test_top1_before_finetune=top1(student0, xte, yte)),
           "splits": {"train_images": int(len(ytr)), "test_images": int(len(yte))},
           "runs": [], "summary": {}}
    print(f"teacher top-1 {res['teacher']['test_top1']:.2%}; pruned to {pinfo['flops_ratio']:.1%} FLOPs "
          f"({pinfo['params_after']} params): top-1 before fine-tuning {res['pruned']['test_top1_before_finetune']:.2%}")
    export_model = None
    settings = {k: (v["frac"], v["epochs"]) for k, v in cfg["settings"].items() if v["epochs"] > 0}
    for setting, (frac, epochs) in settings.items():
        for seed in seeds:
            idx = np.arange(len(ytr)) if frac >= 1.0 else stratified(ytr, frac, seed)
            for arm in arms:
                s, hist = train_arm(arm, student0, teacher, xtr[idx], ytr[idx], cfg, epochs, seed)
                acc = top1(s, xte, yte)
                res["runs"].append({"setting": setting, "seed": seed, "arm": arm, "train_images": int(len(idx)),
                                    "epochs": epochs, "test_top1": acc, "final_loss": hist["loss"][-1],
                                    "train_seconds": hist["seconds"]})
                print(f"{setting:8s} seed {seed} ({len(idx)} images, {epochs} epochs) {ARMS[arm]:28s} "
                      f"top-1 {acc:.2%}  ({hist['seconds']:.1f} s)")
                if setting == "full" and seed == seeds[0] and arm == "b":
                    export_model = s
    for setting in settings:
        summ = {}
        for arm in arms:
            accs = [r["test_top1"] for r in res["runs"] if r["setting"] == setting and r["arm"] == arm]
            secs = [r["train_seconds"] for r in res["runs"] if r["setting"] == setting and r["arm"] == arm]
            summ[arm] = dict(mean_std(accs), label=ARMS[arm], train_seconds_mean=round(statistics.fmean(secs), 1))
        for arm in [a for a in arms if a != "a"]:
            diff = [b["test_top1"] - a["test_top1"] for a, b in zip(
                [r for r in res["runs"] if r["setting"] == setting and r["arm"] == "a"],
                [r for r in res["runs"] if r["setting"] == setting and r["arm"] == arm])]
            summ[f"{arm}_minus_a"] = dict(mean_std(diff), wins=sum(d > 0 for d in diff), ties=sum(d == 0 for d in diff))
        res["summary"][setting] = summ
    if export_model is not None:
        with tempfile.TemporaryDirectory(prefix="optkit-bench-") as d:
            res["onnx"] = export_and_check(export_model, xte, yte, Path(d))
        res["onnx"]["model"] = "distilled student, full data, seed %d" % seeds[0]
    res["total_seconds"] = round(time.perf_counter() - t_start, 1)
    res["load_average_1min"] = {"start": load_start, "end": _load()}
    return res


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def pct(s: dict) -> str:
    return f"{s['mean']:.2%} ± {s['std']:.2%}"


def markdown(out: dict) -> str:
    r, c = out["results"], out["config"]
    p = r["pruned"]
    lines = [f"Digits CNN, {r['splits']['train_images']} train / {r['splits']['test_images']} held-out images "
             f"(one image = {100 / r['splits']['test_images']:.2f} pt); {THREADS} threads; {len(out['seeds'])} seeds "
             "(mean ± sample std of held-out top-1).", "",
             f"- teacher: top-1 {r['teacher']['test_top1']:.2%}, {r['teacher']['params']:,} params, "
             f"{p['flops_before'] / 1e6:.1f} MFLOPs",
             f"- student: `optkit.torch.prune(ratio={p['ratio']}, importance={p['importance']!r})` -> "
             f"{p['flops_after'] / 1e6:.1f} MFLOPs ({p['flops_ratio']:.1%} of the teacher), {p['params_after']:,} params; "
             f"top-1 before fine-tuning {p['test_top1_before_finetune']:.2%}",
             f"- fine-tuning (same for every arm): {c['optimizer']} lr {c['lr']}, {c['schedule']} schedule, batch "
             f"{c['batch_size']}; " + "; ".join(f"{k}: {'all' if v['frac'] >= 1 else format(v['frac'], '.0%')} of train, {v['epochs']} epochs"
                                                for k, v in c["settings"].items() if v["epochs"] > 0)
             + f" (subsets stratified by class); distillation T={c['T']}, alpha={c['alpha']}", "",
             "| data | arm | held-out top-1 | Δ vs (a) | wins vs (a) |", "|---|---|---:|---:|---:|"]
    for setting, summ in r["summary"].items():
        n = next(x["train_images"] for x in r["runs"] if x["setting"] == setting)
        for arm in out["arms"]:
            d = summ.get(f"{arm}_minus_a")
            delta = f"{d['mean'] * 100:+.2f} ± {d['std'] * 100:.2f} pt" if d else "-"
            wins = f"{d['wins']}/{d['n']}" if d else "-"
            lines.append(f"| {setting} ({n} images) | ({arm}) {ARMS[arm]} | {pct(summ[arm])} | {delta} | {wins} |")
    if "onnx" in r:
        o = r["onnx"]
        lines += ["", f"ONNX export ({o['model']}): onnxruntime top-1 {o['ort_top1']:.2%} vs torch {o['torch_top1']:.2%}, "
                      f"argmax agreement {o['top1_agreement_ort_vs_torch']:.2%}, max |logit diff| "
                      f"{o['max_abs_logit_diff']:.2e} ({'matches' if o['matches_torch'] else 'DOES NOT match'} torch)."]
    la = r.get("load_average_1min") or {}
    lines += ["", f"Total run time {r['total_seconds']:.0f} s (1-min load average {la.get('start')} at the start, "
                  f"{la.get('end')} at the end, on {os.cpu_count()} cores: shared machine, wall times are inflated "
                  "accordingly). Mean fine-tune seconds per run: "
              + "; ".join(f"{k}: (a) {v['a']['train_seconds_mean']} s, (b) {v['b']['train_seconds_mean']} s"
                          for k, v in r["summary"].items() if "b" in v) + "."]
    if out.get("verdict"):
        lines += ["", out["verdict"]]
    if out.get("protocol_notes"):
        lines += ["", "How the settings were chosen (none of it on the held-out split):", ""]
        lines += [f"- {n}" for n in out["protocol_notes"]]
    return "\n".join(lines) + "\n"


def verdict(r: dict) -> str:
    parts = []
    for setting, summ in r["summary"].items():
        d = summ.get("b_minus_a")
        if not d:
            continue
        better = d["mean"] > 0 and d["wins"] > d["n"] / 2
        how = "beats" if better else ("is BEHIND" if d["mean"] < 0 else "does NOT beat")
        parts.append(f"{setting} data: distillation {how} plain fine-tuning ({d['mean'] * 100:+.2f} pt on average, "
                     f"{d['wins']}/{d['n']} seeds better, {d['ties']} tied)")
    return "Verdict: " + "; ".join(parts) + "." if parts else ""


def main(argv=None) -> Path | None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="prune ratio (fraction of channels removed per layer)")
    ap.add_argument("--importance", default="l1")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--epochs-full", type=int, default=3)
    ap.add_argument("--limited-frac", type=float, default=0.1)
    ap.add_argument("--epochs-limited", type=int, default=40)
    ap.add_argument("--scarce-frac", type=float, default=0.03)
    ap.add_argument("--epochs-scarce", type=int, default=100, help="0 leaves the scarce setting out")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--optimizer", default="adam")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--schedule", default="cosine")
    ap.add_argument("--T", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.7)
    ap.add_argument("--features", action="store_true", help="add arm (c): KD + feature matching on the last conv block")
    ap.add_argument("--feature-weight", type=float, default=1.0)
    ap.add_argument("--tune", choices=("limited", "scarce"), default=None,
                    help="only the T/alpha sweep for that subset on a validation split (prints, writes nothing)")
    a = ap.parse_args(argv)
    torch.set_num_threads(THREADS)
    settings = {"full": {"frac": 1.0, "epochs": a.epochs_full},
                "limited": {"frac": a.limited_frac, "epochs": a.epochs_limited},
                "scarce": {"frac": a.scarce_frac, "epochs": a.epochs_scarce}}
    cfg = {"ratio": a.ratio, "importance": a.importance, "teacher_epochs": a.teacher_epochs, "settings": settings,
           "lr": a.lr, "batch_size": a.batch_size,
           "optimizer": a.optimizer, "weight_decay": a.weight_decay, "schedule": a.schedule, "T": a.T, "alpha": a.alpha,
           "features": {"16": "16"}, "feature_weight": a.feature_weight}
    seeds = list(range(a.seeds))
    if a.tune:
        print(json.dumps(tune(cfg, seeds, a.tune), indent=2))
        return None
    arms = ["a", "b"] + (["c"] if a.features else [])
    res = run(cfg, seeds, arms)
    out = {"benchmark": "distill", "threads": THREADS, "config": cfg, "seeds": seeds, "arms": arms,
           "arm_labels": {k: ARMS[k] for k in arms}, "protocol_notes": PROTOCOL_NOTES, "results": res,
           "verdict": verdict(res), "environment": environment()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    from . import result_path

    path = result_path("distill", RESULTS)
    path.write_text(json.dumps(out, indent=2, default=str))
    md = markdown(out)
    path.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
