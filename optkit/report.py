"""Reports: ``report.json`` (schema ``optkit.report/1``, see README) and one self-contained ``report.html`` (inline
CSS and SVG, no network) for one artifact or a comparison of several.

Sources: each artifact's ``manifest.json`` and the bench results ``optkit bench`` saved under ``ARTIFACT/bench/``.
Every variant that was measured (artifact × backend × candidate/reference) becomes a point with its latency
distribution and accuracy; the Pareto front is over (p50 latency ↓, accuracy ↑).
"""
from __future__ import annotations

import datetime as _dt
import html
import json
import math
from pathlib import Path

from .artifact import MANIFEST, read_manifest, write_json
from .errors import InputError

REPORT_SCHEMA = "optkit.report/1"
SCHEMA_FILE = Path(__file__).parent / "schemas" / "report.schema.json"
BENCH_DIR = "bench"


def validate(rep: dict) -> None:
    """Raise jsonschema.ValidationError when ``rep`` does not follow schemas/report.schema.json (needs jsonschema)."""
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(rep, default=str)), json.loads(SCHEMA_FILE.read_text()))


# -- collecting ------------------------------------------------------------------------------------------------
def save_bench(artifact: Path, result: dict) -> Path:
    """Keep a bench result with the artifact (``bench/<n>.json``), so reports can show it later."""
    d = Path(artifact) / BENCH_DIR
    d.mkdir(exist_ok=True)
    n = 1 + max((int(p.stem) for p in d.glob("*.json") if p.stem.isdigit()), default=0)
    path = d / f"{n}.json"
    write_json(path, result)
    return path


def _bench_results(artifact: Path) -> list[dict]:
    from .artifact import read_bench_results

    return read_bench_results(artifact)  # a garbled bench/<n>.json is an InputError naming it


def _label(man: dict, artifact: Path) -> str:
    return f"{artifact.parent.name}/{artifact.name} ({man['recipe']['name']})"


def _acc_of(acc: dict, role: str | None) -> tuple[str, float] | None:
    """(metric, value) for one measured variant: top-1 when labels exist, else cosine to the reference."""
    if role is None:  # a matrix row's accuracy
        if "top1" in acc:
            return "top1", acc["top1"]
        if "vs_reference" in acc:
            return "cosine", acc["vs_reference"]["cosine"]
        return None
    if f"top1_{role}" in acc:
        return "top1", acc[f"top1_{role}"]
    if role == "reference":
        return ("cosine", 1.0) if "vs_reference" in acc else None
    if "vs_reference" in acc:
        return "cosine", acc["vs_reference"]["cosine"]
    return None


def _variants(label: str, results: list[dict]) -> list[dict]:
    """Measured points from bench results: the latest measurement of each (backend, variant)."""
    points: dict[tuple, dict] = {}
    for res in results:
        if "rows" in res:
            for r in res["rows"]:
                if r.get("status") != "ok":
                    points[(r["backend"], r["variant"])] = {"backend": r["backend"], "variant": r["variant"],
                                                            "precision": r["precision"], "status": r.get("status"),
                                                            "reason": r.get("reason")}
                    continue
                acc = _acc_of(r.get("accuracy", {}), None)
                if r["variant"] == "reference" and acc is None:
                    acc = ("cosine", 1.0)
                points[(r["backend"], r["variant"])] = {
                    "backend": r["backend"], "variant": r["variant"], "precision": r["precision"], "status": "ok",
                    "latency": r["latency"], "accuracy": ({"metric": acc[0], "value": acc[1]} if acc else None),
                    "speedup_vs_reference": (r.get("speedup_vs_reference") or {}).get("median"),
                    "batch": res.get("batch"), "threads": res.get("threads")}
        else:
            backend = res.get("backend", "ort")
            for role, lat in res.get("latency", {}).items():
                be = backend if role == "candidate" else (res.get("reference_backend") or backend)
                acc = _acc_of(res.get("accuracy", {}), role)
                sp = (res.get("speedup") or {}).get("median") if role == "candidate" else (1.0 if "speedup" in res else None)
                points[(be, role)] = {"backend": be, "variant": role, "precision": res.get("precision", {}).get(role, "?"),
                                      "status": "ok", "latency": lat,
                                      "accuracy": ({"metric": acc[0], "value": acc[1]} if acc else None),
                                      "speedup_vs_reference": sp, "batch": res.get("batch"), "threads": res.get("threads"),
                                      "speedup_ci95": (res.get("speedup") or {}).get("ci95") if role == "candidate" else None,
                                      "model_path": res.get("model" if role == "candidate" else "reference"),
                                      "data": _data_of(res), "protocol": _protocol_of(res)}
    out = []
    for (be, var), p in points.items():
        out.append({"key": f"{label} · {be}/{var}", "artifact": label, **p})
    return out


