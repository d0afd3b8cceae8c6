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
from .log import trial_logged
from .metrics import compare, top1



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
        from .fidelity import ALIASES, infer_kind

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
        from .fidelity import judge_output, margin, measure

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
    from .fidelity import mask_input, parse_metric

    value, absolute = parse_tolerance(tolerance)
    forced, per = parse_metric(metric)
    if forced == "top1" and not has_labels:
        raise InputError("--metric top1 needs a 'labels' array in --data (or --eval-data)",
                         "add labels to the data or use --metric auto")
    mask = mask_input(model) if model is not None else None
    return Criterion(forced or "auto", value, absolute, tuple(sorted(per.items())), mask)


from .evaluate import SpeedProbe  # noqa: E402  (re-exported: the probe lives with the evaluator)


@dataclass
class Tuning:
    """What optimize() asked for: a criterion (or none), limits, and whether the guard is on."""

    criterion: Criterion | None = None
    max_trials: int = 24
    deadline: float | None = None  # time.monotonic() value
    guard: bool = True
    probe: SpeedProbe | None = None
    trials_run: int = 0
    # search: try every configuration and keep the fastest passing (an explicit --tolerance); False: the default gate
    # of a one-shot recipe, which keeps the recipe's configuration when it passes and searches only to recover a miss
    search: bool = True
    default_gate: bool = False
    # prune/lowrank: search how many layers fit the tolerance; --force applies the recipe's ratios as written (still
    # judged by the gate: a miss exits 5 unless --allow-miss)
    layer_search: bool = True

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


def node_sensitivity(fp32: onnx.ModelProto, quant: onnx.ModelProto, feeds: list[dict], evaluator) -> list[tuple[str, float]]:
    """Quantizable nodes ranked by the error they add: (1 - cosine) on the node's output minus that on its input,
    both models run by the deployed evaluator (integer kernels included)."""
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
    a = evaluator.run(_with_outputs(fp32, tensors), feeds[:8])
    b = evaluator.run(_with_outputs(quant, tensors), feeds[:8])
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
        # compute ops only: Softmax / LayerNorm / residual Add / GELU / pooling inputs stay in float, where outlier-heavy
        # graphs (transformers) lose most under static INT8, while the MatMul/Conv/Gemm work still runs in INT8
        if not base.op_types:
            out.append(dataclasses.replace(base, op_types=["Conv", "MatMul", "Gemm"]))
        out += [dataclasses.replace(base, calibration="entropy"),
                dataclasses.replace(base, calibration="percentile", percentile=99.999),
                dataclasses.replace(base, calibration="percentile", percentile=99.99),
                dataclasses.replace(base, per_channel=not base.per_channel),
                dataclasses.replace(base, format="qoperator" if base.format == "qdq" else "qdq")]
    elif p.name == "int8-dynamic":
        # activation smoothing at other strengths first (all-MiniLM-L6, AVX2: min pooled cosine 0.993-0.996 over
        # alpha 0.5-0.85, 0.987 without), then U8U8 (8-bit weights without VPMADDUBSW saturation: min 0.996-0.998
        # with smoothing on MiniLM but 1.5x instead of 2.05x vs FP32 on AVX2), then per-tensor weights
        alpha, default = getattr(base, "smooth_alpha", 0.0), type(base)().smooth_alpha
        out += [dataclasses.replace(base, smooth_alpha=a) for a in ((0.85, 0.5, 0.0) if alpha > 0 else (default,))]
        if base.weight_type != "uint8":
            out.append(dataclasses.replace(base, weight_type="uint8", smooth_alpha=alpha or default))
        out += [dataclasses.replace(base, per_channel=not base.per_channel)]
    uniq = []
    for c in out:
        if c not in uniq:
            uniq.append(c)
    return uniq


