"""Rendering the measuring commands: bench (one model, or a backend matrix), report, tune and optimize-many."""
from __future__ import annotations

from pathlib import Path

from rich.markup import escape
from rich.table import Table

from .common import _warn, err, out
from .render import _print_verdict


def _bench_latency_table(res: dict) -> None:
    t = Table(title=f"optkit bench · {res['backend']} · {res['threads']} thread(s) · batch {res['batch']}", title_justify="left")
    for col in ("model", "p50 ms", "p90 ms", "p99 ms", "mean ms", "CV", "items/s", "load ms", "cold ms", "top-1"):
        t.add_column(col, justify="left" if col == "model" else "right")
    acc = res["accuracy"]
    for role in ("reference", "candidate"):
        if role not in res["latency"]:
            continue
        s = res["latency"][role]
        label = Path(res["model" if role == "candidate" else "reference"]).name
        t.add_row(f"{role}: {label}", f"{s['p50_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s['mean_ms']:.3f}",
                  f"{s['cv']:.1%}", f"{s['throughput']:.1f}", f"{res['load_ms'][role]:.0f}", f"{res['cold_run_ms'][role]:.1f}",
                  f"{acc[f'top1_{role}']:.2%}" if f"top1_{role}" in acc else "-")
    out.print(t)


def print_bench(res: dict, man: dict | None) -> None:
    """One model against its reference: latency table, speedup, accuracy, report, verdict."""
    _bench_latency_table(res)
    acc = res["accuracy"]
    if "speedup" in res:
        sp = res["speedup"]
        ci = sp.get("ci95") or [sp["min"], sp["max"]]
        verdict = {"tie": "not separated from 1.0x: within this run's noise"}.get(sp.get("verdict"), sp.get("verdict", ""))
        bold = "bold" if sp.get("verdict") == "faster" else "yellow"
        out.print(f"speedup vs reference: [{bold}]{sp['median']:.2f}x[/], 95% interval {ci[0]:.2f}-{ci[1]:.2f}x ({verdict}); "
                  f"median of {len(sp['rounds'])} alternating rounds of {res['protocol']['round_time_s']:g} s, "
                  f"{res['threads']} thread(s), round range {sp['min']:.2f}-{sp['max']:.2f}x", markup=True, highlight=False)
    if "vs_reference" in acc or any(k.startswith("top1_") for k in acc):
        out.print(f"accuracy data: {escape(_bench_data_label(acc, man))}", highlight=False)
    if "vs_reference" in acc:
        d = acc["vs_reference"]
        line = f"vs reference on {acc['feeds']} feed(s){' (synthetic)' if acc['synthetic'] else ''}: max-abs {d['max_abs']:.3g}, cosine {d['cosine']:.5f}"
        if "top1_agreement" in d:
            line += f", top-1 agreement {d['top1_agreement']:.2%}"
        if "top1_delta" in acc:
            line += f"; top-1 delta {acc['top1_delta']:+.2%}"
        out.print(line, highlight=False)
    if res.get("report"):
        out.print(f"report: {res['report']}", highlight=False)
    _print_verdict(res["verdict"])


def _bench_data_label(acc: dict, man: dict | None) -> str:
    src = f"{acc.get('feeds')} feed(s) from {acc.get('source')}"
    if acc.get("synthetic"):
        return src + " (synthetic: accuracy numbers mean nothing; pass --data)"
    calib = ((man or {}).get("data") or {}).get("path")
    if calib and acc.get("data_path") == calib:
        return src + " (the calibration data optimize tuned on, used because no --data was given: pass --data HELD_OUT.npz)"
    ev = (((man or {}).get("data") or {}).get("eval") or {}).get("path")
    return src + (" (the held-out data optimize judged on)" if ev and acc.get("data_path") == ev else " (--data)")


