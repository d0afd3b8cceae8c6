"""optkit tune (optkit.serving): parsing, the search on replayed tables, and end-to-end behaviour on a tiny model with
a tiny budget (behaviour, never timing)."""
from __future__ import annotations

import json

import pytest

from optkit import serving as sv
from optkit.errors import InputError

FAST = {"rounds": 1, "round_time": 0.02, "trial_timeout": 60}


# -- parsing ---------------------------------------------------------------------------------------------------
def test_parse_slo():
    (t,) = sv.parse_slo("p99<20ms")
    assert (t.metric, t.op, t.limit) == ("p99", "<", 20.0)
    terms = sv.parse_slo("p50<=5ms, p99 < 0.1s, throughput>=500")
    assert [(x.metric, x.op, x.limit) for x in terms] == [("p50", "<=", 5.0), ("p99", "<", 100.0),
                                                        ("throughput", ">=", 500.0)]
    assert sv.parse_slo("p90<250us")[0].limit == pytest.approx(0.25)
    assert sv.parse_slo(None) == [] and sv.parse_slo("") == []
    for bad in ("p98<20ms", "p99 20ms", "p99>20ms", "throughput>5ms", "p99<0ms", "latency<3"):
        with pytest.raises(InputError):
            sv.parse_slo(bad)


def test_slo_check_and_violation():
    lt, le = sv.parse_slo("p99<20ms")[0], sv.parse_slo("p99<=20ms")[0]
    at = {"p99_ms": 20.0}
    assert lt.miss(at) and not le.miss(at)  # strict vs non-strict at the bound
    assert lt.violation(at) > 0 and le.violation(at) <= 0
    assert lt.violation({"p99_ms": 30.0}) == pytest.approx(0.5)
    assert lt.violation({"p99_ms": 10.0}) == pytest.approx(-0.5)
    thr = sv.parse_slo("throughput>=100")[0]
    assert thr.miss({"throughput": 50.0}) and not thr.miss({"throughput": 150.0})


def test_parse_budget():
    assert sv.parse_tune_budget("30", 100) == {"trials": 30, "seconds": None}
    assert sv.parse_tune_budget("30 trials", 100) == {"trials": 30, "seconds": None}
    assert sv.parse_tune_budget(7, 100) == {"trials": 7, "seconds": None}
    assert sv.parse_tune_budget("10m", 100) == {"trials": None, "seconds": 600.0}
    assert sv.parse_tune_budget("90s", 100)["seconds"] == 90.0
    assert sv.parse_tune_budget("30 trials|10m", 100) == {"trials": 30, "seconds": 600.0}
    assert sv.parse_tune_budget("25%", 24) == {"trials": 6, "seconds": None}
    assert sv.parse_tune_budget(None, 24) == {"trials": 6, "seconds": None}  # default: 25%, at least min(6, space)
    assert sv.parse_tune_budget(None, 4)["trials"] == 4
    assert sv.parse_tune_budget(None, 100)["trials"] == 25
    for bad in ("", "ten", "0", "10x", "-5m"):
        with pytest.raises(InputError):
            sv.parse_tune_budget(bad, 24)


def test_parse_lists():
    assert sv.parse_int_list("8,1, 2,2", "batch") == [1, 2, 8]
    assert sv.parse_names("ORT, tvm", "backends", ("ort", "tvm", "trt")) == ["ort", "tvm"]
    for bad in ("0,1", "a", ""):
        with pytest.raises(InputError):
            sv.parse_int_list(bad, "threads")
    with pytest.raises(InputError):
        sv.parse_names("fp8", "precisions", sv.PRECISIONS)


# -- pareto and the search on replayed tables ------------------------------------------------------------------
def _pt(key, p99, thr, status="ok"):
    return {"key": key, "p99_ms": p99, "throughput": thr, "status": status}


def test_pareto_front_on_synthetic_points():
    pts = [_pt("a", 1, 100), _pt("b", 2, 300), _pt("c", 3, 250), _pt("d", 4, 500), _pt("e", 4, 400),
           _pt("f", 0.5, 50, "infeasible"), _pt("g", 9, 900, "failed"), _pt("h", 2, 300)]
    front = [p["key"] for p in sv.pareto_front(pts)]
    # c is beaten by b, e by d; failed points are not measurements; equal points (b, h) are both on the front
    assert front == ["f", "a", "b", "h", "d"]


