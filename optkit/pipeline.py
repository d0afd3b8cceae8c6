"""Run a recipe's passes in order. What happens around each pass is an instrument (TVM's ``PassInstrument`` idea):

- ``Progress``: a progress line when a pass starts, its seconds when it ends;
- ``NumericsCheck``: the new model run by the deployed evaluator (``ctx.evaluator``) on the check feeds and compared
  with the model before it and with the input; an exact pass that changes numerics fails the run, a lossy one is
  judged against the tolerance;
- ``PerformanceGuard``: a lossy pass that made the model measurably slower is undone, and at the end the input model
  is kept if the result is measurably slower than it.

The tolerance search itself (``optkit.search.tune_pass``) decides what a searched pass returns; the pipeline never
imports a backend.
"""
from __future__ import annotations

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


@dataclass
class PassRun:
    """What instruments see of one pass: the pass, the model before it, its result and (when searched) the outcome,
    its pass-log entry, the passes done before it, and whether it is to be undone."""

    p: Pass
    before: onnx.ModelProto
    entry: dict
    done: list[str]
    result: object = None  # PassResult
    outcome: object = None  # optkit.search.Outcome
    reverted: bool = False


class Instrument:
    """Hooks around a pipeline run; each may write into the pass's log entry. ``after_pass`` may set ``run.reverted``."""

    def start(self, model: onnx.ModelProto) -> None: ...
    def before_pass(self, run: PassRun) -> None: ...
    def after_pass(self, run: PassRun) -> None: ...
    def finish(self, out: PipelineResult, original: onnx.ModelProto) -> None: ...


def run_model(model: onnx.ModelProto, feeds: list[dict], threads: int = 1, evaluator=None) -> list[dict]:
    """Outputs of ``model`` on ``feeds`` as the deployed backend computes them (``optkit.evaluate``)."""
    from .evaluate import Evaluator

    return (evaluator or Evaluator(threads=threads)).run(model, feeds)


class Progress(Instrument):
    def __init__(self, total: int):
        self.total, self.i, self.t0 = total, 0, 0.0

    def before_pass(self, run: PassRun) -> None:
        self.i += 1
        step("pass %d/%d %s: started", self.i, self.total, run.p.name)
        self.t0 = time.perf_counter()

    def after_pass(self, run: PassRun) -> None:
        run.entry["seconds"] = round(time.perf_counter() - self.t0, 3)


class PerformanceGuard(Instrument):
    """A pass meant to speed things up that made the model slower (the 95% interval shows it) is undone."""

    def __init__(self, tuning, ctx: Context):
        self.tuning, self.ctx = tuning, ctx

    def after_pass(self, run: PassRun) -> None:
        t, p = self.tuning, run.p
        if p.exact or not run.result.modified:
            return
        chosen = next((r.get("speed") for r in run.outcome.trials if r.get("chosen")), None) \
            if run.outcome is not None and run.outcome.trials else None
        speed = chosen or probe_compare(t.probe, run.before, run.result.model, self.ctx.cache)
        run.entry["guard"] = {"speedup_vs_before": speed["median"], "interval": [speed["lo"], speed["hi"]],
                              "rounds": speed["rounds"], "verdict": speed["verdict"]}
        if speed["verdict"] != "slower":  # only a slowdown the intervals can show is reverted
            return
        run.reverted = True
        run.entry["status"] = "reverted"
        run.entry["notes"].append(f"performance guard: {speed['median']:.2f}x vs the model before this pass (95% "
                                  f"interval {speed['lo']:.2f}-{speed['hi']:.2f}x, slower), so the pass was reverted; "
                                  "--force keeps it")

    def finish(self, out: PipelineResult, original: onnx.ModelProto) -> None:
        if not any(e.get("status") == "ok" and e.get("modified") for e in out.log):
            return
        keep_input_if_slower(out, original, probe_compare(self.tuning.probe, original, out.model, self.ctx.cache))


