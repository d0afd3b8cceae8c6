"""The Ray executor and the fleet command on a real local Ray cluster (``ray.init(num_cpus=2)``, two trial slots of
one CPU each: placement groups, actors pinned to their slot's CPU).

Marked ``ray`` (excluded from the default run: starting the cluster and its workers takes tens of seconds here);
``make test-ray`` runs them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from optkit import serving as sv

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

FAST = {"rounds": 1, "round_time": 0.02, "trial_timeout": 60}


@pytest.fixture(scope="module")
def cluster():
    from optkit.ray_executor import SLOT

    ray.init(num_cpus=2, resources={SLOT: 2}, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(__import__("conftest").REPO), "OPTKIT_NO_CACHE": "1"}})
    yield
    ray.shutdown()


def _table():
    from test_serving import synthetic_table

    return synthetic_table(variants=("ort-fp32", "ort-int8"), threads=(1, 2), batches=(1, 2, 4))


def test_replay_protocol_through_ray(cluster):
    from test_serving import _space, _spec

    from optkit.ray_executor import RayExecutor

    table = _table()
    table["ort-int8/t2/b4"] = {"status": "failed", "error": "child process killed by SIGKILL"}
    ex = RayExecutor(replay=table)
    try:
        assert ex.workers == 2 and ex.name == "ray"
        via_ray = sv.search(_space(table), ex, _spec, sampler="grid")
        local = sv.search(_space(table), sv.ReplayExecutor(table), _spec, sampler="grid")
    finally:
        ex.close()
    strip = lambda ts: sorted((t["key"], t["status"], t.get("throughput")) for t in ts)  # noqa: E731
    assert strip(via_ray["trials"]) == strip(local["trials"])
    assert {t["source"] for t in via_ray["trials"]} == {"ray"}
    assert sv.best_trial(via_ray["trials"], "throughput")["key"] == sv.best_trial(local["trials"], "throughput")["key"]


def _real_spec(tmp_path, variant_key=("ort-fp32", 1, 1)):
    from conftest import tiny_cnn

    model = tiny_cnn(tmp_path / "tiny.onnx")
    feed = tmp_path / "feed.npz"
    np.savez(feed, input=np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32))
    v, t, b = variant_key
    payload = {"model": str(model), "options": {}, "feed": str(feed),
               "protocol": {"rounds": 1, "round_runs": 10, "round_time": 0.02, "warmup_runs": 5, "warmup_time": 0.01}}
    return sv.TrialSpec(v, t, b, payload=payload, timeout=60)


def test_one_real_trial_and_a_crash_costs_one_trial(cluster, tmp_path, monkeypatch):
    from optkit.ray_executor import RayExecutor

    spec = _real_spec(tmp_path)
    crash = sv.TrialSpec("ort-fp32", 1, 2, payload=spec.payload, timeout=60)
    ex = RayExecutor()
    try:
        (ok,) = ex.run_many([spec])
        assert ok["status"] == "ok" and ok["p50_ms"] > 0 and ok["throughput"] > 0, ok
        assert ok["node"]  # measured on a Ray node, from the shipped copy of the model
        from fault_workers import crashing_trial_worker

        monkeypatch.setattr(sv.executors, "WORKER", crashing_trial_worker(tmp_path / "workers", [crash.key]))
        bad, again = ex.run_many([crash, spec])
        assert bad["status"] == "failed" and "SIGKILL" in bad["error"], bad
        assert again["status"] == "ok"  # the actor survived its child's crash
        assert len(ex.shipped) == 2  # model and feed went to the object store once
    finally:
        ex.close()


def test_tune_with_executor_ray(cluster, tmp_path):
    from conftest import cnn_data, tiny_cnn

    model, data = tiny_cnn(tmp_path / "tiny.onnx"), cnn_data(tmp_path / "calib.npz", n=8)
    res = sv.tune(model, backends="ort", precisions="fp32", threads="1", batches="1,2", budget="2 trials",
                  tolerance="99%", data=data, output=tmp_path / "out", executor="ray", sampler="grid", **FAST)
    assert res["search"]["executor"] == "ray"
    assert [t["source"] for t in res["trials"]] == ["ray", "ray"] and all(t["status"] == "ok" for t in res["trials"])
    assert res["recommended"] is not None


def test_fleet_over_three_models_one_crashing(cluster, tmp_path, monkeypatch):
    from conftest import cnn_data, tiny_cnn

    from optkit.fleet import CRASH_ENV, optimize_many

    d = tmp_path / "models"
    d.mkdir()
    for i in range(3):
        tiny_cnn(d / f"m{i}.onnx", seed=i)
    cnn_data(d / "m0.npz", n=8)
    monkeypatch.setenv(CRASH_ENV, "m2")
    seen = []
    res = optimize_many(d, "fp32-ort", output=tmp_path / "out", executor="ray",
                        on_done=lambda row, done, total: seen.append((row["name"], done, total)))
    rows = {r["name"]: r for r in res["rows"]}
    assert rows["m0"]["status"] == "ok" and rows["m1"]["status"] == "ok", rows
    assert rows["m2"]["status"] == "failed" and "SIGKILL" in rows["m2"]["error"]
    assert rows["m0"]["data"].endswith("m0.npz") and rows["m1"]["data"] is None
    assert sorted(n for n, _, _ in seen) == ["m0", "m1", "m2"] and seen[-1][1:] == (3, 3)
    assert (tmp_path / "out" / "m0" / "1" / "manifest.json").is_file()
    assert (tmp_path / "out" / "m1" / "1" / "model.onnx").is_file()
    assert json.loads(open(res["summary_path"]).read())["failed"] == 1 and res["executor"] == "ray"


def test_slots_are_pinned_to_disjoint_cpus(cluster, tmp_path):
    """Two slots (placement groups of {CPU: 1, trial_slot: 1}): each actor's threads and the trial children it starts
    are pinned to its own CPU, the two never share one; two trials run at once each report their slot's CPU, and a
    trial asking for more threads than its slot has fails instead of timing an oversubscribed run."""
    import os

    from optkit.ray_executor import RayExecutor

    ex = RayExecutor()
    try:
        assert ex.workers == 2 and ex.slot_cpus == 1 and len(ex.groups) == 2
        aff = ex.affinities()
        cpus = [a["cpus"] for a in aff]
        assert all(len(c) == 1 for c in cpus) and not set(cpus[0]) & set(cpus[1]), aff
        assert set(cpus[0]) | set(cpus[1]) <= os.sched_getaffinity(0)
        for a in aff:
            assert a["threads"] == a["cpus"] and a["child"] == a["cpus"], a  # every thread, and what it spawns
        spec = _real_spec(tmp_path)
        wide = sv.TrialSpec("ort-fp32", 2, 1, payload=spec.payload, timeout=60)
        r1, r2, too_wide = ex.run_many([spec, sv.TrialSpec("ort-fp32", 1, 2, payload=spec.payload, timeout=60), wide])
        assert r1["status"] == "ok" and r2["status"] == "ok", (r1, r2)
        assert r1["cpus"] != r2["cpus"] and {tuple(r1["cpus"]), tuple(r2["cpus"])} == {tuple(c) for c in cpus}
        assert too_wide["status"] == "failed" and "2 threads" in too_wide["error"] and len(too_wide["cpus"]) == 1
        ex._replace(0)  # a replaced actor takes the CPU block its predecessor held (the flock died with it)
        assert sorted(a["cpus"][0] for a in ex.affinities()) == sorted(c[0] for c in cpus)
    finally:
        ex.close()
    assert not ex.groups
