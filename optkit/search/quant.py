"""The tolerance search of configuration-searchable passes (INT8 static / dynamic): configurations in the pass's
order, then the fewest error-sensitive nodes kept in float, then the pass's alternative (static -> dynamic).

A pass takes part through the ``Configurable`` protocol (``optkit.search.protocols``): ``search_space()``,
``restrict(nodes)`` and ``alternative()``; the search never looks at a pass's name or its config's fields."""
from __future__ import annotations

import numpy as np
import onnx

from ..cache import probe_compare
from ..evaluate import DECISION
from .trials import Judge, Outcome, better, config_diff, pick

QUANT_OPS = {"Conv", "MatMul", "Gemm", "Attention", "ConvTranspose", "Gather", "EmbedLayerNormalization", "LSTM"}
_PASSTHROUGH = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "FastGelu"}


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
    changed = _quantized(quant)
    cands = [n for n in fp32.graph.node if n.op_type in QUANT_OPS and n.name and changed(n)]
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


def _quantized(quant: onnx.ModelProto):
    """``changed(node)``: whether the quantizer changed ``node``: it is gone from the quantized model (QOperator /
    dynamic ops replace it) or reads a DequantizeLinear output there (QDQ). A float activation x activation MatMul the
    quantizer left alone must not be ranked: keeping it in float changes nothing (seen on MiniLM). The quantized
    graph is indexed once, not scanned per node."""
    by_key = {(n.name, n.op_type): n for n in quant.graph.node}
    dq = {o for n in quant.graph.node if n.op_type == "DequantizeLinear" for o in n.output}

    def changed(node) -> bool:
        same = by_key.get((node.name, node.op_type))
        return same is None or any(i in dq for i in same.input)

    return changed


def _ranking(judge: Judge, quantized: onnx.ModelProto) -> list[tuple[str, float]]:
    """node_sensitivity, memoized in the pass cache (a re-run with one option changed does not recompute it)."""
    from ..cache import _memo_key, feeds_digest, memo_json, model_digest
    from ..data import Samples

    cache, ev = getattr(judge.ctx, "cache", None), judge.ctx.evaluator
    key = _memo_key({"kind": "sensitivity", "fp32": model_digest(judge.model), "quant": model_digest(quantized),
                     "feeds": feeds_digest(Samples(list(judge.feeds[:8]))), "evaluator": ev.to_dict()}) if cache else ""
    return [tuple(r) for r in memo_json(cache, "sensitivity", key,
                                        lambda: node_sensitivity(judge.model, quantized, judge.feeds, ev))]


def tune_quantization(p, judge: Judge) -> Outcome:
    from ..errors import PassError

    judge = Judge(ensure_node_names(judge.model), judge.ctx, judge.ref_out, judge.feeds, judge.labels, judge.tuning)
    tuning = judge.tuning
    trials, passing, best_fail = [], [], None
    for cfg in p.search_space():
        if tuning.exhausted() and trials:
            break
        q = type(p)(cfg)
        res, judged, rec = judge.trial(q, {"config": config_diff(cfg, p.config)})
        trials.append(rec)
        if judged is None:
            continue
        if judged["ok"]:
            passing.append((rec.get("speedup_vs_before", 0.0), res, judged, rec))
            if not tuning.search:  # the default gate of a one-shot recipe: its own configuration passed, keep it
                break
        elif best_fail is None or better(judged, best_fail[1]):
            best_fail = (q, judged, res)
    if not passing and best_fail is not None:
        q, judged, res = best_fail
        found, misses = fallback_search(p, q, _ranking(judge, res.model), judge, trials)
        if found is not None:
            passing.append(found)
        for m in misses:
            if better(m[1], best_fail[1]):
                best_fail = m
    alt = p.alternative() if not passing and not tuning.exhausted() else None
    if alt is not None:  # last recovery: e.g. dynamic INT8 (activations quantized per run) where static cannot hold
        res_d, judged_d, rec = judge.trial(alt, {"config": {"recovered_with": alt.name}})
        trials.append(rec)
        if judged_d is not None and judged_d["ok"]:
            res_d.notes.append(f"{p.name} missed the tolerance in every configuration tried: recovered with {alt.name} "
                               f"({alt.name} defaults)")
            passing.append((rec.get("speedup_vs_before", 0.0), res_d, judged_d, rec))
        elif judged_d is not None and (best_fail is None or better(judged_d, best_fail[1])):
            best_fail = (alt, judged_d, res_d)
    if passing:
        probe, cache = tuning.probe, getattr(judge.ctx, "cache", None)
        direct = (lambda a, b: probe_compare(probe, a, b, cache, **DECISION)) if probe is not None and tuning.search \
            else None
        res, judged, rec, why = pick(passing, direct)
        rec["chosen"] = True
        res.notes.append(f"tolerance: {tuning.criterion.describe()}: {judged['metric']} {judged['value']:.5g} "
                         f"(threshold {judged['threshold']:.5g}); {why} ({len(passing)} passing of {len(trials)} trials)")
        if "fallback_float" in rec:
            res.notes.append(f"kept in float (most error-sensitive): {', '.join(rec['fallback_float'])}")
        return Outcome(res, trials, judged, True, rec.get("speedup_vs_before"))
    if best_fail is None:
        raise PassError(f"{p.name}: every configuration failed: " + "; ".join(r["error"] for r in trials if "error" in r)[:600],
                        "exclude the failing node or report the model")
    _, judged, res = best_fail
    next(r for r in trials if r.get("value") == judged["value"])["chosen"] = True
    res.notes.append(f"tolerance MISSED: {tuning.criterion.describe()}: best {judged['metric']} {judged['value']:.5g} "
                     f"(threshold {judged['threshold']:.5g}) after {len(trials)} trials")
    return Outcome(res, trials, judged, False)


def fallback_search(p, q, ranking, judge: Judge, trials: list):
    """The fewest most-sensitive nodes to keep in float (``q.restrict(nodes)``) so that the criterion holds, in
    O(log n) validations: the ranking (per-node error attribution, measured once) is assumed monotone enough that
    keeping the top k+1 in float is at least as accurate as the top k. Gallop k = 1, 2, 4, ... until one passes, then
    bisect between the last miss and that pass, so every k is reachable. Returns the passing (speed, result, judged,
    record) with the smallest k found (or None), and the misses as (pass, judged, result)."""
    n = len(ranking)
    misses: list[tuple] = []
    results: dict[int, tuple] = {}
    tuning = judge.tuning

    def attempt(k: int):
        excluded = [name for name, _ in ranking[:k]]
        q_k = q.restrict(excluded)
        res_k, judged_k, rec = judge.trial(q_k, {"config": config_diff(q.config, p.config), "fallback_float": excluded,
                                                 "k": k})
        trials.append(rec)
        ok = judged_k is not None and judged_k["ok"]
        if judged_k is not None and not ok:
            misses.append((q_k, judged_k, res_k))
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
