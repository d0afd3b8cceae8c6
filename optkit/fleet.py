"""Optimize many models with one recipe (``optkit optimize-many``): one unit per model, each in a process of its own.

``optimize_many(models, recipe, output=..., executor='local' | 'ray' | 'ray:ADDRESS')``:

- ``models``: a directory (its ``*.onnx``; ``NAME.npz`` beside ``NAME.onnx`` is that model's ``--data``), a text
  file (one ``MODEL [DATA]`` per line, ``#`` comments, paths relative to the file), or a list of paths.
- Every unit is ``optkit optimize MODEL --recipe R -o OUT --format json`` in a child process: the same artifact
  layout (``OUT/<name>/<version>/``), the same pass cache, the same gate. A unit that crashes (segfault, OOM kill),
  fails or misses the tolerance is one row with the reason; the others go on.
- ``local`` runs ``jobs`` units at a time on this machine (default 1). ``ray`` runs each unit as a Ray task that
  requests ``threads`` CPUs (the unit's intra-op threads), so Ray packs units onto the cluster's cores without
  oversubscribing them; ``ray:ADDRESS`` joins an existing cluster (its nodes need optkit installed and the paths
  reachable: a shared filesystem).
- Progress: ``on_done(row, done, total)`` after each unit; the result has every row, counts and the wall time, and
  is written to ``OUT/fleet-<UTC time>.json``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
import sys
import time
from pathlib import Path

from .errors import InputError

CRASH_ENV = "OPTKIT_FLEET_CRASH"  # testing hook: unit names that die by SIGKILL instead of running


def read_models(models, data=None) -> list[dict]:
    """[{'name', 'model', 'data'}] from a directory, a models.txt or a list; names made unique."""
    units: list[dict] = []
    if isinstance(models, (list, tuple)):
        units = [{"model": Path(m), "data": Path(data) if data else None} for m in models]
    else:
        p = Path(models)
        if p.is_dir():
            for f in sorted(p.glob("*.onnx")):
                own = f.with_suffix(".npz")
                units.append({"model": f, "data": own if own.is_file() else (Path(data) if data else None)})
            if not units:
                raise InputError(f"{p} holds no .onnx files", "put the models in the directory or list them in a .txt")
        elif p.is_file():
            for n, line in enumerate(p.read_text().splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                parts = line.split()
                if len(parts) > 2:
                    raise InputError(f"{p}:{n}: expected 'MODEL [DATA]', got {line!r}", "one model per line")
                m = (p.parent / parts[0]) if not Path(parts[0]).is_absolute() else Path(parts[0])
                d = ((p.parent / parts[1]) if not Path(parts[1]).is_absolute() else Path(parts[1])) if len(parts) > 1 \
                    else (Path(data) if data else None)
                units.append({"model": m, "data": d})
            if not units:
                raise InputError(f"{p} lists no models", "write one model path per line")
        else:
            raise InputError(f"models not found: {p}", "pass a directory of .onnx files or a text file listing them")
    seen: dict[str, int] = {}
    for u in units:
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", u["model"].stem) or "model"
        seen[base] = seen.get(base, 0) + 1
        u["name"] = base if seen[base] == 1 else f"{base}_{seen[base]}"
    return units


def unit_command(unit: dict, recipe: str, output: Path, threads: int, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "optkit.cli", "optimize", str(unit["model"]), "--recipe", str(recipe), "-o",
           str(output), "--threads", str(threads), "--name", unit["name"], "--format", "json", *extra]
    if unit.get("data"):
        cmd += ["--data", str(unit["data"])]
    crash = [k.strip() for k in os.environ.get(CRASH_ENV, "").split(",") if k.strip()]
    if unit["name"] in crash:
        cmd = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    return cmd


def run_unit(cmd: list[str], timeout: float, env_extra: dict | None = None) -> dict:
    """Run one unit's command; the raw outcome (rc, stdout, the stderr tail, seconds). Never raises."""
    import platform

    from .child import child_env, run_child

    # its own process group, killed whole on timeout: an optimize's own children (TVM workers) go with it
    env = child_env({"NO_COLOR": "1", "PYTHONWARNINGS": "ignore", **(env_extra or {})})
    run = run_child(cmd, timeout=timeout, env=env)
    if run.timed_out:
        rc, out, err = None, "", f"timed out after {timeout:g} s"
    else:
        rc, out, err = run.returncode, run.stdout, run.stderr
    return {"rc": rc, "stdout": out, "stderr": "\n".join(err.strip().splitlines()[-6:]),
            "seconds": run.seconds, "host": platform.node()}


