"""Rendering `optkit` results on the terminal: rich tables and lines. The commands decide what runs; these only
print what came back (optimize, its plan, an import, the verdict, inspect, recipes, passes, verify, the cache)."""
from __future__ import annotations

import json

from rich.markup import escape
from rich.table import Table

from ..textfmt import fmt_bytes, fmt_count, fmt_diff
from .common import _warn, err, out


def print_pass_done(entry: dict) -> None:
    """One pass, as it finishes (stderr)."""
    mark = "[green]✓[/]" if entry["status"] == "ok" else "[yellow]↶ reverted[/]"
    err.print(f"{mark} {entry['pass']}: {entry['nodes_before']} → {entry['nodes_after']} nodes, "
              f"{entry['seconds']:.2f} s" + (f", {len(entry['trials'])} trials" if entry.get("trials") else ""),
              markup=True, highlight=False)


def print_pass_log(man: dict, model_name: str) -> None:
    """The passes of an optimize run as a table, then each pass's notes."""
    t = Table(title=f"optkit optimize · {man['recipe']['name']} · {model_name}", title_justify="left")
    for col in ("pass", "nodes", "size", "time", "vs previous: max-abs / cosine / top-1 agree", "vs input", "top-1"):
        t.add_column(col)
    for e in man["pass_log"]:
        t.add_row(e["pass"] + ("" if e["status"] == "ok" else f" ({e['status']})") + (" (cached)" if e.get("cached") else ""), f"{e['nodes_before']} → {e['nodes_after']}",
                  f"{fmt_bytes(e['bytes_before'])} → {fmt_bytes(e['bytes_after'])}", f"{e['seconds']:.2f} s",
                  fmt_diff(e.get("vs_previous")), fmt_diff(e.get("vs_input")), f"{e['top1']:.2%}" if "top1" in e else "-")
    out.print(t)
    for e in man["pass_log"]:
        for note in e["notes"]:
            out.print(f"  [bold]{e['pass']}[/]: {note}", markup=True, highlight=False)


def print_accuracy(man: dict) -> None:
    """The optimized model vs the input model on the sample feeds."""
    acc = man["accuracy"]
    if acc:
        line = f"vs input model on {acc['feeds']} feed(s) of {escape(data_label(man))}: " \
               f"max-abs {acc['vs_input']['max_abs']:.3g}, cosine {acc['vs_input']['cosine']:.5f}"
        if "top1_agreement" in acc["vs_input"]:
            line += f", top-1 agreement {acc['vs_input']['top1_agreement']:.2%}"
        if "top1_input" in acc:
            line += f"; top-1 {acc['top1_input']:.2%} → {acc['top1_output']:.2%} ({acc['top1_delta']:+.2%})"
        out.print(line, highlight=False)


def print_tolerance(man: dict) -> None:
    """The accuracy gate or tolerance: met or missed, per output, and what judged it."""
    tol = man.get("tolerance")
    if tol:
        gate = "accuracy gate (default)" if tol.get("default_gate") else "tolerance"
        out.print(f"{gate} {tol['criterion']}: {'[green]met[/]' if tol['passed'] else '[red]MISSED[/] by ' + ', '.join(tol['missed_by'])}"
                  f" ({tol['trials']} trials, judged on {escape(tol['judged_on'])})", markup=True, highlight=False)
        judged = next((e["tolerance"] for e in reversed(man["pass_log"]) if "tolerance" in e), None)
        for name, o in ((judged or {}).get("outputs") or {}).items():
            checks = ", ".join(f"{c['metric']} {c['value']:.4g} ({'>=' if not c['metric'].startswith('max_') else '<='} "
                               f"{c['threshold']:.4g})" for c in o["checks"])
            out.print(f"  output {escape(name)} judged as {o['kind']}: {checks}", highlight=False)
        ev = man.get("evaluator") or {}
        if ev.get("describe"):
            out.print(f"  judged on: {escape(ev['describe'])}", highlight=False)


def print_candidates(man: dict) -> None:
    """The recipe's candidates (best-of): speed, tolerance, which one was chosen."""
    for c in man.get("candidates") or []:
        if "skipped" in c:
            out.print(f"  candidate {c['candidate']}: skipped ({c['skipped']})", highlight=False)
            continue
        speed = f"{c['speedup_vs_input']:.2f}x" if c["speedup_vs_input"] is not None else "-"
        if "error" in c:
            out.print(f"  candidate {c['candidate']}: failed ({escape(c['error'])}); the other candidates went on",
                      highlight=False)
            continue
        out.print(f"  candidate {c['candidate']}: {speed} vs input, {'within' if c['passed'] else 'MISSES'} tolerance"
                  + (f", guard reverted {', '.join(c['reverted'])}" if c["reverted"] else "") + (" ← chosen" if c["chosen"] else ""),
                  highlight=False)


