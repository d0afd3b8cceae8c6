"""Structured pruning and low-rank factorization of PyTorch modules, with the rules of the ONNX passes.

Prune or factorize a trained model, fine-tune it (e.g. distilling from the original with
:class:`optkit.torch.Distiller`), then export it::

    student, rep = prune(model, ratio=0.3, example_inputs=(x,))
    student, rep = lowrank(student, keep_flops=0.5, example_inputs=(x,))
    count_flops(student, (x,))

**Same rules as** :mod:`optkit.passes.prune` / :mod:`optkit.passes.lowrank`. These helpers are imported
from them, not re-implemented: the kept count per layer (``keep_counts``), the filter
norms (``_importance``), the block expansion of a flattened channel (``_expand``), the option ranges
(``PruneConfig.check`` / ``LowRankConfig.check``) and the rank choice (``_choose_rank``, with ``energy_rank``).
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

import contextlib
import copy
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.nn.modules.instancenorm import _InstanceNorm

from ..errors import RecipeError
from ..passes.lowrank import LowRankConfig
from ..passes.lowrank import _choose_rank
from ..passes.lowrank import _Layer as _LowRankLayer
from ..passes.prune import PruneConfig, _expand, _importance, keep_counts

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


@contextlib.contextmanager
def _inference(model: nn.Module):
    """eval() + no_grad for measuring, restoring every submodule's training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, t in flags:
            m.training = t


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


# ---------------------------------------------------------------------------------------------------------------
# prune: following a layer's channels through the fx graph
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chan:
    """A tensor whose axis ``axis`` (negative, from the end) holds the layer's channels, each ``block`` long."""

    axis: int
    rank: int
    block: int = 1

    def pos(self) -> int:
        return self.rank + self.axis


@dataclass
class _Plan:
    slices: list = field(default_factory=list)  # (module name, attribute, axis, block): tensors to index_select
    sets: list = field(default_factory=list)  # (module name, attribute, multiplier): int attrs = kept * multiplier
    terminals: list = field(default_factory=list)  # (module name, _Chan): layers reading the channels


@dataclass
class _Layer:
    name: str
    n: int
    importance_l1: np.ndarray
    importance_l2: np.ndarray
    plan: _Plan


class _Fail(Exception):
    pass


_ACT_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
                nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Softsign, nn.Tanhshrink,
                nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.FeatureAlphaDropout)
_POOL_DIMS = {nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
              nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1,
              nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.LPPool1d: 1, nn.LPPool2d: 2}
_PAD_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
                nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
                nn.ReplicationPad2d, nn.ReplicationPad3d)
_INSTANCE_DIMS = {nn.InstanceNorm1d: 1, nn.InstanceNorm2d: 2, nn.InstanceNorm3d: 3}

_UNARY_FUNCS = {torch.relu, F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
                F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.softsign, F.sigmoid, torch.sigmoid, F.tanh,
                torch.tanh, F.tanhshrink, torch.exp, torch.log, torch.sqrt, torch.abs, torch.neg, operator.neg,
                torch.erf, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, torch.clamp,
                torch.clip, torch.sin, torch.cos, torch.floor, torch.ceil, torch.round, torch.sign, torch.reciprocal}
_UNARY_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "exp", "log", "sqrt", "abs", "neg", "erf",
                  "clamp", "clamp_", "clip", "sin", "cos", "floor", "ceil", "round", "sign", "reciprocal",
                  "contiguous", "clone", "detach", "float", "half", "double", "to", "type"}
_BINARY_FUNCS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.pow, torch.add, torch.sub,
                 torch.mul, torch.div, torch.pow, torch.maximum, torch.minimum}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "maximum", "minimum"}
_POOL_FUNCS = {F.max_pool1d: 1, F.max_pool2d: 2, F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3,
               F.adaptive_avg_pool1d: 1, F.adaptive_avg_pool2d: 2, F.adaptive_avg_pool3d: 3,
               F.adaptive_max_pool1d: 1, F.adaptive_max_pool2d: 2, F.adaptive_max_pool3d: 3, F.lp_pool1d: 1,
               F.lp_pool2d: 2}
