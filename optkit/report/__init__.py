"""Reports: ``report.json`` (schema ``optkit.report/1``, see README) and one self-contained ``report.html`` (inline
CSS and SVG, no network) for one artifact or a comparison of several.

Sources: each artifact's ``manifest.json`` and the bench results ``optkit bench`` saved under ``ARTIFACT/bench/``.
Every variant that was measured (artifact × backend × candidate/reference) becomes a point with its latency
distribution and accuracy; the Pareto front is over (p50 latency ↓, accuracy ↑).

The package: this module collects (report.json content, the Pareto front); ``format`` holds the number formatters the
CLI shares, ``charts`` the inline SVG charts, ``page`` the HTML page.
"""
from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

from ..artifact import MANIFEST, read_manifest, write_json
from ..errors import InputError
from .charts import nice_ticks, svg_latency, svg_scatter, svg_trials  # noqa: F401  (re-exported)
from .format import fmt_bytes, fmt_count, fmt_diff  # noqa: F401  (re-exported)
from .page import render_html

REPORT_SCHEMA = "optkit.report/1"
SCHEMA_FILE = Path(__file__).parent.parent / "schemas" / "report.schema.json"
BENCH_DIR = "bench"


def validate(rep: dict) -> None:
    """Raise jsonschema.ValidationError when ``rep`` does not follow schemas/report.schema.json (needs jsonschema)."""
    import jsonschema

    jsonschema.validate(json.loads(json.dumps(rep, default=str)), json.loads(SCHEMA_FILE.read_text()))


# -- collecting ------------------------------------------------------------------------------------------------
def save_bench(artifact: Path, result: dict) -> Path:
    """Keep a bench result with the artifact (``bench/<n>.json``), so reports can show it later."""
    d = Path(artifact) / BENCH_DIR
    d.mkdir(exist_ok=True)
    n = 1 + max((int(p.stem) for p in d.glob("*.json") if p.stem.isdigit()), default=0)
    path = d / f"{n}.json"
    write_json(path, result)
    return path


def _bench_results(artifact: Path) -> list[dict]:
    from ..artifact import read_bench_results

    return read_bench_results(artifact)  # a garbled bench/<n>.json is an InputError naming it


def _label(man: dict, artifact: Path) -> str:
    return f"{artifact.parent.name}/{artifact.name} ({man['recipe']['name']})"


def _acc_of(acc: dict, role: str | None) -> tuple[str, float] | None:
    """(metric, value) for one measured variant: top-1 when labels exist, else cosine to the reference."""
    if role is None:  # a matrix row's accuracy
        if "top1" in acc:
            return "top1", acc["top1"]
        if "vs_reference" in acc:
            return "cosine", acc["vs_reference"]["cosine"]
        return None
    if f"top1_{role}" in acc:
        return "top1", acc[f"top1_{role}"]
    if role == "reference":
        return ("cosine", 1.0) if "vs_reference" in acc else None
    if "vs_reference" in acc:
        return "cosine", acc["vs_reference"]["cosine"]
    return None


def _variants(label: str, results: list[dict]) -> list[dict]:
    """Measured points from bench results: the latest measurement of each (backend, variant)."""
    points: dict[tuple, dict] = {}
    for res in results:
        if "rows" in res:
            for r in res["rows"]:
                if r.get("status") != "ok":
                    points[(r["backend"], r["variant"])] = {"backend": r["backend"], "variant": r["variant"],
                                                            "precision": r["precision"], "status": r.get("status"),
                                                            "reason": r.get("reason")}
                    continue
                acc = _acc_of(r.get("accuracy", {}), None)
                if r["variant"] == "reference" and acc is None:
                    acc = ("cosine", 1.0)
                points[(r["backend"], r["variant"])] = {
                    "backend": r["backend"], "variant": r["variant"], "precision": r["precision"], "status": "ok",
                    "latency": r["latency"], "accuracy": ({"metric": acc[0], "value": acc[1]} if acc else None),
                    "speedup_vs_reference": (r.get("speedup_vs_reference") or {}).get("median"),
                    "batch": res.get("batch"), "threads": res.get("threads")}
        else:
            backend = res.get("backend", "ort")
            for role, lat in res.get("latency", {}).items():
                be = backend if role == "candidate" else (res.get("reference_backend") or backend)
                acc = _acc_of(res.get("accuracy", {}), role)
                sp = (res.get("speedup") or {}).get("median") if role == "candidate" else (1.0 if "speedup" in res else None)
                points[(be, role)] = {"backend": be, "variant": role, "precision": res.get("precision", {}).get(role, "?"),
                                      "status": "ok", "latency": lat,
                                      "accuracy": ({"metric": acc[0], "value": acc[1]} if acc else None),
                                      "speedup_vs_reference": sp, "batch": res.get("batch"), "threads": res.get("threads"),
                                      "speedup_ci95": (res.get("speedup") or {}).get("ci95") if role == "candidate" else None,
                                      "model_path": res.get("model" if role == "candidate" else "reference"),
                                      "data": _data_of(res), "protocol": _protocol_of(res)}
    out = []
    for (be, var), p in points.items():
        out.append({"key": f"{label} · {be}/{var}", "artifact": label, **p})
    return out


def _data_of(res: dict) -> str:
    a = res.get("accuracy") or {}
    if not a:
        return "-"
    return f"{a.get('feeds')} feed(s) from {a.get('source')}" + (" (synthetic)" if a.get("synthetic") else "")


def _protocol_of(res: dict) -> str:
    p = res.get("protocol") or {}
    return (f"{p.get('rounds')} {'alternating ' if p.get('alternating') else ''}rounds of {p.get('round_time_s')} s, "
            f"{res.get('threads')} thread(s), batch {res.get('batch')}")