def print_outcome(man: dict) -> None:
    """The performance guard's verdict, size and node counts, where the artifact and report are."""
    final = (man.get("guard") or {}).get("final")
    if final:
        iv = f" (95% interval {final['interval'][0]:.2f}-{final['interval'][1]:.2f}x, {final['verdict']})" \
            if final.get("interval") else ""
        out.print(f"performance guard: optimized model {final['speedup_vs_input']:.2f}x vs input{iv}"
                  + ("" if final["kept"] else f" - {final['note']}"), highlight=False)
    i, o = man["input"]["info"], man["output"]["info"]
    out.print(f"size {fmt_bytes(i['bytes'])} → {fmt_bytes(o['bytes'])}, nodes {i['nodes']} → {o['nodes']}, "
              f"optimize {man['optimize_seconds']:.1f} s", highlight=False)
    out.print(f"artifact: [bold]{man['artifact']}[/]  (measure it: optkit bench {man['artifact']})", markup=True, highlight=False)
    if man.get("report"):
        out.print(f"report: {man['report']}", highlight=False)


def print_backend_statuses(man: dict) -> None:
    """Extra backends optimize could not compile for."""
    for bname, info in (man.get("backends") or {}).items():
        if info.get("status") in ("unavailable", "failed"):
            out.print(f"  backend {bname}: {info['status']}: {escape(str(info.get('reason')))}", highlight=False)


def print_trt(man: dict) -> None:
    """What became of the TensorRT engine (built here, or the command to build it elsewhere)."""
    be = man.get("backend") or {}
    if be.get("backend") == "trt":
        if be.get("engine_built"):
            out.print(f"TensorRT engine: {man['artifact']}/compiled/{be['engine']} ({be.get('precision')}, built in "
                      f"{be.get('build_seconds', 0):.1f} s)  (measure it: optkit bench {man['artifact']} --backend trt)",
                      highlight=False)
        else:
            out.print(f"[yellow]no TensorRT engine was built[/]: {escape(str(be.get('reason')))}", markup=True, highlight=False)
            out.print(f"  the TensorRT-ready ONNX and the exact build command are in {man['artifact']}/compiled/ "
                      "(trtexec.sh, build_engine.txt): run it where TensorRT >= 10 and an NVIDIA GPU exist", highlight=False)


def data_label(man: dict) -> str:
    """Which data judged optimize's accuracy numbers: held-out (--eval-data) or the calibration data itself."""
    from ..verdict import judged_data_label

    return judged_data_label(man.get("data"))


_VERDICT_STYLE = {"ship": "bold green", "ship with caveats": "bold yellow", "do not ship": "bold red"}
_LEVEL_MARK = {"ok": "[green]✓[/]", "caveat": "[yellow]![/]", "block": "[red]✗[/]"}


def _print_verdict(v: dict) -> None:
    """The verdict, last in the terminal: one line per reason, then how to reproduce."""
    out.print(f"verdict: [{_VERDICT_STYLE[v['verdict']]}]{v['verdict'].upper()}[/]", markup=True, highlight=False)
    for r in v["reasons"]:
        out.print(f"  {_LEVEL_MARK[r['level']]} {escape(r['text'])}", markup=True, highlight=False)
    rp = v.get("reproduce")
    if rp:
        out.print(f"  reproduce: {escape(rp['command'])}  (optkit {rp['optkit_version']}, recipe sha256 "
                  f"{rp['recipe_sha256'][:12]})", markup=True, highlight=False)


