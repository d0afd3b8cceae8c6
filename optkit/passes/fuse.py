"""Operator fusion through maintained rule sets.

- transformers: onnxruntime.transformers' optimizer (Attention, LayerNorm, GELU, SkipLayerNorm, bias fusions);
- convolutional / MLP graphs: onnxslim's fusion patterns (Conv+BN, Conv+Add, Conv+Mul, Pad+Conv,
  MatMul+Add -> Gemm, ...).
The pass log says which fusions fired and which did not; the metrics say the same as facts: ``model_type`` (and
``detected``), ``fired`` ({fused op: count}), ``missed`` (fusions that found no pattern), ``graph_patterns``
(whether onnxslim's patterns ran) and ``ops`` ({op type: count change} of the whole pass).
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from . import Context, Pass, PassConfig, PassResult, option, register_pass
from .simplify import op_delta

_TRANSFORMER_TYPES = ("bert", "bart", "gpt2", "vit", "clip", "t5", "phi", "conformer", "swin")
_REPORTED = ("EmbedLayerNormalization", "Attention", "MultiHeadAttention", "SkipLayerNormalization",
             "LayerNormalization", "BiasGelu", "Gelu", "FastGelu", "GemmFastGelu")


def looks_like_transformer(model: onnx.ModelProto) -> bool:
    ops = {n.op_type for n in model.graph.node}
    has_norm = "LayerNormalization" in ops or {"ReduceMean", "Pow", "Sqrt"} <= ops or "SkipLayerNormalization" in ops
    return "Softmax" in ops and "MatMul" in ops and has_norm


@dataclass(frozen=True)
class FuseConfig(PassConfig):
    model_type: str = option("auto", "transformer family for ORT's optimizer; auto = detect (bert-style encoder) or none",
                             choices=("auto", "none") + _TRANSFORMER_TYPES)
    num_heads: int = option(0, "attention heads; 0 = let ORT detect from the graph")
    hidden_size: int = option(0, "hidden size; 0 = let ORT detect from the graph")
    attention: bool = option(True, "fuse attention subgraphs into the Attention op")
    gelu_approximation: bool = option(False, "replace Gelu by FastGelu (tanh approximation; changes numerics)")
    graph_patterns: str = option("auto", "onnxslim patterns (Conv+BN, MatMul+Add->Gemm, ...): auto = for non-transformers",
                                 choices=("auto", "yes", "no"))


@register_pass
class Fuse(Pass):
    name = "fuse"
    reads_samples = False
    doc = "Operator fusion: ORT transformer fusions (attention, LayerNorm, GELU, ...) and onnxslim Conv/Gemm patterns; exact."
    Config = FuseConfig
    exact = True

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        cfg: FuseConfig = self.config
        notes: list[str] = []
        mtype = cfg.model_type
        if mtype == "auto":
            mtype = "bert" if looks_like_transformer(model) else "none"
            notes.append(f"model type: {mtype} (detected)")
        facts: dict = {"model_type": mtype, "detected": cfg.model_type == "auto", "fired": {}, "missed": [],
                       "graph_patterns": False}
        out = model
        if mtype != "none":
            out, fired, missed = _ort_transformer_fusion(out, mtype, cfg)
            facts.update(fired=dict(fired), missed=list(missed))
            notes.append("fired: " + (", ".join(f"{k}x{v}" for k, v in fired.items()) or "none"))
            if missed:
                notes.append("did not fire (pattern not found): " + ", ".join(missed))
        if cfg.graph_patterns == "yes" or (cfg.graph_patterns == "auto" and mtype == "none"):
            before = out
            out = _onnxslim_fusion(out)
            delta = op_delta(before, out)
            facts.update(graph_patterns=True, pattern_ops=delta)
            notes.append("onnxslim patterns: " + (", ".join(f"{op} {d:+d}" for op, d in delta.items())
                                                  if delta else "nothing left to fuse"))
        facts["ops"] = op_delta(model, out)
        return PassResult(out, modified=bool(facts["ops"]), notes=notes, metrics=facts)


def _ort_transformer_fusion(model: onnx.ModelProto, mtype: str, cfg: FuseConfig):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = FusionOptions(mtype)
    opts.enable_attention = cfg.attention
    opts.enable_gelu_approximation = cfg.gelu_approximation
    m = onnx.ModelProto()
    m.CopyFrom(model)
    optimized = optimize_model(m, model_type=mtype, num_heads=cfg.num_heads, hidden_size=cfg.hidden_size,
                               optimization_options=opts, opt_level=0, only_onnxruntime=False)
    stats = optimized.get_fused_operator_statistics()
    fired = {k: v for k, v in stats.items() if v}
    missed = [k for k in _REPORTED if k in stats and not stats[k]
              and not (k == "Attention" and not cfg.attention)
              and not (k in ("Gelu", "FastGelu", "GemmFastGelu", "MultiHeadAttention", "LayerNormalization") )]
    out = optimized.model
    # ORT adds the com.microsoft opset import only when saving to a file; declare every domain the nodes use.
    declared = {o.domain for o in out.opset_import}
    for domain in sorted({n.domain for n in out.graph.node} - declared - {"", "ai.onnx"}):
        out.opset_import.append(onnx.helper.make_opsetid(domain, 1))
    return out, fired, missed


def _onnxslim_fusion(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim's pattern fusions on a copy: ``onnxslim.slim`` edits the ModelProto it is given, which changed the
    pipeline's input model (and with it every pass-cache key computed from it: a re-run missed the cache)."""
    import onnxslim

    m = onnx.ModelProto()
    m.CopyFrom(model)
    return onnxslim.slim(m)
