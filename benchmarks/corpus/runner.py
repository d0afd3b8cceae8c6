"""Run optkit's recipes and the plain onnxruntime.quantization peer on the real-model corpus.

    python -m benchmarks.corpus [--models a,b] [--recipes fp32-ort,int8-ort,...] [--budget-per-run SECONDS]
                                [--no-peers] [--cache DIR] [--work DIR]

Per model: fetch (manifest.json), build the calibration and eval sets (inputs.py), then for each recipe
`python -m optkit.cli optimize MODEL --recipe R --data CALIB --eval-data EVAL -o OUT --format json` in a child
with a timeout (auto-ort gets --tolerance 1%), and the peers quantize_static (QDQ, defaults) / quantize_dynamic.
Every variant: exit status, first error line, optimize seconds, speedup vs FP32 (ORT, 1 thread, alternating
rounds on one feed, median of per-round ratios), the task metric vs FP32 on the eval set (metrics.py), size.
Each model runs in its own child process: a crash anywhere is recorded and the next model goes on.
Writes benchmarks/results/corpus-<date>.json and .md (a same-day file from this machine is merged into).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import fetch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
RECIPES = ["fp32-ort", "int8-ort", "int8-dynamic-ort", "auto-ort"]
PEERS = ["ort-quantize_static", "ort-quantize_dynamic"]
ENV1 = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1",
        "TF_NUM_INTEROP_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}


# --- measuring ----------------------------------------------------------------------------------------------------------
def session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def run_all(sess, feeds):
    names = [i.name for i in sess.get_inputs()]
    return [sess.run(None, {k: f[k] for k in names if k in f}) for f in feeds]


def speedup(ref_sess, var_sess, feed, rounds=5, round_time=0.3) -> dict:
    """Alternating rounds of FP32 and the variant on one feed; median of the per-round time ratios."""
    def one(s):
        names = [i.name for i in s.get_inputs()]
        f = {k: feed[k] for k in names}
        s.run(None, f)
        n, t0 = 0, time.perf_counter()
        while True:
            s.run(None, f)
            n += 1
            el = time.perf_counter() - t0
            if el >= round_time and n >= 3:
                return el / n

    ratios, ref_ms, var_ms = [], [], []
    for _ in range(rounds):
        a, b = one(ref_sess), one(var_sess)
        ratios.append(a / b)
        ref_ms.append(a * 1e3)
        var_ms.append(b * 1e3)
    return {"speedup": round(float(np.median(ratios)), 3), "ms": round(float(np.median(var_ms)), 3),
            "fp32_ms": round(float(np.median(ref_ms)), 3), "ratios": [round(r, 3) for r in ratios]}


def first_error(stderr: str) -> str | None:
    lines = [l.strip() for l in (stderr or "").splitlines() if l.strip()]
    if any(l.startswith("Traceback") for l in lines):  # a Python traceback: its last line says what happened
        return lines[-1][:400]
    for l in lines:
        if re.search(r"(error|Error|ERROR|Traceback|exception|failed|FAIL|Killed|Abort)", l) and "Warning" not in l:
            return l[:400]
    return lines[0][:400] if lines else None


def run_child(cmd, timeout, env=None) -> dict:
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **ENV1, **(env or {})})
        return {"rc": r.returncode, "seconds": round(time.perf_counter() - t0, 2), "stdout": r.stdout, "stderr": r.stderr}
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return {"rc": "timeout", "seconds": round(time.perf_counter() - t0, 2), "stdout": out, "stderr": err + f"\ntimeout after {timeout} s"}


def _json_from(stdout: str):
    i = stdout.find("{")
    if i < 0:
        return None
    try:
        return json.loads(stdout[i:])
    except Exception:
        return None


# --- one model (in a child process) -------------------------------------------------------------------------------------
def one_model(name: str, recipes: list[str], peers: bool, budget: float | None, work: Path, cache: Path, out_json: Path) -> None:
    from . import inputs, metrics
    from .peer import unstack

    m = fetch.model_entry(name)
    res: dict = {"model": name, "family": m["family"], "exporter": m["exporter"], "package": m["wheel"],
                 "version": fetch.manifest()["wheels"][m["wheel"]]["version"], "member": m["member"],
                 "licence": fetch.manifest()["wheels"][m["wheel"]]["licence"], "ir": m["ir"], "opset": m["opset"],
                 "metric_kind": m["metric"], "variants": {}, "loadavg_start": os.getloadavg()}

    def save():
        out_json.write_text(json.dumps(res, indent=1, default=str))

    try:
        t0 = time.perf_counter()
        src = fetch.model_path(name, cache)
        res["model_path"] = str(src)
        res["sha256"] = fetch.sha256_file(src)
        res["wheel_metadata_licence"] = fetch.wheel_licence(m["wheel"], cache)
        res["fetch_seconds"] = round(time.perf_counter() - t0, 2)
    except Exception as e:
        res["error"] = f"fetch: {type(e).__name__}: {e}"
        save()
        return
    d = work / name
    try:
        calib, ev, meta = inputs.build(name, m["inputs"], d / "data", cache)
        res["inputs"] = {"builder": meta["builder"], "calib_feeds": meta["calib_feeds"], "eval_feeds": meta["eval_feeds"],
                         "doc": meta["doc"], "calib": str(calib), "eval": str(ev)}
        eval_feeds = unstack(ev)
        with np.load(ev) as z:
            labels = z["labels"] if "labels" in z.files else None
        res["inputs"]["shapes"] = {k: list(v.shape) for k, v in eval_feeds[0].items()}
        ref_sess = session(src)
        t0 = time.perf_counter()
        ref = run_all(ref_sess, eval_feeds)
        res["fp32_eval_seconds"] = round(time.perf_counter() - t0, 2)
        self_metric = metrics.METRICS[m["metric"]](ref, ref, eval_feeds, labels=labels)
        res["fp32"] = {"bytes": src.stat().st_size, "metric": self_metric}
    except Exception as e:
        res["error"] = f"inputs/fp32: {type(e).__name__}: {e}"
        save()
        return
    save()

    def measure(key, path, info):
        try:
            info["bytes"] = Path(path).stat().st_size
            s = session(path)
            outs = run_all(s, eval_feeds)
            info["metric"] = metrics.METRICS[m["metric"]](ref, outs, eval_feeds, labels=labels)
            info["timing"] = speedup(ref_sess, s, eval_feeds[0])
            info["speedup"] = info["timing"]["speedup"]
        except Exception as e:
            info["measure_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        res["variants"][key] = info
        save()

    py = sys.executable
    for r in recipes:
        out = d / "optkit" / r
        timeout = budget or (900 if r.startswith("auto") else 300)
        cmd = [py, "-m", "optkit.cli", "optimize", str(src), "--recipe", r, "--data", str(calib), "--eval-data", str(ev),
               "-o", str(out), "--format", "json", "--threads", "1", "--version", "1", "--name", name]
        if r.startswith("auto"):
            cmd += ["--tolerance", "1%", "--budget", f"{int(timeout * 0.7)}s"]
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        c = run_child(cmd, timeout)
        info = {"kind": "optkit", "command": " ".join(cmd), "rc": c["rc"], "wall_seconds": c["seconds"],
                "error": None if c["rc"] == 0 else first_error(c["stderr"]),
                "stderr_tail": "\n".join((c["stderr"] or "").strip().splitlines()[-6:])[-1500:]}
        man = _json_from(c["stdout"]) if c["rc"] == 0 else None
        if man:
            info["optimize_seconds"] = man.get("optimize_seconds")
            info["passes"] = [f"{e['pass']}:{e['status']}" for e in man.get("pass_log", [])]
            acc = man.get("accuracy") or {}
            info["optkit_vs_input"] = acc.get("vs_input")
            tol = man.get("tolerance")
            if tol:
                info["tolerance"] = {k: tol.get(k) for k in ("criterion", "passed", "missed_by", "trials", "judged_on")}
                info["candidates"] = [{k: c_.get(k) for k in ("candidate", "speedup_vs_input", "passed", "skipped", "reverted", "chosen") if k in c_}
                                      for c_ in man.get("candidates") or []]
                info["chosen"] = next((c_["candidate"] for c_ in man.get("candidates") or [] if c_.get("chosen")), None)
            guard = (man.get("guard") or {}).get("final")
            if guard:
                info["guard"] = guard
            path = Path(man["artifact"]) / "model.onnx"
            if path.exists():
                measure(r, path, info)
                continue
            info["error"] = f"no model.onnx in {man['artifact']}"
        res["variants"][r] = info
        save()
    if peers:
        for p in PEERS:
            mode = "static" if p.endswith("static") else "dynamic"
            dst = d / "peer" / f"{mode}.onnx"
            dst.parent.mkdir(parents=True, exist_ok=True)
            if dst.exists():
                dst.unlink()
            cmd = [py, "-m", "benchmarks.corpus.peer", mode, str(src), str(dst)] + ([str(calib)] if mode == "static" else [])
            c = run_child(cmd, budget or 300, env={"PYTHONPATH": str(ROOT)})
            info = {"kind": "peer", "command": " ".join(cmd), "rc": c["rc"], "wall_seconds": c["seconds"], "optimize_seconds": c["seconds"],
                    "error": None if c["rc"] == 0 else first_error(c["stderr"]),
                    "stderr_tail": "\n".join((c["stderr"] or "").strip().splitlines()[-6:])[-1500:]}
            if c["rc"] == 0 and dst.exists():
                measure(p, dst, info)
            else:
                res["variants"][p] = info
                save()
    res["done"] = True
    res["loadavg_end"] = os.getloadavg()
    save()


# --- environment, report ------------------------------------------------------------------------------------------------
def environment() -> dict:
    flags, cpu = set(), None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name") and cpu is None:
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    vers = {"python": platform.python_version()}
    for mod in ("onnxruntime", "onnx", "numpy", "torch", "optkit"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:
            vers[mod] = None
    try:
        vers["optkit_git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except Exception:
        pass
    return {"cpu": cpu, "isa": {f: f in flags for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")},
            "cores": os.cpu_count(), "versions": vers, "loadavg": os.getloadavg(), "threads": 1, "host": platform.node()}


def results_path(date: str, env: dict) -> Path:
    """corpus-<date>.json; a same-day file from another CPU/ISA is never overwritten (suffix -2, -3, ...)."""
    i = 1
    while True:
        p = RESULTS / (f"corpus-{date}.json" if i == 1 else f"corpus-{date}-{i}.json")
        if not p.exists():
            return p
        try:
            old = json.loads(p.read_text())["environment"]
            if old.get("cpu") == env["cpu"] and old.get("isa") == env["isa"]:
                return p
        except Exception:
            pass
        i += 1


def fmt(v, nd=3):
    return "-" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def markdown(doc: dict) -> str:
    env = doc["environment"]
    isa = ", ".join(k for k, v in env["isa"].items() if v) or "none of avx2/avx512"
    L = [f"# Real-model corpus: optkit recipes vs onnxruntime.quantization ({doc['date']})", "",
         f"CPU {env['cpu']} ({isa}), {env['cores']} cores shared, 1 thread; load average at start {env['loadavg_start']}, "
         f"end {env.get('loadavg_end')}. Versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".", "",
         "Command: `" + doc["command"] + "`" + (f"; wall time {doc['wall_seconds'] / 60:.1f} min for the models of that run" if doc.get("wall_seconds") else ""), "",
         "Fidelity = the model's task metric vs FP32 on its eval set (1.000 = identical decisions); speedup = FP32 ms / variant ms, "
         "ORT 1 thread, median of 5 alternating rounds on one feed (noisy: the machine is shared). rc: exit status of the run "
         "(`timeout` when killed). Error: first error line of stderr.", ""]
    L += ["## Models", "", "| model | package (licence) | family | exporter | IR/opset | eval inputs | metric |", "|---|---|---|---|---|---|---|"]
    for name, r in doc["models"].items():
        inp = r.get("inputs") or {}
        L.append(f"| {name} | {r.get('package')} {r.get('version')} ({r.get('licence')}) | {r.get('family')} | {r.get('exporter')} | "
                 f"{r.get('ir')}/{r.get('opset')} | {inp.get('eval_feeds', '-')} x {inp.get('shapes', '-')} | "
                 f"{((r.get('fp32') or {}).get('metric') or {}).get('metric', r.get('metric_kind'))} |")
    L += ["", "## Results", "", "Load average (1 min) while each model ran, when recorded: " + ", ".join(
        f"{n} {r['loadavg_start'][0]:.0f}-{r['loadavg_end'][0]:.0f}" for n, r in doc["models"].items() if r.get("loadavg_start") and r.get("loadavg_end")) + ".",
          "", "| model | variant | rc | fidelity | details | speedup | MB | optimize s | error |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in doc["models"].items():
        if r.get("error"):
            L.append(f"| {name} | - | - | - | - | - | - | - | {r['error'][:200]} |")
        fp = r.get("fp32") or {}
        if fp:
            L.append(f"| {name} | fp32 (input) | - | 1.000 | " + _details(fp.get("metric") or {}) + f" | 1.00 | {fp['bytes'] / 1e6:.2f} | - | |")
        for k, v in (r.get("variants") or {}).items():
            met = v.get("metric") or {}
            extra = ""
            if v.get("chosen") is not None or v.get("tolerance"):
                t = v.get("tolerance") or {}
                ch = next((c for c in v.get("candidates") or [] if c.get("chosen")), {})
                rev = f", guard reverted {'+'.join(ch['reverted'])}" if ch.get("reverted") else ""
                extra = f" (chose {v.get('chosen')}{rev}; tolerance {'met' if t.get('passed') else 'MISSED'})"
            err = v.get("error") or v.get("measure_error") or ""
            if err.startswith("Traceback") and v.get("stderr_tail"):
                err = v["stderr_tail"].strip().splitlines()[-1]
            err = err.replace("|", "/")[:220]
            L.append(f"| {name} | {k}{extra} | {v.get('rc')} | {fmt(met.get('score'))} | {_details(met)} | "
                     f"{fmt(v.get('speedup'), 2)} | {fmt(v['bytes'] / 1e6 if v.get('bytes') else None, 2)} | "
                     f"{fmt(v.get('optimize_seconds'), 1)} | {err} |")
    L += ["", "Inputs (see benchmarks/corpus/inputs.py):", ""]
    for name, r in doc["models"].items():
        inp = r.get("inputs") or {}
        if inp.get("doc"):
            L.append(f"- **{name}**: {inp['doc'].splitlines()[0]}")
    return "\n".join(L) + "\n"


def _details(met: dict) -> str:
    skip = {"metric", "score"}
    return ", ".join(f"{k} {fmt(v)}" for k, v in met.items() if k not in skip) or ""


def merge_model(prev: dict, new: dict) -> dict:
    """new's variants over prev's; the rest of new (or prev when new has no fp32 reference)."""
    if not prev:
        return new
    base = dict(new if new.get("fp32") else prev)
    base["variants"] = {**(prev.get("variants") or {}), **(new.get("variants") or {})}
    if prev.get("error") and new.get("error") and prev["error"] != new["error"]:
        base["error"] = prev["error"] + " | " + new["error"]
    return base


def merge(files: list[Path], out: Path | None) -> int:
    env = environment()
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    out = out or results_path(date, env)
    doc = json.loads(out.read_text())
    for f in files:
        other = json.loads(f.read_text())
        for n, r in other["models"].items():
            doc["models"][n] = merge_model(doc["models"].get(n, {}), r)
        doc["command"] += " ; " + other["command"]
        if other.get("wall_seconds"):
            doc.setdefault("extra_runs", []).append({"command": other["command"], "wall_seconds": other["wall_seconds"],
                                                      "loadavg_start": other["environment"].get("loadavg_start"),
                                                      "loadavg_end": other["environment"].get("loadavg_end")})
    out.write_text(json.dumps(doc, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(doc))
    print(f"merged {', '.join(map(str, files))} into {out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated (default: all in manifest.json)")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated optkit recipes (default {','.join(RECIPES)})")
    ap.add_argument("--no-peers", action="store_true", help="skip onnxruntime.quantization quantize_static/quantize_dynamic")
    ap.add_argument("--budget-per-run", type=float, help="timeout of each optkit/peer run in seconds (default 900 auto-ort, 300 others)")
    ap.add_argument("--cache", help="download cache (default ~/.cache/optkit-corpus)")
    ap.add_argument("--work", help="work dir for inputs and artifacts (default <cache>/work)")
    ap.add_argument("--results", help="write to this JSON (and .md) instead of benchmarks/results/corpus-<date>.json")
    ap.add_argument("--merge", help="comma-separated result JSONs of other runs (same day, same machine) to merge into today's file, then exit")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    cache = fetch.cache_dir(a.cache)
    work = Path(a.work) if a.work else cache / "work"
    recipes = [r for r in a.recipes.split(",") if r]
    if a.one:
        one_model(a.one, recipes, not a.no_peers, a.budget_per_run, work, cache, Path(a.out))
        return 0
    names = a.models.split(",") if a.models else [m["name"] for m in fetch.manifest()["models"]]
    if a.merge:
        return merge([Path(x) for x in a.merge.split(",")], Path(a.results) if a.results else None)
    env = environment()
    env["loadavg_start"] = env.pop("loadavg")
    date = dt.datetime.now(dt.timezone.utc).date().isoformat()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = Path(a.results) if a.results else results_path(date, env)
    doc = json.loads(out.read_text()) if out.exists() else {"date": date, "models": {}}
    doc["environment"] = env
    doc["command"] = "python -m benchmarks.corpus " + " ".join(argv if argv is not None else sys.argv[1:])
    t_all = time.perf_counter()
    per_model_budget = sum((a.budget_per_run or (900 if r.startswith("auto") else 300)) + 300 for r in recipes) + 900
    for n in names:
        t0 = time.perf_counter()
        tmp = work / f"{n}.{os.getpid()}.result.json"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.corpus", "--one", n, "--out", str(tmp), "--recipes", ",".join(recipes),
               "--cache", str(cache), "--work", str(work)] + (["--no-peers"] if a.no_peers else []) + \
              (["--budget-per-run", str(a.budget_per_run)] if a.budget_per_run else [])
        c = run_child(cmd, per_model_budget, env={"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
        try:
            r = json.loads(tmp.read_text())
        except Exception:
            r = {"model": n, "variants": {}}
        if c["rc"] != 0 or not r.get("done"):
            r.setdefault("error", f"model run ended early (rc {c['rc']}): {first_error(c['stderr'])}")
        r["model_seconds"] = round(time.perf_counter() - t0, 1)
        prev = doc["models"].get(n, {})
        doc["models"][n] = merge_model(prev, r) if set(recipes) != set(RECIPES) or a.no_peers else r  # a partial re-run keeps the other variants
        vs = ", ".join(f"{k}: rc {v.get('rc')} {fmt((v.get('metric') or {}).get('score'))} {fmt(v.get('speedup'), 2)}x"
                       for k, v in (r.get("variants") or {}).items())
        print(f"{n} ({r['model_seconds']:.0f} s): {r.get('error') or ''} {vs}", flush=True)
        env["loadavg_end"] = os.getloadavg()
        doc["wall_seconds"] = round(time.perf_counter() - t_all, 1)
        out.write_text(json.dumps(doc, indent=1, default=str))
        out.with_suffix(".md").write_text(markdown(doc))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0
