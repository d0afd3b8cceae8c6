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
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from ..errors import RecipeError
from ..passes.prune import PruneConfig, _expand, keep_counts
from ._compress_common import _as_inputs, _choice, _flag, _int, _names, _params, _per_layer, _real, count_flops  # noqa: F401
from ._lowrank import lowrank  # noqa: F401  (re-exported)
from .fx_ops import _Chan, _Layer
from .fx_trace import _analyze, _inference, _Tracer

__all__ = ["prune", "lowrank", "count_flops"]


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
    layers = _per_layer("layers", layers, _real, "ratio", pre)
    _flag("inplace", inplace, pre)
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
