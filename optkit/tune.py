"""Accuracy-aware search (``--tolerance``) and the performance guard.

- ``Criterion``: top-1 vs labels when the data has labels, else fidelity to the input model (cosine, top-1
  agreement or max-abs), with a relative (``1%``) or absolute (``abs:0.005``) tolerance.
- Quantization passes: configurations are tried in a sensible order (the recipe's, then other calibration
  methods, percentiles, per-channel/per-tensor); every passing one is timed and the **fastest passing** is kept.
  When none passes, the nodes that add the most error (per-node attribution: error on a node's output minus the
  error already on its input) are kept in float, a few more each trial, until the criterion holds.
- Layer-wise passes (prune, lowrank): each candidate layer is compressed alone to measure its sensitivity; the
  most tolerant layers are compressed first, and a binary search finds how many can be while the criterion holds.
- ``SpeedProbe``: short alternating timing of two models on ONNX Runtime; the guard reverts a pass that made the
  model slower than before it (unless forced).
"""
from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field

import numpy as np
import onnx

from .errors import InputError
from .metrics import compare, top1

METRICS = ("auto", "top1", "cosine", "agreement", "max_abs")


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
    metric: str  # top1 | cosine | agreement | max_abs
    tolerance: float
    absolute: bool = False

    def describe(self) -> str:
        tol = f"abs {self.tolerance:g}" if self.absolute else f"{self.tolerance:.3g} relative"
        return f"{self.metric} within {tol}"

    def judge(self, ref_out: list[dict], cand_out: list[dict], labels) -> dict:
        """{'metric', 'value', 'reference', 'threshold', 'ok'} for a candidate's outputs."""
        if self.metric == "top1":
            ref, val = top1(ref_out, labels), top1(cand_out, labels)
            thr = ref - self.tolerance if self.absolute else ref * (1 - self.tolerance)
            return {"metric": "top1", "value": val, "reference": ref, "threshold": thr, "ok": val >= thr - 1e-12}
        d = compare(ref_out, cand_out)
        if self.metric == "max_abs":
            ref_scale = max(v["ref_max_abs"] for v in d["outputs"].values())
            thr = self.tolerance if self.absolute else self.tolerance * ref_scale
            return {"metric": "max_abs", "value": d["max_abs"], "reference": 0.0, "threshold": thr, "ok": d["max_abs"] <= thr}
        key = "top1_agreement" if self.metric == "agreement" else "cosine"
        val = d.get(key, d["cosine"])
        thr = 1 - self.tolerance
        return {"metric": self.metric, "value": val, "reference": 1.0, "threshold": thr, "ok": val >= thr - 1e-12}


def make_criterion(tolerance: str, metric: str, has_labels: bool, has_logits: bool) -> Criterion:
    """auto = top-1 vs labels when the data has labels and the model a logits output, else cosine to the input model."""
    value, absolute = parse_tolerance(tolerance)
    if metric not in METRICS:
        raise InputError(f"--metric must be one of {', '.join(METRICS)}; got {metric!r}", "pick an allowed metric")
    if metric == "auto":
        metric = "top1" if has_labels and has_logits else "cosine"
    elif metric == "top1" and not (has_labels and has_logits):
        raise InputError("--metric top1 needs a 'labels' array in --data and a [batch, classes] output",
                         "add labels to the data or use --metric cosine")
    return Criterion(metric, value, absolute)


class SpeedProbe:
    """Alternating timing of two models on one feed (ONNX Runtime, the context's threads)."""

    def __init__(self, feed: dict, threads: int = 1, rounds: int = 3, round_time: float = 0.15):
        self.feed, self.threads, self.rounds, self.round_time = feed, threads, rounds, round_time

    def speedup(self, base: onnx.ModelProto, cand: onnx.ModelProto) -> float:
        """Median per-round ratio base/cand: > 1 means ``cand`` is faster."""
        from .backends.ort import OrtSession
        from .measure import speedup, time_sessions

        with OrtSession(base, self.threads) as a, OrtSession(cand, self.threads) as b:
            t = time_sessions({"base": a, "cand": b}, self.feed, rounds=self.rounds, round_runs=5,
                              round_time=self.round_time, warmup_runs=5, warmup_time=0.05)
        return speedup(t["base"]["round_p50_ms"], t["cand"]["round_p50_ms"])["median"]


