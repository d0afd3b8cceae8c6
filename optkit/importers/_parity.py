"""The ONNX Runtime side of ``optkit import`` (optkit.importers): a runner for the exported model, the parity check of
the framework's outputs against it, and the output axes that follow the dynamic input axes."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from ..errors import ExportError


def _ort_runner(model):
    import onnxruntime as ort

    from ..model import save_model

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 4  # a failing run is reported as one ExportError, not ORT's multi-line log
    # like with like: a quantized framework model computes Q/DQ as float fake-quant, so the export is checked with ORT
    # running them as float ops too; ORT's fused integer kernels differ by CPU (U8S8 saturates without VNNI)
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    if qdq:
        so.add_session_config_entry("session.disable_quant_qdq", "1")
    ro = ort.RunOptions()
    ro.log_severity_level = 4
    tmp = tempfile.TemporaryDirectory(prefix="optkit-import-")
    path = Path(tmp.name) / "model.onnx"
    save_model(model, path)
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        tmp.cleanup()
        raise ExportError(f"ONNX Runtime cannot load the exported model ({type(e).__name__}: {_first(e)})",
                          "try the other --exporter or another --opset") from e
    names = [o.name for o in sess.get_outputs()]

    def run(feed):
        try:
            return dict(zip(names, sess.run(None, feed, ro)))
        except Exception as e:
            raise ExportError(f"ONNX Runtime fails on the exported model with inputs "
                              f"{ {k: list(v.shape) for k, v in feed.items()} } ({_ort_msg(e)})",
                              "try the other --exporter or another --opset; --dynamic none exports static shapes") from e

    run.cleanup = tmp.cleanup
    run.reference = ("onnxruntime, Q/DQ run as float fake-quant (session.disable_quant_qdq=1), as the framework computes "
                     "them" if qdq else "onnxruntime (default session)")
    return run


def _ort_msg(e: BaseException) -> str:
    """ORT's run error in a few words: the node that failed and the last sentence of its message."""
    text = str(e)
    m = re.search(r"running (\w+) node\. Name:'([^']*)'", text)
    tail = re.split(r"(?<=false\.)\s+|Status Message:\s*", text)[-1].strip().splitlines()[0][:200]
    return f"{m.group(1)} node {m.group(2)!r}: {tail}" if m else _first(e)


def _first(e: BaseException) -> str:
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:300]


def _parity(src_outs: list[dict], ort_outs: list[dict], rtol: float, atol: float) -> dict:
    from ..metrics import compare, within

    # match outputs by name when both sides use the same names, else by position (exporters may rename them)
    if set(src_outs[0]) == set(ort_outs[0]):
        order = list(ort_outs[0])
        src_outs = [{k: o[k] for k in order} for o in src_outs]
    ref = [dict(zip(range(len(o)), o.values())) for o in src_outs]
    new = [dict(zip(range(len(o)), o.values())) for o in ort_outs]
    if len(ref[0]) != len(new[0]):
        return {"passed": False, "reason": f"the framework returns {len(ref[0])} outputs, the ONNX model {len(new[0])}"}
    d = compare(ref, new)
    names = list(ort_outs[0])
    per = {names[i]: {k: v for k, v in d["outputs"][i].items()} for i in d["outputs"]}
    ok = within(d, rtol, atol, min_cosine=0.9999)
    return {"passed": bool(ok), "max_abs": d["max_abs"], "cosine": d["cosine"], "rtol": rtol, "atol": atol,
            "outputs": per, **({"top1_agreement": d["top1_agreement"]} if "top1_agreement" in d else {})}


def _output_dynamic(src, example, grown, dynamic) -> dict[str, dict[int, str]]:
    """Output axes that change size when the dynamic input axes do, labelled after the input axis they follow."""
    a, b = src.run(example), src.run(grown)
    new_sizes = {}
    for name, axes in dynamic.items():
        for axis, label in axes.items():
            new_sizes.setdefault(grown[name].shape[axis], label)
    out = {}
    for (name, x), y in zip(a.items(), b.values()):
        for axis, (s0, s1) in enumerate(zip(x.shape, y.shape)):
            if s0 != s1:
                out.setdefault(name, {})[axis] = new_sizes.get(s1, f"{name}_dim{axis}")
    return out


def _parity_msg(parity: dict, feeds, grown) -> str:
    if "reason" in parity:
        return f"parity check failed: {parity['reason']}"
    if "dynamic_check" in parity and not parity["dynamic_check"]["passed"]:
        dc = parity["dynamic_check"]
        return (f"parity check failed at the dynamic-shape feed {dc['shapes']}: max-abs {dc['max_abs']:.3g}, cosine "
                f"{dc['cosine']:.6f} (the export baked in a size that should vary; --dynamic none exports static shapes)")
    return (f"parity check failed on {len(feeds)} feed(s): max-abs {parity['max_abs']:.3g} > "
            f"{parity['atol']:g} + {parity['rtol']:g}*|ref|, cosine {parity['cosine']:.6f}")

