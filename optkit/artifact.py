"""Versioned artifact directories (``OUT/<name>/<version>/``), written atomically."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".optkit-write-test-"):
            pass
    except OSError as e:
        raise InputError(f"output directory {out} is not writable ({e.strerror or type(e).__name__})",
                         "choose another --output directory") from e


def versions(base: Path) -> list[int]:
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name))


@dataclass
class Staged:
    stage: Path
    path: Path | None = None  # the final version directory, set once committed


@contextlib.contextmanager
def staged_version(out: Path, name: str, version: int | None = None):
    """Yield a Staged; on success its ``stage`` dir becomes ``out/name/<version>``, on error it is removed.

    Nothing half-written is ever left under a version number."""
    base = out / name
    if version is not None and version < 1:
        raise InputError(f"--version must be >= 1, got {version}", "omit --version to take the next free one")
    created = [d for d in (base, out) if not d.exists()]
    check_writable(base)
    if version is not None:
        if (base / str(version)).exists():
            raise InputError(f"artifact {base / str(version)} already exists", "omit --version to take the next free one")
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    staged = Staged(stage)
    try:
        yield staged
        while True:
            v = version if version is not None else (max(versions(base), default=0) + 1)
            final = base / str(v)
            try:
                os.rename(stage, final)  # atomic; fails if another run took the number first
                break
            except OSError:
                if version is not None or not final.exists():
                    raise
        stage = None
        staged.path = final
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
            for d in created:  # leave no empty directories behind a failed run
                with contextlib.suppress(OSError):
                    d.rmdir()


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_manifest(artifact: Path) -> dict:
    p = artifact / MANIFEST
    if not p.is_file():
        raise InputError(f"{artifact} is not an optkit artifact (no {MANIFEST})", "pass an artifact directory or a .onnx file")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{p} is not valid JSON ({e.msg})", "re-run `optkit optimize` to regenerate the artifact") from e