def to_row(unit: dict, raw: dict) -> dict:
    row = {"name": unit["name"], "model": str(unit["model"]), "data": str(unit["data"]) if unit.get("data") else None,
           "seconds": raw["seconds"], "host": raw.get("host")}
    rc = raw["rc"]
    if rc == 0:
        try:
            man = json.loads(raw["stdout"])
        except ValueError:
            return {**row, "status": "failed", "error": "no manifest on stdout"}
        final = (man.get("guard") or {}).get("final") or {}
        acc = (man.get("accuracy") or {}).get("vs_input") or {}
        return {**row, "status": "ok", "artifact": man.get("artifact"), "speedup": final.get("speedup_vs_input"),
                "cosine": acc.get("cosine"), "optimize_seconds": man.get("optimize_seconds"),
                "passes": len(man.get("pass_log") or []),
                "cached_passes": sum(1 for e in man.get("pass_log") or [] if e.get("cached")),
                "bytes": [man["input"]["info"].get("bytes"), man["output"]["info"].get("bytes")]}
    if rc is None:
        why = raw["stderr"]
    elif rc < 0:
        import signal

        try:
            why = f"the unit's process was killed by {signal.Signals(-rc).name}"
        except ValueError:
            why = f"the unit's process was killed by signal {-rc}"
    else:
        last = [ln for ln in raw["stderr"].splitlines() if ln.strip()]
        why = f"exit {rc}: " + (last[0][:300] if last else "no message")
        if len(last) > 1 and last[0].lower().startswith("error"):
            why = f"exit {rc}: " + " ".join(last[:2])[:300]
    return {**row, "status": "missed" if rc == 5 else "failed", "error": why, "exit_code": rc}


def optimize_many(models, recipe: str, *, output: str | Path = "optkit-out", executor: str = "local",
                  threads: int = 1, data=None, jobs: int = 1, tolerance: str | None = None, no_cache: bool = False,
                  extra_args: list[str] | None = None, timeout: float = 3600.0, on_done=None, on_start=None) -> dict:
    """Optimize every model with ``recipe``; one row per model. See the module docstring."""
    from .ray_executor import parse_executor
    from .recipe import load_recipe

    load_recipe(recipe)  # a bad recipe fails here, once, not once per model
    if threads < 1 or jobs < 1:
        raise InputError("--threads and --jobs must be >= 1", "e.g. --threads 1")
    kind, address = parse_executor(executor)
    units = read_models(models, data)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    extra = list(extra_args or [])
    if tolerance:
        extra += ["--tolerance", tolerance]
    if no_cache:
        extra.append("--no-cache")
    cmds = [unit_command(u, recipe, out.resolve(), threads, extra) for u in units]
    started = time.perf_counter()
    rows: list[dict | None] = [None] * len(units)
    done = 0

    def finish(i, raw):
        nonlocal done
        rows[i] = to_row(units[i], raw)
        done += 1
        if on_done is not None:
            on_done(rows[i], done, len(units))

    info = {"executor": kind}
    if kind == "local":
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            futs = {pool.submit(run_unit, c, timeout): i for i, c in enumerate(cmds)}
            for f in concurrent.futures.as_completed(futs):
                finish(futs[f], f.result())
    else:
        from .ray_executor import connect, import_ray

        ray = import_ray()
        owns = connect(address)
        try:
            task = ray.remote(run_unit).options(num_cpus=threads, max_retries=0)
            env = {k: os.environ[k] for k in (CRASH_ENV, "OPTKIT_CACHE_DIR", "OPTKIT_NO_CACHE") if k in os.environ}
            refs = {task.remote(c, timeout, env): i for i, c in enumerate(cmds)}
            info["cluster_cpus"] = ray.cluster_resources().get("CPU")
            if on_start is not None:
                on_start(info)
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for r in ready:
                    try:
                        raw = ray.get(r)
                    except Exception as e:  # the task's worker itself died: one failed row
                        raw = {"rc": -9, "stdout": "", "stderr": f"Ray task lost: {type(e).__name__}", "seconds": 0.0}
                    finish(refs[r], raw)
        finally:
            if owns:
                ray.shutdown()
    res = {"schema": "optkit.fleet/1", "recipe": str(recipe), "output": str(out), **info, "threads": threads,
           "rows": rows, "ok": sum(r["status"] == "ok" for r in rows), "missed": sum(r["status"] == "missed" for r in rows),
           "failed": sum(r["status"] == "failed" for r in rows), "seconds": round(time.perf_counter() - started, 3),
           "unit_seconds": round(sum(r["seconds"] for r in rows), 3)}
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"fleet-{stamp}.json"
    n = 1
    while path.exists():
        n += 1
        path = out / f"fleet-{stamp}-{n}.json"
    path.write_text(json.dumps(res, indent=2))
    res["summary_path"] = str(path)
    return res
