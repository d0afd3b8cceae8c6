"""``optkit.torch.lowrank`` (re-exported by optkit.torch.compress): truncated-SVD factorization of Linear and 1x1
Conv modules into two smaller ones, with the ONNX lowrank pass's rank rules (energy, keep_flops, per-layer ranks)."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from ..errors import RecipeError
from ..passes.lowrank import LowRankConfig
from ..passes.lowrank import _choose_rank
from ..passes.lowrank import _Layer as _LowRankLayer
from ._compress_common import _as_inputs, _flag, _int, _names, _params, _per_layer, _real, count_flops


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
    ranks = _per_layer("ranks", ranks, _int, "rank", pre)
    _flag("inplace", inplace, pre)
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
