"""The verdict rules (optkit/verdict.py): each rule alone, then how they combine."""
from __future__ import annotations

from optkit.verdict import BLOCK, CAVEATS, SHIP, decide, judged_data_label, recipe_sha256, reproduce_record


def _man(**kw) -> dict:
    man = {"pass_log": [{"pass": "fuse", "status": "ok", "exact": True}, {"pass": "int8-static", "status": "ok", "exact": False}],
           "data": {"source": "calib.npz", "path": "/d/calib.npz", "synthetic": False,
                    "eval": {"source": "test.npz", "path": "/d/test.npz", "feeds": 360}},
           "tolerance": {"criterion": "top1 within 1%", "passed": True, "missed_by": [], "judged_on": "test.npz", "trials": 1},
           "guard": {"final": {"speedup_vs_input": 3.1, "interval": [2.9, 3.3], "verdict": "faster", "kept": True}},
           "reproduce": {"command": "optkit optimize m.onnx -r int8-ort", "optkit_version": "0.1.0", "recipe_sha256": "ab" * 32}}
    man.update(kw)
    return man


def _bench(median=3.0, ci=(2.8, 3.2), verdict="faster", cv=0.03, rounds=(2.9, 3.0, 3.1), load=None, **acc) -> dict:
    return {"speedup": {"median": median, "ci95": list(ci), "verdict": verdict, "min": min(rounds), "max": max(rounds),
                        "rounds": list(rounds)},
            "latency": {"reference": {"cv": cv}, "candidate": {"cv": cv}},
            "accuracy": {"feeds": 360, "synthetic": False, "source": "test.npz", "data_path": "/d/test.npz", **acc},
            "load": load or {"before": 0.1, "after": 0.2, "cores": 2}}


def _levels(v):
    return [r["level"] for r in v["reasons"]]


def test_clean_run_ships_and_carries_reproduce():
    v = decide(_man(), _bench())
    assert v["verdict"] == SHIP, v
    assert set(_levels(v)) == {"ok"}
    assert v["reproduce"]["command"].startswith("optkit optimize")


def test_gate_missed_blocks():
    tol = {**_man()["tolerance"], "passed": False, "missed_by": ["int8-static"]}
    v = decide(_man(tolerance=tol), _bench())
    assert v["verdict"] == BLOCK and "MISSED" in v["reasons"][0]["text"]


def test_gate_on_calibration_data_is_a_caveat():
    man = _man(data={"source": "calib.npz", "path": "/d/calib.npz", "eval": {"source": "calib.npz", "path": None}},
               tolerance={**_man()["tolerance"], "judged_on": "calib.npz (calibration data)"})
    v = decide(man, _bench())
    assert v["verdict"] == CAVEATS
    assert any("calibration data" in r["text"] and r["level"] == "caveat" for r in v["reasons"])


def test_lossy_without_gate_is_a_caveat_exact_without_gate_is_ok():
    assert decide(_man(tolerance=None), _bench())["verdict"] == CAVEATS
    exact = _man(tolerance=None, pass_log=[{"pass": "fuse", "status": "ok", "exact": True}])
    assert decide(exact, _bench())["verdict"] == SHIP


def test_speed_tie_is_a_caveat_and_slower_blocks():
    v = decide(_man(), _bench(median=1.02, ci=(0.95, 1.1), verdict="tie", rounds=(0.96, 1.02, 1.08)))
    assert v["verdict"] == CAVEATS and any("not separated from noise" in r["text"] for r in v["reasons"])
    v = decide(_man(), _bench(median=0.8, ci=(0.75, 0.85), verdict="slower", rounds=(0.76, 0.8, 0.84)))
    assert v["verdict"] == BLOCK


def test_speed_from_the_manifest_guard_without_bench():
    v = decide(_man(), None)
    assert v["verdict"] == SHIP and any("performance guard" in r["text"] for r in v["reasons"])
    no_guard = _man(guard={"final": None})
    assert decide(no_guard, None)["verdict"] == CAVEATS  # speed not measured


def test_noise_rules_cv_spread_and_load():
    assert any("CV" in r["text"] for r in decide(_man(), _bench(cv=0.25))["reasons"])
    spread = decide(_man(), _bench(rounds=(1.96, 4.57, 5.75)))
    assert spread["verdict"] == CAVEATS and any("rounds disagree" in r["text"] for r in spread["reasons"])
    loaded = decide(_man(), _bench(load={"before": 5.5, "after": 5.4, "cores": 2}))
    assert loaded["verdict"] == CAVEATS and any("machine loaded" in r["text"] for r in loaded["reasons"])


def test_reverted_and_fallback_are_caveats():
    log = [{"pass": "fp16", "status": "reverted", "exact": False},
           {"pass": "int8-static", "status": "ok", "exact": False,
            "trials": [{"chosen": True, "fallback_float": ["conv1", "conv2"], "config": {}}]}]
    v = decide(_man(pass_log=log), _bench())
    texts = " | ".join(r["text"] for r in v["reasons"])
    assert v["verdict"] == CAVEATS and "fp16 was reverted" in texts and "2 node(s) kept in float" in texts
    rec = [{"pass": "int8-static", "status": "ok", "exact": False,
            "trials": [{"chosen": True, "config": {"recovered_with": "int8-dynamic"}}]}]
    assert any("recovered with int8-dynamic" in r["text"] for r in decide(_man(pass_log=rec), _bench())["reasons"])


def test_bench_accuracy_on_calibration_or_synthetic_data_is_a_caveat():
    b = _bench()
    b["accuracy"]["data_path"] = "/d/calib.npz"
    assert any("calibration data" in r["text"] for r in decide(_man(), b)["reasons"])
    b["accuracy"]["synthetic"] = True
    assert any("synthetic" in r["text"] for r in decide(_man(), b)["reasons"])


def test_reasons_are_ordered_worst_first_and_plain_bench_has_no_gate_rule():
    v = decide(_man(tolerance={**_man()["tolerance"], "passed": False}), _bench(cv=0.3))
    assert _levels(v) == sorted(_levels(v), key=["block", "caveat", "ok"].index)
    plain = decide(None, _bench())
    assert plain["verdict"] == SHIP and plain["reproduce"] is None


def test_recipe_hash_is_stable_and_reproduce_record():
    a = {"name": "x", "passes": [{"fuse": {"a": 1, "b": 2}}]}
    b = {"passes": [{"fuse": {"b": 2, "a": 1}}], "name": "x"}
    assert recipe_sha256(a) == recipe_sha256(b) and len(recipe_sha256(a)) == 64
    r = reproduce_record("optkit optimize m.onnx -r x", a)
    assert set(r) == {"command", "optkit_version", "recipe_sha256"}


def test_judged_data_label():
    assert "held-out" in judged_data_label(_man()["data"])
    assert "calibration" in judged_data_label({"source": "c.npz", "path": "/c.npz", "eval": {"path": None}})
    assert "synthetic" in judged_data_label({"source": "synthetic", "synthetic": True, "eval": {}})
