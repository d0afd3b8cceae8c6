"""The candidate search of auto recipes (optkit.candidates): screen every candidate once, recover only the misses that
could beat the best passing candidate, choose by 95% intervals. The pipeline and the speed probe are stood in for, so
these tests pin the decisions, not ORT timings."""
from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import onnx
import pytest

from optkit import candidates as cmod
from optkit.passes import Context
from optkit.pipeline import PipelineResult
from optkit.search import Criterion, Tuning

REF = [{"y": np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)}]
NEAR = [{"y": np.array([[1.0, 2.0, 3.0, 4.01]], np.float32)}]
FAR = [{"y": np.array([[4.0, 1.0, 3.0, -2.0]], np.float32)}]


class _Pass:
    exact = False

    def __init__(self, config):
        self.config = config
        self.name = config


def _world(table: dict, monkeypatch):
    """table: candidate -> {"screen": (outputs, speed), "recover": (outputs, speed)}; records what ran."""
    ran = []

    class FakePipeline:
        def __init__(self, passes, ctx, tuning=None, eval_samples=None, max_check_feeds=64):
            self.cand, self.phase = passes[0].name, "recover" if tuning.criterion is not None else "screen"

        def run(self, model):
            ran.append((self.cand, self.phase))
            outs, _ = table[self.cand][self.phase]
            m = onnx.ModelProto(doc_string=f"{self.cand}:{self.phase}")
            return PipelineResult(m, [{"pass": self.cand, "exact": False, "status": "ok"}], REF, outs, [])

    def fake_probe(probe, base, cand, cache):
        name, phase = cand.doc_string.split(":")
        s = table[name][phase][1]
        lo, hi = s * 0.97, s * 1.03
        return {"median": s, "lo": lo, "hi": hi, "rounds": 6, "verdict": "faster" if lo > 1 else "slower" if hi < 1 else "tie"}

    monkeypatch.setattr(cmod, "Pipeline", FakePipeline)
    monkeypatch.setattr(cmod, "probe_compare", fake_probe)
    return ran


def _go(table, monkeypatch, deadline=None):
    ran = _world(table, monkeypatch)
    tuning = Tuning(criterion=Criterion("cosine", 0.01), probe=object(), guard=True, deadline=deadline)
    prefix = PipelineResult(onnx.ModelProto(doc_string="input"), [], REF, REF, [])
    evals = SimpleNamespace(feeds=[{"x": np.zeros(1)}], labels=None)
    cands = [(name, [_Pass(name)]) for name in table]
    result, rows = cmod.pick_candidate(prefix, cands, Context(), tuning, prefix.model, None, evals, 64)
    return result, {r["candidate"]: r for r in rows}, ran


def test_only_a_miss_that_could_beat_the_best_is_recovered(monkeypatch):
    table = {"fp32": {"screen": (REF, 1.0)},
             "fast": {"screen": (FAR, 2.0), "recover": (NEAR, 1.8)},  # misses as screened, could win: searched
             "ok": {"screen": (NEAR, 1.5)},
             "slow": {"screen": (FAR, 1.2), "recover": (NEAR, 1.1)}}  # misses, slower than "ok" even as screened
    result, rows, ran = _go(table, monkeypatch)
    assert ("fast", "recover") in ran and ("slow", "recover") not in ran
    assert rows["fast"]["phase"] == "recover" and rows["fast"]["passed"] and rows["fast"]["chosen"]
    assert rows["fast"]["screened"]["passed"] is False
    assert rows["slow"]["phase"] == "screen" and not rows["slow"]["passed"] and "not searched" in rows["slow"]["recovery"]
    assert result.model.doc_string == "fast:recover" and not result.missed
    assert result.final_guard["kept"] and result.final_guard["speedup_vs_input"] == pytest.approx(1.8)


def test_recovery_that_ends_slower_than_the_best_is_not_chosen(monkeypatch):
    table = {"ok": {"screen": (NEAR, 1.5)}, "fast": {"screen": (FAR, 2.0), "recover": (NEAR, 1.2)}}
    result, rows, _ = _go(table, monkeypatch)
    assert rows["ok"]["chosen"] and rows["fast"]["passed"] and not rows["fast"]["chosen"]


def test_nothing_passes_keeps_the_closest_miss_and_says_so(monkeypatch):
    table = {"a": {"screen": (FAR, 2.0), "recover": (FAR, 1.9)}, "b": {"screen": (FAR, 1.5), "recover": (FAR, 1.4)}}
    result, rows, ran = _go(table, monkeypatch)
    assert {("a", "recover"), ("b", "recover")} <= set(ran)  # nothing passed: every miss is worth a search
    assert result.missed  # a miss is never a plain success: optimize raises ToleranceMiss (exit 5) on it
    assert sum(r["chosen"] for r in rows.values()) == 1