def _data_of(res: dict) -> str:
    a = res.get("accuracy") or {}
    if not a:
        return "-"
    return f"{a.get('feeds')} feed(s) from {a.get('source')}" + (" (synthetic)" if a.get("synthetic") else "")


def _protocol_of(res: dict) -> str:
    p = res.get("protocol") or {}
    return (f"{p.get('rounds')} {'alternating ' if p.get('alternating') else ''}rounds of {p.get('round_time_s')} s, "
            f"{res.get('threads')} thread(s), batch {res.get('batch')}")


def same_model_twice(points: list[dict]) -> list[dict]:
    """The same model file measured in several artifacts' benches (typically the shared FP32 reference): each
    measurement with its p50 and the spread between them, which is run-to-run noise, not a difference."""
    by: dict[str, list[dict]] = {}
    for p in points:
        if p.get("status") == "ok" and p.get("variant") == "reference" and p.get("model_path"):
            by.setdefault(str(Path(p["model_path"]).resolve()), []).append(p)
    out = []
    for path, ps in by.items():
        if len(ps) > 1:
            p50 = [q["latency"]["p50_ms"] for q in ps]
            out.append({"model": path, "keys": [q["key"] for q in ps], "p50_ms": p50,
                        "spread": (max(p50) - min(p50)) / min(p50) if min(p50) else 0.0})
    return out


def pareto(points: list[dict]) -> list[str]:
    """Keys of the points no other point beats on both p50 latency (lower) and accuracy (higher)."""
    pts = [p for p in points if p.get("status") == "ok" and p.get("accuracy")]
    front = []
    for p in pts:
        lp, ap = p["latency"]["p50_ms"], p["accuracy"]["value"]
        dominated = any((q["latency"]["p50_ms"] <= lp and q["accuracy"]["value"] >= ap)
                        and (q["latency"]["p50_ms"] < lp or q["accuracy"]["value"] > ap)
                        for q in pts if q is not p and q["accuracy"]["metric"] == p["accuracy"]["metric"])
        if not dominated:
            front.append(p["key"])
    return front


def _artifact_entry(artifact: Path, man: dict) -> dict:
    i, o = man["input"]["info"], man["output"]["info"]
    passes = []
    trials = []
    for e in man.get("pass_log", []):
        passes.append({"pass": e["pass"], "status": e["status"], "exact": e.get("exact"),
                       "nodes": [e["nodes_before"], e["nodes_after"]], "bytes": [e["bytes_before"], e["bytes_after"]],
                       "seconds": e["seconds"], "vs_previous": _small(e.get("vs_previous")),
                       "vs_input": _small(e.get("vs_input")), "top1": e.get("top1"), "notes": e.get("notes", []),
                       "candidate": e.get("candidate")})
        for k, t in enumerate(e.get("trials") or []):
            trials.append({"pass": e["pass"], "trial": k + 1, **{key: t.get(key) for key in (
                "metric", "value", "threshold", "ok", "speedup_vs_before", "chosen", "error", "seconds")},
                "config": t.get("config") or t.get("layers") or t.get("fallback_float")})
    return {
        "label": _label(man, artifact), "path": str(artifact), "recipe": man["recipe"]["name"],
        "backend": (man.get("backend") or {}).get("backend"), "created": man.get("created"),
        "model": {"input": _model_summary(i, man["input"]), "output": _model_summary(o, man["output"])},
        "import": man.get("import"), "passes": passes, "trials": trials, "accuracy": man.get("accuracy"),
        "tolerance": man.get("tolerance"), "candidates": man.get("candidates"),
        "guard": man.get("guard"), "backends": man.get("backends") or {man["backend"].get("backend", "?"): man["backend"]},
        "optimize_seconds": man.get("optimize_seconds"), "threads": man.get("threads"), "data": man.get("data"),
        "environment": man.get("environment"), "warnings": man.get("warnings", []),
        "reproduce": man.get("reproduce"),
    }


