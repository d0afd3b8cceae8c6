"""Structured pruning and low-rank factorization of PyTorch modules, with the rules of the ONNX passes.

Prune or factorize a trained model, fine-tune it (e.g. distilling from the original with
:class:`optkit.torch.Distiller`), then export it::

    student, rep = prune(model, ratio=0.3, example_inputs=(x,))
    student, rep = lowrank(student, keep_flops=0.5, example_inputs=(x,))
    count_flops(student, (x,))

**Same rules as** :mod:`optkit.passes.prune` / :mod:`optkit.passes.lowrank`. These helpers are imported
from them, not re-implemented: the kept count per layer (``keep_counts``), the filter
norms (``_importance``), the block expansion of a flattened channel (``_expand``), the option ranges
(declared in ``PruneConfig`` / ``LowRankConfig``) and the rank choice (``_choose_rank``, with ``energy_rank``).
The fx tracer (``optkit/torch/fx_trace.py``) follows the op families of the ONNX pass's rule table
(``optkit.passes.prune.rules.FAMILIES``) with one rule per family over fx nodes (``optkit/torch/fx_rules.py``).
The kept channels are ``sort(argsort(-importance, stable)[:k])`` as in the pass. For a Conv whose only
consumer is a BatchNorm with running statistics, the filter norm is multiplied by ``|gamma| / sqrt(var + eps)``
exactly like the ONNX pass does for a Conv -> BatchNormalization pair. That factor is what makes the two agree
on exported models: ``torch.onnx.export`` folds such a BatchNorm into the Conv weight, so the ONNX pass sees
``W * gamma / sqrt(var + eps)``, whose L1/L2 norm is the same product. (The norms then agree up to float32
rounding of the folded weights, so only near-exact ties could be broken differently.)

**What is traced** (``torch.fx.symbolic_trace`` + shape propagation at ``example_inputs``; the same policy as
the ONNX pass, written here for fx nodes): a Conv (groups=1, incl. ConvTranspose) or Linear layer's output
channels are followed through BatchNorm / InstanceNorm, elementwise activations and dropout, arithmetic with
scalars, per-channel parameters (sliced) or with itself (``x * sigmoid(x)``), pooling, padding of other dims,
reductions over other dims, squeeze/unsqueeze, flatten (or ``view(batch, -1)``) into a Linear (the channel
mask is expanded over the spatial positions), depthwise convs (pruned along), up to the next Conv's input
channels or Linear's input features. A residual add, concat, indexing, a graph output, LayerNorm/GroupNorm/
Softmax over the features, any other view/reshape, an unknown module/function, or a module called more than
once leaves that layer unpruned; ``report["skipped"]`` says why. Layer names are module qualified names.

Checked against the ONNX pass on ``torch.onnx.export(..., dynamo=False)`` output (tests/test_torch_compress.py):
same kept channels, so pruning then exporting gives the outputs of exporting then pruning (l1/l2, layer/global,
activation importance; with and without BatchNorm). Known differences:

* no bias compensation (fine-tune instead; the equivalent ONNX setting is ``compensate: false``);
* ``F.pad`` / ``nn.*Pad*d`` of the spatial dims is followed here; the TorchScript exporter computes the pads at
  run time, which the ONNX pass only follows after ``simplify`` has folded them to constants;
* rankings are of the torch weights (times the BatchNorm factor). ONNX rewrites that fold other constants into a
  Conv (``simplify`` folding ``conv(x) * gain``) change what the ONNX pass ranks: counts agree, channels may not;
* a layer whose module is called more than once is skipped; Upsample/interpolate, reshapes other than
  ``view(batch, -1)`` into a Linear and channels-last ``view(..., -1)`` are not followed (the layer is skipped).

:func:`count_flops` counts 2 x MACs of Linear/Conv/ConvTranspose modules (forward hooks) and of
``torch.matmul`` / ``@`` / ``mm`` / ``bmm`` calls at the given inputs: the convention of
:func:`optkit.model.flops` on the exported ONNX (Conv/Gemm/MatMul). Not counted: ``F.linear``/``F.conv*`` called
directly, fused attention kernels (``nn.MultiheadAttention``, ``scaled_dot_product_attention``).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from ..errors import RecipeError
from ..passes.lowrank import LowRankConfig
from ..passes.lowrank import _choose_rank
from ..passes.lowrank import _Layer as _LowRankLayer
from ..passes.prune import PruneConfig, _expand, keep_counts
from .fx_ops import _Chan, _Layer
from .fx_trace import _analyze, _inference, _Tracer

__all__ = ["prune", "lowrank", "count_flops"]


# ---------------------------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------------------------


def _as_inputs(example_inputs, what: str = "example_inputs") -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, list):
        return tuple(example_inputs)
    if not isinstance(example_inputs, tuple):
        raise ValueError(f"{what} must be a tuple of model inputs (e.g. (x,)), got {type(example_inputs).__name__}")
    return example_inputs


def _params(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def _real(name: str, v, prefix: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{prefix}option '{name}' must be a number, got {v!r}")
    return float(v)


def _int(name: str, v, prefix: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{prefix}option '{name}' must be an integer, got {v!r}")
    return int(v)


def _names(name: str, v, prefix: str) -> list[str]:
    if isinstance(v, str) or not isinstance(v, (list, tuple, set, frozenset)) or not all(isinstance(s, str) for s in v):
        raise ValueError(f"{prefix}option '{name}' must be a list of layer names, got {v!r}")
    return list(v)


def _choice(name: str, v, choices: tuple, prefix: str) -> str:
    if v not in choices:
        raise ValueError(f"{prefix}option '{name}' must be one of {', '.join(choices)}; got {v!r}")
    return v


# ---------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------

_MATMUL_NAMES = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm"}


def count_flops(model: nn.Module, example_inputs) -> int:
    """2 x multiply-accumulates of the Linear / Conv / ConvTranspose modules and the matmuls run by ``model`` at
    ``example_inputs`` (a tuple of inputs; the batch size counts), the convention of ``optkit.model.flops`` on the
    exported ONNX (Conv/Gemm/MatMul, bias adds not counted). Runs one forward in eval mode without gradients."""
    from torch.overrides import TorchFunctionMode

    inputs = _as_inputs(example_inputs, "count_flops: example_inputs")
    total = [0]

    def hook(mod, inp, out):
        if isinstance(mod, nn.Linear):
            total[0] += 2 * out.numel() * mod.in_features
        elif isinstance(mod, _ConvTransposeNd):
            total[0] += 2 * inp[0].numel() * (mod.out_channels // mod.groups) * math.prod(mod.kernel_size)
        elif isinstance(mod, _ConvNd):
            total[0] += 2 * out.numel() * (mod.in_channels // mod.groups) * math.prod(mod.kernel_size)

    class _MatMuls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if getattr(func, "__name__", "") in _MATMUL_NAMES and len(args) >= 2 and isinstance(out, torch.Tensor):
                a = args[1] if func.__name__ == "__rmatmul__" else args[0]
                if isinstance(a, torch.Tensor) and a.dim() >= 1:
                    total[0] += 2 * out.numel() * int(a.shape[-1])
            return out

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear, _ConvNd))]
    try:
        with _inference(model), _MatMuls():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return int(total[0])


def _activation_importance(tr: _Tracer, layers: list[_Layer], calib_inputs: list) -> dict[str, np.ndarray]:
    """The ONNX pass's rule: sqrt(sum over consumers of Var(x_c) * ||consumer weights reading x_c||^2), with the
    consumer weight as the exported ONNX has it (a Conv's BatchNorm folded in). Per-feed means of x and x^2
    averaged over the feeds, other axes pooled, as ``optkit.passes.prune._channel_stats`` does."""
    wanted: dict[str, _Chan] = {}
    for layer in layers:
        for mod, c in layer.plan.terminals:
            wanted[mod] = c
    s1: dict[str, Any] = {}
    s2: dict[str, Any] = {}

    def make_hook(name):
        def pre(mod, inp):
            c = wanted[name]
            x = torch.movedim(inp[0].detach().double(), c.axis, -1)
            x = x.reshape(-1, x.shape[-1])
            s1[name] = s1.get(name, 0) + x.mean(0).cpu().numpy()
            s2[name] = s2.get(name, 0) + (x * x).mean(0).cpu().numpy()
        return pre

    handles = [tr.mods[name].register_forward_pre_hook(make_hook(name)) for name in wanted]
    n = 0
    try:
        with _inference(tr.model):
            for feed in calib_inputs:
                tr.model(*_as_inputs(feed, "prune: calib_inputs items"))
                n += 1
    finally:
        for h in handles:
            h.remove()
    n = max(n, 1)
    by_node = {node.target: node for node in tr.nodes if node.op == "call_module"}
    out = {}
    for layer in layers:
        if not layer.plan.terminals or any(mod not in s1 for mod, _ in layer.plan.terminals):
            continue
        total = np.zeros(layer.n)
        for mod, c in layer.plan.terminals:
            mu = s1[mod] / n
            var = np.maximum(s2[mod] / n - mu ** 2, 0.0)
            m = tr.mods[mod]
            w = m.weight.detach().double().cpu().numpy()
            if isinstance(m, _ConvTransposeNd):
                wn = (w * w).sum(axis=tuple(range(1, w.ndim)))
            elif isinstance(m, _ConvNd):
                f = tr.bn_factor(by_node[mod])
                if f is not None:
                    w = w * f.reshape((-1,) + (1,) * (w.ndim - 1))
                wn = (w * w).sum(axis=tuple(a for a in range(w.ndim) if a != 1))
            else:  # Linear [out, in]
                wn = (w * w).sum(axis=0)
            total += (var * wn).reshape(layer.n, c.block).sum(axis=1)
        out[layer.name] = np.sqrt(total)
    return out


def _apply(model: nn.Module, chosen: list[tuple[_Layer, np.ndarray]]) -> None:
    mods = dict(model.named_modules())
    for layer, keep in chosen:
        for mod_name, attr, axis, block in layer.plan.slices:
            mod = mods[mod_name]
            t = getattr(mod, attr)
            if t is None:
                continue
            idx = torch.as_tensor(_expand(keep, block), dtype=torch.long, device=t.device)
            new = t.detach().index_select(axis, idx).clone()
            if isinstance(t, nn.Parameter):
                setattr(mod, attr, nn.Parameter(new, requires_grad=t.requires_grad))
            else:
                setattr(mod, attr, new)
        for mod_name, attr, mult in layer.plan.sets:
            setattr(mods[mod_name], attr, len(keep) * mult)


def prune(model: nn.Module, ratio: float = 0.3, *, example_inputs, importance: str = "l1", scope: str = "layer",
          min_channels: int = 8, multiple_of: int = 1, skip=(), layers: dict | None = None, inplace: bool = False,
          calib_inputs: list | None = None) -> tuple[nn.Module, dict]:
    """Structured pruning of a torch module: remove output channels of Conv (groups=1) / features of Linear layers
    and shrink every consumer, with the rules of the ONNX ``prune`` pass (see the module docstring).

    ``example_inputs``: a tuple of inputs for tracing shapes and counting FLOPs. ``importance``: l1 | l2 (filter
    norms, times the scale of a BatchNorm right after a Conv) | activation (needs ``calib_inputs``, a list of
    input tuples). ``scope``: layer | global. ``layers``: per-layer ratios by module name. Returns the pruned
    model (a deep copy unless ``inplace``) and a report: ``layers`` {name: {before, after, kept}}, ``skipped``
    {name: reason}, ``unknown_names`` (skip/layers entries that name no layer), ``flops_before/after``,
    ``params_before/after``, ``notes``."""
    pre = "prune: "
    ratio = _real("ratio", ratio, pre)
    _choice("importance", importance, ("l1", "l2", "activation"), pre)
    _choice("scope", scope, ("layer", "global"), pre)
    min_channels = _int("min_channels", min_channels, pre)
    multiple_of = _int("multiple_of", multiple_of, pre)
    skip = _names("skip", skip, pre)
    if layers is None:
        layers = {}
    if not isinstance(layers, dict) or not all(isinstance(k, str) for k in layers):
        raise ValueError(f"{pre}option 'layers' must be a mapping of layer name to ratio, got {layers!r}")
    layers = {k: _real(f"layers[{k!r}]", v, pre) for k, v in layers.items()}
    if not isinstance(inplace, bool):
        raise ValueError(f"{pre}option 'inplace' must be true or false, got {inplace!r}")
    try:  # the config checks its ranges (option(min=, max=)): a ValueError for torch callers
        cfg = PruneConfig(ratio=ratio, importance=importance, scope=scope, min_channels=min_channels,
                          multiple_of=multiple_of, skip=skip, layers=layers, compensate=False)
    except RecipeError as e:
        raise ValueError(pre + e.what) from None
    problem = cfg.check()
    if problem:
        raise ValueError(pre + problem)
    if importance == "activation" and not calib_inputs:
        raise ValueError(f"{pre}importance 'activation' needs calib_inputs (a list of representative input tuples, "
                         "e.g. [(x1,), (x2,)]); or use importance 'l1' or 'l2'")
    if not isinstance(model, nn.Module):
        raise ValueError(f"{pre}model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(example_inputs, pre + "example_inputs")

    work = model if inplace else copy.deepcopy(model)
    tr = _Tracer(work, inputs)
    flops_before, params_before = count_flops(work, inputs), _params(work)
    found, skipped = _analyze(tr)
    notes: list[str] = []
    by_name = {layer.name: layer for layer in found}
    unknown = [name for name in list(cfg.layers) + list(cfg.skip) if name not in by_name and name not in skipped]
    notes += [f"no prunable layer named {name!r} (in skip/layers): ignored" for name in unknown]
    for name in cfg.skip:
        if name in by_name:
            skipped[name] = "in the skip list"
    active = [layer for layer in found if layer.name not in cfg.skip]

    imp: dict[str, np.ndarray] = {}
    act = _activation_importance(tr, active, calib_inputs) if importance == "activation" else {}
    for layer in active:
        v = act.get(layer.name)
        imp[layer.name] = v if v is not None else (layer.importance_l2 if importance == "l2" else layer.importance_l1)

    counts = keep_counts(active, imp, cfg)

    chosen, report_layers = [], {}
    for layer in active:
        k = counts[layer.name]
        keep = np.sort(np.argsort(-imp[layer.name], kind="stable")[:k]).astype(np.int64)
        report_layers[layer.name] = {"before": int(layer.n), "after": int(k), "kept": [int(i) for i in keep]}
        if k < layer.n:
            chosen.append((layer, keep))
    _apply(work, chosen)
    return work, {"layers": report_layers, "skipped": skipped, "flops_before": flops_before,
                  "flops_after": count_flops(work, inputs), "params_before": params_before,
                  "params_after": _params(work), "unknown_names": unknown, "notes": notes}


# ---------------------------------------------------------------------------------------------------------------
# lowrank
# ---------------------------------------------------------------------------------------------------------------


def _factorizable(m: nn.Module) -> tuple[str, int, int] | None:
    """(kind, k, n) for a Linear or a groups=1 Conv with an all-ones kernel (what the ONNX pass factorizes)."""
    if isinstance(m, nn.Linear):
        return "Linear", m.in_features, m.out_features
    if isinstance(m, _ConvNd) and not isinstance(m, _ConvTransposeNd) and m.groups == 1 \
            and all(k == 1 for k in m.kernel_size):
        return "Conv", m.in_channels, m.out_channels
    return None


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    owner, _, attr = name.rpartition(".")
    setattr(root.get_submodule(owner) if owner else root, attr, new)


def _lowrank_options(model, energy, keep_flops, ranks, min_rank, multiple_of, skip, min_size, inplace,
                     example_inputs) -> tuple[LowRankConfig, tuple | None]:
    """lowrank()'s arguments checked (a ValueError naming the option) into the ONNX pass's config, and the inputs."""
    pre = "lowrank: "
    energy = _real("energy", energy, pre)
    keep_flops = _real("keep_flops", keep_flops, pre)
    min_rank = _int("min_rank", min_rank, pre)
    multiple_of = _int("multiple_of", multiple_of, pre)
    min_size = _int("min_size", min_size, pre)
    skip = _names("skip", skip, pre)
    if ranks is None:
        ranks = {}
    if not isinstance(ranks, dict) or not all(isinstance(k, str) for k in ranks):
        raise ValueError(f"{pre}option 'ranks' must be a mapping of layer name to rank, got {ranks!r}")
    ranks = {k: _int(f"ranks[{k!r}]", v, pre) for k, v in ranks.items()}
    if not isinstance(inplace, bool):
        raise ValueError(f"{pre}option 'inplace' must be true or false, got {inplace!r}")
    try:  # the config checks its ranges (option(min=, max=)): a ValueError for torch callers
        cfg = LowRankConfig(energy=energy, keep_flops=keep_flops, ranks=ranks, min_rank=min_rank, multiple_of=multiple_of,
                            skip=skip, min_size=min_size)
    except RecipeError as e:
        raise ValueError(pre + e.what) from None
    problem = cfg.check()
    if problem:
        raise ValueError(pre + problem)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{pre}model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_inputs(example_inputs, pre + "example_inputs") if example_inputs is not None else None
    return cfg, inputs


def _factor_pair(m: nn.Module, kind: str, k: int, n: int, r: int, a: np.ndarray, b: np.ndarray) -> nn.Sequential:
    """The two layers that replace ``m``: X @ A then @ B (a Conv keeps stride/padding/dilation on the first)."""
    dd = {"dtype": m.weight.dtype, "device": m.weight.device}
    grad = m.weight.requires_grad
    if kind == "Linear":
        first = nn.Linear(k, r, bias=False, **dd)
        second = nn.Linear(r, n, bias=m.bias is not None, **dd)
        w1, w2 = a.T, b.T
    else:
        ones = (1,) * len(m.kernel_size)
        cls = type(m) if type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) else \
            {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[len(ones)]
        first = cls(k, r, ones, stride=m.stride, padding=m.padding, dilation=m.dilation, bias=False,
                    padding_mode=m.padding_mode, **dd)
        second = cls(r, n, ones, bias=m.bias is not None, **dd)
        w1, w2 = a.T.reshape((r, k) + ones), b.T.reshape((n, r) + ones)
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(np.ascontiguousarray(w1)))
        second.weight.copy_(torch.from_numpy(np.ascontiguousarray(w2)))
        if m.bias is not None:
            second.bias.copy_(m.bias.detach())
    first.weight.requires_grad_(grad)
    second.weight.requires_grad_(grad)
    if m.bias is not None:
        second.bias.requires_grad_(m.bias.requires_grad)
    seq = nn.Sequential(first, second)
    seq.train(m.training)
    return seq


def lowrank(model: nn.Module, *, energy: float = 0.95, keep_flops: float = 0.0, ranks: dict | None = None,
            min_rank: int = 1, multiple_of: int = 1, skip=(), min_size: int = 4096, inplace: bool = False,
            example_inputs=None) -> tuple[nn.Module, dict]:
    """Replace Linear and 1x1 Conv layers by two smaller ones from a truncated SVD, with the rules of the ONNX
    ``lowrank`` pass: W [k x n] (X @ W orientation) ~ A B with A = U_r sqrt(S_r), B = sqrt(S_r) V_r^T; the first
    layer has no bias (a Conv keeps stride/padding/dilation on the first), the second the original bias. Rank:
    ``ranks[name]``, else ``keep_flops`` (> 0), else ``energy``; a layer is only replaced where the rank saves
    FLOPs (r < k*n/(k+n)). The replacement is ``nn.Sequential(first, second)`` at the same name.

    Returns the model (a deep copy unless ``inplace``) and a report: ``layers`` {name: {shape [out, in], rank,
    energy, source, rel_error, flops_ratio}}, ``skipped`` {name: reason}, ``flops_before/after`` (None without
    ``example_inputs``), ``params_before/after``, ``notes``."""
    cfg, inputs = _lowrank_options(model, energy, keep_flops, ranks, min_rank, multiple_of, skip, min_size, inplace,
                                   example_inputs)

    work = model if inplace else copy.deepcopy(model)
    flops_before = count_flops(work, inputs) if inputs is not None else None
    params_before = _params(work)
    cands = [(name, m, spec) for name, m in work.named_modules() if (spec := _factorizable(m)) is not None]
    notes: list[str] = []
    unknown = sorted(set(cfg.ranks) - {name for name, _, _ in cands})
    if unknown:
        notes.append(f"ranks: no factorizable layer named {', '.join(unknown)}")
    report_layers: dict[str, dict] = {}
    skipped: dict[str, str] = {}

    def done():
        return work, {"layers": report_layers, "skipped": skipped, "flops_before": flops_before,
                      "flops_after": count_flops(work, inputs) if inputs is not None else None,
                      "params_before": params_before, "params_after": _params(work), "unknown_ranks": unknown,
                      "notes": notes}

    if cfg.energy >= 1.0 and cfg.keep_flops <= 0 and not cfg.ranks:
        notes.append("energy 1.0 keeps every singular value and no keep_flops/ranks given: nothing to factorize")
        return done()

    for name, m, (kind, k, n) in cands:
        if name in cfg.skip:
            skipped[name] = "in the skip list"
            continue
        if k * n < cfg.min_size and name not in cfg.ranks:
            skipped[name] = f"min_size ({k * n} < {cfg.min_size} elements)"
            continue
        if not m.weight.dtype.is_floating_point:
            skipped[name] = f"weight dtype {m.weight.dtype} is not floating point"
            continue
        w = m.weight.detach().double().cpu().reshape(n, k).T.numpy()  # [k x n], X @ W orientation
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        info = _LowRankLayer(index=-1, node=None, name=name, kind="Gemm", weight="", k=k, n=n)
        r, source, remark = _choose_rank(info, s, cfg)
        if remark:
            notes.append(f"{name}: {remark}")
        full = min(k, n)
        if r > info.max_useful_rank:
            skipped[name] = (f"rank {r} of {full} saves nothing (factorizing pays only up to rank "
                             f"{info.max_useful_rank})")
            continue
        sq = np.sqrt(s[:r])
        a = u[:, :r] * sq  # [k x r]
        b = sq[:, None] * vt[:r]  # [r x n]
        total = float(np.sum(s ** 2))
        e = float(np.sum(s[:r] ** 2) / total) if total > 0 else 1.0
        norm = float(np.linalg.norm(w))
        rel = float(np.linalg.norm(w - a @ b) / norm) if norm > 0 else 0.0
        seq = _factor_pair(m, kind, k, n, r, a, b)
        _set_module(work, name, seq)
        report_layers[name] = {"shape": [n, k], "rank": int(r), "energy": e, "source": source, "rel_error": rel,
                               "flops_ratio": r * (k + n) / (k * n)}
    if not report_layers:
        notes.append("no layer factorized")
    return done()
