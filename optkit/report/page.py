"""The self-contained HTML page of a report (inline CSS and SVG): the verdict, headline cards, every measured variant,
each artifact's model, pass log, trials, candidates and backends, and the environment."""
from __future__ import annotations

import json

from .charts import svg_latency, svg_scatter, svg_trials
from .format import _e, _fmt_acc, _join, _note, fmt_bytes, fmt_count, fmt_diff

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #e3e6ec;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#667085}.small{font-size:12px}
table{border-collapse:collapse;width:100%;margin:6px 0 10px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #eceef2;padding:5px 8px;text-align:right;vertical-align:top}
th{background:#f6f7f9;font-weight:600}td.l,th.l{text-align:left}
.ok{color:#0b7a3e}.bad{color:#b42318}.warn{color:#b54708}.tag{display:inline-block;padding:1px 7px;border-radius:9px;background:#eef2ff;color:#3538cd;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.card{border:1px solid #e3e6ec;border-radius:8px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}.card span{color:#667085;font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#344054}
.verdict{border:2px solid;border-radius:10px;padding:12px 16px;margin:14px 0}.verdict h2{border:0;margin:0 0 6px;padding:0;font-size:20px}
.v-ship{border-color:#0b7a3e;background:#f0fdf4}.v-ship h2{color:#0b7a3e}.v-caveats{border-color:#b54708;background:#fffaeb}
.v-caveats h2{color:#b54708}.v-block{border-color:#b42318;background:#fef3f2}.v-block h2{color:#b42318}
.verdict ul{margin:4px 0 8px;padding-left:4px;list-style:none}.verdict li{margin:2px 0}pre.cmd{background:#f2f4f7;padding:6px 8px;border-radius:6px;white-space:pre-wrap;word-break:break-all;margin:4px 0}details{margin:4px 0}code{background:#f2f4f7;padding:1px 4px;border-radius:4px}
"""

_VCLASS = {"ship": "v-ship", "ship with caveats": "v-caveats", "do not ship": "v-block"}
_VMARK = {"ok": ("✓", "ok"), "caveat": ("!", "warn"), "block": ("✗", "bad")}


def _verdict_html(a: dict, several: bool) -> str:
    """The verdict block (first on the page): the decision, one reason per line, how to reproduce it."""
    v = a.get("verdict")
    if not v:
        return ""
    o = [f"<div class='verdict {_VCLASS[v['verdict']]}' id=verdict><h2>Verdict: {_e(v['verdict'])}"
         f"{' · ' + _e(a['label']) if several else ''}</h2><ul>"]
    for r in v["reasons"]:
        mark, cls = _VMARK[r["level"]]
        o.append(f"<li><b class={cls}>{mark}</b> {_e(r['text'])}</li>")
    o.append("</ul>")
    rp = v.get("reproduce") or a.get("reproduce")
    if rp:
        o.append(f"<div class=small>Reproduce (optkit {_e(rp['optkit_version'])}, recipe sha256 "
                 f"<code>{_e(rp['recipe_sha256'][:16])}</code>):</div><pre class=cmd>{_e(rp['command'])}</pre>")
    else:
        o.append("<div class='small muted'>No reproduce record in this manifest (written by an older optkit).</div>")
    return "".join(o) + "</div>"



def render_html(rep: dict) -> str:
    arts, points = rep["artifacts"], rep["variants"]
    title = arts[0]["label"] if len(arts) == 1 else f"{len(arts)} artifacts compared"
    o = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>optkit report · {_e(title)}</title>"
         f"<style>{_CSS}</style></head><body>",
         f"<h1>optkit report · {_e(title)}</h1><div class='muted small'>generated {_e(rep['created'])} · schema "
         f"{_e(rep['schema'])} · every number below was measured on the machine described at the end</div>"]
    for a in arts:
        o.append(_verdict_html(a, len(arts) > 1))
    ok_pts = [p for p in points if p.get("status") == "ok"]
    o.append(_cards_html(arts, ok_pts))
    o.append(_variants_html(rep, points, ok_pts))
    for a in arts:
        o.append(_artifact_html(a, len(arts) > 1))
    o.append(_environment_html(rep, arts))
    return "".join(o)


def _cards_html(arts: list[dict], ok_pts: list[dict]) -> str:
    """The headline cards: size, accuracy at optimize, the best measured speedup and its bench accuracy."""
    cards = []
    for a in arts:
        i, out_ = a["model"]["input"], a["model"]["output"]
        cards.append(("size", f"{fmt_bytes(i['bytes'])} → {fmt_bytes(out_['bytes'])}", a["label"]))
        acc = a.get("accuracy") or {}
        from ..verdict import judged_data_label

        where = f"optimize, {acc.get('feeds')} feed(s) of {judged_data_label(a.get('data'))}"
        if "top1_input" in acc:
            cards.append(("top-1 (input → optimized)", f"{acc['top1_input']:.2%} → {acc['top1_output']:.2%}", where))
        elif acc.get("vs_input"):
            cards.append(("cosine vs input", f"{acc['vs_input']['cosine']:.5f}", where))
    best = [p for p in ok_pts if p["variant"] == "candidate" and p.get("speedup_vs_reference")]
    if best:
        b = max(best, key=lambda p: p["speedup_vs_reference"])
        ci = b.get("speedup_ci95")
        cards.insert(0, ("speedup vs FP32 reference", f"{b['speedup_vs_reference']:.2f}×",
                         (f"95% interval {ci[0]:.2f}–{ci[1]:.2f}× · " if ci else "") +
                         f"bench, {b['backend']} {b['precision']}, {b.get('protocol') or 'median of per-round ratios'}"))
        if b.get("accuracy") and b.get("data") and b["data"] != "-":
            cards.insert(1, ("bench accuracy" if b["accuracy"]["metric"] == "top1" else "bench cosine vs reference",
                             _fmt_acc(b["accuracy"]), f"bench on {b['data']}"))
    if not cards:
        return ""
    return ("<div class=cards>" + "".join(f"<div class=card><span>{_e(k)}</span><b>{_e(v)}</b><span>{_e(s)}</span></div>"
                                               for k, v, s in cards) + "</div>")


def _variants_html(rep: dict, points: list[dict], ok_pts: list[dict]) -> str:
    """Latency and accuracy of every measured variant: the table, the distribution chart, the Pareto scatter."""
    o = []
    o.append("<h2>Latency and accuracy of every measured variant</h2>")
    if not ok_pts:
        o.append("<p class=warn>No bench results yet: run <code>optkit bench ARTIFACT</code> (or "
                 "<code>--backend all</code>) and the report is rewritten with latency distributions.</p>")
    else:
        o.append("<table><tr><th class=l>variant</th><th class=l>precision</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
                 "<th>items/s</th><th>vs FP32</th><th>accuracy</th><th class=l>Pareto</th><th class=l>measured on (data · protocol)</th></tr>")
        for p in points:
            if p.get("status") != "ok":
                o.append(f"<tr><td class=l>{_e(p['key'])}</td><td class=l>{_e(p['precision'])}</td>"
                         f"<td colspan=7 class='l warn'>{_e(p.get('status'))}: {_e(p.get('reason'))}</td></tr>")
                continue
            s = p["latency"]
            sp = p.get("speedup_vs_reference")
            o.append(f"<tr><td class=l>{_e(p['key'])}</td><td class=l>{_e(p['precision'])}</td><td>{s['p50_ms']:.3f}</td>"
                     f"<td>{s['p90_ms']:.3f}</td><td>{s['p99_ms']:.3f}</td><td>{s['throughput']:.1f}</td>"
                     f"<td>{f'{sp:.2f}×' if sp else '-'}</td><td>{_fmt_acc(p.get('accuracy'))}</td>"
                     f"<td class=l>{'<span class=tag>on the front</span>' if p.get('pareto') else ''}</td>"
                     f"<td class='l small muted'>{_e(p.get('data') or '-')} · {_e(p.get('protocol') or '-')}</td></tr>")
        o.append("</table>")
        for d in rep.get("same_model_twice") or []:
            o.append(f"<p class='warn small'>The same model ({_e(d['model'])}) was measured {len(d['keys'])} times: p50 "
                     f"{_e(', '.join(f'{x:.3f}' for x in d['p50_ms']))} ms ({d['spread']:.0%} apart). That spread is "
                     "run-to-run noise between separate bench runs, not a difference between the models: compare "
                     "speedups (each measured alternating with its reference in one run), not p50s across runs.</p>")
        o.append("<h3>Latency distribution</h3><div class='muted small'>box p25–p75, black tick p50, open dot p90, "
                 "whiskers min–p99; the shaded strip is the histogram of all timed runs</div>" + svg_latency(points))
        for metric in ("top1", "cosine"):
            svg = svg_scatter(points, rep["pareto"], metric)
            if svg:
                o.append(f"<h3>Accuracy vs latency ({'top-1 on labels' if metric == 'top1' else 'cosine to the FP32 reference'})"
                         "</h3>" + svg)
    return "".join(o)


def _environment_html(rep: dict, arts: list[dict]) -> str:
    env = rep.get("environment") or {}
    cpu = env.get("cpu", {})
    isa = ", ".join(k for k, v in (cpu.get("isa") or {}).items() if v)
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items())
    return (f"<h2>Environment</h2><table><tr><td class=l>CPU</td><td class=l>{_e(cpu.get('model'))} · {_e(cpu.get('arch'))} · "
             f"{_e(cpu.get('logical_cores'))} logical cores · ISA: {_e(isa)}</td></tr>"
             f"<tr><td class=l>threads</td><td class=l>{_e(_join(sorted({a.get('threads') for a in arts}, key=str)))} intra-op, 1 inter-op "
             f"(bench: alternating rounds, order flipped each round)</td></tr>"
             f"<tr><td class=l>Python / platform</td><td class=l>{_e(env.get('python'))} · {_e(env.get('platform'))}</td></tr>"
             f"<tr><td class=l>libraries</td><td class=l>{_e(libs)}</td></tr>"
             + "".join(f"<tr><td class=l>input model sha256</td><td class=l><code>{_e(a['model']['input']['sha256'])}</code> "
                       f"({_e(a['label'])})</td></tr>" for a in arts)
             + "</table></body></html>")


def _artifact_html(a: dict, several: bool) -> str:
    i, out_ = a["model"]["input"], a["model"]["output"]
    o = [f"<h2>{_e(a['label']) if several else 'Model and passes'}</h2>",
         f"<div class='muted small'>{_e(a['path'])} · recipe <b>{_e(a['recipe'])}</b> · backend {_e(a['backend'])} · "
         f"optimize {a['optimize_seconds']:.1f} s</div>"]
    imp = a.get("import")
    if imp:
        p = imp["parity"]
        o.append(f"<p>Imported from {_e(imp['source'])} with {_e(imp['exporter'])} (opset {_e(imp['opset'])}); parity vs "
                 f"{_e(imp['framework'])}: max-abs {p['max_abs']:.3g}, cosine {p['cosine']:.7f} on {p['feeds']} feed(s)"
                 + (f"; dynamic axes checked at {_e(_join(p['dynamic_check']['shapes']))}" if p.get("dynamic_check") else "") + "</p>")
    o.append("<table><tr><th class=l></th><th>nodes</th><th>params</th><th>FLOPs</th><th>size</th><th class=l>opsets</th></tr>")
    for k, m in (("input", i), ("optimized", out_)):
        o.append(f"<tr><td class=l>{k}</td><td>{m['nodes']}</td><td>{m['params']:,}</td><td>{fmt_count(m['flops'])}</td>"
                 f"<td>{fmt_bytes(m['bytes'])}</td><td class=l>{_e(_join(m['opsets']))}</td></tr>")
    o.append("</table><h3>Pass log</h3><table><tr><th class=l>pass</th><th>nodes</th><th>size</th><th>time</th>"
             "<th>vs previous: max-abs / cosine / top-1 agree</th><th>vs input</th><th>top-1</th></tr>")
    for p in a["passes"]:
        cls = "" if p["status"] == "ok" else " class=warn"
        o.append(f"<tr{cls}><td class=l>{_e(p['pass'])}{'' if p['status'] == 'ok' else ' (' + _e(p['status']) + ')'}</td>"
                 f"<td>{p['nodes'][0]} → {p['nodes'][1]}</td><td>{fmt_bytes(p['bytes'][0])} → {fmt_bytes(p['bytes'][1])}</td>"
                 f"<td>{p['seconds']:.2f} s</td><td>{fmt_diff(p['vs_previous'])}</td><td>{fmt_diff(p['vs_input'])}</td>"
                 f"<td>{'-' if p['top1'] is None else format(p['top1'], '.2%')}</td></tr>")
        if p["notes"]:
            o.append(f"<tr><td></td><td colspan=6 class='l muted small'>{'<br>'.join(_e(_note(n)) for n in p['notes'])}</td></tr>")
    o.append("</table>")
    tol = a.get("tolerance")
    if tol:
        shown = sum(1 for t in a["trials"] if t.get("value") is not None)
        o.append(f"<p>{'Accuracy gate (default)' if tol.get('default_gate') else 'Tolerance'} {_e(tol['criterion'])}: "
                 f"<b class={'ok' if tol['passed'] else 'bad'}>{'met' if tol['passed'] else 'MISSED'}</b>, judged on "
                 f"{_e(tol['judged_on'])}. {tol['trials']} trial(s) ran in all (every candidate pipeline); the chart shows "
                 f"the {shown} trial(s) of the chosen pipeline's passes that produced a metric value"
                 + (f" ({len(a['trials']) - shown} more failed to run: see the table)" if len(a['trials']) > shown else "")
                 + ".</p>")
    if a["trials"]:
        o.append("<h3>Tuner trials</h3>" + svg_trials(a["trials"]))
        o.append("<details><summary>all trials</summary><table><tr><th class=l>pass</th><th>#</th><th class=l>config</th>"
                 "<th>metric</th><th>value</th><th>threshold</th><th>speedup</th><th class=l>result</th></tr>")
        for t in a["trials"]:
            res = "error: " + _e(t["error"]) if t.get("error") else ("kept" if t.get("chosen") else ("ok" if t.get("ok") else "miss"))
            o.append(f"<tr><td class=l>{_e(t['pass'])}</td><td>{t['trial']}</td><td class='l small'>{_e(json.dumps(t['config']))}</td>"
                     f"<td>{_e(t.get('metric') or '-')}</td><td>{'-' if t.get('value') is None else format(t['value'], '.5g')}</td>"
                     f"<td>{'-' if t.get('threshold') is None else format(t['threshold'], '.5g')}</td>"
                     f"<td>{'-' if not t.get('speedup_vs_before') else format(t['speedup_vs_before'], '.2f') + '×'}</td>"
                     f"<td class=l>{res}</td></tr>")
        o.append("</table></details>")
    if a.get("candidates"):
        o.append("<h3>Candidates</h3><table><tr><th class=l>candidate</th><th>speedup vs input</th><th class=l>tolerance</th><th class=l></th></tr>")
        for c in a["candidates"]:
            if "skipped" in c or "error" in c:
                why = f"skipped: {c['skipped']}" if "skipped" in c else f"failed: {c['error']}"
                o.append(f"<tr><td class=l>{_e(c['candidate'])}</td><td colspan=3 class=l>{_e(why)}</td></tr>")
                continue
            sp = c.get("speedup_vs_input")
            o.append(f"<tr><td class=l>{_e(c['candidate'])}</td><td>{f'{sp:.2f}×' if sp else '-'}</td>"
                     f"<td class=l>{'within' if c['passed'] else 'misses'}</td><td class=l>{'chosen' if c.get('chosen') else ''}</td></tr>")
        o.append("</table>")
    bes = a.get("backends") or {}
    if bes:
        o.append("<h3>Compiled for</h3><table><tr><th class=l>backend</th><th class=l>status</th><th>seconds</th><th class=l>details</th></tr>")
        for name, info in bes.items():
            status = info.get("status", "ok")
            detail = info.get("reason") or info.get("message") or info.get("artifact") or ""
            if name == "trt" and status == "ok" and not info.get("engine_built"):
                status = "TensorRT-ready ONNX + build command (no engine built)"
            o.append(f"<tr><td class=l>{_e(name)}</td><td class=l>{_e(status)}</td><td>{info.get('seconds', '-')}</td>"
                     f"<td class='l small'>{_e(detail)}</td></tr>")
        o.append("</table>")
    if a.get("warnings"):
        o.append("<p class='warn small'>" + "<br>".join(_e(w) for w in a["warnings"]) + "</p>")
    return "".join(o)