@dataclass
class Tuning:
    """What optimize() asked for: a criterion (or none), limits, and whether the guard is on."""

    criterion: Criterion | None = None
    max_trials: int = 24
    deadline: float | None = None  # time.monotonic() value
    guard: bool = True
    probe: SpeedProbe | None = None
    trials_run: int = 0

    def exhausted(self) -> bool:
        return self.trials_run >= self.max_trials or (self.deadline is not None and time.monotonic() > self.deadline)


@dataclass
class Outcome:
    result: object  # PassResult
    trials: list[dict] = field(default_factory=list)
    judged: dict | None = None
    passed: bool = True
    speedup: float | None = None


QUANT_OPS = {"Conv", "MatMul", "Gemm", "Attention", "ConvTranspose", "Gather", "EmbedLayerNormalization", "LSTM"}


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Name every node (ORT's nodes_to_exclude works by name); names that exist are kept."""
    seen = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in seen:
                name += "_"
            n.name = name
            seen.add(name)
    return model


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    produced = {o for n in m.graph.node for o in n.output} | {i.name for i in m.graph.input}
    for n in names:
        if n not in have and n in produced:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
            have.add(n)
    return m


def node_sensitivity(fp32: onnx.ModelProto, quant: onnx.ModelProto, feeds: list[dict], threads: int = 1) -> list[tuple[str, float]]:
    """Quantizable nodes ranked by the error they add: (1 - cosine) on the node's output minus that on its input."""
    from .pipeline import run_model

    inits = {t.name for t in fp32.graph.initializer}
    cands = [n for n in fp32.graph.node if n.op_type in QUANT_OPS and n.name]
    qprod = {o for n in quant.graph.node for o in n.output} | {i.name for i in quant.graph.input}
    consumers: dict[str, list] = {}
    for n in fp32.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def visible(t: str) -> str | None:
        """The tensor itself, or (when the quantizer folded a following activation into the node, e.g. MatMul+Relu)
        the first tensor downstream through single-consumer activations that the quantized model still has."""
        while t not in qprod:
            nxt = consumers.get(t, [])
            if len(nxt) != 1 or nxt[0].op_type not in _PASSTHROUGH:
                return None
            t = nxt[0].output[0]
        return t

    io = {n.name: (visible(n.output[0]), n.input[0] if n.input[0] in qprod else None) for n in cands}
    tensors = sorted({t for pair in io.values() for t in pair if t and t not in inits})
    a = run_model(_with_outputs(fp32, tensors), feeds[:8], threads)
    b = run_model(_with_outputs(quant, tensors), feeds[:8], threads)
    err = {}
    for t in tensors:
        x = np.concatenate([np.asarray(o[t], np.float64).ravel() for o in a])
        y = np.concatenate([np.asarray(o[t], np.float64).ravel() for o in b])
        nx, ny = np.linalg.norm(x), np.linalg.norm(y)
        err[t] = 0.0 if nx == 0 and ny == 0 else 1.0 - float(x @ y / (nx * ny)) if nx and ny else 1.0
    ranked = []
    for n in cands:
        out_t, in_t = io[n.name]
        if out_t in err:
            ranked.append((n.name, err[out_t] - err.get(in_t, 0.0)))
    return sorted(ranked, key=lambda kv: -kv[1])


_PASSTHROUGH = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "FastGelu"}


def _diff(cfg, base) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if dataclasses.asdict(base).get(k) != v}


