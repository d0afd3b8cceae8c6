"""Versioned artifact directories (``OUT/<name>/<version>/``): written atomically, sealed, verified on use.

Writing: everything goes to ``OUT/<name>/.staging-<pid>-<start>-<random>/`` (the owner process is in the name), is
fsynced, and is renamed to the next free version number in one step. A run that fails or is interrupted removes its
staging directory; one that was killed (SIGKILL, power loss) leaves it, and the next run in that directory removes
it once its owner process is gone.

Sealing: the manifest lists every file of the artifact with its sha256 (``files``). Reading (``optkit.load``, bench,
report, tune, ``optkit verify``) checks them before anything is loaded: a changed, missing or unexpected file is an
``IntegrityError`` (exit 7). Files written after the seal (reports, bench results, tune output) are not sealed.

The package: this module names, stages, writes and seals; ``read`` reads and verifies.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..model import sha256_of
from .read import (MANIFEST, _inside, _manifest_problem, _safe_rel, check, read_bench_results,  # noqa: F401
                   read_manifest, verify)

MANIFEST_SCHEMA = 2  # 2: "files" holds the sha256 of every file of the artifact
STAGING_PREFIX = ".staging-"
# written into an artifact after it was sealed (and rewritten later): never part of the seal
DERIVED = ("report.json", "report.html", "bench", "tune", "serving.json", "serving.svg")
# a temporary directory without an owner in its name (older optkit) counts as stale after this long
LEGACY_STALE_SECONDS = 3600
# what was committed in this process (the CLI says so when it is interrupted afterwards)
committed: list[Path] = []


# -- names -----------------------------------------------------------------------------------------------------
def model_name(path: Path) -> str:
    """The default artifact name of a model file: its stem with anything but [A-Za-z0-9._-] replaced."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem) or "model"


def check_name(name) -> str:
    """An artifact name is one path component: no separators, not '.'/'..', no leading dot, no NUL."""
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"artifact name {name!r} is empty", "give --name a plain name such as resnet50-int8")
    bad = ("/" in name or "\\" in name or "\0" in name or name in (".", "..") or name.startswith(".")
           or os.path.isabs(name) or len(name.encode()) > 255)
    if bad:
        raise InputError(f"artifact name {name!r} is not a single plain path component",
                         "give --name a plain name without '/', '\\' or a leading '.' (the artifact always goes "
                         "under --output)")
    return name


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


# -- temporary directories with an owner -----------------------------------------------------------------------
def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    now = _start_time(pid)
    return now is None or start == "0" or now == start  # unknown: assume it is the owner


def make_temp_dir(parent: Path, prefix: str = STAGING_PREFIX) -> Path:
    """``parent/<prefix><pid>-<start>-<random>``, created with the umask applied (not mkdtemp's 0700)."""
    pid = os.getpid()
    for _ in range(100):
        d = parent / f"{prefix}{pid}-{_start_time(pid) or '0'}-{secrets.token_hex(4)}"
        try:
            os.mkdir(d, 0o777)
            return d
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary directory in {parent}")


_OWNED = re.compile(r"(\d+)-(\d+)-[0-9a-f]+")


def clean_stale(parent: Path, prefix: str = STAGING_PREFIX) -> list[Path]:
    """Remove ``prefix*`` directories in ``parent`` whose owner process is gone (killed runs); returns them."""
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for d in entries:
        if not d.name.startswith(prefix) or not d.is_dir() or d.is_symlink():
            continue
        m = _OWNED.fullmatch(d.name[len(prefix):])
        if m:
            stale = not _alive(int(m.group(1)), m.group(2))
        else:  # written by an older optkit: no owner recorded
            try:
                stale = time.time() - d.stat().st_mtime > LEGACY_STALE_SECONDS
            except OSError:
                continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            if not d.exists():
                removed.append(d)
    return removed


# -- durability ------------------------------------------------------------------------------------------------
def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (before it is renamed into place)."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


@contextlib.contextmanager
def _signals_deferred():
    """Hold Ctrl-C/SIGTERM/SIGHUP while a version is committed, so 'interrupted' never lands between the rename and
    its bookkeeping (they are delivered right after)."""
    sigs = {signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGTERM)}
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# -- writing ---------------------------------------------------------------------------------------------------
@dataclass
class Staged:
    stage: Path
    path: Path | None = None  # the final version directory, set once committed


@contextlib.contextmanager
def staged_version(out: Path, name: str, version: int | None = None):
    """Yield a Staged; on success its ``stage`` dir becomes ``out/name/<version>``, on error it is removed.

    Nothing half-written is ever left under a version number, and nothing is written outside ``out``."""
    check_name(name)
    out = Path(out)
    base = out / name
    if version is not None and version < 1:
        raise InputError(f"--version must be >= 1, got {version}", "omit --version to take the next free one")
    created = [d for d in (base, out) if not d.exists()]
    check_writable(base)
    if not _inside(base, out):  # out/name is a symlink leading elsewhere
        raise InputError(f"{base} leads outside --output {out} (a symbolic link?)", "choose another --name or --output")
    clean_stale(base)
    if version is not None and (base / str(version)).exists():
        raise InputError(f"version {version} already exists ({base / str(version)})",
                         "omit --version to take the next free one, or pick another")
    try:
        stage = make_temp_dir(base)
    except OSError as e:
        raise InputError(f"output directory {base} is not writable ({e.strerror or type(e).__name__})",
                         "choose another --output directory") from e
    staged = Staged(stage)
    try:
        yield staged
        sync_tree(stage)
        with _signals_deferred():
            while True:
                v = version if version is not None else (max(versions(base), default=0) + 1)
                final = base / str(v)
                try:
                    os.rename(stage, final)  # atomic; fails if another run took the number first
                    break
                except OSError:
                    if not final.exists():
                        raise
                    if version is not None:
                        raise InputError(f"version {version} already exists ({final}): another run wrote it first",
                                         "omit --version to take the next free one, or pick another") from None
            _fsync_dir(base)
            stage = None
            staged.path = final
            committed.append(final)
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
            for d in created:  # leave no empty directories behind a failed run
                with contextlib.suppress(OSError):
                    d.rmdir()


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (a unique temporary name beside it, fsynced, then renamed)."""
    write_text(path, json.dumps(data, indent=2, default=_jsonable))


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (a unique temporary name beside it, fsynced, then renamed)."""
    path = Path(path)
    for old in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):  # left by a killed writer
        m = re.fullmatch(r"(\d+)-[0-9a-f]+", old.name[len(path.name) + 2:-4])
        if m and not _alive(int(m.group(1)), "0"):
            with contextlib.suppress(OSError):
                old.unlink()
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


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


# -- sealing ---------------------------------------------------------------------------------------------------
def _derived(rel: str) -> bool:
    top = rel.split("/", 1)[0]
    return top in DERIVED or top == MANIFEST or top.endswith(".tmp")


def file_table(root: Path) -> dict[str, dict]:
    """{relative posix path: {sha256, bytes}} of every sealed file under ``root``."""
    table = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_dir() or _derived(rel):
            continue
        table[rel] = {"sha256": sha256_of(p), "bytes": p.stat().st_size}
    return table


def seal(stage: Path, manifest: dict) -> None:
    """Record the sha256 of every file written so far in the manifest and write it (the last file of a version)."""
    manifest["schema"] = MANIFEST_SCHEMA
    manifest["files"] = file_table(stage)
    write_json(stage / MANIFEST, manifest)
