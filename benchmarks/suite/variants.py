"""The variants of a model: FP32 as exported, what a user would do by hand with the plain libraries (library
defaults, no tuning), and optkit's recipes. Every builder times its own library call (the optimize wall time);
a builder that fails is kept as a row with the error, not dropped.

FP32 and the ORT-optimizer baseline: every variant, FP32 included, runs in an ONNX Runtime session at ORT's
default level (ORT_ENABLE_ALL), which is what ``InferenceSession(path)`` gives a user. So "ORT's graph optimizer
alone" is already inside the FP32 row at session time; the ``ort-opt`` row is the offline form a user ships:
the graph saved by ``SessionOptions.optimized_model_filepath`` at ENABLE_ALL (layout tied to this CPU) and loaded
again. Its latency should match FP32; what it saves is session load time (reported as load ms).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

import optkit
from benchmarks.int8_vs_fp32 import plain_dynamic, plain_static  # the same library-default calls
from optkit.model import model_files

# name -> (kind, description); the order is the table's order
VARIANTS = {
    "fp32": ("reference", "the model as exported, ORT default session (ENABLE_ALL)"),
    "ort-opt": ("baseline", "ORT graph optimizer alone: optimized_model_filepath at ENABLE_ALL, reloaded"),
    "onnxsim": ("baseline", "onnxsim.simplify with defaults"),
    "ort-dynamic": ("baseline", "onnxruntime.quantization.quantize_dynamic, defaults"),
    "ort-static": ("baseline", "onnxruntime.quantization.quantize_static, defaults (QDQ), the same calibration feeds"),
    "ort-bert-fusion": ("baseline", "onnxruntime.transformers.optimizer.optimize_model(model_type='bert'), defaults"),
    "optkit fp32-ort": ("optkit", "optkit recipe fp32-ort (exact graph clean-up)"),
    "optkit int8-ort": ("optkit", "optkit recipe int8-ort as written (static INT8 QDQ, per-channel, U8S8), one shot"),
    "optkit int8-dynamic-ort": ("optkit", "optkit recipe int8-dynamic-ort as written (per-channel), one shot"),
    "optkit auto-ort": ("optkit", "optkit recipe auto-ort --tolerance 1%: the fastest of its candidates within tolerance"),
}
# Only auto-ort searches (--tolerance): the one-shot recipes are the like-for-like match of the library defaults
# (better defaults, no search); auto-ort's int8-static / int8-dynamic candidates are those recipes with the search.
SEARCHED = ("auto-ort",)
OPTKIT_RECIPES = ("fp32-ort", "int8-ort", "int8-dynamic-ort", "auto-ort")


@dataclass
class Variant:
    name: str
    kind: str
    how: str
    path: Path | None = None
    optimize_s: float | None = None
    info: dict = field(default_factory=dict)
    error: str | None = None


def file_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in model_files(path) if f.exists())


def _err(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def ort_offline(src: Path, dst: Path) -> Path:
    from optkit.backends.ort import session_options
    import onnxruntime as ort

    so = session_options(1, "all")
    so.optimized_model_filepath = str(dst)
    ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"])
    return dst


def onnxsim_alone(src: Path, dst: Path) -> Path:
    import onnxsim

    model, ok = onnxsim.simplify(onnx.load(str(src)))
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    onnx.save(model, str(dst))
    return dst


def bert_fusion(src: Path, dst: Path, heads: int, hidden: int) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    optimize_model(str(src), model_type="bert", num_heads=heads, hidden_size=hidden).save_model_to_file(str(dst))
    return dst


def _timed(v: Variant, fn, *args) -> Variant:
    t0 = time.perf_counter()
    try:
        v.path = fn(*args)
    except Exception as e:  # a baseline that fails on a model is a result
        v.error = _err(e)
    v.optimize_s = round(time.perf_counter() - t0, 3)
    return v


def optkit_variant(model, recipe: str, work: Path, tolerance: str | None, budget: str | None = None) -> Variant:
    """``optkit.optimize`` with the calibration data and the validation data as --eval-data (the feeds numerics
    checks and the tolerance are judged on); a tolerance miss is kept (allow_miss) and flagged."""
    name = f"optkit {recipe}"
    kind, how = VARIANTS[name]
    v = Variant(name, kind, how.replace("1%", tolerance or "1%"))
    try:
        man = optkit.optimize(model.src, recipe, data=model.calib, eval_data=model.val, tolerance=tolerance,
                              budget=budget, output=work / "optkit-out", name=f"{model.key}-{recipe}", allow_miss=True)
    except Exception as e:
        v.error = _err(e)
        return v
    v.path = Path(man["artifact"]) / "model.onnx"
    v.optimize_s = man["optimize_seconds"]
    tol = man.get("tolerance") or {}
    final = (man.get("guard") or {}).get("final") or {}
    v.info = {"tolerance_passed": tol.get("passed"), "tolerance_criterion": tol.get("criterion"),
              "trials": tol.get("trials"),
              "chosen": next((c["candidate"] for c in man.get("candidates") or [] if c.get("chosen")), None),
              "reverted": [e["pass"] for e in man["pass_log"] if e.get("status") == "reverted"],
              "skipped": [c["candidate"] for c in man.get("candidates") or [] if c.get("skipped")],
              "candidates": [{k: c.get(k) for k in ("candidate", "passed", "speedup_vs_input", "trials", "skipped",
                                                    "metric", "chosen")} for c in man.get("candidates") or []] or None,
              "kept_input": final.get("kept") is False,
              "passes": [e["pass"] for e in man["pass_log"] if e.get("status") == "ok"]}
    return v


def build(model, work: Path, tolerance: str, only_variants: set[str] | None = None, log=print,
          auto_budget: str | None = None) -> list[Variant]:
    """Every variant of ``model`` (a models.Model) in table order."""
    out: list[Variant] = []
    want = lambda n: only_variants is None or n in only_variants or n == "fp32"  # noqa: E731
    for name, (kind, how) in VARIANTS.items():
        if not want(name):
            continue
        if name == "ort-bert-fusion" and name not in model.extra_baselines:
            continue
        v = Variant(name, kind, how)
        dst = work / f"{model.key}-{name.replace(' ', '_')}.onnx"
        log(f"  [{model.key}] {name} ...")
        if name == "fp32":
            v.path, v.optimize_s = model.src, 0.0
        elif name == "ort-opt":
            _timed(v, ort_offline, model.src, dst)
        elif name == "onnxsim":
            _timed(v, onnxsim_alone, model.src, dst)
        elif name == "ort-dynamic":
            _timed(v, plain_dynamic, model.src, dst)
        elif name == "ort-static":
            _timed(v, plain_static, model.src, dst, model.calib_feeds)
        elif name == "ort-bert-fusion":
            g = model.info["geometry"]
            _timed(v, bert_fusion, model.src, dst, g["heads"], g["hidden"])
        else:
            recipe = name.removeprefix("optkit ")
            searched = recipe in SEARCHED
            v = optkit_variant(model, recipe, work, tolerance if searched else None, auto_budget if searched else None)
        if v.error:
            log(f"    failed: {v.error}")
        else:
            log(f"    {v.optimize_s:.1f} s")
        out.append(v)
    return out
