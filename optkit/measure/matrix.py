"""``optkit bench --backend a,b|all``: one recipe's candidate on every backend and the reference on ORT, timed
alternately in one protocol; a backend that cannot load or run the model is one row saying why."""
from __future__ import annotations

import time
from pathlib import Path

from ..backends import get_backend
from ..env import environment
from ..errors import BackendUnavailable
from ..metrics import compare, top1
from ..model import load_model
from ..predictor import backend_options, load_path
from .inputs import _feed_batch, _keep, _prepare, precision_of
from .timing import _protocol, _timed, speedup


def bench_matrix(t: dict, names: list[str], *, reference, data, shapes, threads, batch, rounds, round_runs, round_time,
                 warn, save: bool = True, times: bool = False) -> dict:
    """One recipe's result on every backend: the candidate on each available backend and the reference on ORT,
    timed alternately in one protocol; accuracy of every row against the reference's outputs."""
    man = t["manifest"]
    ref_path, samples = _prepare(t, reference, data, shapes, batch, warn)
    first = samples.feeds[0]
    feed_batch = _feed_batch(first)
    rows = _rows(t, names, ref_path)
    sessions: dict = {}
    built = (man or {}).get("backend") or {}
    try:
        for row in rows:
            sess = _open(row, t, built, first, threads)
            if sess is not None:
                sessions[row["key"]] = sess
        outs = _outputs(rows, sessions, samples)  # outputs are checked before timing
        _accuracy(rows, outs, samples.labels)
        timing, load = _timed(sessions, first, rounds, round_runs, round_time, feed_batch, times)
    finally:
        for s in sessions.values():
            s.close()
    all_times = {k: v.pop("times_ms") for k, v in timing.items() if "times_ms" in v}
    for row in rows:
        if row["key"] in timing:
            row["latency"] = timing[row["key"]]
            if "ort/reference" in timing:
                row["speedup_vs_reference"] = speedup(timing["ort/reference"]["round_p50_ms"],
                                                      timing[row["key"]]["round_p50_ms"])
    result = {
        "target": str(t["artifact"] or t["model"]), "model": str(t["model"]), "reference": str(ref_path) if ref_path else None,
        "backends": names, "rows": rows, "threads": threads, "inter_op_threads": 1, "batch": feed_batch,
        "data": {"feeds": len(samples), "synthetic": samples.synthetic, "source": samples.source},
        "protocol": _protocol(rounds, round_runs, round_time, len(sessions) > 1),
        "load": load, "environment": environment(),
    }
    if times:
        result["times_ms"] = all_times
    if man is not None:
        result["recipe"] = man["recipe"]["name"]
    return _keep(t, result, save, warn)


def _rows(t: dict, names: list[str], ref_path) -> list[dict]:
    """The reference on ORT (when there is one), then the candidate on each backend."""
    cand_prec = precision_of(load_model(t["model"]))
    rows: list[dict] = []
    if ref_path is not None:
        rows.append({"key": "ort/reference", "backend": "ort", "variant": "reference", "model": str(ref_path),
                     "precision": precision_of(load_model(ref_path))})
    for n in names:
        rows.append({"key": f"{n}/candidate", "backend": n, "variant": "candidate", "model": str(t["model"]),
                     "precision": cand_prec})
    return rows


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"


def _open(row: dict, t: dict, built: dict, first: dict, threads: int):
    """Load one row's model on its backend and run it once (load_ms, cold_ms); None, with the row's status and
    reason, when the backend is unavailable or cannot load or run the model."""
    man = t["manifest"]
    be = get_backend(row["backend"], check=False)
    st = be.status()
    if not st.get("ok"):
        row.update(status="unavailable", reason=st.get("reason"))
        return None
    path = Path(row["model"]) if row["variant"] == "reference" or not t["artifact"] else \
        load_path(t["artifact"], man, Path(t["model"]), row["backend"])
    opts = be.Options() if row["variant"] == "reference" else backend_options(man, row["backend"])
    t0 = time.perf_counter()
    try:
        sess = be.load(path, threads=threads, options=opts, shapes={k: tuple(v.shape) for k, v in first.items()})
    except BackendUnavailable as e:
        row.update(status="unavailable", reason=str(e))
        return None
    except Exception as e:  # a backend that cannot compile this model: one row says so, the rest run
        row.update(status="failed", reason=_why(e))
        return None
    row["load_ms"] = (time.perf_counter() - t0) * 1e3
    if row["variant"] == "candidate" and built.get("backend") == row["backend"]:
        row["compile_s"] = built.get("seconds")
        row["tuning"] = built.get("tuning")
    t0 = time.perf_counter()
    try:
        sess.run(first)
    except Exception as e:  # e.g. a static-shape backend given another batch: this row fails, the rest run
        sess.close()
        row.update(status="failed", reason=_why(e))
        return None
    row["cold_ms"] = (time.perf_counter() - t0) * 1e3
    row["status"] = "ok"
    return sess


def _outputs(rows: list[dict], sessions: dict, samples) -> dict:
    """Every loaded row's outputs on every feed; a row whose backend fails to run says why and leaves ``sessions``."""
    outs = {}
    for row in rows:
        if row["key"] not in sessions:
            continue
        try:
            outs[row["key"]] = [sessions[row["key"]].run(f) for f in samples.feeds]
        except Exception as e:
            row.update(status="failed", reason=_why(e))
            sessions.pop(row["key"]).close()
    return outs


def _accuracy(rows: list[dict], outs: dict, labels) -> None:
    """Each row's top-1 on the labels and its outputs vs the reference's (``row['accuracy']``)."""
    ref_outs = outs.get("ort/reference")
    for row in rows:
        if row["key"] not in outs:
            continue
        acc = {}
        t1 = top1(outs[row["key"]], labels)
        if t1 is not None:
            acc["top1"] = t1
        if ref_outs is not None and row["key"] != "ort/reference":
            d = compare(ref_outs, outs[row["key"]])
            acc["vs_reference"] = {k: v for k, v in d.items() if k != "outputs"}
        row["accuracy"] = acc
