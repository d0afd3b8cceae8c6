"""Graph simplification (onnxsim, falling back to onnxslim) and static-shape fixing.

Simplify's metrics: ``engine`` (the one that ran), ``failed`` (engines that raised first) with their ``errors``,
``ops`` ({op type: count change}) and ``fixed_shapes`` (input -> dims fixed first, {} when none)."""
from __future__ import annotations

from dataclasses import dataclass

import onnx

from ..model import op_histogram
from ..onnxtools import onnxsim as _onnxsim, onnxslim as _onnxslim  # module names: tests swap one for a broken one
from . import Context, Pass, PassConfig, PassResult, option, register_pass


def op_delta(before: onnx.ModelProto, after: onnx.ModelProto) -> dict[str, int]:
    """{'BatchNormalization': -5, 'Gemm': 1, ...}: which op types a rewrite removed or added (changes only)."""
    a, b = op_histogram(before), op_histogram(after)
    return {op: b.get(op, 0) - a.get(op, 0) for op in sorted(set(a) | set(b)) if b.get(op, 0) != a.get(op, 0)}


def histogram_delta(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """['BatchNormalization -5', 'Gemm +1', ...]: ``op_delta`` as note text."""
    return [f"{op} {d:+d}" for op, d in op_delta(before, after).items()]


@dataclass(frozen=True)
class SimplifyConfig(PassConfig):
    engine: str = option("auto", "onnxsim, onnxslim, or auto (onnxsim, then onnxslim if onnxsim fails)",
                         choices=("auto", "onnxsim", "onnxslim"))
    fix_shapes: str = option("auto", "fix input shapes to the --shape values before folding: auto = when --shape was given",
                             choices=("auto", "yes", "no"))


@register_pass
class Simplify(Pass):
    name = "simplify"
    reads_samples = False
    doc = "Constant folding and redundant-node elimination (onnxsim, onnxslim fallback); exact."
    Config = SimplifyConfig
    exact = True

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        cfg: SimplifyConfig = self.config
        notes = []
        fix = cfg.fix_shapes == "yes" or (cfg.fix_shapes == "auto" and bool(ctx.shapes))
        facts: dict = {"fixed_shapes": {k: list(v) for k, v in ctx.shapes.items()} if fix else {}}
        if fix:
            model = _fix_shapes(model, ctx.shapes)
            notes.append("fixed input shapes: " + ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in ctx.shapes.items()))
        engines = ["onnxsim", "onnxslim"] if cfg.engine == "auto" else [cfg.engine]
        errors = []
        for engine in engines:
            try:
                out = _onnxsim(model) if engine == "onnxsim" else _onnxslim(model)
            except Exception as e:  # a failing simplifier is reported, then the next one is tried
                errors.append(f"{engine}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                continue
            if errors:
                notes.append("fell back: " + "; ".join(errors))
            notes.append(f"engine: {engine}")
            delta = op_delta(model, out)
            notes.append("ops: " + (", ".join(f"{op} {d:+d}" for op, d in delta.items()) if delta else "no change"))
            facts.update(engine=engine, failed=[e.split(": ", 1)[0] for e in errors], errors=errors, ops=delta)
            return PassResult(out, modified=bool(delta) or fix, notes=notes, metrics=facts)
        from ..errors import PassError
        raise PassError("simplify: every engine failed (" + "; ".join(errors) + ")",
                        "drop 'simplify' from the recipe or report the model")


def _fix_shapes(model: onnx.ModelProto, shapes: dict) -> onnx.ModelProto:
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_input_shape_fixed

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name, dims in shapes.items():
        make_input_shape_fixed(m.graph, name, list(dims))
    fix_output_shapes(m)
    return m


@dataclass(frozen=True)
class FixShapesConfig(PassConfig):
    shapes: dict[str, list[int]] = option({}, "input name -> static shape; empty = the --shape values")


@register_pass
class FixShapes(Pass):
    name = "fix-shapes"
    reads_samples = False
    doc = "Make symbolic input dims static (from the option or --shape) so later passes can fold shapes."
    Config = FixShapesConfig
    exact = True

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        shapes = {k: tuple(v) for k, v in (self.config.shapes or ctx.shapes).items()}
        if not shapes:
            return PassResult(model, modified=False, notes=["no shapes given (--shape or the 'shapes' option): nothing fixed"])
        return PassResult(_fix_shapes(model, shapes), notes=[
            "fixed: " + ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())])
