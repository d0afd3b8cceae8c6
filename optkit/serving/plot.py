"""``serving.svg``: throughput vs p99 latency of every measured trial, the Pareto front, the SLO and the pick."""
from __future__ import annotations

import html
import math
import re

from ..report import nice_ticks

_COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"]
W, H, L, R, T, B = 760, 380, 70, 200, 30, 48  # canvas, then the left/right/top/bottom margins


class _Scale:
    """Data -> pixel: x is p99 (log when it spans > 20x, the SLO included), y is throughput from 0."""

    def __init__(self, xs: list[float], ys: list[float], slo_x: float | None):
        xlo, xhi = min(xs + ([slo_x] if slo_x else [])), max(xs + ([slo_x] if slo_x else []))
        self.logx = xhi / max(xlo, 1e-9) > 20
        if self.logx:
            self.x0, self.x1 = self.fx(xlo) - 0.1, self.fx(xhi) + 0.1
        else:
            self.x0, self.x1 = 0.0, xhi * 1.1
        self.y0, self.y1 = 0.0, max(ys) * 1.1

    def fx(self, v: float) -> float:
        return math.log10(max(v, 1e-9)) if self.logx else v

    def sx(self, v: float) -> float:
        return L + (self.fx(v) - self.x0) / (self.x1 - self.x0) * (W - L - R)

    def sy(self, v: float) -> float:
        return T + (1 - (v - self.y0) / (self.y1 - self.y0)) * (H - T - B)

    def xticks(self) -> list[float]:
        x0, x1 = self.x0, self.x1
        if not self.logx:
            return nice_ticks(x0, x1)
        return [10 ** e * m for e in range(math.floor(x0), math.ceil(x1) + 1) for m in (1, 2, 5)
                if x0 <= math.log10(10 ** e * m) <= x1]


def _axes(s: _Scale) -> list[str]:
    parts = []
    for tx in s.xticks():
        parts.append(f'<line x1="{s.sx(tx):.1f}" y1="{T}" x2="{s.sx(tx):.1f}" y2="{H - B}" stroke="#eef0f3"/>'
                     f'<text x="{s.sx(tx):.1f}" y="{H - B + 15}" text-anchor="middle">{tx:g}</text>')
    for ty in nice_ticks(s.y0, s.y1):
        parts.append(f'<line x1="{L}" y1="{s.sy(ty):.1f}" x2="{W - R}" y2="{s.sy(ty):.1f}" stroke="#eef0f3"/>'
                     f'<text x="{L - 6}" y="{s.sy(ty) + 4:.1f}" text-anchor="end">{ty:g}</text>')
    parts.append(f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="#98a2b3"/>'
                 f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="#98a2b3"/>'
                 f'<text class="axis-x" x="{(L + W - R) / 2:.0f}" y="{H - 10}" text-anchor="middle">p99 latency per batch (ms'
                 f'{", log scale" if s.logx else ""}), lower is better</text>'
                 f'<text class="axis-y" transform="translate(16,{(T + H - B) / 2:.0f}) rotate(-90)" text-anchor="middle">'
                 'throughput (items/s), higher is better</text>')
    return parts


def _points(s: _Scale, pts: list[dict], color: dict, rec: dict) -> list[str]:
    parts = []
    for t in pts:
        c = color[t["variant"]]
        x, y = s.sx(t["p99_ms"]), s.sy(t["throughput"])
        fill = c if t["status"] == "ok" else "white"
        r = 4 + 1.2 * math.log2(max(t["threads"], 1))
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="{fill}" stroke="{c}" stroke-width="1.5">'
                     f'<title>{html.escape(t["key"])}: p50 {t["p50_ms"]:.3f} ms, p99 {t["p99_ms"]:.3f} ms, '
                     f'{t["throughput"]:.1f} items/s{" (SLO miss)" if t["status"] != "ok" else ""}</title></circle>'
                     f'<text x="{x + r + 2:.1f}" y="{y - 3:.1f}" font-size="9" fill="#667085">b{t["batch"]}</text>')
        if rec and t["variant"] == f"{rec['backend']}-{rec['precision']}" and t["threads"] == rec["threads"] \
                and t["batch"] == rec["batch"]:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r + 5:.1f}" fill="none" stroke="#111" stroke-width="2"/>')
    return parts


def _legend(variants: list[str], color: dict, front: list[dict]) -> list[str]:
    parts = []
    for i, v in enumerate(variants):
        ly = T + 14 + i * 17
        parts.append(f'<circle cx="{W - R + 16}" cy="{ly - 4}" r="5" fill="{color[v]}"/>'
                     f'<text x="{W - R + 26}" y="{ly}">{html.escape(v)}</text>')
    ly = T + 14 + len(variants) * 17 + 8
    parts.append(f'<text x="{W - R + 10}" y="{ly}">bigger dot = more threads</text>'
                 f'<text x="{W - R + 10}" y="{ly + 15}">open = misses the SLO</text>'
                 f'<text x="{W - R + 10}" y="{ly + 30}">ringed = recommended</text>'
                 f'<text x="{W - R + 10}" y="{ly + 45}" fill="#b54708">'
                 f'{"dashed = Pareto front" if len(front) > 1 else "Pareto front: one point (no line)"}</text></svg>')
    return parts


def svg_plot(res: dict) -> str:
    """Throughput (y) vs p99 latency (x, log scale when it spans > 20x) of every measured trial: filled = feasible,
    open = SLO miss; the Pareto front as a dashed step line; the recommended spec ringed; p99 SLO as a red line."""
    pts = [t for t in res["trials"] if t.get("status") in ("ok", "infeasible")]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
             'font-family="system-ui,sans-serif" font-size="11">',
             f'<text x="{L}" y="18" font-size="13" font-weight="600">optkit tune · {html.escape(res["model"]["name"])} · '
             f'objective {res["objective"]}{" · SLO " + html.escape(", ".join(res["slo"])) if res["slo"] else ""}</text>']
    if not pts:
        parts.append(f'<text x="{L}" y="{H / 2}">no trial was measured</text></svg>')
        return "".join(parts)
    slo_p99 = [s for s in res["slo"] if s.startswith("p99")]
    slo_x = float(re.findall(r"[0-9.]+", slo_p99[0])[-1]) if slo_p99 else None
    s = _Scale([t["p99_ms"] for t in pts], [t["throughput"] for t in pts], slo_x)
    parts += _axes(s)
    if slo_x:
        parts.append(f'<line x1="{s.sx(slo_x):.1f}" y1="{T}" x2="{s.sx(slo_x):.1f}" y2="{H - B}" stroke="#b42318" '
                     f'stroke-dasharray="4 3"/><text x="{s.sx(slo_x) + 3:.1f}" y="{T + 10}" fill="#b42318">'
                     f'{html.escape(slo_p99[0])}</text>')
    front = res["pareto"]
    if len(front) > 1:
        d = f"M{s.sx(front[0]['p99_ms']):.1f},{s.sy(front[0]['throughput']):.1f}"
        for p in front[1:]:
            d += f" H{s.sx(p['p99_ms']):.1f} V{s.sy(p['throughput']):.1f}"
        parts.append(f'<path d="{d}" fill="none" stroke="#f59e0b" stroke-width="2" stroke-dasharray="5 3"/>')
    variants = list(dict.fromkeys(t["variant"] for t in pts))
    color = {v: _COLORS[i % len(_COLORS)] for i, v in enumerate(variants)}
    parts += _points(s, pts, color, res.get("recommended") or {})
    parts += _legend(variants, color, front)
    return "".join(parts)