def synthetic_table(variants=("ort-fp32", "ort-int8"), threads=(1, 2, 4), batches=(1, 2, 4, 8, 16, 32)) -> dict:
    """A plausible serving surface: throughput grows with batch (saturating) and threads (sub-linearly), int8 is ~2.5x
    faster; latency = batch / throughput. One point is the unique best."""
    table = {}
    for v in variants:
        speed = 2.5 if v.endswith("int8") else 1.0
        for t in threads:
            for b in batches:
                thr = 100 * speed * (t ** 0.8) * (b / (b + 4)) * 1.6
                lat = b / thr * 1e3
                table[sv.trial_key(v, t, b)] = {"status": "ok", "p50_ms": lat, "p90_ms": lat * 1.1,
                                                "p99_ms": lat * 1.2, "mean_ms": lat, "throughput": thr,
                                                "throughput_per_core": thr / t}
    return table


def _space(table):
    keys = [k.split("/") for k in table]
    return sv.Space(sorted({k[0] for k in keys}), sorted({int(k[1][1:]) for k in keys}),
                    sorted({int(k[2][1:]) for k in keys}))


def _spec(v, t, b):
    return sv.TrialSpec(v, t, b)


@pytest.mark.parametrize("sampler", ["tpe", pytest.param("gp", marks=pytest.mark.slow)])
def test_search_finds_the_optimum_of_a_replay_table(sampler):
    if sampler == "gp":
        pytest.importorskip("torch")
    table = synthetic_table()
    space = _space(table)  # 36 points
    hits, seeds = 0, (range(5) if sampler == "tpe" else range(3))  # GP fits a model per ask: seconds each
    for seed in seeds:
        ex = sv.ReplayExecutor(table)
        res = sv.search(space, ex, _spec, objective="throughput", budget_trials=12, sampler=sampler, seed=seed)
        assert len(res["trials"]) == 12 and len(ex.calls) == 12 == len(set(ex.calls))  # never re-measured
        best = sv.best_trial(res["trials"], "throughput")
        hits += best["key"] == "ort-int8/t4/b32"
    assert hits >= len(seeds) // 2 + 1


def test_search_with_slo_records_infeasible_and_respects_it():
    table = synthetic_table()
    slo = sv.parse_slo("p99<60ms")
    ex = sv.ReplayExecutor(table)
    res = sv.search(_space(table), ex, _spec, objective="throughput", slo=slo, sampler="grid")
    assert res["stopped"] == "space exhausted" and len(res["trials"]) == 36
    infeasible = [t for t in res["trials"] if t["status"] == "infeasible"]
    assert infeasible and all(t["p99_ms"] >= 60 and t["reasons"] and t["violation"] > 0 for t in infeasible)
    best = sv.best_trial(res["trials"], "throughput")
    feasible = [v for v in table.values() if v["p99_ms"] < 60]
    assert best["p99_ms"] < 60 and best["throughput"] == max(v["throughput"] for v in feasible)
    # latency and cost objectives pick what they should
    assert sv.best_trial(res["trials"], "latency")["batch"] == 1
    cost = [sv.classify(t, [], "cost") for t in res["trials"]]
    assert sv.best_trial(cost, "cost")["threads"] == 1


def test_search_stops_when_the_space_is_exhausted_and_uses_the_cache():
    table = synthetic_table(variants=("ort-int8",), threads=(1,), batches=(1, 2, 4))
    cache = {"ort-int8/t1/b2": table["ort-int8/t1/b2"]}
    ex = sv.ReplayExecutor(table)
    res = sv.search(_space(table), ex, _spec, budget_trials=50, sampler="tpe", seed=0, cache=cache)
    assert res["stopped"] == "space exhausted" and len(res["trials"]) == 3
    assert sorted(ex.calls) == ["ort-int8/t1/b1", "ort-int8/t1/b4"]  # the cached point is not measured again
    assert {t["key"]: t["source"] for t in res["trials"]}["ort-int8/t1/b2"] == "cache"


