"""The trial cache (``TUNE_DIR/trial-cache.json``): every measured point, keyed by the trial key and a context hash
of the variant's sha256, its backend options, the protocol, the feed and the machine, so a re-run measures only new
points and a changed model, protocol or machine measures everything again."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from .executors import trial_key

CACHE_SCHEMA = "optkit.trial-cache/1"
# the fields of a measurement worth keeping (the rest is per run: n, source, objective ...)
KEPT = ("status", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "min_ms", "cv", "runs", "throughput", "throughput_per_core",
        "load_ms", "cold_ms", "compile_s")


def _context_hash(variant: dict, protocol: dict, feed_sig: dict) -> str:
    from ..env import environment

    env = environment()
    ctx = {"model_sha256": variant["model_sha256"], "options": variant.get("options"), "protocol": protocol,
           "feed": feed_sig, "cpu": env["cpu"].get("model"), "cores": os.cpu_count(), "libraries": env["libraries"],
           "python": env["python"]}
    return hashlib.sha256(json.dumps(ctx, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data.get("entries", {}) if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}


def write_json(path: Path, data: dict) -> None:
    from ..artifact import write_json as _write

    _write(path, data)


class TrialCache:
    """The on-disk cache of one tune dir. ``contexts``: variant -> context hash (``_context_hash``)."""

    def __init__(self, path: Path, contexts: dict[str, str], fresh: bool = False):
        self.path = Path(path)
        self.contexts = contexts
        self.entries = {} if fresh else _load_cache(self.path)

    def hits(self, points) -> dict[str, dict]:
        """trial key -> cached result, for the (variant, threads, batch) points measured before in this context."""
        out = {}
        for v, t, b in points:
            hit = self.entries.get(f"{trial_key(v, t, b)}@{self.contexts[v]}")
            if hit is not None:
                out[trial_key(v, t, b)] = hit
        return out

    def add(self, rec: dict) -> None:
        """Keep a measured (not failed, not cached) trial and rewrite the file."""
        if rec["source"] == "cache" or rec["status"] == "failed":
            return
        raw = {k: rec[k] for k in KEPT if k in rec}
        raw["status"] = "ok"
        raw["measured"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        self.entries[f"{rec['key']}@{self.contexts[rec['variant']]}"] = raw
        write_json(self.path, {"schema": CACHE_SCHEMA, "entries": self.entries})
