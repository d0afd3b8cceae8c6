"""``trt-qdq-layout``: rewrite an explicit-QDQ INT8 model into the layout TensorRT strongly typed networks take.

The one rewrite (``optkit.qdq_layout.fold_int32_bias_dq``): a DequantizeLinear of a constant int32 tensor (a bias that
onnxruntime.quantization quantized) becomes the float32 initializer it computes, ``(x - zero_point) * scale``, the
arithmetic ONNX Runtime does. The pass then reports what still keeps the model from TensorRT (``check_trt_model``)
in its notes and metrics, without failing: the trt backend is the one that refuses (it verifies before building).
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..qdq_layout import check_trt_model, fold_int32_bias_dq
from . import Context, Pass, PassConfig, PassResult, register_pass


@dataclass(frozen=True)
class TrtQdqLayoutConfig(PassConfig):
    pass


@register_pass
class TrtQdqLayout(Pass):
    name = "trt-qdq-layout"
    reads_samples = False
    doc = ("Fold int32 bias DequantizeLinear nodes into float32 initializers (TensorRT dequantizes only int8/fp8/int4) "
           "and report what else keeps the QDQ layout from TensorRT; exact.")
    Config = TrtQdqLayoutConfig
    exact = True

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        out, changes = fold_int32_bias_dq(model)
        problems = check_trt_model(out)
        notes = list(changes) or ["no int32 bias DequantizeLinear to fold"]
        if problems:
            notes.append(f"still not TensorRT-ready ({len(problems)} problem(s)): " + "; ".join(problems[:3]))
        return PassResult(out if changes else model, modified=bool(changes), notes=notes,
                          metrics={"folded": len(model.graph.node) - len(out.graph.node), "trt_problems": len(problems)})