def test_failed_trial_costs_one_trial_in_the_search():
    table = synthetic_table(variants=("ort-int8",), threads=(1, 2), batches=(1, 2, 4))
    table["ort-int8/t2/b4"] = {"status": "failed", "error": "child process killed by SIGKILL"}
    res = sv.search(_space(table), sv.ReplayExecutor(table), _spec, sampler="grid")
    st = {t["key"]: t["status"] for t in res["trials"]}
    assert st["ort-int8/t2/b4"] == "failed" and sum(s == "ok" for s in st.values()) == 5
    assert sv.best_trial(res["trials"], "throughput")["key"] == "ort-int8/t2/b2"


# -- end to end on a tiny model --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One tune run on the tiny CNN (ort fp32+int8, threads 1, batch 1,2): 4 points, budget 3, one child crash."""
    from conftest import cnn_data, tiny_cnn
    from fault_workers import crashing_trial_worker

    d = tmp_path_factory.mktemp("serving")
    model, data = tiny_cnn(d / "tiny.onnx"), cnn_data(d / "calib.npz", n=16)
    mp = pytest.MonkeyPatch()
    mp.setattr(sv.executors, "WORKER", crashing_trial_worker(d / "workers", ["ort-fp32/t1/b2"]))
    warnings = []
    try:
        res = sv.tune(model, backends="ort,trt", precisions="fp32,int8", threads="1", batches="1,2", slo="p99<60s",
                      budget="3 trials", tolerance="99%", data=data, output=d / "out", warn=warnings.append,
                      sampler="grid", **FAST)
    finally:
        mp.undo()
    return {"res": res, "model": model, "data": data, "dir": d, "warnings": warnings}


def test_tune_writes_serving_json_with_documented_fields(tuned):
    res, d = tuned["res"], tuned["dir"]
    path = d / "out" / "tiny" / "tune" / sv.SERVING
    assert res["serving_json"] == str(path) and path.is_file() and (path.parent / sv.SERVING_SVG).is_file()
    doc = json.loads(path.read_text())
    assert doc["schema"] == sv.SERVING_SCHEMA
    for k in ("model", "recommended", "objective", "slo", "tolerance", "pareto", "space", "search", "protocol",
              "variants", "unavailable", "trials", "environment"):
        assert k in doc, k
    rec = doc["recommended"]
    for k in ("backend", "precision", "threads", "batch", "artifact", "expected"):
        assert k in rec, k
    assert set(rec["expected"]) >= {"p50_ms", "p99_ms", "throughput", "throughput_per_core"}
    assert (rec["backend"], rec["threads"]) == ("ort", 1) and rec["batch"] in (1, 2)
    assert (d / "out" / "tiny" / "tune" / "variants" / f"ort-{rec['precision']}" / "1" / "manifest.json").is_file()
    assert doc["pareto"] and all(p["status"] in ("ok", "infeasible") for p in doc["pareto"])
    assert "<svg" in (path.parent / sv.SERVING_SVG).read_text()


def test_tune_lists_an_unavailable_backend(tuned):
    from optkit.backends import get_backend

    if get_backend("trt", check=False).status()["ok"]:
        pytest.skip("TensorRT runs here: no backend is unavailable")
    res = tuned["res"]
    assert [u["backend"] for u in res["unavailable"]] == ["trt"] and res["unavailable"][0]["reason"]
    assert res["space"]["variants"] == ["ort-fp32", "ort-int8"]
    assert any("trt" in w for w in tuned["warnings"])


def test_tune_crash_in_a_child_costs_one_trial(tuned):
    res = tuned["res"]
    st = {t["key"]: t for t in res["trials"]}
    assert len(res["trials"]) == 3  # the budget, in grid order
    assert st["ort-fp32/t1/b2"]["status"] == "failed" and "SIGKILL" in st["ort-fp32/t1/b2"]["error"]
    assert st["ort-fp32/t1/b1"]["status"] == "ok" and st["ort-int8/t1/b1"]["status"] == "ok"
    assert res["search"]["failed"] == 1 and res["recommended"] is not None


