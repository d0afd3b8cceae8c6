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
from onnx import helper, numpy_helper

from ..model import layer_name, opsets
from ..model import node_attr as _attr
from . import Context, Pass, PassConfig, PassResult, option, register_pass

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


class _Names:
    """Fresh value/node/initializer names that collide with nothing in the model."""

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.used = {t.name for t in g.initializer} | {v.name for v in g.input} | {v.name for v in g.output}
        self.used |= {v.name for v in g.value_info} | {n.name for n in g.node if n.name}
        for n in g.node:
            self.used.update(n.input)
            self.used.update(n.output)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def _subgraph_inputs(model: onnx.ModelProto) -> set[str]:
    """Names read inside If/Loop/Scan bodies (initializers used there must not be removed)."""
    used: set[str] = set()

    def subgraphs(node):
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield a.g
            elif a.type == onnx.AttributeProto.GRAPHS:
                yield from a.graphs

    def walk(graph):
        for n in graph.node:
            used.update(n.input)
            for g in subgraphs(n):
                walk(g)

    for n in model.graph.node:
        for g in subgraphs(n):
            walk(g)
    return used


def _rows(model: onnx.ModelProto, layers: list[_Layer], shapes: dict) -> dict[str, int]:
    """Rows (output elements / n) of each layer for FLOP weighting; {} when any shape is unknown."""
    try:
        from ..model import infer_value_shapes

        vs = infer_value_shapes(model, shapes)
    except Exception:
        return {}
    rows = {}
    for layer in layers:
        out = vs.get(layer.node.output[0])
        if out is None:
            return {}
        rows[layer.name] = max(1, int(np.prod(out, dtype=np.int64)) // layer.n)
    return rows


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
        names_seen = {layer.name for layer in layers}
        unknown = sorted(set(cfg.ranks) - names_seen)
        if unknown:
            msg = f"ranks: no factorizable layer named {', '.join(unknown)}"
            notes.append(msg)
            ctx.warn(f"lowrank: {msg}")
        if cfg.energy >= 1.0 and cfg.keep_flops <= 0 and not cfg.ranks:
            notes.append("energy 1.0 keeps every singular value and no keep_flops/ranks given: nothing to factorize")
            return PassResult(model, modified=False, notes=notes, metrics={"layers": {}, "unknown_ranks": unknown})

        m = onnx.ModelProto()
        m.CopyFrom(model)
        g = m.graph
        inits = {t.name: t for t in g.initializer}
        fresh = _Names(m)
        opset = _opset(m)
        skipped: dict[str, dict] = {}  # name -> {"reason": "skip_list" | "min_size" | "needs_opset", ...}
        chosen: list[tuple[_Layer, int, str]] = []
        metrics: dict[str, dict] = {}
        svd_cache: dict[tuple, tuple] = {}
        replacements: dict[int, list[onnx.NodeProto]] = {}
        new_inits: list[onnx.TensorProto] = []
        factor_cache: dict[tuple, tuple[str, str]] = {}

        for layer in layers:
            layer.node = g.node[layer.index]
            if layer.name in cfg.skip:
                skipped[layer.name] = {"reason": "skip_list"}
                continue
            if layer.why_not:
                skipped[layer.name] = {"reason": "needs_opset", "min_opset": 11}
                notes.append(f"{layer.name}: {layer.why_not}, kept")
                continue
            if layer.k * layer.n < cfg.min_size and layer.name not in cfg.ranks:
                skipped[layer.name] = {"reason": "min_size", "elements": layer.k * layer.n, "min_size": cfg.min_size}
                continue
            full = min(layer.k, layer.n)
            orient = "T" if layer.kind == "Conv" or (layer.kind == "Gemm" and _attr(layer.node, "transB", 0)) else "N"
            key = (layer.weight, orient)
            if key not in svd_cache:
                w = _matrix(layer, inits)
                u, s, vt = np.linalg.svd(w, full_matrices=False)
                svd_cache[key] = (w, u, s, vt)
            w, u, s, vt = svd_cache[key]
            r, source, refused = _choose_rank(layer, s, cfg)
            facts = {"max_useful_rank": layer.max_useful_rank, **({"not_rounded_to": refused} if refused else {})}
            if refused:
                notes.append(f"{layer.name}: rank {refused} (multiple of {cfg.multiple_of}) would save nothing, kept {r}")
            if r > layer.max_useful_rank:
                notes.append(f"{layer.name}: rank {r} of {full} saves nothing, kept "
                             f"(factorizing pays only up to rank {layer.max_useful_rank})")
                metrics[layer.name] = {"k": layer.k, "n": layer.n, "rank": full, "requested_rank": r, "source": source,
                                       "factorized": False, "energy": 1.0, "rel_error": 0.0, "flops_ratio": 1.0, **facts}
                continue

            dtype = numpy_helper.to_array(inits[layer.weight]).dtype
            sq = np.sqrt(s[:r])
            a = (u[:, :r] * sq).astype(dtype)  # [k x r]
            b = (sq[:, None] * vt[:r]).astype(dtype)  # [r x n]
            total = float(np.sum(s.astype(np.float64) ** 2))
            energy = float(np.sum(s[:r].astype(np.float64) ** 2) / total) if total > 0 else 1.0
            norm = float(np.linalg.norm(w))
            rel = float(np.linalg.norm(w - a.astype(np.float64) @ b.astype(np.float64)) / norm) if norm > 0 else 0.0
            ratio = r * (layer.k + layer.n) / (layer.k * layer.n)

            replacements[layer.index] = self._rewrite(layer, a, b, r, key, inits, fresh, new_inits, factor_cache, opset)
            chosen.append((layer, r, source))
            metrics[layer.name] = {"k": layer.k, "n": layer.n, "rank": r, "source": source, "factorized": True,
                                   "energy": energy, "rel_error": rel, "flops_ratio": ratio, **facts}
            notes.append(f"{layer.name} [{layer.k}x{layer.n}] rank {r} (energy {energy:.3f}, rel. error {rel:.2g}, "
                         f"FLOPs {ratio:.2f})" + (" [ranks]" if source == "ranks" else ""))

        by_reason: dict[str, list[str]] = {}
        for name, why in skipped.items():
            by_reason.setdefault(why["reason"], []).append(name)
        for why, names in by_reason.items():
            if why in ("skip_list", "min_size"):
                shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
                notes.append(f"left as is ({'skip' if why == 'skip_list' else why}): {shown}")

        result_metrics: dict = {"layers": metrics, "unknown_ranks": unknown}
        if skipped:
            result_metrics["skipped"] = skipped
        if not replacements:
            notes.append("no layer factorized")
            return PassResult(model, modified=False, notes=notes, metrics=result_metrics)

        # rebuild the node list with each factorized node replaced in place (keeps topological order)
        nodes = []
        for i, node in enumerate(g.node):
            nodes.extend(replacements.get(i, [node]))
        del g.node[:]
        g.node.extend(nodes)
        g.initializer.extend(new_inits)
        # drop weights nothing reads any more
        used = {x for n in g.node for x in n.input} | _subgraph_inputs(m) | {o.name for o in g.output}
        dead = {t.name for t in g.initializer if t.name not in used}
        if dead:
            keep = [t for t in g.initializer if t.name not in dead]
            del g.initializer[:]
            g.initializer.extend(keep)
            for field in (g.input, g.value_info):
                keep_vi = [v for v in field if v.name not in dead]
                del field[:]
                field.extend(keep_vi)

        rows = _rows(model, [layer for layer, _, _ in chosen], ctx.shapes)
        before = sum(rows.get(layer.name, 1) * layer.k * layer.n for layer, _, _ in chosen)
        after = sum(rows.get(layer.name, 1) * r * (layer.k + layer.n) for layer, r, _ in chosen)
        kept = after / before if before else 1.0
        notes.append(f"FLOPs kept {kept:.2f} of factorized layers ({len(chosen)} layer(s) factorized"
                     + (", weighted by rows)" if rows else ")"))
        result_metrics.update({"factorized": len(chosen), "flops_kept": kept})
        return PassResult(m, modified=True, notes=notes, metrics=result_metrics)

    @staticmethod
    def _rewrite(layer: _Layer, a: np.ndarray, b: np.ndarray, r: int, key: tuple, inits: dict, fresh: _Names,
                 new_inits: list, factor_cache: dict, opset: int) -> list[onnx.NodeProto]:
        node = layer.node
        x, y = node.input[0], node.output[0]
        mid = fresh(f"{y}_lowrank")
        n1, n2 = fresh(f"{layer.name}_lowrank_A"), fresh(f"{layer.name}_lowrank_B")

        def init(suffix: str, arr: np.ndarray, tag: tuple) -> str:
            ck = (key, r, suffix, tag)
            if ck not in factor_cache:
                nm = fresh(f"{layer.weight}_lowrank_{suffix}")
                new_inits.append(numpy_helper.from_array(arr, nm))
                factor_cache[ck] = nm
            return factor_cache[ck]

        if layer.kind == "MatMul":
            return [helper.make_node("MatMul", [x, init("A", a, ())], [mid], name=n1),
                    helper.make_node("MatMul", [mid, init("B", b, ())], [y], name=n2)]

        if layer.kind == "Gemm":
            alpha = float(_attr(node, "alpha", 1.0))
            beta = float(_attr(node, "beta", 1.0))
            a_name = init("A", a, ())
            if _attr(node, "transA", 0):
                first = helper.make_node("Gemm", [x, a_name], [mid], name=n1, transA=1)
            else:
                first = helper.make_node("MatMul", [x, a_name], [mid], name=n1)
            b_name = init("B", (b * b.dtype.type(alpha)) if alpha != 1.0 else b, ("alpha", alpha))
            has_c = len(node.input) > 2 and node.input[2]
            if has_c:
                second = helper.make_node("Gemm", [mid, b_name, node.input[2]], [y], name=n2, beta=beta)
            else:
                second = helper.make_node("MatMul", [mid, b_name], [y], name=n2)
            return [first, second]

        # 1x1 Conv: first conv carries the spatial attributes (strides, pads, dilations) and no bias, so padded
        # borders are zero after it and get only the bias after the second conv, as in the original.
        spatial = len(inits[layer.weight].dims) - 2
        ones = [1] * spatial
        w1 = a.T.reshape([r, layer.k] + ones)  # [r, Cin, 1, ...]
        w2 = b.T.reshape([layer.n, r] + ones)  # [Cout, r, 1, ...]
        attrs = {at.name: helper.get_attribute_value(at) for at in node.attribute if at.name not in ("group", "kernel_shape")}
        first = helper.make_node("Conv", [x, init("A", np.ascontiguousarray(w1), ("conv",))], [mid], name=n1,
                                 kernel_shape=ones, **attrs)
        inputs2 = [mid, init("B", np.ascontiguousarray(w2), ("conv",))]
        if len(node.input) > 2 and node.input[2]:
            inputs2.append(node.input[2])
        second = helper.make_node("Conv", inputs2, [y], name=n2, kernel_shape=ones)
        return [first, second]
