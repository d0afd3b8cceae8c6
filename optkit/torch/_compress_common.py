"""Shared by optkit.torch's prune and lowrank (optkit.torch.compress): example inputs as a tuple, parameter counts,
option checks that raise one ValueError line, and ``count_flops`` (the ONNX FLOP convention on a torch module)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .fx_trace import _inference


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


def _per_layer(name: str, v, convert, what: str, prefix: str) -> dict:
    """A mapping of layer name -> value (``convert`` checks each value), or {} for None."""
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise ValueError(f"{prefix}option '{name}' must be a mapping of layer name to {what}, got {v!r}")
    return {k: convert(f"{name}[{k!r}]", x, prefix) for k, x in v.items()}


def _flag(name: str, v, prefix: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{prefix}option '{name}' must be true or false, got {v!r}")
    return v


def _choice(name: str, v, choices: tuple, prefix: str) -> str:
    if v not in choices:
        raise ValueError(f"{prefix}option '{name}' must be one of {', '.join(choices)}; got {v!r}")
    return v


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