_REDUCE_FUNCS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax", torch.amin: "amin"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_SHAPE_ATTRS = {"dtype", "device", "ndim", "is_cuda", "requires_grad"}


def _shape(node) -> tuple | None:
    tm = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    shp = getattr(tm, "shape", None)
    return tuple(int(d) for d in shp) if shp is not None else None


def _describe(node, mods: dict) -> str:
    if node.op == "call_module":
        return f"{type(mods[node.target]).__name__} {node.target!r}"
    if node.op == "call_method":
        return f"Tensor.{node.target} ({node.name!r})"
    t = node.target
    mod = getattr(t, "__module__", None) or ""
    nm = getattr(t, "__name__", str(t))
    nice = {"torch._C._nn": "F", "torch.nn.functional": "F", "_operator": "operator", "torch._C._VariableFunctions": "torch"}
    return f"{nice.get(mod, mod or 'builtin')}.{nm} ({node.name!r})"


def _arg(node, i: int, kw: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(kw, default)


def _dims(v, rank: int) -> list[int] | None:
    if v is None:
        return None
    if isinstance(v, int):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(d, int) for d in v):
        return None
    return sorted({d + rank if d < 0 else d for d in v})


class _Tracer:
    """The fx graph of the model, its shapes at the example inputs, and the module table."""

    def __init__(self, model: nn.Module, inputs: tuple):
        import torch.fx as fx
        from torch.fx.passes.shape_prop import ShapeProp

        with _inference(model):
            try:
                self.gm = fx.symbolic_trace(model)
            except Exception as e:
                raise ValueError(f"prune: torch.fx cannot trace the model ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''}); make its forward traceable "
                                 "(no data-dependent control flow) or prune its traceable submodules") from e
            try:
                ShapeProp(self.gm).propagate(*inputs)
            except Exception as e:
                raise ValueError(f"prune: the model does not run on example_inputs ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e
        self.model = model
        self.nodes = list(self.gm.graph.nodes)
        self.mods = dict(model.named_modules())
        self.calls: dict[str, int] = {}
        self.get_attrs: dict[str, int] = {}
        for n in self.nodes:
            if n.op == "call_module":
                self.calls[n.target] = self.calls.get(n.target, 0) + 1
            elif n.op == "get_attr":
                self.get_attrs[n.target] = self.get_attrs.get(n.target, 0) + 1
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.buffers = dict(model.named_buffers(remove_duplicate=False))

    # -- producers ------------------------------------------------------------------------------------------

    def producer(self, node) -> tuple[str, int, _Chan] | str | None:
        """(weight axis of the output channels, count, channel layout), a skip reason, or None (not a layer)."""
        if node.op != "call_module":
            return None
        m = self.mods[node.target]
        if isinstance(m, nn.Linear):
            out = _shape(node)
            if out is None or len(out) < 1:
                return "output shape unknown"
            if self.calls[node.target] > 1:
                return "module is called more than once"
            return ("weight", m.out_features, _Chan(-1, len(out)))
        if isinstance(m, _ConvNd):
            if m.groups != 1:
                return f"grouped/depthwise conv (groups={m.groups}): its output channels are tied to its input channels"
            out = _shape(node)
            if out is None or len(out) != m.weight.dim():
                return "unbatched input (output rank does not match the weight)"
            if self.calls[node.target] > 1:
                return "module is called more than once"
            return ("weight", m.out_channels, _Chan(-(len(out) - 1), len(out)))
        return None

    def bn_factor(self, node) -> np.ndarray | None:
        """|gamma| / sqrt(running_var + eps) of a BatchNorm that is the conv's only consumer (the pair the ONNX
        exporter folds and the ONNX pass weights by), else None."""
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].args[:1] != (node,):
            return None
        bn = self.mods[users[0].target]
        if not isinstance(bn, _BatchNorm) or bn.running_var is None or self.calls[users[0].target] != 1:
            return None
        var = bn.running_var.detach().double().cpu().numpy()
        gamma = bn.weight.detach().double().cpu().numpy() if bn.weight is not None else np.ones_like(var)
        return np.abs(gamma) / np.sqrt(var + float(bn.eps))

    # -- tracing --------------------------------------------------------------------------------------------

    def trace(self, pnode, spec) -> _Plan:
        name = pnode.target
        m = self.mods[name]
        _, L0, c0 = spec
        plan = _Plan()
        axis = 1 if isinstance(m, _ConvTransposeNd) else 0
        plan.slices.append((name, "weight", axis, 1))
        if m.bias is not None:
            plan.slices.append((name, "bias", 0, 1))
        plan.sets.append((name, "out_features" if isinstance(m, nn.Linear) else "out_channels", 1))
        chan = {pnode: c0}
        start = self.nodes.index(pnode)
        for node in self.nodes[start + 1:]:
            hits = [a for a in node.all_input_nodes if a in chan]
            if hits:
                self._step(node, hits, chan, plan, L0)
        return plan

    def _step(self, node, hits, chan, plan: _Plan, L0: int) -> None:
        mods = self.mods
        what = _describe(node, mods) if node.op != "output" else "graph output"
        if node.op == "output":
            raise _Fail("channels reach a graph output")
        c = chan[hits[0]]
        if any(chan[h] != c for h in hits):
            raise _Fail(f"output reaches {what} twice with different layouts")
        L, p = L0 * c.block, c.pos()
        first = node.args[0] if node.args else None
        only_first = hits == [first] and all(a is first for a in node.all_input_nodes)

        def out_rank() -> int:
            s = _shape(node)
            if s is None:
                raise _Fail(f"output feeds {what}, whose output is not a tensor")
            return len(s)

        def set_out(cn: _Chan) -> None:
            chan[node] = cn

        def need_first():
            if not only_first:
                raise _Fail(f"output feeds {what} other than as its only tensor input")

        if node.op == "call_module":
            m = mods[node.target]
            need_first()
            shared = self.calls[node.target] > 1
            if isinstance(m, _ACT_MODULES):
                set_out(c)
            elif isinstance(m, nn.PReLU):
                if m.num_parameters == 1:
                    set_out(c)
                elif m.num_parameters == L and p == 1 and c.block == 1 and not shared:
                    plan.slices.append((node.target, "weight", 0, 1))
                    plan.sets.append((node.target, "num_parameters", 1))
                    set_out(c)
                else:
                    raise _Fail(f"output feeds {what} whose slopes are not per channel on the channel axis")
            elif isinstance(m, (_BatchNorm, _InstanceNorm)):
                dims = _INSTANCE_DIMS.get(type(m))
                if p != 1 or c.block != 1 or (dims is not None and c.rank != dims + 2):
                    raise _Fail(f"output feeds {what} on another axis")
                if shared:
                    raise _Fail(f"output feeds {what}, which is called more than once")
                if m.num_features != L:
                    raise _Fail(f"{what} does not match the channel count")
                for attr in ("weight", "bias", "running_mean", "running_var"):
                    if getattr(m, attr, None) is not None:
                        plan.slices.append((node.target, attr, 0, 1))
                plan.sets.append((node.target, "num_features", 1))
                set_out(c)
            elif type(m) in _POOL_DIMS:
                if p != 1 or c.block != 1 or c.rank != _POOL_DIMS[type(m)] + 2 or getattr(m, "return_indices", False):
                    raise _Fail(f"output feeds {what} along another axis")
                set_out(c)
            elif isinstance(m, _PAD_MODULES):
                self._pad(list(m.padding), c, what)
                set_out(c)
            elif isinstance(m, nn.Flatten):
                self._flatten(node, m.start_dim, m.end_dim, c, what, set_out)
            elif isinstance(m, _ConvNd):
                if p != 1 or c.block != 1 or c.rank != m.weight.dim():
                    raise _Fail(f"output feeds {what} on another axis")
                if shared:
                    raise _Fail(f"output feeds {what}, which is called more than once")
                transposed = isinstance(m, _ConvTransposeNd)
                if m.groups == 1:
                    if m.in_channels != L:
                        raise _Fail(f"{what} does not match the channel count")
                    plan.slices.append((node.target, "weight", 0 if transposed else 1, 1))
                    plan.sets.append((node.target, "in_channels", 1))
                    plan.terminals.append((node.target, c))
                elif not transposed and m.groups == L and m.out_channels == L and m.weight.shape[1] == 1:
                    plan.slices.append((node.target, "weight", 0, 1))  # depthwise: its channels are ours
                    if m.bias is not None:
                        plan.slices.append((node.target, "bias", 0, 1))
                    for attr in ("in_channels", "out_channels", "groups"):
                        plan.sets.append((node.target, attr, 1))
                    set_out(_Chan(c.axis, out_rank(), c.block))
                else:
                    raise _Fail(f"output feeds grouped conv {what} (groups={m.groups})")
            elif isinstance(m, nn.Linear):
                if c.axis != -1 or m.in_features != L:
                    raise _Fail(f"output feeds {what} on another axis")
                if shared:
                    raise _Fail(f"output feeds {what}, which is called more than once")
                plan.slices.append((node.target, "weight", 1, c.block))
                plan.sets.append((node.target, "in_features", c.block))
                plan.terminals.append((node.target, c))
            else:
                raise _Fail(f"output feeds {what}")
            return

        if node.op == "call_function":
            t = node.target
            if t in _UNARY_FUNCS:
                need_first()
                set_out(c)
            elif t in _BINARY_FUNCS:
                self._binary(node, hits, c, L, plan, what, set_out, out_rank, pow_op=t in (operator.pow, torch.pow))
            elif t in _POOL_FUNCS:
                need_first()
                if p != 1 or c.block != 1 or c.rank != _POOL_FUNCS[t] + 2 or node.kwargs.get("return_indices"):
                    raise _Fail(f"output feeds {what} along another axis")
                set_out(c)
            elif t is F.pad:
                need_first()
                mode = _arg(node, 2, "mode", "constant")
                pad = _arg(node, 1, "pad")
                if mode == "circular" or not isinstance(pad, (list, tuple)) or not all(isinstance(v, int) for v in pad):
                    raise _Fail(f"output feeds {what} with circular or run-time pads")
                self._pad(list(pad), c, what)
                set_out(c)
            elif t is torch.flatten:
                need_first()
                self._flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1), c, what, set_out)
            elif t in _REDUCE_FUNCS:
                need_first()
                self._reduce(node, c, what, set_out)
            elif t is torch.reshape:
                self._reshape(node, hits, c, what, set_out, list(_arg(node, 1, "shape", ()) or ()))
            elif t in (torch.squeeze, torch.unsqueeze):
                need_first()
                self._squeeze(node, "squeeze" if t is torch.squeeze else "unsqueeze", c, what, set_out)
            elif t is getattr and len(node.args) == 2 and node.args[0] in chan:
                attr = node.args[1]
                if attr == "shape":
                    self._shape_readers(node, p, what)
                elif attr not in _SHAPE_ATTRS:
                    raise _Fail(f"output feeds {what} (attribute {attr!r})")
            elif t is operator.getitem:
                raise _Fail(f"output feeds {what} (indexing/slicing)")
            elif t is torch.cat or t is torch.concat or t is torch.stack:
                raise _Fail(f"output feeds {what} (concat)")
            else:
                raise _Fail(f"output feeds {what}")
            return

        if node.op == "call_method":
            t = node.target
            if t in _UNARY_METHODS:
                need_first()
                set_out(c)
            elif t in _BINARY_METHODS:
                self._binary(node, hits, c, L, plan, what, set_out, out_rank, pow_op=t == "pow")
            elif t == "size":
                need_first()
                d = _arg(node, 1, "dim")
                if d is None:
                    self._shape_readers(node, p, what)
                elif not isinstance(d, int) or (d + c.rank if d < 0 else d) == p:
                    raise _Fail(f"the channel count is read by {what} (used at run time)")
            elif t == "dim":
                need_first()
            elif t == "flatten":
                need_first()
                self._flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1), c, what, set_out)
            elif t in _REDUCE_METHODS:
                need_first()
                self._reduce(node, c, what, set_out)
            elif t in ("view", "reshape"):
                shape = list(node.args[1:])
                if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
                    shape = list(shape[0])
                if not shape:
                    shape = list(node.kwargs.get("shape", node.kwargs.get("size", ())) or ())
                self._reshape(node, hits, c, what, set_out, shape)
            elif t in ("squeeze", "unsqueeze"):
                need_first()
                self._squeeze(node, t, c, what, set_out)
            else:
                raise _Fail(f"output feeds {what}")
            return
        raise _Fail(f"output feeds {what}")

    # -- per-op rules ---------------------------------------------------------------------------------------

    def _binary(self, node, hits, c: _Chan, L: int, plan: _Plan, what: str, set_out, out_rank, pow_op: bool) -> None:
        args = list(node.args) + list(node.kwargs.values())
        if pow_op and (not node.args or node.args[0] not in hits or any(a in hits for a in args[1:])):
            raise _Fail(f"output feeds the exponent of {what}")
        for a in args:
            if not hasattr(a, "op") or a in hits:  # python scalars / options, or our own channels (x * sigmoid(x))
                continue
            if a.op == "get_attr":
                self._const(a, c, L, plan, what)
                continue
            s = _shape(a)
            if s is None:
                continue  # a python number computed at run time
            if len(s) <= c.rank and (len(s) + c.axis < 0 or s[len(s) + c.axis] == 1):
                continue  # broadcasts along the channels (e.g. a [N,1,H,W] spatial map)
            if node.target in (operator.add, operator.sub, torch.add, torch.sub, "add", "add_", "sub", "sub_"):
                raise _Fail(f"output feeds {what} with another activation (residual)")
            raise _Fail(f"output feeds {what} together with another activation")
        set_out(_Chan(c.axis, out_rank(), c.block))

    def _const(self, a, c: _Chan, L: int, plan: _Plan, what: str) -> None:
        """A get_attr tensor broadcast against the channels: fine if size 1 there, sliced if per-channel."""
        target = a.target
        v = self.params.get(target)
        if v is None:
            v = self.buffers.get(target)
        shape = _shape(a)
        if shape is None and v is not None:
            shape = tuple(v.shape)
        if shape is None:
            raise _Fail(f"output feeds {what} with a constant of unknown shape")
        p = len(shape) + c.axis
        if p < 0 or shape[p] == 1:
            return
        if shape[p] != L:
            raise _Fail(f"constant {target!r} of {what} does not broadcast per channel")
        if v is None:
            raise _Fail(f"constant {target!r} of {what} is per channel but not a parameter or buffer")
        if self.get_attrs.get(target, 0) != 1 or len(a.users) != 1:
            raise _Fail(f"per-channel constant {target!r} of {what} is used elsewhere")
        owner, _, attr = target.rpartition(".")
        if owner in self.calls:
            raise _Fail(f"per-channel constant {target!r} belongs to a module that is also called")
        plan.slices.append((owner, attr, p, c.block))

    def _pad(self, pad: list[int], c: _Chan, what: str) -> None:
        m = len(pad) // 2
        p = c.pos()
        k = c.rank - 1 - p  # pad pairs are listed from the last dim backwards
        if k < m and (pad[2 * k] or pad[2 * k + 1]):
            raise _Fail(f"{what} pads the channel axis")

    def _flatten(self, node, start, end, c: _Chan, what: str, set_out) -> None:
        r, p = c.rank, c.pos()
        if not isinstance(start, int) or not isinstance(end, int):
            raise _Fail(f"output feeds {what} with run-time dims")
        start, end = (start + r if start < 0 else start), (end + r if end < 0 else end)
        if start == end:
            set_out(c)
            return
        if start != p or end != r - 1:
            raise _Fail(f"output feeds {what} that mixes channels with other dims")
        s = _shape(node.args[0])
        inner = int(np.prod(s[p + 1:])) if s is not None else None
        if inner is None:
            raise _Fail(f"output feeds {what} and the size after the channel axis is unknown")
        set_out(_Chan(-1, p + 1, c.block * inner))

    def _reduce(self, node, c: _Chan, what: str, set_out) -> None:
        dims = _dims(_arg(node, 1, "dim"), c.rank)
        if not dims:
            raise _Fail(f"{what} reduces over every axis")
        p = c.pos()
        if p in dims or c.block != 1:
            raise _Fail(f"{what} reduces over the channels")
        if _arg(node, 2, "keepdim", False):
            set_out(c)
        else:
            new_rank = c.rank - len(dims)
            set_out(_Chan(p - sum(1 for d in dims if d < p) - new_rank, new_rank))

    def _squeeze(self, node, op: str, c: _Chan, what: str, set_out) -> None:
        d = _arg(node, 1, "dim")
        if not isinstance(d, int):
            raise _Fail(f"output feeds {what} without a single int dim")
        p = c.pos()
        s_out = _shape(node)
        if s_out is None:
            raise _Fail(f"output feeds {what} with unknown shape")
        new_rank = len(s_out)
        if op == "squeeze":
            d = d + c.rank if d < 0 else d
            if d == p:
                raise _Fail(f"{what} removes the channel axis")
            new_p = p if new_rank == c.rank else p - (1 if d < p else 0)
        else:
            d = d + new_rank if d < 0 else d
            new_p = p + (1 if d <= p else 0)
        set_out(_Chan(new_p - new_rank, new_rank, c.block))

    def _reshape(self, node, hits, c: _Chan, what: str, set_out, shape: list) -> None:
        x = node.args[0] if node.args else None
        if x not in hits or len(hits) != 1 or any(a is x for a in shape):
            raise _Fail(f"output feeds {what} as a shape")
        s_in, s_out = _shape(x), _shape(node)
        if s_in is None or s_out is None:
            raise _Fail(f"output feeds {what} with unknown shape")
        p = c.pos()
        minus = [i for i, v in enumerate(shape) if isinstance(v, int) and v == -1]
        # x.view(batch, -1) into a Linear: the channels become blocks of H*W features
        if p == 1 and len(shape) == 2 and minus == [1] and len(s_out) == 2 and s_out[0] == s_in[0]:
            set_out(_Chan(-1, 2, c.block * int(np.prod(s_in[2:], dtype=np.int64))))
            return
        # channels stay the last axis and are inferred (-1), e.g. [N*T, C] -> [N, T, C]
        if c.axis == -1 and minus == [len(shape) - 1] and s_out[-1] == s_in[-1]:
            set_out(_Chan(-1, len(s_out), c.block))
            return
        raise _Fail(f"output feeds {what} that mixes channels with other dims (only view(batch, -1) into a Linear "
                    "and channels-last view(..., -1) are followed)")

    def _shape_readers(self, node, p: int, what: str) -> None:
        """``x.size()`` / ``x.shape`` is fine if only other dims are read from it (``x.size()[0]``)."""
        for u in node.users:
            idx = u.args[1] if u.op == "call_function" and u.target is operator.getitem and len(u.args) == 2 else None
            if not isinstance(idx, int) or idx < 0 or idx == p:
                raise _Fail(f"the shape of the channels is read by {what} (channel count used at run time)")


