"""Child-process entry of the TVM backend: ``python -m optkit.backends.tvm.worker SPEC.json``.

All of TVM's work at compile time (ONNX import, MetaSchedule tuning, relax build, the numerics check) runs here, in
a process of its own: TVM has segfaulted during tuning on these machines, and its C++ logging writes straight to the
process's stdout/stderr. The parent (``optkit.backends.tvm.runner``) sends this process's output to a log file, reads the
result JSON it writes, and turns a crash (no result, a signal) into a clear error or an untuned fallback.

SPEC (JSON) keys: ``phase`` ("tune" | "build"), ``model`` (static-shape ONNX), ``target`` (dict), ``result`` (path of
the result JSON), and per phase: tune: ``work_dir``, ``tune_trials``, ``max_trials_per_task``, ``seed``,
``in_process_builder``; build: ``out_dir``, ``lib``, ``db_dir`` (or null), ``opt_level``, ``input_names``,
``check`` (run one synthetic feed against ONNX Runtime).

Importing this module is cheap (no TVM): MetaSchedule's builder workers import it by name for ``ms_build``.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

# MetaSchedule's default builder imports tvm.s_tir.tensor_intrin in every (fresh) builder process: that registers
# the CUDA/ROCm/Hexagon/ARM intrinsics by parsing TVMScript, about 30 s per process on these machines, which made
# every build batch time out (30 s). x86 hosts only need the x86 (VNNI/AVX-512) intrinsics.
_INTRIN_PKG = "tvm.s_tir.tensor_intrin"


def _light_intrinsics() -> bool:
    """Register only the x86 tensor intrinsics (when the host is x86-64); return whether the shortcut was taken."""
    import importlib
    import importlib.util
    import platform
    import types

    if os.environ.get("OPTKIT_TVM_ALL_INTRINSICS") or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if _INTRIN_PKG in sys.modules:
        return False
    import tvm.s_tir

    spec = importlib.util.find_spec(_INTRIN_PKG)
    if spec is None or not spec.submodule_search_locations:
        return False
    pkg = types.ModuleType(_INTRIN_PKG)
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__package__ = _INTRIN_PKG
    pkg.__file__ = spec.origin
    sys.modules[_INTRIN_PKG] = pkg
    tvm.s_tir.tensor_intrin = pkg
    try:
        importlib.import_module(_INTRIN_PKG + ".x86")
    except Exception:  # fall back to the full (slow) registration
        del sys.modules[_INTRIN_PKG]
        importlib.import_module(_INTRIN_PKG)
        return False
    return True


def ms_build(mod, target, _params):
    """MetaSchedule builder function: the default one minus the 30 s intrinsic import (see above)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _in_process_builder():
    """A MetaSchedule builder that compiles candidates here, one after the other. LocalBuilder starts a fresh pool of
    Python processes for every batch (each importing TVM: seconds apiece on a busy 2-core machine) to build kernels
    that take ~0.1 s each. A crash while building takes this whole tuning process down, which the parent handles."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for inp in build_inputs:
                try:
                    results.append(BuilderResult(default_export(ms_build(inp.mod, inp.target, None)), None))
                except Exception as e:  # noqa: BLE001 - a failed candidate, not a failed tuning
                    results.append(BuilderResult(None, f"in-process build failed: {type(e).__name__}: {e}"))
            return results

    return InProcessBuilder()


# ---------------------------------------------------------------------------------------------------------------
# shared steps
# ---------------------------------------------------------------------------------------------------------------


class WorkerError(Exception):
    """An expected failure with a kind the parent maps to an optkit error (e.g. unsupported ops)."""

    def __init__(self, kind: str, message: str, **extra):
        super().__init__(message)
        self.kind = kind
        self.extra = extra


def _simplified(model):
    """The static-shape model with its shape arithmetic folded (onnxsim, else onnxslim), or None. TVM 0.27's ONNX
    frontend fails on some Shape -> Gather chains of static-shape models (e.g. a torch-exported BERT encoder:
    "shape_of expects a tensor input, but received R.Shape") that folding removes."""
    from optkit.onnxtools import simplified

    return simplified(model)


def _import_onnx(model_path: str, conv_layout: str = "auto"):
    """ONNX -> relax IRModule (weights folded in as constants; convolutions converted to ``conv_layout``).
    Unsupported ops are a WorkerError naming them."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    model = onnx.load(model_path)
    known = set(_get_convert_map()) | {"Constant", "If"}
    bad = sorted({(n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}")
                  for n in model.graph.node
                  if n.op_type not in known or n.domain not in ("", "ai.onnx")})
    if bad:
        raise WorkerError("unsupported_ops", "TVM's relax ONNX frontend has no converter for: " + ", ".join(bad), ops=bad)
    qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    simple, engine = _simplified(model)
    errors = []
    for candidate, how in ((simple, engine), (model, None)):
        if candidate is None:
            continue
        try:
            mod = from_onnx(candidate, keep_params_in_input=False)
        except Exception as e:  # noqa: BLE001
            text = str(e).strip()
            errors.append(f"{type(e).__name__}: {text.splitlines()[-1][:400] if text else ''}")
            continue
        layout = conv_layout
        has_conv = any(n.op_type == "Conv" for n in candidate.graph.node)
        if conv_layout == "auto":
            layout = "NHWC" if has_conv else "NCHW"
        if layout != "NCHW" and has_conv:
            from tvm import relax

            # channels-last convolutions vectorize over output channels (weights transposed once, as constants)
            try:
                mod = relax.transform.ConvertLayout({"relax.nn.conv2d": [layout, "OHWI"]})(mod)
            except Exception as e:  # noqa: BLE001
                if conv_layout != "auto":
                    raise WorkerError("layout_failed", f"ConvertLayout to {layout} failed: {str(e).strip()[-300:]}") from e
                layout = "NCHW (NHWC conversion failed)"
        return mod, {"nodes": len(model.graph.node), "qdq_nodes": qdq, "presimplified": how, "conv_layout": layout}
    raise WorkerError("import_failed", "relax.frontend.onnx.from_onnx failed: " + " / ".join(errors))