def _small(d: dict | None) -> dict | None:
    if not d:
        return None
    return {k: d[k] for k in ("max_abs", "cosine", "top1_agreement") if k in d}


def _model_summary(info: dict, desc: dict) -> dict:
    return {"sha256": desc.get("sha256"), "source_sha256": desc.get("source_sha256"), "nodes": info["nodes"],
            "params": info["params"], "bytes": info["bytes"], "flops": info["flops"].get("total"),
            "ops": info["ops"], "opsets": info["opsets"]}


def build_report(artifacts: list[str | Path]) -> dict:
    """The report.json content for one or several artifact directories."""
    if not artifacts:
        raise InputError("no artifact given", "pass one or more artifact directories (OUT/<name>/<version>)")
    from .predictor import resolve_artifact

    entries, points = [], []
    for a in artifacts:
        path, man, _ = resolve_artifact(a)
        if man is None:
            raise InputError(f"{a} is a model file, not an artifact", "pass the directory optkit optimize wrote")
        entry = _artifact_entry(path, man)
        benches = _bench_results(path)
        entry["bench_runs"] = len(benches)
        from .verdict import decide

        entry["verdict"] = decide(man, next((b for b in reversed(benches) if "rows" not in b), None))
        entries.append(entry)
        points += _variants(entry["label"], _bench_results(path))
    front = pareto(points)
    for p in points:
        p["pareto"] = p["key"] in front
    return {"schema": REPORT_SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "artifacts": entries, "variants": points, "pareto": front, "same_model_twice": same_model_twice(points),
            "environment": entries[0]["environment"]}


def write_report(artifact: str | Path) -> tuple[Path, Path]:
    """(Re)write ``report.json`` and ``report.html`` inside one artifact."""
    art = Path(artifact)
    rep = build_report([art])
    j, h = art / "report.json", art / "report.html"
    write_json(j, rep)
    from .artifact import write_text

    write_text(h, render_html(rep))  # atomic, like report.json: a killed run leaves the old report, not half a new one
    return j, h


# -- rendering -------------------------------------------------------------------------------------------------
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
_PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]


def _e(x) -> str:
    return html.escape(str(x))