def _analyze(tr: _Tracer) -> tuple[list[_Layer], dict[str, str]]:
    layers, skipped = [], {}
    for node in tr.nodes:
        spec = tr.producer(node)
        if spec is None:
            continue
        name = node.target
        if isinstance(spec, str):
            skipped[name] = spec
            continue
        try:
            plan = tr.trace(node, spec)
        except _Fail as e:
            skipped[name] = str(e)
            continue
        m = tr.mods[name]
        w = m.weight.detach().double().cpu().numpy()
        l1, l2 = _importance(w, 1 if isinstance(m, _ConvTransposeNd) else 0)
        f = tr.bn_factor(node) if isinstance(m, _ConvNd) else None
        if f is not None and f.shape == l1.shape:
            l1, l2 = l1 * f, l2 * f
        layers.append(_Layer(name, int(w.shape[1 if isinstance(m, _ConvTransposeNd) else 0]), l1, l2, plan))
    return layers, skipped


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
    {name: reason}, ``flops_before/after``, ``params_before/after``, ``notes``."""
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
    for name in list(cfg.layers) + list(cfg.skip):
        if name not in by_name and name not in skipped:
            notes.append(f"no prunable layer named {name!r} (in skip/layers): ignored")
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
                  "params_after": _params(work), "notes": notes}


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
                      "params_before": params_before, "params_after": _params(work), "notes": notes}

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
        _set_module(work, name, seq)
        report_layers[name] = {"shape": [n, k], "rank": int(r), "energy": e, "source": source, "rel_error": rel,
                               "flops_ratio": r * (k + n) / (k * n)}
    if not report_layers:
        notes.append("no layer factorized")
    return done()
