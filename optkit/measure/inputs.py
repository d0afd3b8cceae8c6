"""What a bench runs on: the backends asked for, the reference model and the feeds (rebatched when asked), the
precision of a model, and keeping a bench result with its artifact."""
from __future__ import annotations

from pathlib import Path

from ..backends import get_backend
from ..data import Samples, get_samples
from ..errors import InputError
from ..model import load_model, sha256_file


def _keep(t: dict, result: dict, save: bool, warn) -> dict:
    """Store a bench of an artifact with it (bench/<n>.json) and rewrite its report, so the evidence stays together."""
    if save and t["artifact"] is not None:
        from ..report import save_bench, write_report

        try:
            result["saved"] = str(save_bench(t["artifact"], result))
            result["report"] = str(write_report(t["artifact"])[1])
        except OSError as e:
            warn(f"could not save the bench result into {t['artifact']} ({e.strerror or e}); results are printed only")
    return result


def _prepare(t: dict, reference, data, shapes, batch, warn) -> tuple[Path | None, Samples]:
    """The reference model (``--reference``, else the artifact's input model when unchanged) and the feeds
    (``--data``, else the artifact's data, else synthetic), rebatched when asked."""
    man = t["manifest"]
    model = load_model(t["model"])
    ref_path = Path(reference) if reference else None
    if ref_path is None and man is not None:
        cand = Path(man["input"]["path"])
        if not cand.is_absolute():  # an imported model's ONNX lives in the artifact (input.onnx)
            cand = Path(t["model"]).parent / cand
        if cand.is_file() and sha256_file(cand) == man["input"]["sha256"]:
            ref_path = cand
        else:
            warn(f"the artifact's input model {cand} is missing or changed since optimize; no reference comparison "
                 "(pass --reference FP32.onnx)")
    if ref_path is not None:
        load_model(ref_path)  # clear error for a bad reference
    if data is None and man is not None and man["data"].get("path") and Path(man["data"]["path"]).exists():
        data = man["data"]["path"]
    if shapes is None and man is not None and man.get("user_shapes"):
        shapes = {k: tuple(v) for k, v in man["user_shapes"].items()}
    samples: Samples = get_samples(model, data, shapes)
    samples.path = str(Path(data).resolve()) if data else None
    for w in samples.warnings:
        warn(w)
    if batch is not None:
        samples = _rebatch(samples, batch, model)
    return ref_path, samples


def parse_backends(spec: str | None, default: str) -> list[str]:
    """'ort' | 'ort,tvm,trt' | 'all' (every registered backend) -> names; unknown names are an error."""
    from ..backends import backend_names

    if not spec:
        return [default]
    names = backend_names() if spec.strip().lower() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        get_backend(n, check=False)  # RecipeError naming the available backends
    return list(dict.fromkeys(names))


def precision_of(model) -> str:
    """int8 when the graph quantizes (QDQ, QOperator, integer MatMul/Conv), fp16 when it computes in float16, else fp32."""
    ops = {n.op_type for n in model.graph.node}
    if ops & {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
              "ConvInteger", "DynamicQuantizeMatMul"}:
        return "int8"
    if any(t.data_type == 10 for t in model.graph.initializer):  # FLOAT16
        return "fp16"
    return "fp32"


def _rebatch(samples: Samples, batch: int, model) -> Samples:
    from ..model import signature

    if batch < 1:
        raise InputError(f"--batch must be >= 1, got {batch}", "use a positive batch size")
    for spec in signature(model)[0]:
        if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] != batch:
            raise InputError(f"--batch {batch}: input {spec.name!r} has a fixed batch dim of {spec.shape[0]}",
                             "re-export the model with a dynamic batch axis or drop --batch")
    return samples.batched(batch)


def _feed_batch(first: dict) -> int:
    return int(next(iter(first.values())).shape[0]) if first and next(iter(first.values())).ndim else 1
