"""Issue 12 evidence: legacy model-zoo graphs (IR 3, opset 9, initializers listed as inputs, weights produced by
ConstantOfShape nodes) through optkit's INT8 recipes, with plain onnxruntime.quantization on the same files in the
same run.

The graphs are the "light" zoo models the onnx wheel ships for its backend tests (onnx/backend/test/data/light):
the model-zoo ResNet-50, DenseNet-121, SqueezeNet, ... graphs exported by tools optkit did not write, with their
weights replaced by ConstantOfShape fills. The weights are constants, so accuracy numbers mean nothing here; what
this run shows is whether each tool gets through the model at all, and what optkit's ingest step did.

    python -m benchmarks.ingest_zoo [--models squeezenet,resnet50] [--recipes int8-ort,int8-dynamic-ort]
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import onnx

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["squeezenet", "resnet50", "densenet121", "shufflenet"]
RECIPES = ["int8-ort", "int8-dynamic-ort"]


def _first(e: BaseException) -> str:
    s = str(e).strip()
    return f"{type(e).__name__}: {s.splitlines()[0][:200] if s else ''}"


def _quantized(m: onnx.ModelProto) -> str:
    from optkit.passes.quantize import quantized_summary

    return quantized_summary(m, m)


def plain(kind: str, src: Path, dst: Path, feeds) -> dict:
    """The peer: onnxruntime.quantization called as its docs show, on the file as published."""
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    t0 = time.perf_counter()
    try:
        if kind == "int8-dynamic-ort":
            quantize_dynamic(str(src), str(dst))
        else:
            it = iter(feeds)

            class Reader:
                def get_next(self):
                    return next(it, None)

            quantize_static(str(src), str(dst), Reader())
        import onnxruntime as ort

        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
        return {"status": "ok", "seconds": round(time.perf_counter() - t0, 2), "quantized": _quantized(onnx.load(str(dst)))}
    except Exception as e:
        return {"status": "failed", "error": _first(e)}


def main(argv=None) -> dict:
    from optkit.api import optimize
    from optkit.data import synthetic_samples
    from optkit.ingest import normalize

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest_zoo.json"))
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="optkit-zoo-") as tmp:
        for name in args.models.split(","):
            src = LIGHT / f"light_{name}.onnx"
            raw = onnx.load(str(src))
            feeds = synthetic_samples(normalize(raw)[0], n=4).feeds
            for recipe in args.recipes.split(","):
                row = {"model": name, "ir_version": raw.ir_version, "opset": raw.opset_import[0].version,
                       "recipe": recipe, "plain_ort_quantization": plain(recipe, src, Path(tmp) / f"{name}-{recipe}.onnx", feeds)}
                t0 = time.perf_counter()
                try:
                    man = optimize(src, recipe, output=Path(tmp) / "out", allow_miss=True)
                    row["optkit"] = {"status": "ok", "seconds": round(time.perf_counter() - t0, 1),
                                     "passes": [e["pass"] + ("" if e["status"] == "ok" else f" ({e['status']})")
                                                for e in man["pass_log"]],
                                     "ingest": man["ingest"]["notes"],
                                     "quantized": next((n for e in man["pass_log"] for n in e["notes"]
                                                        if n.startswith("quantized ops")), "no INT8 pass kept")}
                except Exception as e:
                    row["optkit"] = {"status": "failed", "error": _first(e)}
                print(json.dumps({k: row[k] for k in ("model", "recipe")} | {"optkit": row["optkit"]["status"],
                                 "plain": row["plain_ort_quantization"]["status"]}), flush=True)
                rows.append(row)
    from optkit.env import environment

    result = {"what": __doc__.split("\n\n")[0], "source": str(LIGHT), "rows": rows, "environment": environment()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