def test_tune_reuses_variants_and_trials(tuned):
    """A second run with a bigger budget rebuilds nothing and measures only the points not measured before."""
    res = sv.tune(tuned["model"], backends="ort", precisions="fp32,int8", threads="1", batches="1,2", slo="p99<60s",
                  budget="4", tolerance="99%", data=tuned["data"], output=tuned["dir"] / "out", sampler="grid", **FAST)
    assert all(v["built"] is False for v in res["variants"])
    src = {t["key"]: t["source"] for t in res["trials"]}
    assert src["ort-fp32/t1/b1"] == "cache" and src["ort-int8/t1/b1"] == "cache"
    assert src["ort-fp32/t1/b2"] == "local" and src["ort-int8/t1/b2"] == "local"  # the crashed one is retried
    assert res["search"]["measured"] == 2 and res["search"]["from_cache"] == 2


def test_tune_infeasible_slo_and_accuracy(tmp_path, tiny_cnn, cnn_data):
    """An SLO nothing meets: every trial is recorded infeasible and nothing is recommended. A variant outside the
    tolerance is listed as inaccurate and never timed."""
    from optkit.backends import get_backend

    model, data = tiny_cnn(tmp_path / "m.onnx"), cnn_data(tmp_path / "c.npz", n=8, labels=False)
    res = sv.tune(model, precisions="fp32,int8", threads="1", batches="1", slo="p50<1us", tolerance="0%",
                  budget=4, data=data, output=tmp_path / "o", sampler="grid", **FAST)
    var = {v["variant"]: v for v in res["variants"]}
    assert var["ort-fp32"]["status"] == "ok"
    assert var["ort-int8"]["status"] == "inaccurate" and "not timed" in var["ort-int8"]["reason"]
    assert res["space"]["variants"] == ["ort-fp32"] and [t["key"] for t in res["trials"]] == ["ort-fp32/t1/b1"]
    assert res["trials"][0]["status"] == "infeasible" and "p50" in res["trials"][0]["reasons"][0]
    assert res["recommended"] is None and "no trial met the SLO" in res["notes"]
    assert get_backend("ort").status()["ok"]


def test_fixed_batch_model_is_tuned_at_its_batch(tmp_path, tiny_cnn):
    model = tiny_cnn(tmp_path / "fixed.onnx", batch=2)
    notes = []
    with pytest.raises(InputError, match="fixed to 2"):
        sv.tune(model, precisions="fp32", threads="1", batches="1,4", output=tmp_path / "o", **FAST)
    res = sv.tune(model, precisions="fp32", threads="1", batches="1,2", budget=2, output=tmp_path / "o",
                  warn=notes.append, **FAST)
    assert res["space"]["batches"] == [2] and res["space"]["excluded"] == [
        {"batch": 1, "reason": "the model's batch dim is fixed to 2"}]
    assert any("fixed batch of 2" in n for n in notes)
    assert res["recommended"]["batch"] == 2


def test_tune_on_an_artifact_writes_serving_json_into_it(tmp_path, tiny_cnn, cnn_data):
    import optkit

    model, data = tiny_cnn(tmp_path / "a.onnx"), cnn_data(tmp_path / "c.npz", n=8)
    man = optkit.optimize(model, "int8-ort", data=data, output=tmp_path / "o", force=True)
    res = sv.tune(man["artifact"], precisions="int8", threads="1", batches="1", budget=1, **FAST)
    assert res["serving_json"] == str(tmp_path / "o" / "a" / "1" / sv.SERVING)
    assert res["variants"][0]["source"] == "the given artifact" and res["recommended"]["artifact"] == man["artifact"]
    assert not (tmp_path / "o" / "a" / "1" / "tune" / "variants").exists()  # nothing rebuilt


def test_bad_arguments_fail_before_any_work(tmp_path, tiny_cnn):
    model = tiny_cnn(tmp_path / "m.onnx")
    for kw in ({"objective": "speed"}, {"sampler": "anneal"}, {"slo": "p99>3ms"}, {"tolerance": "x"},
               {"precisions": "fp8"}, {"executor": "dask"}, {"workers": 0}):
        with pytest.raises(InputError):
            sv.tune(model, output=tmp_path / "o", **kw)
    assert not (tmp_path / "o").exists()
