"""Model calls and feature matching for optkit.torch.distill: a module's output as one tensor, calling a model on
a tensor / tuple / dict, finding a named submodule, the projection that maps a student feature onto the teacher's
width, pooling to a common size, and the feature losses."""
from __future__ import annotations

import difflib

import torch
import torch.nn as nn
import torch.nn.functional as F


def _first_tensor(out):
    """A module's output as one tensor: itself, ``.logits`` / ``.last_hidden_state``, or the first tensor inside."""
    if isinstance(out, torch.Tensor):
        return out
    for attr in ("logits", "last_hidden_state"):
        v = getattr(out, attr, None)
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for v in out:
            t = _first_tensor(v) if not isinstance(v, torch.Tensor) else v
            if isinstance(t, torch.Tensor):
                return t
    return None


def _call(model: nn.Module, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _module(model: nn.Module, name: str, side: str) -> nn.Module:
    mods = dict(model.named_modules())
    if name in mods and name != "":
        return mods[name]
    names = [n for n in mods if n]
    near = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f"near matches: {', '.join(near)}" if near else f"some names: {', '.join(names[:8])}"
    raise ValueError(f"{side} has no module named {name!r} ({hint})")


_CHANNEL_4D = (nn.Conv2d, nn.BatchNorm2d, nn.InstanceNorm2d, nn.ConvTranspose2d)
_CHANNEL_5D = (nn.Conv3d, nn.BatchNorm3d, nn.InstanceNorm3d, nn.ConvTranspose3d)


def _static_dim(m: nn.Module) -> tuple[str, int] | None:
    """('channel4d'|'channel5d'|'last', dim) read off the module type, or None when it can't be known without data."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        return "channel4d", m.out_channels
    if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
        return "channel5d", m.out_channels
    if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)):
        return "channel4d", m.num_features
    if isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d)):
        return "channel5d", m.num_features
    if isinstance(m, nn.Linear):
        return "last", m.out_features
    if isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1:
        return "last", m.normalized_shape[0]
    if isinstance(m, nn.Embedding):
        return "last", m.embedding_dim
    return None


def _layout(t: torch.Tensor) -> tuple[str, int]:
    if t.dim() == 4:
        return "channel4d", t.shape[1]
    if t.dim() == 5:
        return "channel5d", t.shape[1]
    if t.dim() in (2, 3):
        return "last", t.shape[-1]
    raise ValueError(f"feature matching supports 2-D to 5-D outputs, got shape {tuple(t.shape)}")


def _projection(kind: str, cin: int, cout: int) -> nn.Module:
    if kind == "channel4d":
        return nn.Conv2d(cin, cout, 1, bias=False)
    if kind == "channel5d":
        return nn.Conv3d(cin, cout, 1, bias=False)
    return nn.Linear(cin, cout, bias=False)


def _pool_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if x.dim() == 4:
        return F.adaptive_avg_pool2d(x, size)
    if x.dim() == 5:
        return F.adaptive_avg_pool3d(x, size)
    # [batch, seq, dim]: pool the sequence axis
    return F.adaptive_avg_pool1d(x.transpose(1, 2), size).transpose(1, 2)


def _match_sizes(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial (4-D/5-D: dims 2..) or sequence (3-D: dim 1) sizes: pool the larger map down to the smaller one."""
    if s.dim() != t.dim():
        raise ValueError(f"student feature {tuple(s.shape)} and teacher feature {tuple(t.shape)} differ in rank")
    if s.dim() == 2:
        return s, t
    dims = slice(2, None) if s.dim() >= 4 else slice(1, 2)
    ss, ts = tuple(s.shape[dims]), tuple(t.shape[dims])
    if ss == ts:
        return s, t
    target = tuple(min(a, b) for a, b in zip(ss, ts))
    if ss != target:
        s = _pool_to(s, target)
    if ts != target:
        t = _pool_to(t, target)
    return s, t


_FEATURE_LOSSES = {
    "mse": F.mse_loss,
    "l1": F.l1_loss,
    "smooth_l1": F.smooth_l1_loss,
    "cosine": lambda s, t: (1.0 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=1)).mean(),
}