def quant_variants(p) -> list:
    """Configurations to try for a quantization pass, the recipe's first, without duplicates."""
    base = p.config
    out = [base]
    if p.name == "int8-static":
        out += [dataclasses.replace(base, calibration="entropy"),
                dataclasses.replace(base, calibration="percentile", percentile=99.999),
                dataclasses.replace(base, calibration="percentile", percentile=99.99),
                dataclasses.replace(base, per_channel=not base.per_channel),
                dataclasses.replace(base, format="qoperator" if base.format == "qdq" else "qdq")]
    elif p.name == "int8-dynamic":
        out += [dataclasses.replace(base, per_channel=not base.per_channel)]
    uniq = []
    for c in out:
        if c not in uniq:
            uniq.append(c)
    return uniq


def _trial(p_cls, cfg, model, ctx, ref_out, feeds, labels, tuning: Tuning, label: dict, before: onnx.ModelProto) -> tuple:
    from .pipeline import run_model

    from .errors import PassError

    t0 = time.perf_counter()
    try:
        res = p_cls(cfg).run(model, ctx)
    except PassError as e:  # one failing configuration (e.g. an ORT calibrator bug) costs one trial, not the search
        tuning.trials_run += 1
        return None, None, {**label, "ok": False, "error": e.what, "seconds": round(time.perf_counter() - t0, 3)}
    out = run_model(res.model, feeds, ctx.threads)
    judged = tuning.criterion.judge(ref_out, out, labels)
    rec = {**label, "metric": judged["metric"], "value": judged["value"], "threshold": judged["threshold"],
           "ok": judged["ok"], "seconds": round(time.perf_counter() - t0, 3)}
    if judged["ok"] and tuning.probe is not None:
        rec["speedup_vs_before"] = tuning.probe.speedup(before, res.model)
    tuning.trials_run += 1
    return res, judged, rec


def tune_quantization(p, model, ctx, ref_out, feeds, labels, tuning: Tuning) -> Outcome:
    from .errors import PassError

    p_cls = type(p)
    model = ensure_node_names(model)
    trials, passing, best_fail = [], [], None
    for cfg in quant_variants(p):
        if tuning.exhausted() and trials:
            break
        res, judged, rec = _trial(p_cls, cfg, model, ctx, ref_out, feeds, labels, tuning, {"config": _diff(cfg, p.config)}, model)
        trials.append(rec)
        if judged is None:
            continue
        if judged["ok"]:
            passing.append((rec.get("speedup_vs_before", 0.0), res, judged, rec))
        elif best_fail is None or _better(judged, best_fail[1]):
            best_fail = (cfg, judged, res)
    if not passing and best_fail is not None:
        cfg, judged, res = best_fail
        ranking = node_sensitivity(model, res.model, feeds, ctx.threads)
        k = 1
        while not tuning.exhausted() and k <= len(ranking):
            excluded = [name for name, _ in ranking[:k]]
            cfg_k = dataclasses.replace(cfg, exclude_nodes=list(cfg.exclude_nodes) + excluded)
            res_k, judged_k, rec = _trial(p_cls, cfg_k, model, ctx, ref_out, feeds, labels, tuning,
                                          {"config": _diff(cfg, p.config), "fallback_float": excluded}, model)
            trials.append(rec)
            if judged_k is None:
                k = k + 1 if k < 4 else k * 2
                continue
            if judged_k["ok"]:
                passing.append((rec.get("speedup_vs_before", 0.0), res_k, judged_k, rec))
                break
            if _better(judged_k, best_fail[1]):
                best_fail = (cfg_k, judged_k, res_k)
            k = k + 1 if k < 4 else k * 2
    if passing:
        speed, res, judged, rec = max(passing, key=lambda x: x[0])
        rec["chosen"] = True
        res.notes.append(f"tolerance: {tuning.criterion.describe()}: {judged['metric']} {judged['value']:.5g} "
                         f"(threshold {judged['threshold']:.5g}); kept the fastest of {len(passing)} passing of {len(trials)} trials")
        if "fallback_float" in rec:
            res.notes.append(f"kept in float (most error-sensitive): {', '.join(rec['fallback_float'])}")
        return Outcome(res, trials, judged, True, rec.get("speedup_vs_before"))
    if best_fail is None:
        raise PassError(f"{p.name}: every configuration failed: " + "; ".join(r["error"] for r in trials if "error" in r)[:600],
                        "exclude the failing node or report the model")
    cfg, judged, res = best_fail
    next(r for r in trials if r.get("value") == judged["value"])["chosen"] = True
    res.notes.append(f"tolerance MISSED: {tuning.criterion.describe()}: best {judged['metric']} {judged['value']:.5g} "
                     f"(threshold {judged['threshold']:.5g}) after {len(trials)} trials")
    return Outcome(res, trials, judged, False)


