"""The variants ``optkit tune`` times: the input (an ONNX model or an artifact), each (backend, precision) built once
with its built-in recipe and reused while the model, recipe and data are unchanged, and judged for accuracy."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import InputError, OptkitError
from .spec import RECIPES


def _resolve_input(target, output, name):
    """(source ONNX, artifact dir or None, its manifest, model name, tune dir, serving.json dir)."""
    from ..api import _model_name
    from ..predictor import resolve_artifact

    p = Path(target)
    if name is not None:
        from ..artifact import check_name

        check_name(name)  # files go under OUTPUT/<name>/: one path component, never outside
    if not p.exists():
        raise InputError(f"{p} not found", "pass an ONNX model or an artifact directory (OUT/<name>/<version>)")
    if p.is_file():
        if p.suffix.lower() != ".onnx":
            raise InputError(f"optkit tune takes an ONNX model or an artifact directory, not {p.name}",
                             "import it first: optkit import MODEL --out model.onnx")
        nm = name or _model_name(p)
        tune_dir = Path(output) / nm / "tune"
        return p, None, None, nm, tune_dir, tune_dir
    art, man, _ = resolve_artifact(p)
    src = Path(man["input"]["path"])
    if not src.is_absolute():
        src = art / src
    from ..model import sha256_file

    if not src.is_file() or sha256_file(src) != man["input"]["sha256"]:
        raise InputError(f"the artifact's input model {src} is missing or changed since optimize; tune builds its "
                         "variants from it", "pass the original ONNX model to optkit tune instead")
    return src, art, man, name or art.parent.name, art / "tune", art


def _variant_matches(man: dict, src_sha: str, recipe_dict: dict, data_path: str | None) -> bool:
    return (man.get("input", {}).get("sha256") == src_sha and man.get("recipe") == recipe_dict
            and (man.get("data") or {}).get("path") == data_path)


def _build_variant(src: Path, src_sha: str, backend: str, precision: str, vdir: Path, data, shapes, warn) -> dict:
    """Build (or reuse) one variant with its recipe; the performance guard is off (the tuner decides speed per
    threads and batch size, so an INT8 model slower at batch 1 may still win at batch 32)."""
    from ..api import optimize
    from ..artifact import check, read_manifest, versions
    from ..recipe import load_recipe

    recipe = RECIPES[(backend, precision)]
    rec = load_recipe(recipe)
    rdict = rec.to_dict()
    data_path = str(Path(data).resolve()) if data else None
    for v in reversed(versions(vdir)):
        try:
            man = read_manifest(vdir / str(v))
            check(vdir / str(v), man)  # a cached variant whose files changed is rebuilt, never loaded
        except OptkitError:
            continue
        if _variant_matches(man, src_sha, json.loads(json.dumps(rdict)), data_path):
            return {"recipe": recipe, "artifact": str(vdir / str(v)), "built": False,
                    "build_seconds": man.get("optimize_seconds"), "manifest": man}
    t0 = time.perf_counter()
    man = optimize(src, rec, data=data, shapes=shapes, output=vdir.parent, name=vdir.name, force=True,
                   warn=lambda m: None)
    return {"recipe": recipe, "artifact": man["artifact"], "built": True,
            "build_seconds": round(time.perf_counter() - t0, 3), "manifest": man}


def _judge_variants(src: Path, variants: list[dict], evals, criterion, max_feeds: int, warn) -> None:
    """Accuracy of every built variant against the input model (ORT) on the eval feeds, on its own backend."""
    from ..backends import get_backend
    from ..backends.ort import OrtSession
    from ..predictor import backend_options, load_path

    feeds = evals.feeds[:max_feeds]
    labels = evals.labels[:max_feeds] if evals.labels else None
    with OrtSession(src, 1) as ref:
        ref_out = [ref.run(f) for f in feeds]
    for v in variants:
        if v["status"] != "built":
            continue
        art, man = Path(v["artifact"]), v.pop("_manifest")
        be = get_backend(v["backend"], check=False)
        try:
            path = load_path(art, man, art / man["output"]["path"], v["backend"])
            opts = backend_options(man, v["backend"])
            sess = be.load(path, threads=1, options=opts)
            try:
                outs = [sess.run(f) for f in feeds]
            finally:
                sess.close()
        except Exception as e:  # a variant this backend cannot run: recorded, the others go on
            v.update(status="failed", reason=f"cannot run: {type(e).__name__}: {str(e).strip()[:300]}")
            continue
        v["model"], v["options"] = str(path), opts.to_dict()
        verdict = criterion.judge(ref_out, outs, labels, feeds)
        v["accuracy"] = {"criterion": criterion.describe(), "feeds": len(feeds), **verdict}
        if verdict["ok"]:
            v["status"] = "ok"
        else:
            v.update(status="inaccurate", reason=f"{verdict['metric']} {verdict['value']:.5g} below the threshold "
                                                 f"{verdict['threshold']:.5g} ({criterion.describe()}); not timed")


def _fixed_batch(inputs) -> int | None:
    dims = {s.shape[0] for s in inputs if s.shape and isinstance(s.shape[0], int)}
    return dims.pop() if len(dims) == 1 else (min(dims) if dims else None)




def plan_variants(be_names: list[str], precs: list[str], warn) -> tuple[list[dict], list[dict]]:
    """(unavailable backends, variants): one variant per available backend x precision; a pair no built-in recipe
    builds is kept as 'unsupported'."""
    from ..backends import get_backend

    unavailable, variants = [], []
    for b in be_names:
        st = get_backend(b, check=False).status()
        if not st.get("ok"):
            unavailable.append({"backend": b, "reason": st.get("reason") or "unavailable"})
            warn(f"backend {b} is unavailable here and is left out of the search: {st.get('reason')}")
            continue
        for p in precs:
            v = {"variant": f"{b}-{p}", "backend": b, "precision": p, "recipe": RECIPES.get((b, p))}
            if v["recipe"] is None:
                v.update(status="unsupported", reason=f"no built-in recipe builds {p} for backend {b}")
            variants.append(v)
    return unavailable, variants


def build_variants(variants: list[dict], src: Path, src_sha: str, art: Path | None, art_man: dict | None,
                   tune_dir: Path, data, shapes, status, warn) -> None:
    """Build (or reuse) every supported variant; the given artifact stands for the variant it is. Each built one
    gets its artifact, ONNX path, sha256 and actual precision; a failed build is recorded and warned about."""
    from ..measure import precision_of
    from ..model import load_model, sha256_file
    from ..predictor import artifact_backend

    art_prec = precision_of(load_model(art / art_man["output"]["path"])) if art is not None else None
    for v in variants:
        if v.get("status") == "unsupported":
            continue
        if art is not None and v["backend"] == artifact_backend(art_man) and v["precision"] == art_prec:
            v.update(status="built", artifact=str(art), built=False, build_seconds=art_man.get("optimize_seconds"),
                     recipe=art_man["recipe"]["name"], _manifest=art_man, source="the given artifact")
            continue
        status(f"variant {v['variant']}: building with recipe {v['recipe']} (or reusing the cache)")
        try:
            info = _build_variant(src, src_sha, v["backend"], v["precision"], tune_dir / "variants" / v["variant"],
                                  data, shapes, warn)
        except OptkitError as e:
            v.update(status="failed", reason=f"build failed: {e}")
            warn(f"variant {v['variant']} could not be built: {e}")
            continue
        v.update(status="built", artifact=info["artifact"], built=info["built"], build_seconds=info["build_seconds"],
                 _manifest=info["manifest"])
    for v in variants:
        if v.get("status") == "built":
            out_model = Path(v["artifact"]) / v["_manifest"]["output"]["path"]
            v["model_sha256"] = sha256_file(out_model)
            v["onnx"] = str(out_model)
            v["precision_actual"] = precision_of(load_model(out_model))


def variant_summary(variants: list[dict]) -> list[dict]:
    """The variants as serving.json lists them."""
    return [{k: v.get(k) for k in ("variant", "backend", "precision", "recipe", "status", "reason", "artifact",
                                   "built", "build_seconds", "precision_actual", "accuracy", "source")
             if v.get(k) is not None} for v in variants]
