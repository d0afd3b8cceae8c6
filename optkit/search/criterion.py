"""What "still accurate" means: a tolerance (``1%``, ``abs:0.005``) and, per output, the metric that fits it."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import InputError


def parse_tolerance(text: str) -> tuple[float, bool]:
    """'1%' -> (0.01, relative); '0.02' -> (0.02, relative); 'abs:0.005' -> (0.005, absolute)."""
    s = str(text).strip().lower()
    absolute = s.startswith("abs:")
    s = s.removeprefix("abs:").strip()
    try:
        value = float(s[:-1]) / 100 if s.endswith("%") else float(s)
    except ValueError:
        raise InputError(f"bad --tolerance {text!r}", "use a relative value like 1% or 0.01, or an absolute one like abs:0.005") from None
    if not 0 <= value < 1:
        raise InputError(f"--tolerance {text!r} is out of range", "use a value in [0, 1), e.g. 1% or abs:0.005")
    return value, absolute


def parse_budget(text: str | None) -> float | None:
    """'10m' / '90s' / '1h' / '120' (seconds) -> seconds."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", str(text).lower())
    if not m:
        raise InputError(f"bad --budget {text!r}", "use a duration like 90s, 10m or 1h")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


@dataclass(frozen=True)
class Criterion:
    """What "still accurate" means: a tolerance, and per output the metric that fits it (``optkit.fidelity``)."""

    metric: str  # auto | top1 | cosine | agreement | max_abs | iou | step_agreement | a fidelity kind
    tolerance: float
    absolute: bool = False
    per_output: tuple = ()  # ((output name, kind), ...) from --metric NAME=KIND
    mask: str | None = None  # the model's attention-mask input: token states are pooled over it

    def describe(self) -> str:
        tol = f"abs {self.tolerance:g}" if self.absolute else f"{self.tolerance:.3g} relative"
        per = "; " + ", ".join(f"{n}={k}" for n, k in self.per_output) if self.per_output else ""
        return f"{self.metric} within {tol}{per}"

    def kinds(self, ref_out: list[dict], labels) -> dict[str, str]:
        """Output name -> fidelity kind: the user's per-output choice, else the forced metric, else the auto rules."""
        from ..fidelity import ALIASES, infer_kind

        per = dict(self.per_output)
        forced = None if self.metric == "auto" else ALIASES.get(self.metric, self.metric)
        out = {}
        for name in ref_out[0]:
            if name in per:
                out[name] = per[name]
            elif forced is not None:
                out[name] = forced
            else:
                out[name] = infer_kind(name, [o[name] for o in ref_out], self.mask is not None, bool(labels))
        return out

    def judge(self, ref_out: list[dict], cand_out: list[dict], labels, feeds: list[dict] | None = None) -> dict:
        """{'metric', 'value', 'threshold', 'ok', 'margin', 'outputs'}: every output judged by its kind; the headline
        metric/value/threshold are those of the check closest to (or furthest past) its threshold."""
        from ..fidelity import judge_output, margin, measure

        masks = [f[self.mask] for f in feeds] if self.mask and feeds and all(self.mask in f for f in feeds) else None
        outputs, checks = {}, []
        for name, kind in self.kinds(ref_out, labels).items():
            if kind == "ignore":
                continue
            m = measure(kind, [o[name] for o in ref_out], [o[name] for o in cand_out], masks)
            tr = tc = None
            if kind in ("classes", "top1", "agreement") and labels:
                tr, tc = _top1_of(ref_out, name, labels), _top1_of(cand_out, name, labels)
            cs = judge_output(kind, m, self.tolerance, self.absolute, tr, tc)
            for c in cs:
                c["output"] = name
            outputs[name] = {"kind": kind, "checks": cs, **{k: v for k, v in m.items() if k != "higher_is_better"}}
            checks += cs
        if not checks:
            return {"metric": "none", "value": 1.0, "threshold": 1.0, "ok": True, "margin": 0.0, "outputs": outputs}
        worst = min(checks, key=margin)
        return {"metric": worst["metric"] + (f" ({worst['output']})" if len(outputs) > 1 else ""),
                "value": worst["value"], "threshold": worst["threshold"], "reference": worst.get("reference"),
                "ok": all(c["ok"] for c in checks), "margin": margin(worst), "outputs": outputs}


def _top1_of(outputs: list[dict], name: str, labels) -> float | None:
    pred = np.concatenate([np.asarray(o[name]).argmax(-1).ravel() for o in outputs])
    lab = np.concatenate([np.asarray(l).ravel() for l in labels[:len(outputs)]])
    return float((pred == lab).mean()) if pred.shape == lab.shape else None


def make_criterion(tolerance: str, metric: str, model: onnx.ModelProto | None = None, has_labels: bool = False) -> Criterion:
    """The gate: ``metric`` auto picks per output (optkit.fidelity); top1 needs labels."""
    from ..fidelity import mask_input, parse_metric

    value, absolute = parse_tolerance(tolerance)
    forced, per = parse_metric(metric)
    if forced == "top1" and not has_labels:
        raise InputError("--metric top1 needs a 'labels' array in --data (or --eval-data)",
                         "add labels to the data or use --metric auto")
    mask = mask_input(model) if model is not None else None
    return Criterion(forced or "auto", value, absolute, tuple(sorted(per.items())), mask)
