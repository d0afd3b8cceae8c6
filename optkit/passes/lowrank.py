"""Low-rank (truncated SVD) factorization of constant weights: MatMul, Gemm and 1x1 Conv.

A weight W [k x n] (in ``X @ W`` orientation) becomes A [k x r] @ B [r x n] with A = U_r sqrt(S_r) and
B = sqrt(S_r) V_r^T, so one layer costing k*n MACs per row becomes two costing r*(k + n). A layer is only
rewritten where that is smaller (r < k*n / (k + n)); otherwise it is kept and the notes say so.

Rank per layer, first rule that applies: ``ranks[name]`` (explicit, e.g. from an accuracy tuner), then
``keep_flops`` (each layer keeps that fraction of its FLOPs), then ``energy`` (smallest r whose squared
singular values reach that fraction of the total). Layer names are node names (the first output's name
for unnamed nodes); :func:`factorizable_layers` lists them with their singular values.

Random (untrained) weights have flat spectra and lose much accuracy at any useful rank; trained weights
usually do far better. The pass is not exact: the pipeline reports its output drift.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..model import layer_name, opsets
from ..model import node_attr as _attr
from . import Context, Pass, PassConfig, PassResult, option, register_pass
from ._lowrank_graph import _Names, _rewrite_layer, _rows, _splice, _subgraph_inputs  # noqa: F401  (_Names, _subgraph_inputs re-exported)

_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


@dataclass(frozen=True)
class LowRankConfig(PassConfig):
    energy: float = option(0.95, "per layer, the smallest rank whose squared singular values reach this fraction "
                                 "of the total (1.0 = keep every singular value, i.e. change nothing)", gt=0, max=1)
    keep_flops: float = option(0.0, "when > 0 (overrides energy): rank = floor(keep_flops*k*n/(k+n)) so each "
                                    "factorized layer keeps this fraction of its FLOPs", min=0, max=1)
    ranks: dict[str, int] = option({}, "explicit rank per layer (node name), overriding energy/keep_flops; used as given",
                                  min=1)
    min_rank: int = option(1, "lowest rank the energy/keep_flops rules may pick", min=1)
    multiple_of: int = option(1, "round energy/keep_flops ranks up to a multiple of this (e.g. 8 for SIMD), "
                                 "never past the rank where factorizing stops saving FLOPs", min=1)
    skip: tuple[str, ...] = option((), "layer (node) names left as they are")
    min_size: int = option(4096, "weights with fewer elements are left as they are", min=0)


# ---------------------------------------------------------------------------------------------------------------
# finding candidates
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    index: int  # position in graph.node
    node: onnx.NodeProto
    name: str
    kind: str  # "MatMul", "Gemm", "Conv"
    weight: str  # initializer name
    k: int  # input features (rows of the X @ W weight)
    n: int  # output features
    why_not: str | None = None  # structurally a candidate but cannot be rewritten here

    @property
    def max_useful_rank(self) -> int:
        """Largest r with r*(k+n) < k*n (0 when no rank saves anything)."""
        return max(0, (self.k * self.n - 1) // (self.k + self.n))


def _opset(model: onnx.ModelProto) -> int:
    return opsets(model).get("ai.onnx", 1)


def _candidates(model: onnx.ModelProto) -> list[_Layer]:
    """Nodes whose weight is a constant matrix that could be factorized (no SVD, no size/skip filter)."""
    inits = {t.name: t for t in model.graph.initializer}
    opset = _opset(model)
    out: list[_Layer] = []
    for i, node in enumerate(model.graph.node):
        if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is None or w.data_type not in _FLOAT_TYPES or node.input[0] in inits:
            continue
        dims = tuple(int(d) for d in w.dims)
        name = layer_name(node)
        if node.op_type == "MatMul" and len(dims) == 2:
            out.append(_Layer(i, node, name, "MatMul", w.name, dims[0], dims[1]))
        elif node.op_type == "Gemm" and len(dims) == 2:
            k, n = (dims[1], dims[0]) if _attr(node, "transB", 0) else dims
            layer = _Layer(i, node, name, "Gemm", w.name, k, n)
            if _attr(node, "transA", 0) and opset < 11:
                layer.why_not = "Gemm with transA needs opset >= 11 for the factorized form"
            out.append(layer)
        elif node.op_type == "Conv" and len(dims) >= 3 and all(d == 1 for d in dims[2:]) \
                and _attr(node, "group", 1) == 1:
            out.append(_Layer(i, node, name, "Conv", w.name, dims[1], dims[0]))
    return out


def _matrix(layer: _Layer, inits: dict) -> np.ndarray:
    """The weight as float64 [k x n] in ``X @ W`` orientation."""
    w = numpy_helper.to_array(inits[layer.weight]).astype(np.float64)
    if layer.kind == "Conv":
        return w.reshape(layer.n, layer.k).T
    if layer.kind == "Gemm" and _attr(layer.node, "transB", 0):
        return w.T
    return w


def factorizable_layers(model: onnx.ModelProto, min_size: int = 0, skip=(), singular_values: bool = True) -> list[dict]:
    """Every MatMul/Gemm/1x1-Conv layer with a constant weight that the lowrank pass could factorize.

    Each entry: name (node name; the key for the pass's ``ranks``), op_type, weight, k, n (the weight as a
    [k x n] matrix in ``X @ W`` orientation), size, max_useful_rank (largest rank that still saves FLOPs)
    and, unless ``singular_values=False``, singular_values (descending numpy float64 array)."""
    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for layer in _candidates(model):
        if layer.why_not or layer.name in skip or layer.k * layer.n < min_size or layer.max_useful_rank < 1:
            continue
        entry = {"name": layer.name, "op_type": layer.kind, "weight": layer.weight, "k": layer.k, "n": layer.n,
                 "size": layer.k * layer.n, "max_useful_rank": layer.max_useful_rank}
        if singular_values:
            entry["singular_values"] = np.linalg.svd(_matrix(layer, inits), compute_uv=False)
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------------------------
# rank choice
# ---------------------------------------------------------------------------------------------------------------


def energy_rank(s: np.ndarray, energy: float) -> int:
    """Smallest r with sum(s[:r]**2) >= energy * sum(s**2); energy >= 1 keeps every singular value."""
    if energy >= 1.0 or s.size == 0:
        return int(s.size)
    c = np.cumsum(s.astype(np.float64) ** 2)
    if c[-1] <= 0:
        return 1
    return int(min(s.size, np.searchsorted(c, energy * c[-1] * (1 - 1e-12)) + 1))


def _choose_rank(layer: _Layer, s: np.ndarray, cfg: LowRankConfig) -> tuple[int, str, int | None]:
    """(rank, source, the multiple_of rounding refused because it would save nothing, or None) for one layer."""
    full = min(layer.k, layer.n)
    if layer.name in cfg.ranks:
        return min(int(cfg.ranks[layer.name]), full), "ranks", None
    if cfg.keep_flops > 0:
        r, source = int(math.floor(cfg.keep_flops * layer.k * layer.n / (layer.k + layer.n))), "keep_flops"
    else:
        r, source = energy_rank(s, cfg.energy), "energy"
    r = min(max(r, cfg.min_rank), full)
    refused = None
    if cfg.multiple_of > 1 and r % cfg.multiple_of and r <= layer.max_useful_rank:
        up = -(-r // cfg.multiple_of) * cfg.multiple_of
        if up <= layer.max_useful_rank:
            r = up
        else:
            refused = up
    return r, source, refused


# ---------------------------------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------------------------------


@register_pass
class LowRank(Pass):
    name = "lowrank"
    reads_samples = False
    doc = "Truncated-SVD factorization of MatMul/Gemm/1x1-Conv weights (rank by energy, FLOP budget or per layer); lossy."
    Config = LowRankConfig
    exact = False

    def layer_candidates(self, model: onnx.ModelProto) -> list[str]:
        """Layers --tolerance searches over: factorizable, not skipped, large enough to be worth it."""
        return [d["name"] for d in factorizable_layers(model, min_size=self.config.min_size, skip=self.config.skip,
                                                       singular_values=False)]

    def only(self, layers: list[str], among: list[str]) -> "LowRank":
        cfg = self.config
        return type(self)(dataclasses.replace(cfg, skip=type(cfg.skip)([*cfg.skip, *(n for n in among if n not in layers)])))

    def layer_errors(self, result: PassResult) -> dict[str, float] | None:
        """The relative Frobenius error of each factorized weight, ||W - AB|| / ||W|| (0 for a layer kept whole)."""
        layers = (result.metrics or {}).get("layers")
        return {name: float(m.get("rel_error", 0.0)) for name, m in layers.items()} if layers else None
    def run(self, model: onnx.ModelProto, ctx: Context) -> PassResult:
        cfg: LowRankConfig = self.config
        notes: list[str] = []
        layers = _candidates(model)
        unknown = sorted(set(cfg.ranks) - {layer.name for layer in layers})
        if unknown:
            msg = f"ranks: no factorizable layer named {', '.join(unknown)}"
            notes.append(msg)
            ctx.warn(f"lowrank: {msg}")
        if cfg.energy >= 1.0 and cfg.keep_flops <= 0 and not cfg.ranks:
            notes.append("energy 1.0 keeps every singular value and no keep_flops/ranks given: nothing to factorize")
            return PassResult(model, modified=False, notes=notes, metrics={"layers": {}, "unknown_ranks": unknown})

        m = onnx.ModelProto()
        m.CopyFrom(model)
        plan = _Plan(m)
        for layer in layers:
            self._plan_layer(layer, plan, cfg, notes)
        _note_skipped(plan.skipped, notes)

        result_metrics: dict = {"layers": plan.metrics, "unknown_ranks": unknown}
        if plan.skipped:
            result_metrics["skipped"] = plan.skipped
        if not plan.replacements:
            notes.append("no layer factorized")
            return PassResult(model, modified=False, notes=notes, metrics=result_metrics)

        _splice(m, plan.replacements, plan.new_inits)
        chosen = plan.chosen
        rows = _rows(model, [layer for layer, _, _ in chosen], ctx.shapes)
        before = sum(rows.get(layer.name, 1) * layer.k * layer.n for layer, _, _ in chosen)
        after = sum(rows.get(layer.name, 1) * r * (layer.k + layer.n) for layer, r, _ in chosen)
        kept = after / before if before else 1.0
        notes.append(f"FLOPs kept {kept:.2f} of factorized layers ({len(chosen)} layer(s) factorized"
                     + (", weighted by rows)" if rows else ")"))
        result_metrics.update({"factorized": len(chosen), "flops_kept": kept})
        return PassResult(m, modified=True, notes=notes, metrics=result_metrics)

    def _plan_layer(self, layer: _Layer, plan: "_Plan", cfg: LowRankConfig, notes: list[str]) -> None:
        """Skip one layer (recorded in plan.skipped), keep it whole, or factorize it (its two-node rewrite goes to
        plan.replacements); metrics and notes say which and why."""
        layer.node = plan.graph.node[layer.index]
        if _skip(layer, cfg, plan.skipped, notes):
            return
        full = min(layer.k, layer.n)
        w, u, s, vt, key = plan.svd(layer)
        r, source, refused = _choose_rank(layer, s, cfg)
        facts = {"max_useful_rank": layer.max_useful_rank, **({"not_rounded_to": refused} if refused else {})}
        if refused:
            notes.append(f"{layer.name}: rank {refused} (multiple of {cfg.multiple_of}) would save nothing, kept {r}")
        if r > layer.max_useful_rank:
            notes.append(f"{layer.name}: rank {r} of {full} saves nothing, kept "
                         f"(factorizing pays only up to rank {layer.max_useful_rank})")
            plan.metrics[layer.name] = {"k": layer.k, "n": layer.n, "rank": full, "requested_rank": r, "source": source,
                                        "factorized": False, "energy": 1.0, "rel_error": 0.0, "flops_ratio": 1.0,
                                        **facts}
            return

        dtype = numpy_helper.to_array(plan.inits[layer.weight]).dtype
        sq = np.sqrt(s[:r])
        a = (u[:, :r] * sq).astype(dtype)  # [k x r]
        b = (sq[:, None] * vt[:r]).astype(dtype)  # [r x n]
        total = float(np.sum(s.astype(np.float64) ** 2))
        energy = float(np.sum(s[:r].astype(np.float64) ** 2) / total) if total > 0 else 1.0
        norm = float(np.linalg.norm(w))
        rel = float(np.linalg.norm(w - a.astype(np.float64) @ b.astype(np.float64)) / norm) if norm > 0 else 0.0
        ratio = r * (layer.k + layer.n) / (layer.k * layer.n)

        plan.replacements[layer.index] = self._rewrite(layer, a, b, r, key, plan.inits, plan.fresh, plan.new_inits,
                                                       plan.factor_cache, plan.opset)
        plan.chosen.append((layer, r, source))
        plan.metrics[layer.name] = {"k": layer.k, "n": layer.n, "rank": r, "source": source, "factorized": True,
                                    "energy": energy, "rel_error": rel, "flops_ratio": ratio, **facts}
        notes.append(f"{layer.name} [{layer.k}x{layer.n}] rank {r} (energy {energy:.3f}, rel. error {rel:.2g}, "
                     f"FLOPs {ratio:.2f})" + (" [ranks]" if source == "ranks" else ""))

    _rewrite = staticmethod(_rewrite_layer)


class _Plan:
    """What one run of the pass decides, layer by layer, on its copy ``m`` of the model."""

    def __init__(self, m: onnx.ModelProto):
        self.graph = m.graph
        self.inits = {t.name: t for t in m.graph.initializer}
        self.fresh = _Names(m)
        self.opset = _opset(m)
        self.skipped: dict[str, dict] = {}  # name -> {"reason": "skip_list" | "min_size" | "needs_opset", ...}
        self.chosen: list[tuple[_Layer, int, str]] = []
        self.metrics: dict[str, dict] = {}
        self.replacements: dict[int, list[onnx.NodeProto]] = {}
        self.new_inits: list[onnx.TensorProto] = []
        self.factor_cache: dict[tuple, tuple[str, str]] = {}
        self._svd_cache: dict[tuple, tuple] = {}

    def svd(self, layer: _Layer):
        """(W, U, S, Vt, key) of the layer's weight, computed once per (weight, orientation)."""
        orient = "T" if layer.kind == "Conv" or (layer.kind == "Gemm" and _attr(layer.node, "transB", 0)) else "N"
        key = (layer.weight, orient)
        if key not in self._svd_cache:
            w = _matrix(layer, self.inits)
            u, s, vt = np.linalg.svd(w, full_matrices=False)
            self._svd_cache[key] = (w, u, s, vt)
        return (*self._svd_cache[key], key)


def _skip(layer: _Layer, cfg: LowRankConfig, skipped: dict, notes: list[str]) -> bool:
    """True (and why, in ``skipped``) when the layer is skipped by name, needs a newer opset, or is too small."""
    if layer.name in cfg.skip:
        skipped[layer.name] = {"reason": "skip_list"}
        return True
    if layer.why_not:
        skipped[layer.name] = {"reason": "needs_opset", "min_opset": 11}
        notes.append(f"{layer.name}: {layer.why_not}, kept")
        return True
    if layer.k * layer.n < cfg.min_size and layer.name not in cfg.ranks:
        skipped[layer.name] = {"reason": "min_size", "elements": layer.k * layer.n, "min_size": cfg.min_size}
        return True
    return False


def _note_skipped(skipped: dict, notes: list[str]) -> None:
    by_reason: dict[str, list[str]] = {}
    for name, why in skipped.items():
        by_reason.setdefault(why["reason"], []).append(name)
    for why, names in by_reason.items():
        if why in ("skip_list", "min_size"):
            shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
            notes.append(f"left as is ({'skip' if why == 'skip_list' else why}): {shown}")