def test_a_spent_budget_stops_recovery(monkeypatch):
    table = {"ok": {"screen": (NEAR, 1.1)}, "fast": {"screen": (FAR, 2.0), "recover": (NEAR, 1.9)}}
    answers = iter([False, False, True])  # the budget runs out after the screen
    monkeypatch.setattr(cmod, "_deadline_passed", lambda tuning: next(answers))
    result, rows, ran = _go(table, monkeypatch)
    assert ("fast", "recover") not in ran and rows["fast"]["recovery"] == "not searched: time budget spent"
    assert rows["ok"]["chosen"]


def test_a_budget_spent_before_any_candidate_is_one_clear_error(monkeypatch):
    from optkit.errors import PassError

    table = {"ok": {"screen": (NEAR, 1.1)}}
    with pytest.raises(PassError, match="no candidate ran: ok: time budget spent"):
        _go(table, monkeypatch, deadline=time.monotonic() - 1)


def test_a_slower_choice_keeps_the_input(monkeypatch):
    table = {"only": {"screen": (NEAR, 0.5)}}
    result, rows, _ = _go(table, monkeypatch)
    assert result.final_guard["verdict"] == "slower" and not result.final_guard["kept"]
    assert result.model.doc_string == "input" and result.outputs == REF


def test_screened_judgment_is_in_the_pass_log(monkeypatch):
    table = {"ok": {"screen": (NEAR, 1.5)}}
    result, rows, _ = _go(table, monkeypatch)
    judged = result.log[-1]["tolerance"]
    assert judged["ok"] and judged["threshold"] == pytest.approx(0.99)


def test_simpler_candidates_are_recovered_first(monkeypatch):
    """A compound candidate (two lossy passes) that screened fastest must not spend the budget before the one-pass
    candidate is secured."""
    table = {"fp32": {"screen": (REF, 1.0)},
             "prune-int8": {"screen": (FAR, 2.2), "recover": (FAR, 1.9)},
             "int8": {"screen": (FAR, 1.7), "recover": (NEAR, 1.6)}}
    ran = _world(table, monkeypatch)
    tuning = Tuning(criterion=Criterion("cosine", 0.01), probe=object(), guard=True)
    prefix = PipelineResult(onnx.ModelProto(doc_string="input"), [], REF, REF, [])
    evals = SimpleNamespace(feeds=[{"x": np.zeros(1)}], labels=None)
    cands = [("fp32", [_Pass("fp32")]), ("prune-int8", [_Pass("prune-int8"), _Pass("prune-int8")]),
             ("int8", [_Pass("int8")])]
    result, rows = cmod.pick_candidate(prefix, cands, Context(), tuning, prefix.model, None, evals, 64)
    recovered = [c for c, phase in ran if phase == "recover"]
    assert recovered == ["int8", "prune-int8"]
    assert {r["candidate"]: r for r in rows}["int8"]["chosen"]


def test_a_noisy_tie_is_settled_head_to_head(monkeypatch):
    """fp32 probed 0.34-1.69x against the input overlaps INT8's 1.42-1.59x; timed head to head, INT8 is measurably
    faster, so the tie (which fp32 would win on accuracy) does not stand."""
    from optkit.candidates import choose

    def run(order, name, med, lo, hi, margin, model_tag):
        return (order, name, SimpleNamespace(model=onnx.ModelProto(doc_string=model_tag)),
                {"passed": True, "passes": [name], "speed": {"median": med, "lo": lo, "hi": hi},
                 "metric": {"margin": margin}})

    fp32 = run(0, "fp32", 1.05, 0.34, 1.69, 0.01, "fp32")
    dyn = run(1, "int8-dynamic", 1.52, 1.42, 1.59, 0.007, "dyn")
    chosen, _ = choose([fp32, dyn])  # without head-to-head timing, the noisy tie goes to the more accurate
    assert chosen[1] == "fp32"
    asked = []

    def direct(a, b):
        asked.append((a[1], b[1]))
        return {"median": 1.45, "lo": 1.40, "hi": 1.50, "rounds": 6, "verdict": "faster"}  # b faster than a

    chosen, why = choose([fp32, dyn], direct)
    assert chosen[1] == "int8-dynamic" and asked == [("fp32", "int8-dynamic")]
    assert fp32[3]["vs_fastest"]["verdict"] == "faster"
    # a real tie (head to head holds 1.0) still goes to the more accurate
    chosen, why = choose([fp32, dyn], lambda a, b: {"median": 1.0, "lo": 0.95, "hi": 1.05, "rounds": 6, "verdict": "tie"})
    assert chosen[1] == "fp32" and "head to head" in why
