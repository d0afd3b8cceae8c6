"""The content-addressed pass cache: hits and misses, corruption, concurrent writers, LRU pruning, --no-cache."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import time

import onnx
import pytest

from conftest import cnn_data, run_cli, tiny_cnn
from optkit.cache import PassCache, run_pass
from optkit.data import load_samples
from optkit.model import load_model
from optkit.passes import Context, get_pass


@pytest.fixture(autouse=True)
def cache_on(monkeypatch, tmp_path):
    monkeypatch.delenv("OPTKIT_NO_CACHE", raising=False)
    monkeypatch.setenv("OPTKIT_CACHE_DIR", str(tmp_path / "cache"))


def _setup(tmp_path, n=8):
    m = load_model(tiny_cnn(tmp_path / "cnn.onnx"))
    data = cnn_data(tmp_path / "calib.npz", n=n)
    return m, load_samples(data, m)


def test_hit_miss_and_key_parts(tmp_path):
    m, samples = _setup(tmp_path)
    cache = PassCache(tmp_path / "c")
    ctx = Context(samples=samples, cache=cache)
    p = get_pass("int8-static")()
    r1 = run_pass(p, m, ctx)
    assert not getattr(r1, "cached", False) and cache.misses == 1
    r2 = run_pass(get_pass("int8-static")(), m, ctx)
    assert r2.cached and cache.hits == 1
    assert r2.model.SerializeToString() == r1.model.SerializeToString()
    assert r2.notes == r1.notes and r2.metrics == r1.metrics
    # another config, other data, or another ISA: a miss each
    run_pass(get_pass("int8-static")({"per_channel": False}), m, ctx)
    m2, samples2 = _setup(tmp_path / "b", n=4)
    run_pass(get_pass("int8-static")(), m, Context(samples=samples2, cache=cache))
    run_pass(get_pass("int8-static")(), m, Context(samples=samples, cache=cache, cpu={"isa": {"avx512_vnni": False}}))
    assert cache.hits == 1 and cache.misses == 4
    # a pass that does not read the samples ignores them in its key
    run_pass(get_pass("simplify")(), m, ctx)
    assert run_pass(get_pass("simplify")(), m, Context(samples=samples2, cache=cache)).cached


def test_corrupt_entry_is_dropped_and_recomputed(tmp_path):
    m, samples = _setup(tmp_path)
    cache = PassCache(tmp_path / "c")
    ctx = Context(samples=samples, cache=cache)
    run_pass(get_pass("int8-dynamic")(), m, ctx)
    (f, _), = cache.entries()
    blob = bytearray(f.read_bytes())
    blob[-10] ^= 0xFF
    f.write_bytes(bytes(blob))
    r = run_pass(get_pass("int8-dynamic")(), m, ctx)
    assert not getattr(r, "cached", False) and cache.dropped == 1
    onnx.checker.check_model(r.model)
    assert run_pass(get_pass("int8-dynamic")(), m, ctx).cached  # rewritten whole
    f.write_bytes(b"garbage")  # a torn file
    assert not getattr(run_pass(get_pass("int8-dynamic")(), m, ctx), "cached", False)


def _writer(root, model_path, i, q):
    from optkit.cache import PassCache, run_pass
    from optkit.model import load_model
    from optkit.passes import Context, get_pass

    c = PassCache(root)
    m = load_model(model_path)
    ok = 0
    for _ in range(5):
        r = run_pass(get_pass("int8-dynamic")(), m, Context(cache=c))
        onnx.checker.check_model(r.model)
        ok += 1
    q.put(ok)


def test_concurrent_writers(tmp_path):
    path = tiny_cnn(tmp_path / "cnn.onnx")
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "c"), str(path), i, q)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sum(q.get(timeout=5) for _ in procs) == 15
    cache = PassCache(tmp_path / "c")
    assert len(cache.entries()) == 1
    assert not list((tmp_path / "c" / "passes").glob("*/.tmp-*"))
    r = run_pass(get_pass("int8-dynamic")(), load_model(path), Context(cache=cache))
    assert r.cached


def test_lru_pruning(tmp_path):
    m, samples = _setup(tmp_path)
    cache = PassCache(tmp_path / "c")
    ctx = Context(samples=samples, cache=cache)
    cfgs = [{"per_channel": True}, {"per_channel": False}, {"per_channel": True, "reduce_range": "yes"}]
    for i, cfg in enumerate(cfgs):
        run_pass(get_pass("int8-dynamic")(cfg), m, ctx)
        time.sleep(0.05)  # entry i is older than entry i+1
    sizes = sorted(st.st_size for _, st in cache.entries())
    first = run_pass(get_pass("int8-dynamic")(cfgs[0]), m, ctx)  # a hit makes the oldest the most recent
    assert first.cached
    removed = cache.prune(max_bytes=sum(sizes) - 1)
    assert removed == 1
    assert run_pass(get_pass("int8-dynamic")(cfgs[0]), m, ctx).cached
    assert not getattr(run_pass(get_pass("int8-dynamic")(cfgs[1]), m, ctx), "cached", False)  # the LRU one went
    # the cap holds on put
    small = PassCache(tmp_path / "c", max_bytes=max(sizes) + 10)
    run_pass(get_pass("int8-dynamic")({"per_channel": False, "reduce_range": "yes"}), m, Context(cache=small))
    assert len(small.entries()) == 1


def test_optimize_marks_cached_passes_and_no_cache(tmp_path, monkeypatch):
    model = tiny_cnn(tmp_path / "cnn.onnx")
    data = cnn_data(tmp_path / "calib.npz", n=8)
    out = tmp_path / "out"
    args = ("optimize", model, "--recipe", "int8-ort", "--data", data, "-o", out, "--format", "json", "--force")
    r1 = run_cli(*args)
    assert r1.returncode == 0, r1.stderr
    m1 = json.loads(r1.stdout)
    assert not any(e.get("cached") for e in m1["pass_log"])
    r2 = run_cli(*args)
    m2 = json.loads(r2.stdout)
    assert all(e.get("cached") for e in m2["pass_log"]), [e["pass"] for e in m2["pass_log"]]
    assert m2["cache"]["hits"] >= 3
    assert m2["output"]["sha256"] == m1["output"]["sha256"]
    r3 = run_cli(*args, "--no-cache")
    m3 = json.loads(r3.stdout)
    assert not any(e.get("cached") for e in m3["pass_log"]) and m3["cache"] is None
    info = json.loads(run_cli("cache", "info", "--format", "json").stdout)
    assert info["entries"] >= 3 and info["path"].startswith(str(tmp_path / "cache"))
    assert run_cli("cache", "clear").returncode == 0
    assert json.loads(run_cli("cache", "info", "--format", "json").stdout)["entries"] == 0
