"""Formatting for reports: escaped text, bytes / counts / accuracy / diffs as people read them (shared by the CLI and
the HTML report), pass notes and lists spelled as the recipe YAML spells them."""
from __future__ import annotations

import html


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

