"""Reading an artifact (optkit.artifact): the manifest, checked for shape before use; the verification of every sealed
file against it (``verify`` reports, ``check`` raises IntegrityError); the bench results kept with it."""
from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from ..errors import InputError, IntegrityError
from ..model import sha256_of

MANIFEST = "manifest.json"


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _safe_rel(p) -> bool:
    if not isinstance(p, str) or not p or "\\" in p or "\0" in p:
        return False
    pp = PurePosixPath(p)
    return not pp.is_absolute() and ".." not in pp.parts


def read_manifest(artifact: Path) -> dict:
    p = Path(artifact) / MANIFEST
    if not p.is_file():
        raise InputError(f"{artifact} is not an optkit artifact (no {MANIFEST})", "pass an artifact directory or a .onnx file")
    try:
        man = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        what = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise InputError(f"{p} is not valid JSON ({what})", "re-run `optkit optimize` to regenerate the artifact") from e
    except OSError as e:
        raise InputError(f"cannot read {p} ({e.strerror or type(e).__name__})", "check its permissions") from e
    problem = _manifest_problem(man)
    if problem:
        raise InputError(f"{p} is not a valid optkit manifest ({problem})",
                         "re-run `optkit optimize` to regenerate the artifact")
    return man


def _manifest_problem(man) -> str | None:
    if not isinstance(man, dict):
        return f"a JSON {type(man).__name__}, not an object"
    for key, kind in (("output", dict), ("recipe", dict), ("input", dict)):
        if not isinstance(man.get(key), kind):
            return f"no {key!r} object"
    if not _safe_rel(man["output"].get("path")):
        return f"output.path {man['output'].get('path')!r} is not a path inside the artifact"
    if not isinstance(man["recipe"].get("name"), str):
        return "no recipe.name"
    for key in ("data", "backend", "backends", "user_shapes", "shapes", "accuracy", "import"):
        if man.get(key) is not None and not isinstance(man[key], dict):
            return f"{key!r} is a {type(man[key]).__name__}, not an object"
    for key in ("path", "sha256"):
        if man["input"].get(key) is not None and not isinstance(man["input"][key], str):
            return f"input.{key} is not a string"
    files = man.get("files")
    if files is not None:
        if not isinstance(files, dict) or not all(_safe_rel(k) and isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                                   for k, v in files.items()):
            return "'files' is not a table of relative paths with their sha256"
        if man["output"]["path"] not in files:
            return f"output.path {man['output']['path']!r} is not among its files"
    return None


def verify(artifact: Path, man: dict | None = None) -> dict:
    """Check every sealed file of an artifact against its manifest. Returns {artifact, ok, sealed, files: [{path,
    status: ok|changed|missing|unexpected, bytes, sha256, expected}]}; never raises for a mismatch."""
    artifact = Path(artifact)
    man = read_manifest(artifact) if man is None else man
    rows = []
    files = man.get("files")
    if files is None:  # schema 1 (older optkit): only the model and the imported input carried a sha256
        from ..model import sha256_file

        files = {}
        legacy = [(man["output"]["path"], man["output"].get("sha256"))]
        if _safe_rel(man["input"].get("path")) and man["input"].get("sha256"):
            legacy.append((man["input"]["path"], man["input"]["sha256"]))
        for rel, want in legacy:
            p = artifact / rel
            got = sha256_file(p) if p.is_file() else None
            rows.append({"path": rel, "expected": want, "sha256": got,
                         "status": "missing" if got is None else ("ok" if got == want else "changed")})
    for rel, rec in sorted(files.items()):
        p = artifact / rel
        if not p.is_file() or not _inside(p, artifact):
            rows.append({"path": rel, "expected": rec["sha256"], "sha256": None,
                         "status": "missing" if not p.is_file() else "outside the artifact (a symbolic link)"})
            continue
        got = sha256_of(p)
        rows.append({"path": rel, "expected": rec["sha256"], "sha256": got, "bytes": p.stat().st_size,
                     "status": "ok" if got == rec["sha256"] else "changed"})
    if man.get("files") is not None:  # a backend loads whatever its compiled directory holds: nothing extra there
        for d in sorted(artifact.glob("compiled*")):
            for p in sorted(d.rglob("*")):
                rel = p.relative_to(artifact).as_posix()
                if (p.is_file() or p.is_symlink()) and rel not in files and not rel.endswith(".tmp"):
                    rows.append({"path": rel, "expected": None, "sha256": None, "status": "unexpected"})
    return {"artifact": str(artifact), "sealed": man.get("files") is not None,
            "ok": all(r["status"] == "ok" for r in rows), "files": rows}


def check(artifact: Path, man: dict | None = None) -> dict:
    """``verify`` that raises IntegrityError (exit 7) on the first problem; returns the verification."""
    res = verify(artifact, man)
    bad = [r for r in res["files"] if r["status"] != "ok"]
    if bad:
        first = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise IntegrityError(f"artifact {artifact} failed verification: {first['path']} is {first['status']}"
                             + {"changed": " since optimize sealed it", "missing": " since optimize sealed it",
                                "unexpected": " (not written by optimize)"}.get(first["status"], "") + more,
                             f"run `optkit verify {artifact}` for the list; re-run `optkit optimize` to rebuild it")
    return res


def read_bench_results(artifact: Path) -> list[dict]:
    """The bench results kept under ``ARTIFACT/bench/<n>.json``; a file that is not a JSON object names itself."""
    d = Path(artifact) / "bench"
    files = sorted((p for p in d.glob("*.json") if p.stem.isdigit()), key=lambda p: int(p.stem)) if d.is_dir() else []
    out = []
    for p in files:
        try:
            res = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
            raise InputError(f"bench result {p} is not readable JSON ({why})",
                             "move it out of the artifact (or delete it) and run optkit bench again") from e
        if not isinstance(res, dict) or not isinstance(res.get("latency", res.get("rows")), (dict, list)):
            raise InputError(f"bench result {p} is not an optkit bench result (no latency or rows)",
                             "move it out of the artifact (or delete it) and run optkit bench again")
        out.append(res)
    return out
