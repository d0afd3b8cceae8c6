"""auto-ort --tolerance 1% on a MiniLM-shaped encoder: the search before issue 17 vs after (budgeted search, pass
cache), cold and re-run.

    python -m benchmarks.auto_ort_search [--hidden 384 --layers 6 --heads 12 --seq 128] [--before-rev 730b658]

Runs, each a fresh `python -m optkit.cli optimize ENC --recipe auto-ort --tolerance 1% --data samples.npz`:
  before        the code at --before-rev (exported with `git archive`), no cache (it has none)
  after-cold    this tree, an empty pass cache
  after-rerun   this tree, the same command again (warm cache)
  after-changed this tree, one option changed (--tolerance 2%): only what changed is recomputed
Records wall time, validations (tolerance trials, every candidate), the chosen candidate, its speedup vs the input
(the guard's 95%-interval median) and fidelity (cosine vs the input model). Results go to
benchmarks/results/auto_ort_search-<date>-<isa>[-N].{json,md}, never overwriting. The CPU ISA is recorded.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(src: Path, args: list[str], cache: Path | None, log: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env.update({"NO_COLOR": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})
    env.pop("OPTKIT_NO_CACHE", None)
    if cache is not None:
        env["OPTKIT_CACHE_DIR"] = str(cache)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "optkit.cli", *args, "--format", "json"], capture_output=True, text=True,
                       env=env, cwd=str(src))
    wall = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    log.write_text(p.stderr)
    if p.returncode not in (0, 5):
        raise SystemExit(f"run failed ({p.returncode}): {p.stderr[-2000:]}")
    man = json.loads(p.stdout)
    cands = man.get("candidates") or []
    chosen = next((c for c in cands if c.get("chosen")), {})
    tol = man.get("tolerance") or {}
    final = (man.get("guard") or {}).get("final") or {}
    return {"wall_s": round(wall, 1), "loadavg_1min": [round(load0, 2), round(load1, 2)],
            "optimize_s": man.get("optimize_seconds"), "validations": tol.get("trials"),
            "passed": tol.get("passed"), "chosen": chosen.get("candidate"),
            "chosen_speedup_vs_input": chosen.get("speedup_vs_input"),
            "final_guard_speedup": final.get("speedup_vs_input"),
            "cosine_vs_input": ((man.get("accuracy") or {}).get("vs_input") or {}).get("cosine"),
            "candidates": [{k: c.get(k) for k in ("candidate", "passed", "speedup_vs_input", "trials", "error",
                                                  "skipped", "phase", "recovery")} for c in cands],
            "cached_passes": sum(1 for e in man.get("pass_log") or [] if e.get("cached")),
            "cache": man.get("cache"), "artifact": man.get("artifact")}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--before-rev", default="1e58322")
    ap.add_argument("--skip-before", action="store_true")
    ap.add_argument("--after-src", type=Path, default=REPO, help="the optkit tree to run as 'after' (default: this one)")
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from optkit.examples.encoder import main as build
    from optkit.hw import cpu_features, isa_label

    work = a.work or Path(tempfile.mkdtemp(prefix="optkit-bench-auto-"))
    work.mkdir(parents=True, exist_ok=True)
    enc = build(["--out", str(work / "enc"), "--hidden", str(a.hidden), "--layers", str(a.layers), "--heads",
                 str(a.heads), "--seq", str(a.seq), "--samples", str(a.samples)])
    data = work / "enc" / "samples.npz"
    base = ["optimize", str(enc), "--recipe", "auto-ort", "--data", str(data), "--allow-miss"]
    runs = {}
    if not a.skip_before:
        before = work / "before-src"
        if not before.exists():
            before.mkdir()
            arch = subprocess.run(["git", "archive", a.before_rev], cwd=REPO, capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(before)], input=arch, check=True)
        runs["before"] = _run(before, base + ["--tolerance", "1%", "-o", str(work / "out-before")], None,
                              work / "before.log")
        print("before", runs["before"], flush=True)
    cache = work / "cache"
    for name, extra in (("after-cold", ["--tolerance", "1%"]), ("after-rerun", ["--tolerance", "1%"]),
                        ("after-changed", ["--tolerance", "2%"])):
        runs[name] = _run(a.after_src, base + extra + ["-o", str(work / "out-after")], cache, work / f"{name}.log")
        print(name, runs[name], flush=True)
    cpu = cpu_features()
    res = {"benchmark": "auto_ort_search", "date": _dt.date.today().isoformat(), "isa": isa_label(),
           "cpu": cpu.get("model"), "logical_cores": cpu.get("logical_cores"),
           "cores_note": "2 cores shared with other jobs (timings are noisy)",
           "encoder": {"hidden": a.hidden, "layers": a.layers, "heads": a.heads, "seq": a.seq, "feeds": a.samples},
           "command": "optkit " + " ".join(base[:1] + ["ENC"] + base[2:5] + ["samples.npz"] + base[5:]) + " --tolerance 1%",
           "before_rev": a.before_rev, "runs": runs}
    path = write_results(res)
    print(path)
    return res


def write_results(res: dict) -> Path:
    """benchmarks/results/auto_ort_search-<date>-<isa>[-N].{json,md}, never overwriting."""
    e = res["encoder"]
    out_dir = REPO / "benchmarks" / "results"
    stem = f"auto_ort_search-{res['date']}-{res['isa'].replace(' ', '_').replace('/', '_')}"
    n, path = 1, out_dir / f"{stem}.json"
    while path.exists() or path.with_suffix(".md").exists():
        n += 1
        path = out_dir / f"{stem}-{n}.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# auto-ort --tolerance 1%: before vs after ({res['date']}, {res['isa']}, {res['cpu']})", "",
             f"Encoder h{e['hidden']}, {e['layers']} layers, {e['heads']} heads, seq {e['seq']}, {e['feeds']} feeds; "
             f"{res['cores_note']}. Before = {res['before_rev']}.", "",
             "| run | wall s | load avg (1 min) start-end | validations | chosen | chosen speedup vs input | cosine vs input | cached passes |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in res["runs"].items():
        sp, cos = r["chosen_speedup_vs_input"], r["cosine_vs_input"]
        la = r.get("loadavg_1min") or ["-", "-"]
        lines.append(f"| {name} | {r['wall_s']} | {la[0]}-{la[1]} | {r['validations']} | {r['chosen']} | "
                     + (f"{sp:.2f}x" if sp else "-") + " | " + (f"{cos:.5f}" if cos is not None else "-")
                     + f" | {r['cached_passes']} |")
    lines += ["", "Per candidate (speedup vs input, validations):", ""]
    for name, r in res["runs"].items():
        lines.append(f"- {name}: " + ", ".join(
            f"{c['candidate']} {c['speedup_vs_input']:.2f}x/{c['trials']}" if c.get("speedup_vs_input") else
            f"{c['candidate']} {c.get('error') or c.get('skipped') or '-'}" for c in r["candidates"]))
    for note in res.get("notes", []):
        lines += ["", note]
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    main()