def _print_matrix(res: dict) -> None:
    t = Table(title=f"optkit bench · {', '.join(res['backends'])} · {res['threads']} thread(s) · batch {res['batch']}"
                    + (f" · {res['recipe']}" if res.get("recipe") else ""), title_justify="left")
    for col in ("backend", "variant", "precision", "p50 ms", "p90 ms", "p99 ms", "items/s", "vs ref", "cosine vs ref",
                "top-1", "load/compile"):
        t.add_column(col, justify="left" if col in ("backend", "variant", "precision") else "right")
    notes = []
    for r in res["rows"]:
        if r.get("status") != "ok":
            notes.append(f"{r['backend']} {r['variant']}: {r.get('status')}: {r.get('reason')}")
            t.add_row(r["backend"], r["variant"], r["precision"], f"[yellow]{r.get('status')} ({len(notes)})[/]",
                      *([""] * 7))
            continue
        s, acc = r["latency"], r.get("accuracy", {})
        sp = r.get("speedup_vs_reference")
        comp = f"{r['load_ms'] / 1e3:.1f} s" + (f" (+{r['compile_s']:.1f} s at optimize)" if (r.get("compile_s") or 0) >= 0.05 else "")
        t.add_row(r["backend"], r["variant"], r["precision"], f"{s['p50_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{s['p99_ms']:.3f}",
                  f"{s['throughput']:.1f}", f"{sp['median']:.2f}x" if sp else "-",
                  f"{acc['vs_reference']['cosine']:.5f}" if "vs_reference" in acc else "-",
                  f"{acc['top1']:.2%}" if "top1" in acc else "-", comp)
    out.print(t)
    for i, n in enumerate(notes, 1):
        out.print(f"  ({i}) {escape(n)}", highlight=False)
    d = res["data"]
    out.print(f"accuracy on {d['feeds']} feed(s) from {escape(d['source'])}{' (synthetic)' if d['synthetic'] else ''}; "
              "speedups are medians of per-round ratios against ORT running the reference, all rows alternating",
              highlight=False)
    if res.get("report"):
        out.print(f"report: {res['report']}", highlight=False)


def print_report(rep: dict, hpath: Path, jpath: Path) -> None:
    t = Table(title=f"optkit report · {len(rep['artifacts'])} artifact(s)", title_justify="left")
    for col in ("variant", "precision", "p50 ms", "p99 ms", "vs FP32", "accuracy", "Pareto"):
        t.add_column(col, justify="left" if col in ("variant", "precision", "Pareto") else "right")
    for p in rep["variants"]:
        if p.get("status") != "ok":
            t.add_row(p["key"], p["precision"], f"{p.get('status')}", "", "", "", "")
            continue
        acc = p.get("accuracy")
        t.add_row(p["key"], p["precision"], f"{p['latency']['p50_ms']:.3f}", f"{p['latency']['p99_ms']:.3f}",
                  f"{p['speedup_vs_reference']:.2f}x" if p.get("speedup_vs_reference") else "-",
                  "-" if not acc else (f"{acc['value']:.2%}" if acc["metric"] == "top1" else f"{acc['value']:.5f}"),
                  "★" if p.get("pareto") else "")
    if rep["variants"]:
        out.print(t)
        for d in rep.get("same_model_twice") or []:
            _warn(f"the same model {d['model']} was measured {len(d['keys'])} times: p50 "
                  f"{', '.join(f'{x:.3f}' for x in d['p50_ms'])} ms ({d['spread']:.0%} apart) - run-to-run noise between "
                  "separate bench runs; compare the speedups (each alternating with its reference), not p50s across runs")
    else:
        out.print("no bench results in these artifacts yet: run optkit bench ARTIFACT to add latency to the report",
                  highlight=False)
    out.print(f"report: [bold]{escape(str(hpath))}[/]  (+ {escape(jpath.name)})", markup=True, highlight=False)


def print_trial(t: dict) -> None:
    """One tune trial, as it finishes (stderr)."""
    what = (f"p50 {t['p50_ms']:.3f} ms, p99 {t['p99_ms']:.3f} ms, {t['throughput']:.1f} items/s"
            if t.get("throughput") is not None else escape(str(t.get("error"))))
    flag = {"ok": "[green]ok[/]", "infeasible": "[yellow]SLO miss[/]", "failed": "[red]failed[/]"}[t["status"]]
    err.print(f"  trial {t['n']:>3} {t['key']:<22} {flag} {what}" + (" (cached)" if t["source"] == "cache" else ""),
              markup=True, highlight=False)


