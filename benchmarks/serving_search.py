"""``optkit tune`` vs the exhaustive grid: does the search find a near-best serving spec with a quarter of the trials?

    python -m benchmarks.serving_search                 # writes benchmarks/results/serving_search-<date>.json/.md
    python -m benchmarks.serving_search --grid-json G   # reuse a measured grid (skips training and measuring)

1. Measure the whole grid once on the digits CNN (trained here on scikit-learn's digits): backend ort × precision
   fp32, int8 × threads 1, 2 × batch 1, 2, 4, 8, 16, 32 = 24 points, every point with the tuner's own protocol (one
   child process per point, warm-up, rounds), through ``optkit.serving.tune(sampler='grid')``.
2. Replay: run the search against the measured table (``ReplayExecutor``: each trial returns the recorded
   measurement), for every scenario (objective, SLO) × sampler (GP, TPE, random) × seed, with a budget of 25% of the
   grid (6 trials). Replaying one fixed table is the fair way to compare search strategies across seeds: every
   strategy and seed sees the same numbers, so the differences are the strategy's, not the machine's noise.
   Score = best feasible objective found / the grid's best feasible objective (inverted for latency).
3. One live tuner run (the default sampler, budget 6, fresh measurements) for realism: its pick, and the grid's
   measurement of it.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import optkit.serving as sv
from optkit.env import environment

RESULTS = Path(__file__).parent / "results"
SPACE = {"backends": "ort", "precisions": "fp32,int8", "threads": "1,2", "batches": "1,2,4,8,16,32"}
SAMPLERS = ("gp", "tpe", "random")
RAW = ("status", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "cv", "runs", "throughput", "throughput_per_core")


def digits_model(work: Path, existing: Path | None) -> dict:
    """Train and export the digits CNN (as `make demo` does), or reuse an export of it (``--digits DIR``)."""
    from optkit.examples import digits

    if existing is not None:
        info = {k: str(existing / f) for k, f in (("model", "digits_cnn.onnx"), ("calib", "calib.npz"),
                                                  ("test", "test.npz"))}
        return {**info, "source": f"reused export {existing}"}
    return {**digits.main(["--out", str(work / "digits")]), "source": "trained by this run"}


def measure_grid(info: dict, out: Path, rounds: int, round_time: float) -> dict:
    t0 = time.perf_counter()
    res = sv.tune(info["model"], **SPACE, data=info["calib"], eval_data=info["test"], output=out, sampler="grid",
                  budget="100%", rounds=rounds, round_time=round_time, fresh=True,
                  on_trial=lambda r: print(f"  grid {r['n']:>2} {r['key']:<18} {r['status']:<10} "
                                           f"p99 {r.get('p99_ms') or 0:8.2f} ms  {r.get('throughput') or 0:8.1f} items/s"))
    res["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return res


def scenarios(table: dict) -> list[dict]:
    """Objectives and SLOs to replay. The p99 SLO is set at the median p99 of the grid, so that it binds: the
    highest-throughput points (big batches) miss it and the search must find the best one that does not."""
    p99s = sorted(r["p99_ms"] for r in table.values() if r.get("status") == "ok")
    slo_ms = float(f"{statistics.median(p99s):.2g}")
    return [{"name": "throughput", "objective": "throughput", "slo": None},
            {"name": f"throughput, p99<{slo_ms:g}ms", "objective": "throughput", "slo": f"p99<{slo_ms:g}ms"},
            {"name": "cost (items/s per core)", "objective": "cost", "slo": None},
            {"name": "latency (p99)", "objective": "latency", "slo": None}]


def grid_best(table: dict, objective: str, slo: list) -> dict:
    trials = []
    for k, r in table.items():
        v, t, b = k.split("/")
        rec = sv.classify(r, slo, objective)
        rec.update(key=k, variant=v, threads=int(t[1:]), batch=int(b[1:]))
        trials.append(rec)
    return sv.best_trial(trials, objective)


def space_of(table: dict) -> sv.Space:
    keys = [k.split("/") for k in table]
    return sv.Space(sorted({k[0] for k in keys}), sorted({int(k[1][1:]) for k in keys}),
                    sorted({int(k[2][1:]) for k in keys}))


def replay(table: dict, scen: dict, sampler: str, seed: int, budget: int) -> dict:
    space = space_of(table)
    slo = sv.parse_slo(scen["slo"])
    ex = sv.ReplayExecutor(table)
    res = sv.search(space, ex, lambda v, t, b: sv.TrialSpec(v, t, b), objective=scen["objective"], slo=slo,
                    budget_trials=budget, sampler=sampler, seed=seed)
    found = sv.best_trial(res["trials"], scen["objective"])
    best = grid_best(table, scen["objective"], slo)
    if found is None:
        score = 0.0
    elif sv.OBJECTIVES[scen["objective"]][0] == "maximize":
        score = found["objective"] / best["objective"]
    else:
        score = best["objective"] / found["objective"]
    return {"seed": seed, "score": score, "found": found["key"] if found else None, "trials": len(res["trials"]),
            "measured": len(ex.calls), "repeats": res["repeats"]}


def summarize(runs: list[dict]) -> dict:
    scores = [r["score"] for r in runs]
    return {"mean": statistics.fmean(scores), "min": min(scores), "median": statistics.median(scores),
            "seeds_at_95pct": sum(s >= 0.95 for s in scores) / len(scores),
            "seeds_found_best": sum(s >= 1 - 1e-12 for s in scores) / len(scores),
            "mean_trials": statistics.fmean(r["trials"] for r in runs)}


def markdown(doc: dict) -> str:
    g = doc["grid"]
    lines = [f"**optkit tune vs the exhaustive grid** · digits CNN · {g['points']} points "
             f"({', '.join(f'{k} {v}' for k, v in SPACE.items())}) · grid measured in {g['wall_seconds']:.0f} s "
             f"({g['search_seconds']:.0f} s of trials) · budget {doc['budget']} trials "
             f"({doc['budget'] / g['points']:.0%} of the grid) · {doc['seeds']} seeds per row · "
             f"{doc['environment']['cpu'].get('model')}, {g['cores']} core(s)", "",
             "Score = best feasible objective the search found / the grid's best (1.00 = found the best point).", ""]
    if g.get("load_average_1m"):
        lines += [f"1-minute load average before / after measuring the grid: {g['load_average_1m'][0]:g} / "
                  f"{g['load_average_1m'][1]:g} on {g['cores']} core(s).", ""]
    if doc.get("note"):
        lines += [doc["note"], ""]
    lines += ["| scenario | grid best | sampler | mean score | min score | seeds ≥ 0.95 | seeds = best |",
              "|---|---|---|---:|---:|---:|---:|"]
    for s in doc["scenarios"]:
        for name in SAMPLERS:
            r = s["samplers"][name]["summary"]
            lines.append(f"| {s['name']} | {s['grid_best']['key']} ({s['grid_best']['objective']:.4g}) | {name} | "
                         f"{r['mean']:.3f} | {r['min']:.3f} | {r['seeds_at_95pct']:.0%} | {r['seeds_found_best']:.0%} |")
    for name in SAMPLERS:
        rs = [s["samplers"][name]["summary"] for s in doc["scenarios"]]
        lines.append(f"| **all {len(rs)} scenarios** | | {name} | **{statistics.fmean(r['mean'] for r in rs):.3f}** | "
                     f"{min(r['min'] for r in rs):.3f} | {statistics.fmean(r['seeds_at_95pct'] for r in rs):.0%} | "
                     f"{statistics.fmean(r['seeds_found_best'] for r in rs):.0%} |")
    lv = doc.get("live")
    if lv:
        lines += ["", f"**Live run** ({lv['sampler']}, seed 0, budget {doc['budget']}, fresh measurements, {lv['wall_seconds']:.0f} s "
                  f"incl. {lv['search_seconds']:.0f} s of trials): picked `{lv['recommended']}` at "
                  f"{lv['objective']:.4g} items/s; the grid measured that point at {lv['grid_value_of_pick']:.4g} "
                  f"= {lv['score_vs_grid_best']:.3f} of the grid's best (`{lv['grid_best']}`)."]
    lines += ["", "Grid (throughput items/s · p99 ms):", "", "| point | p50 ms | p99 ms | items/s | items/s/core |",
              "|---|---:|---:|---:|---:|"]
    for k, r in doc["grid"]["table"].items():
        if r.get("status") == "ok":
            lines.append(f"| {k} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['throughput']:.1f} | "
                         f"{r['throughput_per_core']:.1f} |")
        else:
            lines.append(f"| {k} | failed: {r.get('error')} | | | |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-time", type=float, default=0.3)
    ap.add_argument("--grid-json", type=Path, help="reuse the grid of an earlier result (no training, no measuring)")
    ap.add_argument("--no-live", action="store_true", help="skip the live tuner run")
    ap.add_argument("--digits", type=Path, default=None,
                    help="reuse a digits export (python -m optkit.examples.digits --out DIR) instead of training")
    ap.add_argument("--out", type=Path, default=None, help="result path (default results/serving_search-<date>.json)")
    ap.add_argument("--note", default=None, help="a line about the run's conditions, kept in the result")
    a = ap.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    live = None
    with tempfile.TemporaryDirectory(prefix="optkit-serving-bench-") as d:
        work = Path(d)
        if a.grid_json:
            grid = json.loads(a.grid_json.read_text())["grid"]
        else:
            print("training the digits CNN ...")
            info = digits_model(work, a.digits)
            print("measuring the grid ...")
            load_before = os.getloadavg()[0]
            g = measure_grid(info, work / "out", a.rounds, a.round_time)
            grid = {"points": g["space"]["size"], "model": info["source"], "wall_seconds": g["wall_seconds"],
                    "search_seconds": g["search"]["search_seconds"], "cores": g["cores"], "protocol": g["protocol"],
                    "variants": g["variants"], "data": g["data"],
                    "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                    "table": {t["key"]: {k: t.get(k) for k in RAW} | ({"error": t["error"]} if t.get("error") else {})
                              for t in g["trials"]}}
        budget = math.ceil(0.25 * grid["points"])
        table = {k: v for k, v in grid["table"].items()}
        doc = {"benchmark": "serving_search", "budget": budget, "seeds": a.seeds, "grid": grid, "scenarios": []}
        for scen in scenarios(table):
            best = grid_best(table, scen["objective"], sv.parse_slo(scen["slo"]))
            entry = {**scen, "grid_best": {"key": best["key"], "objective": best["objective"]}, "samplers": {}}
            for name in SAMPLERS:
                t0 = time.perf_counter()
                runs = [replay(table, scen, name, seed, budget) for seed in range(a.seeds)]
                entry["samplers"][name] = {"summary": summarize(runs), "runs": runs,
                                           "seconds": round(time.perf_counter() - t0, 2)}
                s = entry["samplers"][name]["summary"]
                print(f"{scen['name']:<28} {name:<6} mean {s['mean']:.3f} min {s['min']:.3f} "
                      f">=0.95 {s['seeds_at_95pct']:.0%} best {s['seeds_found_best']:.0%}")
            doc["scenarios"].append(entry)
        if not a.grid_json and not a.no_live:
            print("live tuner run ...")
            t0 = time.perf_counter()
            r = sv.tune(info["model"], **SPACE, data=info["calib"], eval_data=info["test"], output=work / "out",
                        budget=budget, seed=0, rounds=a.rounds, round_time=a.round_time, fresh=True)
            rec = r["recommended"]
            key = sv.trial_key(f"{rec['backend']}-{rec['precision']}", rec["threads"], rec["batch"])
            best = grid_best(table, "throughput", [])
            live = {"sampler": r["search"]["sampler"], "recommended": key, "objective": rec["objective"]["value"], "trials": r["search"]["trials"],
                    "wall_seconds": round(time.perf_counter() - t0, 1), "search_seconds": r["search"]["search_seconds"],
                    "grid_value_of_pick": table[key]["throughput"], "grid_best": best["key"],
                    "score_vs_grid_best": table[key]["throughput"] / best["objective"],
                    "trial_keys": [t["key"] for t in r["trials"]]}
            doc["live"] = live
    doc["seconds"] = round(time.perf_counter() - t_all, 1)
    if a.note:
        doc["note"] = a.note
    doc["environment"] = environment()
    from . import result_path

    out = a.out or result_path("serving_search", RESULTS)
    out.write_text(json.dumps(doc, indent=2))
    md = markdown(doc)
    out.with_suffix(".md").write_text(md)
    print(md)
    print(f"wrote {out} ({doc['seconds']:.0f} s)")
    return out


if __name__ == "__main__":
    main()
