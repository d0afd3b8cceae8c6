"""Float16 conversion (onnxruntime.transformers.float16), IO types kept by default."""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..model import toposort
from . import Context, Pass, PassConfig, PassResult, option, register_pass

# Ops that overflow or lose too much in FP16, or have no FP16 kernel on common EPs.
DEFAULT_BLOCKLIST = ["Range", "NonMaxSuppression", "TopK", "RoiAlign", "Resize", "Upsample",
                     "RandomNormalLike", "RandomUniformLike", "RandomNormal", "RandomUniform", "CumSum"]


@dataclass(frozen=True)
class Fp16Config(PassConfig):
    keep_io_types: bool = option(True, "keep float32 graph inputs/outputs (casts inserted inside)")
    op_blocklist: tuple[str, ...] = option(DEFAULT_BLOCKLIST, "op types left in float32")
    node_blocklist: tuple[str, ...] = option((), "node names left in float32")


@register_pass
class Fp16(Pass):
    name = "fp16"
    reads_samples = False
    doc = "Convert float32 weights and compute to float16, keeping IO types and an op blocklist in float32."
    Config = Fp16Config
    exact = False

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        cfg: Fp16Config = self.config
        m = onnx.ModelProto()
        m.CopyFrom(model)
        out = convert_float_to_float16(m, keep_io_types=cfg.keep_io_types, op_block_list=list(cfg.op_blocklist),
                                       node_block_list=list(cfg.node_blocklist) or None)
        toposort(out)  # input casts are appended at the end of the node list
        casts = sum(1 for n in out.graph.node if n.op_type == "Cast") - sum(1 for n in model.graph.node if n.op_type == "Cast")
        blocked = sorted({n.op_type for n in model.graph.node if n.op_type in cfg.op_blocklist})
        notes = [f"casts added: {casts}", "kept float32: " + (", ".join(blocked) if blocked else "none")]
        return PassResult(out, notes=notes, metrics={"casts_added": casts, "kept_float32": blocked})