def _print_tune(res: dict) -> None:
    s, rec = res["search"], res.get("recommended")
    rec_key = f"{rec['backend']}-{rec['precision']}/t{rec['threads']}/b{rec['batch']}" if rec else None
    front = {p["key"] for p in res["pareto"]}
    t = Table(title=f"optkit tune · {res['model']['name']} · objective {res['objective']}"
                    + (f" · SLO {', '.join(res['slo'])}" if res["slo"] else "") + f" · {s['sampler']} · {s['trials']} of "
                    f"{res['space']['size']} points ({s['measured']} measured, {s['from_cache']} cached)", title_justify="left")
    for col in ("#", "backend", "precision", "threads", "batch", "p50 ms", "p99 ms", "items/s", "items/s/core", "status", ""):
        t.add_column(col, justify="left" if col in ("backend", "precision", "status", "") else "right")
    for x in sorted(res["trials"], key=lambda x: x["n"]):
        measured = x.get("throughput") is not None
        status = {"ok": "[green]ok[/]", "infeasible": "[yellow]" + escape("; ".join(x.get("reasons") or [])) + "[/]",
                  "failed": "[red]failed: " + escape(str(x.get("error"))[:60]) + "[/]"}[x["status"]]
        mark = ("★ recommended" if x["key"] == rec_key else "") + (" · Pareto" if x["key"] in front else "")
        t.add_row(str(x["n"]), x["backend"], x["precision"], str(x["threads"]), str(x["batch"]),
                  f"{x['p50_ms']:.3f}" if measured else "-", f"{x['p99_ms']:.3f}" if measured else "-",
                  f"{x['throughput']:.1f}" if measured else "-", f"{x['throughput_per_core']:.1f}" if measured else "-",
                  status, mark.strip(" ·"))
    out.print(t)
    for v in res["variants"]:
        acc = v.get("accuracy") or {}
        line = f"variant {v['variant']}: {v['status']}"
        if acc:
            line += f", {acc['metric']} {acc['value']:.5g} (threshold {acc['threshold']:.5g})"
        if v.get("build_seconds") is not None:
            line += f", {'built in' if v.get('built') else 'reused, built in'} {v['build_seconds']:.1f} s"
        if v.get("reason"):
            line += f" - {v['reason']}"
        out.print(escape(line), highlight=False)
    for u in res["unavailable"]:
        out.print(f"backend {u['backend']}: unavailable - {escape(u['reason'])}", highlight=False)
    for n in res["notes"]:
        out.print(f"[yellow]note:[/] {escape(n)}", markup=True, highlight=False)
    if rec:
        e = rec["expected"]
        out.print(f"recommended: [bold]{rec['backend']} {rec['precision']}, {rec['threads']} thread(s), batch {rec['batch']}[/]"
                  f" - p50 {e['p50_ms']:.3f} ms, p99 {e['p99_ms']:.3f} ms, {e['throughput']:.1f} items/s "
                  f"({e['throughput_per_core']:.1f} per core)", markup=True, highlight=False)
        out.print(f"  artifact: {escape(rec['artifact'])}", highlight=False)
    out.print(f"stopped: {s['stopped']} after {s['search_seconds']:.1f} s of trials ({s['total_seconds']:.1f} s in all); "
              f"{s['ok']} ok, {s['infeasible']} SLO miss, {s['failed']} failed", highlight=False)
    out.print(f"wrote [bold]{escape(res['serving_json'])}[/] and {escape(res['plot'])}", markup=True, highlight=False)


def print_many_row(row: dict, done: int, total: int) -> None:
    """One optimize-many model, as it finishes (stderr)."""
    what = ((f"{row['speedup']:.2f}x vs input" if row.get("speedup") else "")
            + (f" cosine {row['cosine']:.5f}" if row.get("cosine") is not None else "")).strip() \
        if row["status"] == "ok" else escape(row.get("error", ""))
    flag = {"ok": "[green]ok[/]", "missed": "[yellow]missed[/]", "failed": "[red]failed[/]"}[row["status"]]
    err.print(f"  [{done}/{total}] {escape(row['name'])} {flag} {what} ({row['seconds']:.1f} s)", markup=True,
              highlight=False)


def print_many(res: dict) -> None:
    t = Table(title=f"optkit optimize-many · {res['recipe']} · {len(res['rows'])} models · {res['executor']}",
              title_justify="left")
    for col in ("model", "status", "speedup", "cosine", "time", "cached", "artifact / error"):
        t.add_column(col, overflow="fold")
    for r in res["rows"]:
        t.add_row(r["name"], r["status"], f"{r['speedup']:.2f}x" if r.get("speedup") else "-",
                  f"{r['cosine']:.5f}" if r.get("cosine") is not None else "-", f"{r['seconds']:.1f} s",
                  f"{r['cached_passes']}/{r['passes']}" if "passes" in r else "-",
                  escape(str(r.get("artifact") or r.get("error") or "")))
    out.print(t)
    out.print(f"{res['ok']} ok, {res['missed']} missed the tolerance, {res['failed']} failed; wall {res['seconds']:.1f} s "
              f"(sum of units {res['unit_seconds']:.1f} s); summary: {res['summary_path']}", highlight=False)
