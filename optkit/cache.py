"""A content-addressed cache of pass results (and of other pure, expensive answers) shared by every run on a machine.

Key = sha256 over everything a pass's output depends on: the input model's bytes, the pass name, its resolved
config, the samples it reads (the feeds' bytes), the host facts it reads (the INT8 ISA), the optkit / onnx /
onnxruntime versions and a fingerprint of the pass's own source code. Value = the output model and the pass's
log fields (modified, notes, metrics). A second identical ``optimize`` then only loads; a tolerance search re-run with
one option changed recomputes only the trials whose inputs changed.

Beside pass results it keeps, under the same cap, the deployed evaluator's outputs of a model on feeds
(``ROOT/outputs``), speed-probe results (``ROOT/speed``, keyed by the CPU) and calibration ranges
(``ROOT/calibration``, shared by the configurations that differ only in how the ranges are used).

Layout: ``ROOT/passes/<k[:2]>/<key>.bin``, one file per entry (a small JSON header with the model's sha256, then the
model bytes). ROOT is ``OPTKIT_CACHE_DIR`` or ``~/.cache/optkit``. Safe under concurrent runs: an entry is written
under a temporary name in the same directory and renamed into place (``os.replace``: readers see the old file, the
new one, or none); a read verifies the sha256 and drops an entry that does not match (then the pass is recomputed).
The total size is capped (``OPTKIT_CACHE_MAX_BYTES``, default 5 GB) by pruning the least recently used entries (a
hit touches its file's mtime). Models at or above the external-data threshold (2 GB) are not cached.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from .data import feeds_digest  # noqa: F401  (re-exported: the digests live with the data and the model)
from .model import model_digest  # noqa: F401

DEFAULT_MAX_BYTES = 5 * 1024 ** 3
# what lives under the root: pass results, model outputs on feeds, speed-probe results, calibration ranges
KINDS = ("passes", "outputs", "speed", "sensitivity", "calibration")
_MAGIC = b"OPTKITC1"
_FINGERPRINTS: dict[str, str] = {}


def default_root() -> Path:
    env = os.environ.get("OPTKIT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "optkit"


def _versions() -> dict:
    import onnxruntime

    from . import __version__

    return {"optkit": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _code_fingerprint(module_file: str | None) -> str:
    """sha256 of the pass's module, the helper modules beside it and the pass contract: an edited pass never answers
    from an old entry (int8-dynamic's smoothing lives in passes/smoothing.py: an edit there must count too)."""
    here = Path(__file__).with_name("passes")
    files = sorted({str(f) for f in here.glob("*.py")} | ({module_file} if module_file else set()))
    key = "|".join(files)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        for f in files:
            try:
                h.update(Path(f).read_bytes())
            except OSError:
                h.update(f.encode())
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


class PassCache:
    """``get(key) -> (model, meta) | None``, ``put(key, model, meta)``, ``info()``, ``clear()``, ``prune()``."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None, enabled: bool = True):
        self.root = Path(root).expanduser() if root else default_root()
        self.dir = self.root / "passes"
        env_max = os.environ.get("OPTKIT_CACHE_MAX_BYTES")
        self.max_bytes = int(max_bytes if max_bytes is not None else env_max if env_max else DEFAULT_MAX_BYTES)
        self.enabled = enabled
        self.hits = self.misses = self.dropped = 0
        self.last_memo_hit = False

    # -- keys ---------------------------------------------------------------------------------------------------
    def key(self, p, model: onnx.ModelProto, ctx) -> str:
        import inspect

        reads = getattr(p, "reads_samples", True)
        parts = {
            "pass": p.name,
            "config": p.config.to_dict(),
            "model": model_digest(model),
            "samples": feeds_digest(getattr(ctx, "samples", None)) if reads else "unread",
            "shapes": {k: list(v) for k, v in sorted((getattr(ctx, "shapes", None) or {}).items())},
            "seed": getattr(ctx, "seed", 0),
            "isa": {k: (getattr(ctx, "cpu", None) or {}).get(k) for k in ("isa", "serve_isa")},
            "versions": _versions(),
            "code": _code_fingerprint(inspect.getsourcefile(type(p))),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.bin"

    # -- entries ------------------------------------------------------------------------------------------------
    def get(self, key: str):
        if not self.enabled:
            return None
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        try:
            if blob[:8] != _MAGIC:
                raise ValueError("bad magic")
            (hlen,) = struct.unpack("<Q", blob[8:16])
            meta = json.loads(blob[16:16 + hlen])
            body = blob[16 + hlen:]
            if hashlib.sha256(body).hexdigest() != meta["sha256"] or len(body) != meta["size"]:
                raise ValueError("sha256 mismatch")
            model = onnx.load_from_string(body)
        except Exception:  # a torn or corrupt entry: drop it, the caller recomputes
            self.dropped += 1
            self.misses += 1
            try:
                path.unlink()
            except OSError:
                pass
            return None
        try:
            os.utime(path)  # LRU: a hit is a use
        except OSError:
            pass
        self.hits += 1
        return model, meta

    def put(self, key: str, model: onnx.ModelProto, meta: dict) -> bool:
        if not self.enabled:
            return False
        from .model import EXTERNAL_DATA_THRESHOLD, tensor_bytes

        if tensor_bytes(model) >= EXTERNAL_DATA_THRESHOLD:
            return False
        body = model.SerializeToString()
        head = json.dumps({**meta, "sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
                           "created": time.time()}, default=str).encode()
        path = self._path(key)
        try:
            _write_atomic(path, lambda tmp: Path(tmp).write_bytes(_MAGIC + struct.pack("<Q", len(head)) + head + body))
        except OSError:  # a read-only or full cache never fails a run
            return False
        self.prune()
        return True

    def entries(self, kinds: tuple[str, ...] = KINDS) -> list[tuple[Path, os.stat_result]]:
        """(file, stat) of every entry of these kinds: pass results, memoized outputs and timings, calibrations."""
        out = []
        for kind in kinds:
            d = self.root / kind
            if not d.is_dir():
                continue
            for f in d.rglob("*"):
                if f.name.startswith(".tmp-") or f.name.startswith(".calibcache_"):
                    continue
                try:
                    st = f.stat()
                except OSError:  # removed by a concurrent prune
                    continue
                if f.is_file():
                    out.append((f, st))
        return out

    def prune(self, max_bytes: int | None = None) -> int:
        """Delete least-recently-used entries until the total is under the cap; returns how many were removed."""
        cap = self.max_bytes if max_bytes is None else max_bytes
        ents = self.entries()
        total = sum(st.st_size for _, st in ents)
        removed = 0
        for f, st in sorted(ents, key=lambda e: e[1].st_mtime):
            if total <= cap:
                break
            try:
                f.unlink()
                removed += 1
            except OSError:
                pass
            total -= st.st_size
        # temporary files of writers that died (older than an hour)
        for t in [t for k in KINDS if (self.root / k).is_dir() for t in (self.root / k).rglob(".tmp-*")]:
            try:
                if time.time() - t.stat().st_mtime > 3600:
                    t.unlink()
            except OSError:
                pass
        return removed

    def info(self) -> dict:
        ents = self.entries()
        kinds = {k: sum(1 for f, _ in ents if f.relative_to(self.root).parts[0] == k) for k in KINDS}
        return {"root": str(self.root), "path": str(self.dir), "entries": len(ents), "kinds": kinds,
                "bytes": sum(st.st_size for _, st in ents), "max_bytes": self.max_bytes}

    def clear(self) -> int:
        n = 0
        for f, _ in self.entries():
            try:
                f.unlink()
                n += 1
            except OSError:
                pass
        return n

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "dropped": self.dropped}


def run_pass(p, model: onnx.ModelProto, ctx):
    """``p.run(model, ctx)`` through the context's cache (``ctx.cache``; none: just run). The result carries
    ``cached=True`` when it came from the cache."""
    from .passes import PassResult

    cache: PassCache | None = getattr(ctx, "cache", None)
    if cache is None or not cache.enabled:
        return p.run(model, ctx)
    try:
        key = cache.key(p, model, ctx)
    except Exception:  # something unhashable: run uncached
        return p.run(model, ctx)
    hit = cache.get(key)
    if hit is not None:
        out, meta = hit
        res = PassResult(out, modified=meta.get("modified", True), notes=list(meta.get("notes", [])),
                         metrics=dict(meta.get("metrics", {})))
        res.cached = True  # type: ignore[attr-defined]
        return res
    res = p.run(model, ctx)
    cache.put(key, res.model, {"pass": p.name, "modified": res.modified, "notes": list(res.notes),
                               "metrics": res.metrics})
    return res


def make_cache(cache) -> PassCache | None:
    """``None`` -> the default cache unless ``OPTKIT_NO_CACHE`` is set; ``True`` -> the default cache; ``False`` -> none; a path -> a cache there; a PassCache as is."""
    if cache is False or (cache is None and os.environ.get("OPTKIT_NO_CACHE", "") not in ("", "0")):
        return None
    if isinstance(cache, PassCache):
        return cache
    if cache is None or cache is True:
        return PassCache()
    return PassCache(cache)


# -- memoized evaluations and speed probes ---------------------------------------------------------------------------
# Outputs of a model on feeds (as the deployed evaluator computes them) and the result of a speed probe are pure
# functions of their inputs on one host: a re-run answers them from the cache too, so a second identical optimize
# only loads. Timings are keyed by the CPU model and flags, the evaluator and the probe's protocol; they carry
# "cached": true so a reader can tell a re-used measurement from a fresh one.

def _memo_path(cache: PassCache, kind: str, key: str) -> Path:
    return cache.root / kind / key[:2] / f"{key}.npz"


def _write_atomic(path: Path, writer) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _memo_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps({**parts, "versions": _versions()}, sort_keys=True, default=str).encode()).hexdigest()


def evaluate(evaluator, model: onnx.ModelProto, feeds: list[dict], cache: PassCache | None) -> list[dict]:
    """``evaluator.run(model, feeds)``, answered from the cache when the same model was run the same way on the
    same feeds before."""
    if cache is None or not cache.enabled or not feeds:
        return evaluator.run(model, feeds)
    from .data import Samples

    try:
        key = _memo_key({"kind": "outputs", "model": model_digest(model), "feeds": feeds_digest(Samples(list(feeds))),
                         "evaluator": evaluator.to_dict() if hasattr(evaluator, "to_dict") else repr(evaluator)})
    except Exception:
        return evaluator.run(model, feeds)
    path = _memo_path(cache, "outputs", key)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                outs = [{name: z[f"{i}/{j}"] for j, name in enumerate(names)} for i, names in enumerate(meta["names"])]
            if len(outs) == len(feeds):
                os.utime(path)
                cache.hits += 1
                return outs
        except Exception:  # corrupt: drop and recompute
            cache.dropped += 1
            try:
                path.unlink()
            except OSError:
                pass
    outs = evaluator.run(model, feeds)
    arrays = {f"{i}/{j}": np.asarray(v) for i, o in enumerate(outs) for j, v in enumerate(o.values())}
    arrays["__meta__"] = np.array(json.dumps({"names": [list(o) for o in outs]}))
    try:
        _write_atomic(path, lambda tmp: np.savez(open(tmp, "wb"), **arrays))
    except (OSError, ValueError):
        pass
    return outs


def probe_compare(probe, base: onnx.ModelProto, cand: onnx.ModelProto, cache: PassCache | None, **longer) -> dict:
    """``probe.compare(base, cand, **longer)`` (a SpeedProbe; ``longer``: time_cap / max_rounds for a decision),
    re-used from an earlier run on this CPU when the models, the feed, the evaluator and the protocol are the same."""
    if cache is None or not cache.enabled:
        return probe.compare(base, cand, **longer)
    from .data import Samples
    from .hw import cpu_features

    try:
        cpu = cpu_features()
        key = _memo_key({"kind": "speed", "base": model_digest(base), "cand": model_digest(cand),
                         "feed": feeds_digest(Samples([probe.feed])), "evaluator": probe.evaluator.to_dict(),
                         "protocol": [probe.min_rounds, longer.get("max_rounds", probe.max_rounds), probe.round_time,
                                      longer.get("time_cap", probe.time_cap)],
                         "cpu": {k: cpu.get(k) for k in ("model", "arch", "isa", "logical_cores")}})
    except Exception:
        return probe.compare(base, cand, **longer)
    return {**memo_json(cache, "speed", key, lambda: probe.compare(base, cand, **longer)), **({"cached": True} if
            cache.last_memo_hit else {})}


def memo_json(cache: PassCache | None, kind: str, key: str, compute):
    """A JSON-able value under ``ROOT/<kind>/``: read when present (``cache.last_memo_hit``), else computed and
    written atomically."""
    if cache is None or not cache.enabled:
        return compute()
    path = cache.root / kind / key[:2] / f"{key}.json"
    try:
        res = json.loads(path.read_text())
        os.utime(path)
        cache.hits += 1
        cache.last_memo_hit = True
        return res
    except (OSError, ValueError):
        pass
    res = compute()
    cache.last_memo_hit = False
    try:
        _write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(res)))
    except (OSError, TypeError, ValueError):
        pass
    return res