def _pre_tuning(mod, target):
    """The first half of relax's static_shape_tuning_pipeline: what tuning sees and what the DB is applied to."""
    import tvm
    from tvm import relax

    passes = [relax.transform.DecomposeOpsForInference(), relax.transform.CanonicalizeBindings(),
              relax.pipeline.zero_pipeline()]
    with target:
        return tvm.transform.Sequential(passes)(mod)


# ---------------------------------------------------------------------------------------------------------------
# phases
# ---------------------------------------------------------------------------------------------------------------


def _cost_model(num_cores: int):
    """XGBoost cost model that skips training while it is still in its warm-up (its predictions are random until
    ``num_warmup_samples`` measurements anyway): small budgets then pay no training time for nothing."""
    from tvm.s_tir.meta_schedule.cost_model import XGBModel

    class WarmupAwareXGB(XGBModel):
        def _train(self, xs, ys):  # noqa: D401
            if self.data_size < self.num_warmup_samples:
                return
            super()._train(xs, ys)

    return WarmupAwareXGB(num_tuning_cores=num_cores)


def phase_tune(spec: dict) -> dict:
    light = _light_intrinsics()
    import math

    import tvm
    from tvm.s_tir import meta_schedule as ms

    t0 = time.perf_counter()
    target = tvm.target.Target(spec["target"])
    mod, info = _import_onnx(spec["model"], spec.get("conv_layout", "auto"))
    mod = _pre_tuning(mod, target)
    tasks = ms.relax_integration.extract_tasks(mod, target)
    if not tasks:
        return {"tasks": 0, "trials_run": 0, "seconds": round(time.perf_counter() - t0, 3), "note": "nothing to tune"}
    total = int(spec["tune_trials"])
    per_task = int(spec.get("max_trials_per_task") or 0) or max(1, math.ceil(total / len(tasks)))
    per_iter = max(1, min(64, per_task if per_task <= 8 else per_task // 2))  # >= 2 rounds: the 2nd is model-guided
    # below the cost model's warm-up the evolutionary search ranks candidates at random: a small population does
    # the same job in a fraction of the time
    small = total < 128
    strategy = ms.search_strategy.EvolutionarySearch(population_size=64 if small else 512,
                                                     genetic_num_iters=1 if small else 4,
                                                     init_min_unmeasured=16 if small else 50)
    builders = max(1, os.cpu_count() or 1)
    work_dir = spec["work_dir"]
    ms.relax_integration.tune_relax(
        mod, {}, target, work_dir, total, max_trials_per_task=per_task, num_trials_per_iter=per_iter,
        seed=int(spec.get("seed", 0)), strategy=strategy, cost_model=_cost_model(builders),
        builder=_in_process_builder() if spec.get("in_process_builder", True) else
        ms.builder.LocalBuilder(f_build=ms_build, max_workers=builders, timeout_sec=120.0),
        runner=ms.runner.LocalRunner(timeout_sec=60.0))
    db = ms.database.JSONDatabase(work_dir=work_dir)
    records = len(db)
    tuned = _tuned_count(db, tasks, target)
    return {"tasks": len(tasks), "task_names": [t.task_name for t in tasks], "tuned_tasks": tuned,
            "trials_run": records, "max_trials_per_task": per_task, "num_trials_per_iter": per_iter,
            "search_population": 64 if small else 512, "light_intrinsics": light,
            "seconds": round(time.perf_counter() - t0, 3), **info}


def _tuned_count(db, tasks, target) -> int:
    """Tasks with at least one measured schedule in the database (a workload entry alone is not tuning: MetaSchedule
    registers every task's workload before it measures anything)."""
    return sum(db.query_tuning_record(t.dispatched[0], target, "main") is not None for t in tasks)


def _feed(model_path: str) -> dict:
    import onnx

    from optkit.data import synthetic_samples

    return synthetic_samples(onnx.load(model_path), n=1, seed=0).feeds[0]


def phase_build(spec: dict) -> dict:
    import numpy as np
    import tvm
    from tvm import relax

    t0 = time.perf_counter()
    target = tvm.target.Target(spec["target"])
    mod, info = _import_onnx(spec["model"], spec.get("conv_layout", "auto"))
    db_dir = spec.get("db_dir")
    tuned_tasks = None
    with tvm.transform.PassContext(opt_level=int(spec.get("opt_level", 3))):
        if db_dir:
            _light_intrinsics()
            from tvm.s_tir import meta_schedule as ms

            mod = _pre_tuning(mod, target)
            db = ms.database.JSONDatabase(work_dir=db_dir)
            tasks = ms.relax_integration.extract_tasks(mod, target)
            tuned_tasks = {"tuned": _tuned_count(db, tasks, target), "tasks": len(tasks)}
            with target, db:
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        else:
            mod = relax.transform.DecomposeOpsForInference()(mod)
        ex = tvm.compile(mod, target=target)
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    lib_path = out_dir / spec["lib"]
    ex.export_library(str(lib_path))
    build_s = time.perf_counter() - t0
    # run what was written, the way TvmSession will
    lib = tvm.runtime.load_module(str(lib_path))
    vm = relax.VirtualMachine(lib, tvm.cpu())
    feed = _feed(spec["model"])
    names = spec["input_names"]
    args = [tvm.runtime.tensor(np.ascontiguousarray(feed[n])) for n in names]
    out = vm["main"](*args)
    outs = [out] if hasattr(out, "numpy") else list(out)
    arrays = [o.numpy() for o in outs]
    result = {"build_seconds": round(build_s, 3), "tuned_tasks": tuned_tasks,
              "outputs": [{"dtype": str(a.dtype), "shape": list(a.shape)} for a in arrays], **info}
    if spec.get("check", True):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        # like with like: TVM runs Q/DQ as float fake-quant, so the reference is ORT running them as float too (ORT's
        # fused integer kernels give other numbers, and which ones depends on the CPU: U8S8 saturates without VNNI)
        qdq = bool(info.get("qdq_nodes"))
        if qdq:
            so.add_session_config_entry("session.disable_quant_qdq", "1")
        ref = ort.InferenceSession(spec["model"], so, providers=["CPUExecutionProvider"]).run(None, feed)
        worst_abs, worst_rel, finite = 0.0, 0.0, True
        for a, r in zip(arrays, ref):
            if a.shape != r.shape:
                raise WorkerError("shape_mismatch", f"TVM output shape {a.shape} != ONNX Runtime's {r.shape}")
            a64, r64 = a.astype(np.float64), np.asarray(r).astype(np.float64)
            finite = finite and bool(np.array_equal(np.isfinite(a64), np.isfinite(r64)))
            d = float(np.nanmax(np.abs(a64 - r64))) if a64.size else 0.0
            scale = float(np.nanmax(np.abs(r64))) if r64.size else 0.0
            worst_abs = max(worst_abs, d)
            worst_rel = max(worst_rel, d / scale if scale > 0 else d)
        result["numerics"] = {"vs": ("onnxruntime, Q/DQ run as float fake-quant (session.disable_quant_qdq=1), as TVM "
                                     "computes them" if qdq else "onnxruntime (default session)"),
                              "feed": "synthetic (seed 0)", "max_abs": worst_abs,
                              "max_rel_to_range": worst_rel, "finite_match": finite}
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text())
    result_path = Path(spec["result"])
    try:
        out = {"phase_tune": phase_tune, "phase_build": phase_build}["phase_" + spec["phase"]](spec)
        payload = {"ok": True, **out}
        code = 0
    except WorkerError as e:
        payload = {"ok": False, "kind": e.kind, "message": str(e), **e.extra}
        code = 1
    except BaseException as e:  # noqa: BLE001 - everything becomes a result the parent can read
        payload = {"ok": False, "kind": "exception", "message": f"{type(e).__name__}: {str(e).strip()[:2000]}",
                   "traceback": traceback.format_exc()[-6000:]}
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    os.replace(tmp, result_path)
    return code


if __name__ == "__main__":
    # run as a script (-m): make the module importable by name too, so MetaSchedule workers pickle ms_build by
    # reference (optkit.backends.tvm.worker.ms_build), not by value
    from optkit.backends.tvm import worker as _self

    sys.exit(_self.main())
