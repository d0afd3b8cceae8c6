"""Inline SVG charts for the HTML report: accuracy vs latency with the Pareto front, latency distributions, tuner
trials (no network, no plotting library)."""
from __future__ import annotations

import math

from .format import _e, _fmt_acc

_PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]


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
