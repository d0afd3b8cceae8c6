"""``prune``: the pass. Finds the prunable layers, measures what it needs (through ``ctx.evaluate``), chooses the
kept channels, compensates biases and rewrites the graph; the notes and metrics say what happened and why.

Metrics (for programs and tests; the notes say the same for people): ``layers`` (kept/total/ratio/importance_lost
per prunable layer), ``params_before``/``params_after``, ``skipped`` ({layer: {"reason": code, "via": node, "op":
op type, ...}}: ``skip_list``, ``residual``, ``graph_output``, ``grouped_conv``, ``unsupported_op``,
``mixes_channels``, ...), ``kept_whole`` (layers the ratio/min_channels left whole), ``compensation`` ({"applied":
bool, "why_not": ``disabled`` | ``no_samples`` | ``synthetic`` | ``measure_failed``, "consumers", "samples"}),
``importance`` ({"method", "scope", "bn_scaled"}), ``attention`` (attention MatMuls seen and left as they are) and
``unknown_names`` (skip/layers entries that name no node)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import onnx

from ...errors import PassError
from ...model import EXTERNAL_DATA_THRESHOLD, param_count, tensor_bytes
from .. import Context, Pass, PassConfig, PassResult, option, register_pass
from .compensate import _compensation
from .graph import _Graph
from .importance import _activation_importance, _channel_stats, keep_counts
from .layers import _analyze, _Layer, prunable_layers
from .rewrite import _apply


@dataclass(frozen=True)
class PruneConfig(PassConfig):
    ratio: float = option(0.3, "fraction of output channels/features removed per layer (0 = no-op)", min=0, lt=1)
    importance: str = option("l1", "how a filter/neuron is ranked: L1 or L2 norm of its weights, or activation: the "
                                   "output error of removing it, from its activation variance on --data and the weights "
                                   "reading it (needs real samples)", choices=("l1", "l2", "activation"))
    scope: str = option("layer", "layer: remove `ratio` of every layer; global: one threshold over all layers' "
                                 "normalized importances (still honouring min_channels)", choices=("layer", "global"))
    min_channels: int = option(8, "never keep fewer channels/features than this in a layer", min=1)
    multiple_of: int = option(1, "round kept counts up to a multiple of this (e.g. 8 or 16 for SIMD/tensor cores)",
                              min=1)
    skip: tuple[str, ...] = option((), "layer (node) names never pruned")
    layers: dict[str, float] = option({}, "per-layer ratio overrides by node name (used by the accuracy tuner)",
                                     min=0, lt=1)
    compensate: bool = option(True, "fold the mean activation of each removed channel into the next layer's bias "
                                    "(measured on real samples from --data; skipped for synthetic samples or none)")
    max_samples: int = option(16, "sample feeds used to measure those means", min=1)


def _looks_like_attention(gr: _Graph) -> bool:
    for n in gr.nodes:
        if n.op_type == "Attention" or n.op_type == "MultiHeadAttention":
            return True
        if n.op_type == "MatMul" and len(n.input) == 2 and gr.const(n.input[0]) is None and gr.const(n.input[1]) is None:
            return True
    return False


@register_pass
class Prune(Pass):
    name = "prune"
    doc = "Structured pruning: remove low-norm Conv channels and MLP/FFN neurons, shrinking every consumer (not exact)."
    Config = PruneConfig
    exact = False

    # the tolerance search (optkit.search.protocols.Layered)
    def layer_candidates(self, model: onnx.ModelProto) -> list[str]:
        """Layers --tolerance searches over: prunable and not in ``skip``."""
        return [n for n in prunable_layers(model) if n not in self.config.skip]

    def layer_errors(self, result: PassResult) -> dict[str, float] | None:
        """The share of each layer's channel importance that the pruning removed (0 for a layer kept whole)."""
        layers = (result.metrics or {}).get("layers")
        return {n: float(m.get("importance_lost", 0.0)) for n, m in layers.items()} if layers else None

    def only(self, layers: list[str], among: list[str]) -> "Prune":
        cfg = self.config
        return type(self)(dataclasses.replace(cfg, skip=(*cfg.skip, *(n for n in among if n not in layers))))

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        cfg: PruneConfig = self.config
        before = param_count(model)
        if cfg.ratio == 0 and not any(v > 0 for v in cfg.layers.values()):
            return PassResult(model, modified=False, notes=["ratio 0: nothing pruned"],
                              metrics={"layers": {}, "params_before": before, "params_after": before})
        samples = getattr(ctx, "samples", None)
        real = samples is not None and len(samples) > 0 and not getattr(samples, "synthetic", False)
        if cfg.importance == "activation" and not real:
            raise PassError("prune: importance 'activation' needs real sample inputs"
                            + (" (the samples are synthetic)" if samples is not None and len(samples) else ""),
                            "pass --data with representative inputs, or use importance l1/l2")
        gr = _Graph(model, getattr(ctx, "shapes", None))
        layers, skipped = _analyze(gr)
        notes: list[str] = []
        facts: dict = {"params_before": before, "compensation": {"applied": False}}
        by_name = {layer.name: layer for layer in layers}
        unknown = [n for n in list(cfg.layers) + list(cfg.skip) if n not in by_name and n not in skipped
                   and n not in gr.names]
        notes += [f"no node named {name!r} (in skip/layers): ignored" for name in unknown]
        active = [layer for layer in layers if layer.name not in cfg.skip]
        stats = self._stats(gr, active, ctx, real, notes, facts)
        imp: dict[str, np.ndarray] = {}
        for layer in active:
            v = _activation_importance(gr, layer, stats) if cfg.importance == "activation" else None
            imp[layer.name] = v if v is not None else (layer.importance_l2 if cfg.importance == "l2" else layer.importance_l1)
        chosen, facts["layers"], facts["kept_whole"] = self._choose(active, imp, notes)
        facts["skipped"] = _skips(cfg, by_name, skipped, notes)
        facts["unknown_names"], facts["attention"] = unknown, _looks_like_attention(gr)
        if facts["attention"]:
            notes.append("attention-head pruning not implemented (attention MatMuls left as they are)")
        if not chosen:
            notes.append("nothing pruned")
            return PassResult(model, modified=False, notes=notes, metrics={**facts, "params_after": before})
        comp = self._compensate(gr, chosen, stats, samples, real, notes, facts)
        out = _apply(gr, chosen, comp)
        _check_shapes(model, out)
        after = param_count(out)
        notes.append(self._importance_note(gr, chosen, facts))
        notes.append(f"params {before:,} \u2192 {after:,} ({(after - before) / max(before, 1):+.1%})")
        return PassResult(out, modified=True, notes=notes, metrics={**facts, "params_after": after})

    def _compensate(self, gr: _Graph, chosen: list, stats: dict, samples, real: bool, notes: list[str], facts: dict):
        """The bias compensation of the removed channels (None when it does not apply); notes and facts say why."""
        cfg: PruneConfig = self.config
        comp, why_not = None, facts["compensation"].get("why_not")
        if cfg.compensate and stats:
            comp = _compensation(gr, chosen, {k: v[0] for k, v in stats.items()})
            n = min(len(samples), cfg.max_samples)
            facts["compensation"] = {"applied": True, "consumers": comp.layers, "samples": n}
            notes.append(f"bias compensation: the mean of each removed channel folded into {comp.layers} consumer "
                         f"bias(es), measured on {n} feed(s) from {samples.source or 'samples'}")
        elif cfg.compensate and not real:
            synthetic = samples is not None and len(samples) > 0
            why_not = "synthetic" if synthetic else "no_samples"
            notes.append("bias compensation skipped: " + ("the samples are synthetic (their activation means would "
                         "mislead it); pass --data" if synthetic else "no samples"))
        elif not cfg.compensate:
            why_not = "disabled"
        if comp is None and why_not != "measure_failed":  # that one keeps the error _stats recorded
            facts["compensation"] = {"applied": False, "why_not": why_not or "no_statistics"}
        return comp

    def _stats(self, gr: _Graph, active: list[_Layer], ctx: Context, real: bool, notes: list[str], facts: dict) -> dict:
        """Per-channel (mean, variance) of what the consumers read, when importance or compensation needs them."""
        cfg: PruneConfig = self.config
        want = cfg.importance == "activation" or (cfg.compensate and real)
        tensors = {t: c for layer in active for _i, t, c in layer.plan.terminals}
        if not want or not tensors:
            return {}
        try:
            return _channel_stats(gr, tensors, ctx.samples, cfg.max_samples, ctx)
        except Exception as e:  # e.g. samples that do not fit the model: prune without statistics
            if cfg.importance == "activation" and isinstance(e, PassError):
                raise
            if cfg.importance == "activation":
                raise PassError(f"prune: measuring activations failed: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''}", "use importance l1/l2") from e
            notes.append(f"bias compensation skipped: measuring activations failed ({type(e).__name__})")
            facts["compensation"] = {"applied": False, "why_not": "measure_failed", "error": type(e).__name__}
            return {}

    def _choose(self, active: list[_Layer], imp: dict, notes: list[str]) -> tuple[list, dict, list]:
        """[(layer, kept channel indices)] for the layers that lose channels, per-layer metrics, the layers kept
        whole."""
        cfg: PruneConfig = self.config
        counts = keep_counts(active, imp, cfg)
        chosen, metrics_layers, whole = [], {}, []
        for layer in active:
            k = counts[layer.name]
            keep = np.sort(np.argsort(-imp[layer.name], kind="stable")[:k]).astype(np.int64)
            total_imp = float(np.sum(imp[layer.name]))
            lost = 1.0 - float(np.sum(imp[layer.name][keep])) / total_imp if total_imp > 0 else 0.0
            metrics_layers[layer.name] = {"kept": int(k), "total": int(layer.n), "ratio": round(1 - k / layer.n, 4),
                                          "importance_lost": round(lost, 6)}
            if k < layer.n:
                chosen.append((layer, keep))
                notes.append(f"{layer.name} {layer.n}\u2192{k} ({cfg.importance})")
            else:
                whole.append(layer.name)
        if whole:
            notes.append(f"kept whole (min_channels={cfg.min_channels}, multiple_of={cfg.multiple_of} or ratio): "
                         + ", ".join(whole))
        return chosen, metrics_layers, whole

    def _importance_note(self, gr: _Graph, chosen: list, facts: dict) -> str:
        cfg: PruneConfig = self.config
        bn = cfg.importance != "activation" and any(gr.nodes[i].op_type == "BatchNormalization"
                                                    for layer, _ in chosen for i, *_ in layer.plan.slices)
        facts["importance"] = {"method": cfg.importance, "scope": cfg.scope, "bn_scaled": bn}
        if cfg.importance == "activation":
            return f"importance: activation variance x consumer weight norm on the samples, scope {cfg.scope}"
        return (f"importance: {cfg.importance} norm of each filter/neuron"
                + (" times the scale of the BatchNormalization after it" if bn else "") + f", scope {cfg.scope}")


def _skips(cfg: PruneConfig, by_name: dict, skipped: dict, notes: list[str]) -> dict[str, dict]:
    """{layer: facts} for the skip list and the layers the analysis refused; one note each."""
    out: dict[str, dict] = {}
    for name in cfg.skip:
        if name in by_name:
            notes.append(f"skipped {name}: in the skip list")
            out[name] = {"reason": "skip_list"}
    for name, fail in skipped.items():
        notes.append(f"skipped {name}: {fail}")
        out[name] = dict(fail.facts)
    return out


def _check_shapes(model: onnx.ModelProto, out: onnx.ModelProto) -> None:
    """Strict shape inference on the result; a failure the input did not have is prune's fault."""
    try:
        if tensor_bytes(out) < EXTERNAL_DATA_THRESHOLD:
            onnx.shape_inference.infer_shapes(out, strict_mode=True)
    except Exception as e:
        try:
            onnx.shape_inference.infer_shapes(model, strict_mode=True)
        except Exception:
            pass  # the input does not pass strict inference either (custom ops): nothing to learn
        else:
            raise PassError(f"prune produced inconsistent shapes: {str(e).splitlines()[0][:300]}",
                            "add the layer named in the message to skip, and report the model") from e