@trial_logged
def _trial(p_cls, cfg, model, ctx, ref_out, feeds, labels, tuning: Tuning, label: dict, before: onnx.ModelProto) -> tuple:
    from .errors import PassError

    from .cache import evaluate, probe_compare, run_pass

    t0 = time.perf_counter()
    try:
        res = run_pass(p_cls(cfg), model, ctx)
    except PassError as e:  # one failing configuration (e.g. an ORT calibrator bug) costs one trial, not the search
        tuning.trials_run += 1
        return None, None, {**label, "ok": False, "error": e.what, "seconds": round(time.perf_counter() - t0, 3)}
    try:
        out = evaluate(ctx.evaluator, res.model, feeds, getattr(ctx, "cache", None))
    except Exception as e:  # a configuration the deployed runtime cannot run costs one trial
        tuning.trials_run += 1
        return None, None, {**label, "ok": False, "error": f"the evaluator cannot run it: {type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}",
                            "seconds": round(time.perf_counter() - t0, 3)}
    judged = tuning.criterion.judge(ref_out, out, labels, feeds)
    rec = {**label, "metric": judged["metric"], "value": judged["value"], "threshold": judged["threshold"],
           "margin": judged["margin"], "ok": judged["ok"], "seconds": round(time.perf_counter() - t0, 3)}
    if judged["ok"] and tuning.probe is not None and tuning.search:
        speed = probe_compare(tuning.probe, before, res.model, getattr(ctx, "cache", None))
        rec["speedup_vs_before"] = speed["median"]
        rec["speed"] = speed
    if getattr(res, "cached", False):
        rec["cached"] = True
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
            if not tuning.search:  # the default gate of a one-shot recipe: its own configuration passed, keep it
                break
        elif best_fail is None or _better(judged, best_fail[1]):
            best_fail = (cfg, judged, res)
    if not passing and best_fail is not None:
        cfg, judged, res = best_fail
        from .cache import _memo_key, feeds_digest, memo_json, model_digest
        from .data import Samples

        cache = getattr(ctx, "cache", None)
        skey = _memo_key({"kind": "sensitivity", "fp32": model_digest(model), "quant": model_digest(res.model),
                          "feeds": feeds_digest(Samples(list(feeds[:8]))), "evaluator": ctx.evaluator.to_dict()}) if cache else ""
        ranking = [tuple(r) for r in memo_json(cache, "sensitivity", skey,
                                               lambda: node_sensitivity(model, res.model, feeds, ctx.evaluator))]
        found, misses = fallback_search(p_cls, p, cfg, ranking, model, ctx, ref_out, feeds, labels, tuning, trials)
        if found is not None:
            passing.append(found)
        for c, j, r in misses:
            if _better(j, best_fail[1]):
                best_fail = (c, j, r)
    if not passing and p.name == "int8-static" and not tuning.exhausted():
        # last recovery: dynamic INT8 (weights only, activations quantized per run) often holds where static cannot
        from .passes import get_pass

        dyn = get_pass("int8-dynamic")
        res_d, judged_d, rec = _trial(dyn, dyn.Config(), model, ctx, ref_out, feeds, labels, tuning,
                                      {"config": {"recovered_with": "int8-dynamic"}}, model)
        trials.append(rec)
        if judged_d is not None and judged_d["ok"]:
            res_d.notes.append("static INT8 missed the tolerance in every configuration tried: recovered with dynamic "
                               "INT8 (int8-dynamic defaults)")
            passing.append((rec.get("speedup_vs_before", 0.0), res_d, judged_d, rec))
        elif judged_d is not None and _better(judged_d, best_fail[1]):
            best_fail = (None, judged_d, res_d)
    if passing:
        res, judged, rec, why = pick(passing)
        rec["chosen"] = True
        res.notes.append(f"tolerance: {tuning.criterion.describe()}: {judged['metric']} {judged['value']:.5g} "
                         f"(threshold {judged['threshold']:.5g}); {why} ({len(passing)} passing of {len(trials)} trials)")
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


def fallback_search(p_cls, p, cfg, ranking, model, ctx, ref_out, feeds, labels, tuning: Tuning, trials: list):
    """The fewest most-sensitive nodes to keep in float so that the criterion holds, in O(log n) validations: the
    ranking (per-node error attribution, measured once) is assumed monotone enough that keeping the top k+1 in float
    is at least as accurate as the top k. Gallop k = 1, 2, 4, ... until one passes, then bisect between the last
    miss and that pass, so every k is reachable (not only 1, 2, 3, 4, 8, ...). Returns the passing
    (speed, result, judged, record) with the smallest k found (or None), and the misses as (config, judged, result)."""
    n = len(ranking)
    misses: list[tuple] = []
    results: dict[int, tuple] = {}

    def attempt(k: int):
        excluded = [name for name, _ in ranking[:k]]
        cfg_k = dataclasses.replace(cfg, exclude_nodes=list(cfg.exclude_nodes) + excluded)
        res_k, judged_k, rec = _trial(p_cls, cfg_k, model, ctx, ref_out, feeds, labels, tuning,
                                      {"config": _diff(cfg, p.config), "fallback_float": excluded, "k": k}, model)
        trials.append(rec)
        ok = judged_k is not None and judged_k["ok"]
        if judged_k is not None and not ok:
            misses.append((cfg_k, judged_k, res_k))
        results[k] = (ok, res_k, judged_k, rec)
        return ok

    lo, hi = 0, None  # largest k known to miss, smallest k known to pass
    k = 1
    while k <= n and not tuning.exhausted():
        if attempt(k):
            hi = k
            break
        lo = k
        k = n if k * 2 > n and k < n else k * 2
    while hi is not None and hi - lo > 1 and not tuning.exhausted():
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    if hi is None:
        return None, misses
    ok, res_k, judged_k, rec = results[hi]
    rec["search"] = (f"k = float-kept nodes of {n} ranked: gallop then bisect, {len(results)} validations; smallest "
                     f"passing k = {hi}" + (f" (k = {lo} missed)" if lo else ""))
    return (rec.get("speedup_vs_before", 0.0), res_k, judged_k, rec), misses


def pick(passing: list[tuple]) -> tuple:
    """(result, judged, record, why) among passing (speed, result, judged, record): the fastest, where speeds are told
    apart by their confidence intervals; candidates whose intervals overlap the fastest's are a tie, and a tie goes to
    the more accurate (larger margin), then the earlier (simpler: the recipe's own configuration comes first)."""
    if len(passing) == 1:
        _, res, judged, rec = passing[0]
        return res, judged, rec, "the first configuration that passed"
    best = max(passing, key=lambda x: x[0])
    blo = (best[3].get("speed") or {}).get("lo", best[0])
    ties = [x for x in passing if (x[3].get("speed") or {}).get("hi", x[0]) >= blo]
    choice = max(ties, key=lambda x: (x[2]["margin"], -passing.index(x)))
    why = "the fastest passing" if choice is best else \
        f"{len(ties)} passing configurations tie on speed (overlapping 95% intervals): kept the most accurate"
    return choice[1], choice[2], choice[3], why


def _better(a: dict, b: dict) -> bool:
    return a["margin"] > b["margin"]


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
            sens.append((name, j["margin"]))
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
