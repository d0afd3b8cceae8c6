"""Run a recipe's passes in order; after each one, compare the new model with the one before on the samples."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import onnx

from .backends.ort import OrtSession
from .errors import PassError
from .metrics import compare, top1, within
from .model import model_bytes
from .passes import Context, Pass

# What an "exact" pass (simplify, fuse) may change: float reassociation and fused kernels, not more.
EXACT_RTOL = 1e-3
EXACT_ATOL = 1e-4
EXACT_MIN_COSINE = 0.99999


@dataclass
class PipelineResult:
    model: onnx.ModelProto
    log: list[dict] = field(default_factory=list)
    reference_outputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


def run_model(model: onnx.ModelProto, feeds: list[dict], threads: int = 1) -> list[dict]:
    with OrtSession(model, threads=threads, level="basic") as s:
        return [s.run(f) for f in feeds]


class Pipeline:
    """``Pipeline(passes, ctx).run(model)``: passes run in order; each gets a pass-log entry."""

    def __init__(self, passes: list[Pass], ctx: Context, max_check_feeds: int = 64):
        self.passes = passes
        self.ctx = ctx
        self.max_check_feeds = max_check_feeds

    def run(self, model: onnx.ModelProto, on_pass=None) -> PipelineResult:
        samples = self.ctx.samples
        feeds = samples.feeds[: self.max_check_feeds] if samples is not None else []
        labels = samples.labels[: self.max_check_feeds] if samples is not None and samples.labels else None
        ref_out = run_model(model, feeds, self.ctx.threads) if feeds else []
        prev_out = ref_out
        log: list[dict] = []
        done: list[str] = []
        for p in self.passes:
            entry = {"pass": p.name, "config": p.config.to_dict(), "exact": p.exact,
                     "nodes_before": len(model.graph.node), "bytes_before": model_bytes(model)}
            t0 = time.perf_counter()
            try:
                result = p.run(model, self.ctx)
            except PassError as e:
                raise PassError(f"pass {p.name!r} failed: {e.what}" + _after(done), e.hint) from e
            except Exception as e:
                raise PassError(f"pass {p.name!r} failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                                + _after(done), "rerun with --debug for the traceback, or drop the pass") from e
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            new = result.model
            try:
                onnx.checker.check_model(new) if model_bytes(new) < 2_000_000_000 else None
            except Exception as e:
                raise PassError(f"pass {p.name!r} produced an invalid model: {str(e).splitlines()[0][:300]}" + _after(done),
                                "report the model; drop the pass to continue") from e
            entry.update({"modified": result.modified, "nodes_after": len(new.graph.node), "bytes_after": model_bytes(new),
                          "notes": result.notes, **({"metrics": result.metrics} if result.metrics else {})})
            if feeds:
                new_out = run_model(new, feeds, self.ctx.threads)
                entry["vs_previous"] = _short(compare(prev_out, new_out))
                entry["vs_input"] = _short(compare(ref_out, new_out))
                acc = top1(new_out, labels)
                if acc is not None:
                    entry["top1"] = acc
                if p.exact and not within(compare(prev_out, new_out), EXACT_RTOL, EXACT_ATOL, EXACT_MIN_COSINE):
                    d = entry["vs_previous"]
                    raise PassError(
                        f"pass {p.name!r} should keep numerics but changed them (max-abs {d['max_abs']:.3g}, "
                        f"cosine {d['cosine']:.6f})" + _after(done),
                        "drop the pass from the recipe or report the model")
                prev_out = new_out
            entry["status"] = "ok"
            log.append(entry)
            done.append(p.name)
            if on_pass is not None:
                on_pass(entry)
            model = new
        return PipelineResult(model, log, ref_out, prev_out)


def _after(done: list[str]) -> str:
    return f" (after: {', '.join(done)})" if done else " (first pass)"


def _short(diff: dict) -> dict:
    return {k: v for k, v in diff.items() if k != "outputs"}