def keep_input_if_slower(out: PipelineResult, original: onnx.ModelProto, speed: dict) -> None:
    """The final guard: record the result's speed against the input model (a SpeedProbe result) and, when the interval
    shows a slowdown, hand back the input model unchanged."""
    slower = speed["verdict"] == "slower"
    out.final_guard = {"speedup_vs_input": speed["median"], "interval": [speed["lo"], speed["hi"]],
                       "rounds": speed["rounds"], "verdict": speed["verdict"], "kept": not slower}
    if slower:
        out.model, out.outputs, out.missed = original, out.reference_outputs, []
        out.final_guard["note"] = (f"the optimized model ran {speed['median']:.2f}x vs the input model (95% interval "
                                   f"{speed['lo']:.2f}-{speed['hi']:.2f}x, slower): the artifact holds the input "
                                   "model unchanged; --force keeps the optimized one")


class NumericsCheck(Instrument):
    """After every pass, the new model as it will be served, compared with the model before it and with the input."""

    def __init__(self, ctx: Context, feeds: list[dict], labels, criterion):
        self.ctx, self.feeds, self.labels, self.criterion = ctx, feeds, labels, criterion
        self.ref: list[dict] = []
        self.prev: list[dict] = []
        self._pending: list[dict] = []  # the last pass's outputs, until the guard has kept or reverted it

    def start(self, model: onnx.ModelProto) -> None:
        self.ref = self.prev = evaluate(self.ctx.evaluator, model, self.feeds, self.ctx.cache) if self.feeds else []

    def after_pass(self, run: PassRun) -> None:
        if not self.feeds:
            return
        p, entry = run.p, run.entry
        try:
            new_out = evaluate(self.ctx.evaluator, run.result.model, self.feeds, self.ctx.cache)
        except Exception as e:
            raise PassError(f"pass {p.name!r} produced a model the deployed runtime cannot run: {type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}" + _after(run.done),
                            "drop the pass from the recipe or report the model") from e
        vs_prev = compare(self.prev, new_out)
        entry["vs_previous"] = without_outputs(vs_prev)
        entry["vs_input"] = without_outputs(compare(self.ref, new_out))
        acc = top1(new_out, self.labels)
        if acc is not None:
            entry["top1"] = acc
        if p.exact and not within(vs_prev, EXACT_RTOL, EXACT_ATOL, EXACT_MIN_COSINE):
            d = entry["vs_previous"]
            raise PassError(f"pass {p.name!r} should keep numerics but changed them (max-abs {d['max_abs']:.3g}, "
                            f"cosine {d['cosine']:.6f})" + _after(run.done), "drop the pass from the recipe or report the model")
        if self.criterion is not None and not p.exact:
            judged = run.outcome.judged if run.outcome is not None and run.outcome.judged else \
                self.criterion.judge(self.ref, new_out, self.labels, self.feeds)
            entry["tolerance"] = {**judged, "criterion": self.criterion.describe()}
        self._pending = new_out

    def accepted(self, run: PassRun) -> None:
        """The pass stays (not reverted): its outputs are what the next pass is compared with."""
        if self.feeds and not run.reverted:
            self.prev = self._pending