def _print_plan(p: dict) -> None:
    out.print(f"[bold]plan[/] (dry run: nothing was written) · recipe {escape(p['recipe'])} · backend {escape(', '.join(p['backends']))}",
              markup=True, highlight=False)
    t = Table(title="passes, in order", title_justify="left")
    for col in ("#", "pass", "exact", "options"):
        t.add_column(col, overflow="fold")
    for i, x in enumerate(p["passes"], 1):
        t.add_row(str(i), escape(x["pass"]) + (f" [dim]({escape(x['candidate'])})[/]" if x.get("candidate") else ""),
                  "yes" if x["exact"] else "no", escape(", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in x["options"].items()) or "-"))
    out.print(t)
    for k in ("model", "calibration", "judged_on", "gate", "search", "guard", "writes"):
        out.print(f"  {k.replace('_', ' ')}: {escape(str(p[k]))}", highlight=False)
    for w in p.get("warnings", []):
        _warn(w)


def _print_import(info: dict) -> None:
    p = info["parity"]
    dyn = p.get("dynamic_check")
    failed = [a for a in info["attempts"] if not a.get("parity")]
    out.print(f"imported {escape(info['source'])} with {info['exporter']} (opset {info['opset']}, {info['seconds']:.1f} s); "
              f"parity vs {info['framework']} on {p['feeds']} feed(s) ({escape(p['feeds_source'])}): max-abs {p['max_abs']:.3g}, "
              f"cosine {p['cosine']:.7f}"
              + (f"; dynamic axes checked at {dyn['shapes']}: max-abs {dyn['max_abs']:.3g}" if dyn else ""),
              highlight=False)
    for a in failed:
        out.print(f"  {a['exporter']} rejected: {escape(a.get('error', ''))}", highlight=False)


def print_signature(info: dict, title: str) -> None:
    """Inputs and outputs (name, dtype, shape) as a table."""
    sig = Table(title=title, title_justify="left")
    for col in ("", "name", "dtype", "shape"):
        sig.add_column(col)
    for kind in ("inputs", "outputs"):
        for s in info[kind]:
            sig.add_row(kind[:-1], s["name"], s["dtype"], escape("[" + ", ".join(str(d) for d in s["shape"]) + "]"))
    out.print(sig)


def print_inspect(model, info: dict) -> None:
    out.print(f"[bold]{model}[/]  IR {info['ir_version']}, opsets {info['opsets']}, producer {info['producer'] or '-'}",
              markup=True, highlight=False)
    print_signature(info, "signature")
    ops = Table(title="ops", title_justify="left")
    ops.add_column("op")
    ops.add_column("count", justify="right")
    for k, v in info["ops"].items():
        ops.add_row(k, str(v))
    out.print(ops)
    fl = info["flops"]
    out.print(f"nodes {info['nodes']}, params {info['params']:,}, size {fmt_bytes(info['file_bytes'])}, "
              f"FLOPs {fmt_count(fl['total'])} (Conv/Gemm/MatMul at {info['flops_shapes']})"
              + (f" - {fl['note']}" if fl.get("note") else ""), highlight=False)


def print_recipes(rows: list[dict]) -> None:
    t = Table(title="built-in recipes (or pass --recipe path/to/recipe.yaml)", title_justify="left")
    for col in ("recipe", "backend", "passes", "description"):
        t.add_column(col, overflow="fold")
    for r in rows:
        flow = " → ".join(r["passes"])
        if r.get("candidates"):
            flow += " → best of {" + " | ".join(" → ".join(v) or k for k, v in r["candidates"].items()) + "}"
        t.add_row(r["name"], r["backend"], flow, r["description"])
    out.print(t)


def option_range(o: dict) -> str:
    """' [0, 1)', ' (>= 1)' from an option's declared range (``describe()``'s ``range`` text, else its ``bounds`` /
    ``min`` / ``max``); empty when it declares none."""
    text = o.get("range")
    if not text:
        bounds = dict(o.get("bounds") or {})
        bounds.update({k: o[k] for k in ("min", "max") if o.get(k) is not None})
        if not bounds:
            return ""
        from ..config import range_text

        text = range_text(bounds)
    return f" {text}" if text[:1] in "[(" else f" ({text})"


def option_line(o: dict) -> str:
    """'name = default [a|b] [1..5]: doc' for ``optkit passes``."""
    return (f"{o['name']} = {o['default']!r}" + (f" [{'|'.join(map(str, o['choices']))}]" if o.get("choices") else "")
            + option_range(o) + f": {o['doc']}")


def print_passes(rows: list[dict]) -> None:
    t = Table(title="passes", title_justify="left", show_lines=True)
    for col in ("pass", "exact", "description", "options (default)"):
        t.add_column(col, overflow="fold")
    for r in rows:
        opts = "\n".join(option_line(o) for o in r["options"])
        t.add_row(escape(r["name"]), "yes" if r["exact"] else "no", escape(r["doc"]), escape(opts) or "-")
    out.print(t)


def print_verify(res: dict) -> None:
    t = Table(title=f"optkit verify · {res['artifact']}" + ("" if res["sealed"] else " (older artifact: only the "
              "model and input carry a sha256)"), title_justify="left")
    for col in ("file", "bytes", "sha256", "status"):
        t.add_column(col, justify="right" if col == "bytes" else "left")
    for r in res["files"]:
        st = "[green]ok[/]" if r["status"] == "ok" else f"[bold red]{r['status'].upper()}[/]"
        t.add_row(escape(r["path"]), fmt_bytes(r["bytes"]) if r.get("bytes") is not None else "-",
                  (r.get("sha256") or r.get("expected") or "-")[:16], st)
    out.print(t)
    n_ok = sum(r["status"] == "ok" for r in res["files"])
    out.print(f"{escape(res['artifact'])}: {n_ok} of {len(res['files'])} file(s) match the manifest", highlight=False)


def print_cache(res: dict) -> None:
    out.print(f"pass cache {res['path']}: {res['entries']} entries, {fmt_bytes(res['bytes'])} of {fmt_bytes(res['max_bytes'])}"
              + (f"; removed {res['removed']}" if "removed" in res else ""), highlight=False)