def _better(a: dict, b: dict) -> bool:
    return a["value"] < b["value"] if a["metric"] == "max_abs" else a["value"] > b["value"]


def tune_layers(p, layers: list[str], model, ctx, ref_out, feeds, labels, tuning: Tuning) -> Outcome:
    """Compress the most tolerant layers first; binary-search how many can be compressed within tolerance."""
    p_cls = type(p)
    base = p.config
    trials = []
    res, judged, rec = _trial(p_cls, base, model, ctx, ref_out, feeds, labels, tuning, {"layers": "all"}, model)
    trials.append(rec)
    if judged is None:
        from .errors import PassError

        raise PassError(f"{p.name}: {rec['error']}", "fix the pass options or drop the pass")
    if judged["ok"] or not layers:
        rec["chosen"] = True
        res.notes.append(f"tolerance: {tuning.criterion.describe()}: {judged['metric']} {judged['value']:.5g} with every layer compressed")
        return Outcome(res, trials, judged, judged["ok"], rec.get("speedup_vs_before"))
    sens = []
    for name in layers:
        if tuning.exhausted():
            break
        cfg = dataclasses.replace(base, skip=list(base.skip) + [n for n in layers if n != name])
        r, j, rec = _trial(p_cls, cfg, model, ctx, ref_out, feeds, labels, tuning, {"layers": [name], "probe": "sensitivity"}, model)
        trials.append(rec)
        if j is not None:
            sens.append((name, j["value"] if j["metric"] != "max_abs" else -j["value"]))
    order = [n for n, _ in sorted(sens, key=lambda kv: -kv[1])]  # most tolerant first
    lo, hi, best = 0, len(order), None
    while lo < hi and not tuning.exhausted():
        mid = (lo + hi + 1) // 2
        keep = order[:mid]
        cfg = dataclasses.replace(base, skip=list(base.skip) + [n for n in layers if n not in keep])
        r, j, rec = _trial(p_cls, cfg, model, ctx, ref_out, feeds, labels, tuning, {"layers": keep}, model)
        trials.append(rec)
        if j is not None and j["ok"]:
            lo, best = mid, (r, j, rec)
        else:
            hi = mid - 1
    if best is None:
        from .passes import PassResult

        rec = {"layers": [], "ok": True, "chosen": True, "note": "no layer could be compressed within tolerance"}
        trials.append(rec)
        return Outcome(PassResult(model, modified=False, notes=[
            f"tolerance: {tuning.criterion.describe()}: no layer compressed within tolerance; pass left the model unchanged"]),
            trials, None, True, None)
    r, j, rec = best
    rec["chosen"] = True
    r.notes.append(f"tolerance: {tuning.criterion.describe()}: compressed {len(rec['layers'])} of {len(layers)} layers "
                   f"(most tolerant first), {j['metric']} {j['value']:.5g} (threshold {j['threshold']:.5g})")
    return Outcome(r, trials, j, True, rec.get("speedup_vs_before"))
