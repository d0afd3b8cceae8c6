"""Run a recipe's passes in order; after each one, compare the new model with the one before on the samples."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import onnx

from .cache import evaluate, probe_compare, run_pass
from .errors import PassError
from .log import step
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
    missed: list[str] = field(default_factory=list)  # passes whose best candidate misses the tolerance
    final_guard: dict | None = None


def run_model(model: onnx.ModelProto, feeds: list[dict], threads: int = 1, evaluator=None) -> list[dict]:
    """Outputs of ``model`` on ``feeds`` as the deployed backend computes them (``optkit.evaluate``)."""
    from .evaluate import Evaluator

    return (evaluator or Evaluator(threads=threads)).run(model, feeds)


class Pipeline:
    """``Pipeline(passes, ctx).run(model)``: passes run in order; each gets a pass-log entry."""

    def __init__(self, passes: list[Pass], ctx: Context, max_check_feeds: int = 64, tuning=None, eval_samples=None):
        self.passes = passes
        self.ctx = ctx
        self.max_check_feeds = max_check_feeds
        self.tuning = tuning  # optkit.tune.Tuning: tolerance search and performance guard (None = neither)
        # feeds for the numerics checks and tolerance judgments; default: the calibration samples (ctx.samples)
        self.eval_samples = eval_samples

    def run(self, model: onnx.ModelProto, on_pass=None) -> PipelineResult:
        samples = self.eval_samples if self.eval_samples is not None else self.ctx.samples
        feeds = samples.feeds[: self.max_check_feeds] if samples is not None else []
        labels = samples.labels[: self.max_check_feeds] if samples is not None and samples.labels else None
        if self.ctx.evaluator is None:
            from .evaluate import Evaluator

            self.ctx.evaluator = Evaluator(threads=self.ctx.threads)
        ref_out = evaluate(self.ctx.evaluator, model, feeds, self.ctx.cache) if feeds else []
        prev_out = ref_out
        log: list[dict] = []
        done: list[str] = []
        original = model
        for p in self.passes:
            entry = {"pass": p.name, "config": p.config.to_dict(), "exact": p.exact,
                     "nodes_before": len(model.graph.node), "bytes_before": model_bytes(model)}
            step("pass %d/%d %s: started", self.passes.index(p) + 1, len(self.passes), p.name)
            t0 = time.perf_counter()
            outcome = None
            try:
                outcome = self._tuned(p, model, ref_out, feeds, labels)
                result = outcome.result if outcome is not None else run_pass(p, model, self.ctx)
            except PassError as e:  # the same class (an Unsupported refusal keeps its exit code 2)
                raise type(e)(f"pass {p.name!r} failed: {e.what}" + _after(done), e.hint) from e
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
            if getattr(result, "cached", False):
                entry["cached"] = True  # answered by the pass cache (optkit.cache): not recomputed
            if outcome is not None:
                entry["trials"] = outcome.trials
                entry["validations"] = sum(1 for r in outcome.trials if "error" not in r and "ok" in r)
                entry["trials_cached"] = sum(1 for r in outcome.trials if r.get("cached"))
            if feeds:
                try:
                    new_out = evaluate(self.ctx.evaluator, new, feeds, self.ctx.cache)
                except Exception as e:
                    raise PassError(f"pass {p.name!r} produced a model the deployed runtime cannot run: "
                                    f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
                                    + _after(done), "drop the pass from the recipe or report the model") from e
                vs_prev = compare(prev_out, new_out)
                entry["vs_previous"] = without_outputs(vs_prev)
                entry["vs_input"] = without_outputs(compare(ref_out, new_out))
                acc = top1(new_out, labels)
                if acc is not None:
                    entry["top1"] = acc
                if p.exact and not within(vs_prev, EXACT_RTOL, EXACT_ATOL, EXACT_MIN_COSINE):
                    d = entry["vs_previous"]
                    raise PassError(
                        f"pass {p.name!r} should keep numerics but changed them (max-abs {d['max_abs']:.3g}, "
                        f"cosine {d['cosine']:.6f})" + _after(done),
                        "drop the pass from the recipe or report the model")
                crit = self.tuning.criterion if self.tuning is not None else None
                if crit is not None and not p.exact:
                    judged = outcome.judged if outcome is not None and outcome.judged else crit.judge(ref_out, new_out, labels, feeds)
                    entry["tolerance"] = {**judged, "criterion": crit.describe()}
            entry["status"] = "ok"
            if self._guard_reverts(p, model, new, result, outcome, entry):
                new = model
            else:
                prev_out = new_out if feeds else prev_out
            log.append(entry)
            done.append(p.name)
            if on_pass is not None:
                on_pass(entry)
            model = new
        missed = [e["pass"] for e in log if e["status"] == "ok" and not e.get("tolerance", {}).get("ok", True)]
        out = PipelineResult(model, log, ref_out, prev_out, missed)
        self._final_guard(out, original)
        return out

    def _tuned(self, p: Pass, model, ref_out, feeds, labels):
        """Run ``p`` through the tolerance search when one is asked for and the pass supports it."""
        t = self.tuning
        if t is None or t.criterion is None or not feeds or p.exact:
            return None
        from . import tune

        if p.tuning_kind == "quantization":
            return tune.tune_quantization(p, model, self.ctx, ref_out, feeds, labels, t)
        if p.tuning_kind == "layers" and not t.layer_search:
            return None
        if p.tuning_kind == "layers":
            later_lossy = [q.name for q in self.passes[self.passes.index(p) + 1:] if not q.exact]
            if later_lossy:
                # leave half of the tolerance to the lossy passes after this one (e.g. INT8 after pruning): pruning
                # to the full 1% left static INT8 nothing on the encoder, and the pipeline missed the tolerance
                t = dataclasses.replace(t, criterion=dataclasses.replace(t.criterion, tolerance=t.criterion.tolerance / 2))
                out = tune.tune_layers(p, p.layer_candidates(model), model, self.ctx, ref_out, feeds, labels, t)
                out.result.notes.append(f"searched within half the tolerance, leaving the rest to {', '.join(later_lossy)}")
                self.tuning.trials_run = t.trials_run  # the copy counted the trials
                return out
            return tune.tune_layers(p, p.layer_candidates(model), model, self.ctx, ref_out, feeds, labels, t)
        return None

    def _guard_reverts(self, p: Pass, before, after, result, outcome, entry) -> bool:
        """Performance guard: a pass meant to speed things up that made the model slower is undone."""
        t = self.tuning
        if t is None or not t.guard or t.probe is None or p.exact or not result.modified:
            return False
        speed = (outcome.trials and next((r.get("speed") for r in outcome.trials if r.get("chosen")), None)) \
            if outcome is not None else None
        speed = speed or probe_compare(t.probe, before, after, self.ctx.cache)
        entry["guard"] = {"speedup_vs_before": speed["median"], "interval": [speed["lo"], speed["hi"]],
                          "rounds": speed["rounds"], "verdict": speed["verdict"]}
        if speed["verdict"] != "slower":  # only a slowdown the intervals can show is reverted
            return False
        entry["status"] = "reverted"
        entry["notes"].append(f"performance guard: {speed['median']:.2f}x vs the model before this pass (95% interval "
                              f"{speed['lo']:.2f}-{speed['hi']:.2f}x, slower), so the pass was reverted; --force keeps it")
        return True

    def _final_guard(self, out: PipelineResult, original: onnx.ModelProto) -> None:
        t = self.tuning
        if t is None or not t.guard or t.probe is None or not any(e.get("status") == "ok" and e.get("modified") for e in out.log):
            return
        speed = probe_compare(t.probe, original, out.model, self.ctx.cache)
        slower = speed["verdict"] == "slower"
        out.final_guard = {"speedup_vs_input": speed["median"], "interval": [speed["lo"], speed["hi"]],
                           "rounds": speed["rounds"], "verdict": speed["verdict"], "kept": not slower}
        if slower:
            out.model = original
            out.outputs = out.reference_outputs
            out.missed = []
            out.final_guard["note"] = (f"the optimized model ran {speed['median']:.2f}x vs the input model (95% interval "
                                       f"{speed['lo']:.2f}-{speed['hi']:.2f}x, slower): the artifact holds the input "
                                       "model unchanged; --force keeps the optimized one")


def _after(done: list[str]) -> str:
    return f" (after: {', '.join(done)})" if done else " (first pass)"


def without_outputs(diff: dict) -> dict:
    return {k: v for k, v in diff.items() if k != "outputs"}