def same_model_twice(points: list[dict]) -> list[dict]:
    """The same model file measured in several artifacts' benches (typically the shared FP32 reference): each
    measurement with its p50 and the spread between them, which is run-to-run noise, not a difference."""
    by: dict[str, list[dict]] = {}
    for p in points:
        if p.get("status") == "ok" and p.get("variant") == "reference" and p.get("model_path"):
            by.setdefault(str(Path(p["model_path"]).resolve()), []).append(p)
    out = []
    for path, ps in by.items():
        if len(ps) > 1:
            p50 = [q["latency"]["p50_ms"] for q in ps]
            out.append({"model": path, "keys": [q["key"] for q in ps], "p50_ms": p50,
                        "spread": (max(p50) - min(p50)) / min(p50) if min(p50) else 0.0})
    return out


def pareto(points: list[dict]) -> list[str]:
    """Keys of the points no other point beats on both p50 latency (lower) and accuracy (higher)."""
    pts = [p for p in points if p.get("status") == "ok" and p.get("accuracy")]
    front = []
    for p in pts:
        lp, ap = p["latency"]["p50_ms"], p["accuracy"]["value"]
        dominated = any((q["latency"]["p50_ms"] <= lp and q["accuracy"]["value"] >= ap)
                        and (q["latency"]["p50_ms"] < lp or q["accuracy"]["value"] > ap)
                        for q in pts if q is not p and q["accuracy"]["metric"] == p["accuracy"]["metric"])
        if not dominated:
            front.append(p["key"])
    return front


def _artifact_entry(artifact: Path, man: dict) -> dict:
    i, o = man["input"]["info"], man["output"]["info"]
    passes = []
    trials = []
    for e in man.get("pass_log", []):
        passes.append({"pass": e["pass"], "status": e["status"], "exact": e.get("exact"),
                       "nodes": [e["nodes_before"], e["nodes_after"]], "bytes": [e["bytes_before"], e["bytes_after"]],
                       "seconds": e["seconds"], "vs_previous": _small(e.get("vs_previous")),
                       "vs_input": _small(e.get("vs_input")), "top1": e.get("top1"), "notes": e.get("notes", []),
                       "candidate": e.get("candidate")})
        for k, t in enumerate(e.get("trials") or []):
            trials.append({"pass": e["pass"], "trial": k + 1, **{key: t.get(key) for key in (
                "metric", "value", "threshold", "ok", "speedup_vs_before", "chosen", "error", "seconds")},
                "config": t.get("config") or t.get("layers") or t.get("fallback_float")})
    return {
        "label": _label(man, artifact), "path": str(artifact), "recipe": man["recipe"]["name"],
        "backend": (man.get("backend") or {}).get("backend"), "created": man.get("created"),
        "model": {"input": _model_summary(i, man["input"]), "output": _model_summary(o, man["output"])},
        "import": man.get("import"), "passes": passes, "trials": trials, "accuracy": man.get("accuracy"),
        "tolerance": man.get("tolerance"), "candidates": man.get("candidates"),
        "guard": man.get("guard"), "backends": man.get("backends") or {man["backend"].get("backend", "?"): man["backend"]},
        "optimize_seconds": man.get("optimize_seconds"), "threads": man.get("threads"), "data": man.get("data"),
        "environment": man.get("environment"), "warnings": man.get("warnings", []),
        "reproduce": man.get("reproduce"),
    }


def _small(d: dict | None) -> dict | None:
    if not d:
        return None
    return {k: d[k] for k in ("max_abs", "cosine", "top1_agreement") if k in d}


def _model_summary(info: dict, desc: dict) -> dict:
    return {"sha256": desc.get("sha256"), "source_sha256": desc.get("source_sha256"), "nodes": info["nodes"],
            "params": info["params"], "bytes": info["bytes"], "flops": info["flops"].get("total"),
            "ops": info["ops"], "opsets": info["opsets"]}


def build_report(artifacts: list[str | Path]) -> dict:
    """The report.json content for one or several artifact directories."""
    if not artifacts:
        raise InputError("no artifact given", "pass one or more artifact directories (OUT/<name>/<version>)")
    from ..predictor import resolve_artifact

    entries, points = [], []
    for a in artifacts:
        path, man, _ = resolve_artifact(a)
        if man is None:
            raise InputError(f"{a} is a model file, not an artifact", "pass the directory optkit optimize wrote")
        entry = _artifact_entry(path, man)
        benches = _bench_results(path)
        entry["bench_runs"] = len(benches)
        from ..verdict import decide

        entry["verdict"] = decide(man, next((b for b in reversed(benches) if "rows" not in b), None))
        entries.append(entry)
        points += _variants(entry["label"], _bench_results(path))
    front = pareto(points)
    for p in points:
        p["pareto"] = p["key"] in front
    return {"schema": REPORT_SCHEMA, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "artifacts": entries, "variants": points, "pareto": front, "same_model_twice": same_model_twice(points),
            "environment": entries[0]["environment"]}


def write_report(artifact: str | Path) -> tuple[Path, Path]:
    """(Re)write ``report.json`` and ``report.html`` inside one artifact."""
    art = Path(artifact)
    rep = build_report([art])
    j, h = art / "report.json", art / "report.html"
    write_json(j, rep)
    from ..artifact import write_text

    write_text(h, render_html(rep))  # atomic, like report.json: a killed run leaves the old report, not half a new one
    return j, h

def load_report_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


__all__ = ["build_report", "write_report", "render_html", "save_bench", "pareto", "REPORT_SCHEMA", "MANIFEST", "read_manifest"]