class Pipeline:
    """``Pipeline(passes, ctx).run(model)``: passes run in order; each gets a pass-log entry."""

    def __init__(self, passes: list[Pass], ctx: Context, max_check_feeds: int = 64, tuning=None, eval_samples=None):
        self.passes = passes
        self.ctx = ctx
        self.max_check_feeds = max_check_feeds
        self.tuning = tuning  # optkit.search.Tuning: tolerance search and performance guard (None = neither)
        # feeds for the numerics checks and tolerance judgments; default: the calibration samples (ctx.samples)
        self.eval_samples = eval_samples

    def run(self, model: onnx.ModelProto, on_pass=None) -> PipelineResult:
        samples = self.eval_samples if self.eval_samples is not None else self.ctx.samples
        feeds = samples.feeds[: self.max_check_feeds] if samples is not None else []
        labels = samples.labels[: self.max_check_feeds] if samples is not None and samples.labels else None
        if self.ctx.evaluator is None:
            from .evaluate import Evaluator

            self.ctx.evaluator = Evaluator(threads=self.ctx.threads)
        t = self.tuning
        numerics = NumericsCheck(self.ctx, feeds, labels, t.criterion if t is not None else None)
        instruments: list[Instrument] = [Progress(len(self.passes)), numerics]
        if t is not None and t.guard and t.probe is not None:
            instruments.append(PerformanceGuard(t, self.ctx))
        for i in instruments:
            i.start(model)
        log: list[dict] = []
        done: list[str] = []
        original = model
        for p in self.passes:
            run = PassRun(p, model, {"pass": p.name, "config": p.config.to_dict(), "exact": p.exact,
                                     "nodes_before": len(model.graph.node), "bytes_before": model_bytes(model)}, list(done))
            for i in instruments:
                i.before_pass(run)
            self._apply(run, numerics, labels)
            run.entry["status"] = "ok"
            for i in instruments:
                i.after_pass(run)
            numerics.accepted(run)
            log.append(run.entry)
            done.append(p.name)
            if on_pass is not None:
                on_pass(run.entry)
            model = run.before if run.reverted else run.result.model
        missed = [e["pass"] for e in log if e["status"] == "ok" and not e.get("tolerance", {}).get("ok", True)]
        out = PipelineResult(model, log, numerics.ref, numerics.prev, missed)
        for i in instruments:
            i.finish(out, original)
        return out

    def _apply(self, run: PassRun, numerics: NumericsCheck, labels) -> None:
        """Run the pass (searched when a tolerance asks for it), check the model is valid, fill the log entry."""
        from .search import Judge, tune_pass

        p, model, entry = run.p, run.before, run.entry
        try:
            if self.tuning is not None:
                later = [q.name for q in self.passes[self.passes.index(p) + 1:] if not q.exact]
                judge = Judge(model, self.ctx, numerics.ref, numerics.feeds, labels, self.tuning)
                run.outcome = tune_pass(p, judge, later)
            run.result = run.outcome.result if run.outcome is not None else run_pass(p, model, self.ctx)
        except PassError as e:  # the same class (an Unsupported refusal keeps its exit code 2)
            raise type(e)(f"pass {p.name!r} failed: {e.what}" + _after(run.done), e.hint) from e
        except Exception as e:
            raise PassError(f"pass {p.name!r} failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                            + _after(run.done), "rerun with --debug for the traceback, or drop the pass") from e
        new = run.result.model
        try:
            onnx.checker.check_model(new) if model_bytes(new) < 2_000_000_000 else None
        except Exception as e:
            raise PassError(f"pass {p.name!r} produced an invalid model: {str(e).splitlines()[0][:300]}" + _after(run.done),
                            "report the model; drop the pass to continue") from e
        entry.update({"modified": run.result.modified, "nodes_after": len(new.graph.node), "bytes_after": model_bytes(new),
                      "notes": run.result.notes, **({"metrics": run.result.metrics} if run.result.metrics else {})})
        if getattr(run.result, "cached", False):
            entry["cached"] = True  # answered by the pass cache (optkit.cache): not recomputed
        if run.outcome is not None:
            entry["trials"] = run.outcome.trials
            entry["validations"] = sum(1 for r in run.outcome.trials if "error" not in r and "ok" in r)
            entry["trials_cached"] = sum(1 for r in run.outcome.trials if r.get("cached"))


def _after(done: list[str]) -> str:
    return f" (after: {', '.join(done)})" if done else " (first pass)"


def without_outputs(diff: dict) -> dict:
    return {k: v for k, v in diff.items() if k != "outputs"}