def fmt_bytes(n) -> str:
    """1536 -> '1.5 KB' (shared by the CLI and the HTML report)."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_count(n) -> str:
    """189340000 -> '189.34 M'."""
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f}"


def _fmt_acc(a: dict | None) -> str:
    if not a:
        return "-"
    return f"{a['value']:.2%}" if a["metric"] == "top1" else f"{a['value']:.5f}"


def fmt_diff(d: dict | None) -> str:
    """max-abs / cosine / top-1 agreement of a comparison, for tables (shared by the CLI and the HTML report)."""
    if not d:
        return "-"
    s = f"{d['max_abs']:.2g} / {d['cosine']:.5f}"
    if "top1_agreement" in d:
        s += f" / {d['top1_agreement']:.1%}"
    return s


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    ticks, v = [], start
    while v <= hi + 1e-12 and len(ticks) < 20:
        if v >= lo - 1e-12:
            ticks.append(round(v, 10))
        v += step
    return ticks


def svg_scatter(points: list[dict], front: list[str], metric: str) -> str:
    """Accuracy (y) vs p50 latency (x) with the Pareto front drawn as a step line."""
    pts = [p for p in points if p.get("status") == "ok" and p.get("accuracy") and p["accuracy"]["metric"] == metric]
    if not pts:
        return ""
    W, H, L, R, T, B = 900, 380, 70, 260, 20, 44
    xs = [p["latency"]["p50_ms"] for p in pts]
    ys = [p["accuracy"]["value"] for p in pts]
    x0, x1 = 0.0, max(xs) * 1.12
    ylo, yhi = min(ys), max(ys)
    pad = max((yhi - ylo) * 0.15, 0.002 if metric == "cosine" else 0.005)
    y0, y1 = ylo - pad, min(yhi + pad, 1.0 + pad * 0.2)
    sx = lambda v: L + (v - x0) / (x1 - x0) * (W - L - R)  # noqa: E731
    sy = lambda v: T + (1 - (v - y0) / (y1 - y0)) * (H - T - B)  # noqa: E731
    parts = [f'<svg viewBox="0 0 {W} {H}" width="{W}" style="max-width:100%;height:auto" role="img" aria-label="accuracy vs latency">']
    for tx in nice_ticks(x0, x1):
        parts.append(f'<line x1="{sx(tx):.1f}" y1="{T}" x2="{sx(tx):.1f}" y2="{H - B}" stroke="#eef0f3"/>'
                     f'<text x="{sx(tx):.1f}" y="{H - B + 16}" text-anchor="middle">{tx:g}</text>')
    for ty in nice_ticks(y0, y1):
        lab = f"{ty:.1%}" if metric == "top1" else f"{ty:.4f}"
        parts.append(f'<line x1="{L}" y1="{sy(ty):.1f}" x2="{W - R}" y2="{sy(ty):.1f}" stroke="#eef0f3"/>'
                     f'<text x="{L - 6}" y="{sy(ty) + 4:.1f}" text-anchor="end">{lab}</text>')
    parts.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#98a2b3"/>'
                 f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#98a2b3"/>'
                 f'<text class="axis-x" x="{(L + W - R) / 2:.0f}" y="{H - 6}" text-anchor="middle">p50 latency (ms), lower is better</text>'
                 f'<text class="axis-y" transform="translate(14,{(T + H - B) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                 f'{"top-1 accuracy" if metric == "top1" else "cosine to reference"}, higher is better</text>')
    fr = sorted((p for p in pts if p["key"] in front), key=lambda p: p["latency"]["p50_ms"])
    if len(fr) > 1:
        d = f"M{sx(fr[0]['latency']['p50_ms']):.1f},{sy(fr[0]['accuracy']['value']):.1f}"
        for p in fr[1:]:
            d += f" H{sx(p['latency']['p50_ms']):.1f} V{sy(p['accuracy']['value']):.1f}"
        parts.append(f'<path d="{d}" fill="none" stroke="#f59e0b" stroke-width="2" stroke-dasharray="5 3"/>')
    for i, p in enumerate(pts):
        c = _PALETTE[i % len(_PALETTE)]
        x, y = sx(p["latency"]["p50_ms"]), sy(p["accuracy"]["value"])
        on = p["key"] in front
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{7 if on else 5}" fill="{c}" '
                     f'stroke="{"#f59e0b" if on else "white"}" stroke-width="{3 if on else 1}">'
                     f'<title>{_e(p["key"])}: {p["latency"]["p50_ms"]:.3f} ms, {_fmt_acc(p["accuracy"])}</title></circle>')
        ly = T + 14 + i * 17
        parts.append(f'<circle cx="{W - R + 14}" cy="{ly - 4}" r="5" fill="{c}"/>'
                     f'<text x="{W - R + 24}" y="{ly}">{_e(_short(p))}{" ★" if on else ""}</text>')
    legend = "★ on the Pareto front (dashed line)" if len(fr) > 1 else "★ on the Pareto front (one point: no line)"
    parts.append(f'<text x="{W - R + 10}" y="{H - B + 16}" class="small">{legend}</text></svg>')
    return "".join(parts)


def _short(p: dict) -> str:
    art = p["artifact"].split(" (")[0]
    return f"{art} {p['backend']}/{p['variant']} {p['precision']}"[:34]


def svg_latency(points: list[dict]) -> str:
    """One row per variant: whiskers min–p99, box p25–p75, median tick, p90 dot; histogram strip beneath."""
    pts = [p for p in points if p.get("status") == "ok"]
    if not pts:
        return ""
    W, L, R, row = 900, 230, 175, 46
    H = 52 + row * len(pts)
    hi = max(p["latency"]["p99_ms"] for p in pts) * 1.08
    sx = lambda v: L + v / hi * (W - L - R)  # noqa: E731
    parts = [f'<svg viewBox="0 0 {W} {H}" width="{W}" style="max-width:100%;height:auto" role="img" aria-label="latency distributions">']
    for tx in nice_ticks(0, hi):
        parts.append(f'<line x1="{sx(tx):.1f}" y1="8" x2="{sx(tx):.1f}" y2="{H - 40}" stroke="#eef0f3"/>'
                     f'<text x="{sx(tx):.1f}" y="{H - 26}" text-anchor="middle">{tx:g}</text>')
    parts.append(f'<text class="axis-x" x="{(L + W - R) / 2:.0f}" y="{H - 6}" text-anchor="middle">latency of one run (ms), '
                 f'lower is better</text><text class="axis-y" transform="translate(12,{(H - 40) / 2:.0f}) rotate(-90)" '
                 f'text-anchor="middle">variant</text>')
    for i, p in enumerate(pts):
        s, c = p["latency"], _PALETTE[i % len(_PALETTE)]
        yc = 22 + i * row
        parts.append(f'<text x="{L - 8}" y="{yc + 4}" text-anchor="end">{_e(_short(p))}</text>')
        h = s.get("hist")
        if h and h["counts"] and max(h["counts"]) > 0:
            m = max(h["counts"])
            for cnt, a, b in zip(h["counts"], h["edges_ms"][:-1], h["edges_ms"][1:]):
                if cnt:
                    bh = 12 * cnt / m
                    parts.append(f'<rect x="{sx(a):.1f}" y="{yc + 22 - bh:.1f}" width="{max(sx(b) - sx(a), 0.8):.1f}" '
                                 f'height="{bh:.1f}" fill="{c}" opacity="0.35"/>')
        p25, p75 = s.get("p25_ms", s["p50_ms"]), s.get("p75_ms", s["p50_ms"])
        parts.append(f'<line x1="{sx(s["min_ms"]):.1f}" y1="{yc}" x2="{sx(s["p99_ms"]):.1f}" y2="{yc}" stroke="{c}"/>'
                     f'<rect x="{sx(p25):.1f}" y="{yc - 6}" width="{max(sx(p75) - sx(p25), 1.5):.1f}" height="12" '
                     f'fill="{c}" opacity="0.8"/>'
                     f'<line x1="{sx(s["p50_ms"]):.1f}" y1="{yc - 8}" x2="{sx(s["p50_ms"]):.1f}" y2="{yc + 8}" stroke="#111" stroke-width="2"/>'
                     f'<circle cx="{sx(s["p90_ms"]):.1f}" cy="{yc}" r="3" fill="white" stroke="{c}"/>'
                     f'<text x="{W - R + 12}" y="{yc + 4}" class="small">p50 {s["p50_ms"]:.3g} · p99 {s["p99_ms"]:.3g} ms</text>'
                     f'<title>{_e(p["key"])}: min {s["min_ms"]:.3f}, p50 {s["p50_ms"]:.3f}, p90 {s["p90_ms"]:.3f}, '
                     f'p99 {s["p99_ms"]:.3f} ms over {s["runs"]} runs</title>')
    parts.append("</svg>")
    return "".join(parts)


def svg_trials(trials: list[dict]) -> str:
    """Tuner trials grouped by pass: metric value per trial, each pass's own threshold (labelled in the right
    margin, where no marker can cover it), passing vs failing, the kept one ringed; both axes labelled."""
    pts = [t for t in trials if t.get("value") is not None]
    if not pts:
        return ""
    W, H, L, R, T, B = 900, 250, 74, 190, 26, 40
    vals = [t["value"] for t in pts] + [t["threshold"] for t in pts if t.get("threshold") is not None]
    y0, y1 = min(vals), max(vals)
    pad = (y1 - y0) * 0.1 or abs(y1) * 0.01 or 0.01
    y0, y1 = y0 - pad, y1 + pad
    sx = lambda i: L + (i + 0.5) / len(pts) * (W - L - R)  # noqa: E731
    sy = lambda v: T + (1 - (v - y0) / (y1 - y0)) * (H - T - B)  # noqa: E731
    metrics = sorted({str(t.get("metric")) for t in pts})
    parts = [f'<svg viewBox="0 0 {W} {H}" width="{W}" style="max-width:100%;height:auto" role="img" aria-label="tuner trials">']
    for ty in nice_ticks(y0, y1, 4):
        parts.append(f'<line x1="{L}" y1="{sy(ty):.1f}" x2="{W - R}" y2="{sy(ty):.1f}" stroke="#eef0f3"/>'
                     f'<text x="{L - 6}" y="{sy(ty) + 4:.1f}" text-anchor="end">{ty:.4g}</text>')
    parts.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#98a2b3"/>'
                 f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#98a2b3"/>')
    groups: list[tuple[str, int, int]] = []  # (pass, first index, last index) in plotting order
    for i, t in enumerate(pts):
        if groups and groups[-1][0] == t["pass"]:
            groups[-1] = (t["pass"], groups[-1][1], i)
        else:
            groups.append((t["pass"], i, i))
    used_y: list[float] = []
    step = (W - L - R) / len(pts)
    for g, (name, a, b) in enumerate(groups):
        xa, xb = sx(a) - step / 2, sx(b) + step / 2
        if g:
            parts.append(f'<line x1="{xa:.1f}" y1="{T - 14}" x2="{xa:.1f}" y2="{H - B}" stroke="#d0d5dd"/>')
        parts.append(f'<text x="{xa + 4:.1f}" y="{T - 6}" class="small">{_e(name)}</text>')
        thr = next((t["threshold"] for t in pts[a:b + 1] if t.get("threshold") is not None), None)
        if thr is None:
            continue
        y = sy(thr)
        parts.append(f'<line x1="{xa:.1f}" y1="{y:.1f}" x2="{xb:.1f}" y2="{y:.1f}" stroke="#b42318" stroke-dasharray="4 3"/>'
                     f'<line x1="{xb:.1f}" y1="{y:.1f}" x2="{W - R + 6}" y2="{y:.1f}" stroke="#b42318" stroke-dasharray="1 3"/>')
        ly = y + 4
        while any(abs(ly - u) < 13 for u in used_y):
            ly += 13
        used_y.append(ly)
        parts.append(f'<text x="{W - R + 10}" y="{ly:.1f}" class="small">{_e(name)} threshold {thr:.4g}</text>')
    for i, t in enumerate(pts):
        c = "#0b7a3e" if t.get("ok") else "#b42318"
        parts.append(f'<circle cx="{sx(i):.1f}" cy="{sy(t["value"]):.1f}" r="{7 if t.get("chosen") else 4}" fill="{c}" '
                     f'stroke="{"#111" if t.get("chosen") else "none"}" stroke-width="2"><title>{_e(t["pass"])} trial '
                     f'{t["trial"]}: {t.get("metric")} {t["value"]:.5g}{" (chosen)" if t.get("chosen") else ""}</title></circle>')
    parts.append(f'<text class="axis-x" x="{(L + W - R) / 2:.0f}" y="{H - 8}" text-anchor="middle">trial, in order, grouped by '
                 f'pass (green: within tolerance, red: not; ringed: kept)</text>'
                 f'<text class="axis-y" transform="translate(14,{(T + H - B) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                 f'{_e(" / ".join(metrics))} (gate metric)</text></svg>')
    return "".join(parts)


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


def _note(text: str) -> str:
    """A pass note as the recipe YAML spells options (per_channel=true), not as Python prints them (=True/None)."""
    import re

    return re.sub(r"=(True|False|None)\b", lambda m: "=" + {"None": "none"}.get(m.group(1), m.group(1).lower()), str(text))


def _join(x) -> str:
    """Lists and dicts as people write them ('ai.onnx 17, com.microsoft 1'; '1, 2'), never as Python reprs."""
    if isinstance(x, dict):
        return ", ".join(f"{k or 'ai.onnx'} {v}" for k, v in x.items())
    if isinstance(x, (list, tuple, set)):
        return ", ".join(_join(v) for v in x)
    return str(x)


def render_html(rep: dict) -> str:
    arts, points = rep["artifacts"], rep["variants"]
    title = arts[0]["label"] if len(arts) == 1 else f"{len(arts)} artifacts compared"
    o = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>optkit report · {_e(title)}</title>"
         f"<style>{_CSS}</style></head><body>",
         f"<h1>optkit report · {_e(title)}</h1><div class='muted small'>generated {_e(rep['created'])} · schema "
         f"{_e(rep['schema'])} · every number below was measured on the machine described at the end</div>"]
    for a in arts:
        o.append(_verdict_html(a, len(arts) > 1))
    # headline cards
    ok_pts = [p for p in points if p.get("status") == "ok"]
    cards = []
    for a in arts:
        i, out_ = a["model"]["input"], a["model"]["output"]
        cards.append(("size", f"{fmt_bytes(i['bytes'])} → {fmt_bytes(out_['bytes'])}", a["label"]))
        acc = a.get("accuracy") or {}
        from .verdict import judged_data_label

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
    if cards:
        o.append("<div class=cards>" + "".join(f"<div class=card><span>{_e(k)}</span><b>{_e(v)}</b><span>{_e(s)}</span></div>"
                                               for k, v, s in cards) + "</div>")
    # latency + pareto
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
    for a in arts:
        o.append(_artifact_html(a, len(arts) > 1))
    env = rep.get("environment") or {}
    cpu = env.get("cpu", {})
    isa = ", ".join(k for k, v in (cpu.get("isa") or {}).items() if v)
    libs = ", ".join(f"{k} {v}" for k, v in (env.get("libraries") or {}).items())
    o.append(f"<h2>Environment</h2><table><tr><td class=l>CPU</td><td class=l>{_e(cpu.get('model'))} · {_e(cpu.get('arch'))} · "
             f"{_e(cpu.get('logical_cores'))} logical cores · ISA: {_e(isa)}</td></tr>"
             f"<tr><td class=l>threads</td><td class=l>{_e(_join(sorted({a.get('threads') for a in arts}, key=str)))} intra-op, 1 inter-op "
             f"(bench: alternating rounds, order flipped each round)</td></tr>"
             f"<tr><td class=l>Python / platform</td><td class=l>{_e(env.get('python'))} · {_e(env.get('platform'))}</td></tr>"
             f"<tr><td class=l>libraries</td><td class=l>{_e(libs)}</td></tr>"
             + "".join(f"<tr><td class=l>input model sha256</td><td class=l><code>{_e(a['model']['input']['sha256'])}</code> "
                       f"({_e(a['label'])})</td></tr>" for a in arts)
             + "</table></body></html>")
    return "".join(o)


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


def load_report_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


__all__ = ["build_report", "write_report", "render_html", "save_bench", "pareto", "REPORT_SCHEMA", "MANIFEST", "read_manifest"]
