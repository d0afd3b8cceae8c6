"""``sparsify``: magnitude sparsification (unstructured or 2:4) of Conv/Gemm/MatMul weights, shapes unchanged.

Dense CPU kernels gain nothing from the zeros; it is for sparse-capable backends (TensorRT sparse tactics on
Ampere+)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ...model import layer_name
from ...model import node_attr as _attr
from .. import Context, Pass, PassConfig, PassResult, option, register_pass
from .graph import _STD

SPARSE_NOTE = ("dense CPU kernels (ONNX Runtime CPU) gain no speed from these zeros; "
               "2:4 helps TensorRT sparse tactics on Ampere+ GPUs")


@dataclass(frozen=True)
class SparsifyConfig(PassConfig):
    sparsity: float = option(0.5, "fraction of each weight zeroed (smallest |w| first); pattern 2:4 is always 50%",
                            min=0, lt=1)
    pattern: str = option("unstructured", "unstructured magnitude, or 2:4 (2 of every 4 consecutive weights along "
                                          "the input/reduction axis: the TensorRT sparse layout)",
                          choices=("unstructured", "2:4"))
    skip: tuple[str, ...] = option((), "layer (node) names left dense")


def _reduction_axis(node: onnx.NodeProto, w: np.ndarray) -> int:
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 1 if int(_attr(node, "transB", 0)) else 0
    return w.ndim - 2  # MatMul: X @ W reduces over W's rows


def _two_four(w: np.ndarray, axis: int) -> np.ndarray:
    x = np.moveaxis(w, axis, -1)
    shp = x.shape
    g = x.reshape(-1, 4)
    order = np.argsort(np.abs(g), axis=1, kind="stable")  # ascending: the first two are dropped
    mask = np.ones_like(g, dtype=bool)
    np.put_along_axis(mask, order[:, :2], False, axis=1)
    return np.moveaxis(np.where(mask, g, 0).reshape(shp), -1, axis).astype(w.dtype)


def _unstructured(w: np.ndarray, sparsity: float) -> np.ndarray:
    flat = w.reshape(-1).copy()
    k = int(round(sparsity * flat.size))
    if k > 0:
        idx = np.argsort(np.abs(flat), kind="stable")[:k]
        flat[idx] = 0
    return flat.reshape(w.shape)


@register_pass
class Sparsify(Pass):
    name = "sparsify"
    doc = "Magnitude sparsification (unstructured or 2:4) of Conv/Gemm/MatMul weights; shapes unchanged (not exact)."
    Config = SparsifyConfig
    exact = False

    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        cfg: SparsifyConfig = self.config
        if cfg.pattern == "unstructured" and cfg.sparsity == 0:
            return PassResult(model, modified=False, notes=["sparsity 0: nothing zeroed"],
                              metrics={"layers": {}, "sparsity": 0.0})
        m = onnx.ModelProto()
        m.CopyFrom(model)
        g = m.graph
        inits = {t.name: t for t in g.initializer}
        graph_inputs = {v.name for v in g.input}
        done: dict[str, np.ndarray] = {}
        layers, notes, skipped = {}, [], {}
        zeros = total = 0
        for n in g.node:
            if n.domain not in _STD or n.op_type not in ("Conv", "Gemm", "MatMul") or len(n.input) < 2:
                continue
            name, src = layer_name(n), n.input[1]
            if src not in inits or src in graph_inputs:
                continue
            if name in cfg.skip:
                notes.append(f"skipped {name}: in the skip list")
                skipped[name] = {"reason": "skip_list"}
                continue
            w = numpy_helper.to_array(inits[src])
            if w.ndim < 2 or w.dtype.kind != "f":
                continue
            if src not in done:
                if cfg.pattern == "2:4":
                    ax = _reduction_axis(n, w)
                    if w.shape[ax] % 4:
                        notes.append(f"skipped {name}: reduction axis of {w.shape[ax]} is not a multiple of 4")
                        skipped[name] = {"reason": "reduction_axis", "size": int(w.shape[ax])}
                        continue
                    new = _two_four(w, ax)
                else:
                    new = _unstructured(w, cfg.sparsity)
                done[src] = new
                inits[src].CopyFrom(numpy_helper.from_array(new, src))
                z, size = int((new == 0).sum()), int(new.size)
                zeros, total = zeros + z, total + size
                layers[name] = {"sparsity": round(z / size, 4), "zeros": z, "total": size}
        overall = zeros / total if total else 0.0
        notes.insert(0, f"{len(layers)} weight(s) sparsified, {cfg.pattern}"
                        + ("" if cfg.pattern == "2:4" else f" {cfg.sparsity:.0%}") + f": {overall:.1%} zeros overall")
        notes.append(SPARSE_NOTE)
        return PassResult(m, modified=bool(layers), notes=notes,
                          metrics={"layers": layers, "sparsity": round(overall, 4), "skipped": skipped})
