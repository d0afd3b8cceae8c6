"""The fx side of ``optkit.torch.prune``'s channel tracer: channel layouts, plans, the torch ops it knows, and the
op family each fx node belongs to (the family names are those of the ONNX pass, ``optkit.passes.prune.rules``)."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm



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


_MODULE_FAMILIES = ((_ACT_MODULES, "unary"), ((nn.PReLU,), "binary"), ((_BatchNorm, _InstanceNorm), "norm"),
                    (tuple(_POOL_DIMS), "pool"), (_PAD_MODULES, "pad"), ((nn.Flatten,), "flatten"), ((_ConvNd,), "conv"),
                    ((nn.Linear,), "linear"))
_FUNCTION_FAMILIES = {**{f: "unary" for f in _UNARY_FUNCS}, **{f: "binary" for f in _BINARY_FUNCS},
                      **{f: "pool" for f in _POOL_FUNCS}, **{f: "reduce" for f in _REDUCE_FUNCS}, F.pad: "pad",
                      torch.flatten: "flatten", torch.reshape: "reshape", torch.squeeze: "squeeze",
                      torch.unsqueeze: "squeeze", getattr: "shape"}
_METHOD_FAMILIES = {**{m: "unary" for m in _UNARY_METHODS}, **{m: "binary" for m in _BINARY_METHODS},
                    **{m: "reduce" for m in _REDUCE_METHODS}, "size": "shape", "dim": "shape", "flatten": "flatten",
                    "view": "reshape", "reshape": "reshape", "squeeze": "squeeze", "unsqueeze": "squeeze"}
# what an fx node that stops the trace is, when it has a name worth giving
_STOPS = {operator.getitem: "indexing/slicing", torch.cat: "concat", torch.concat: "concat", torch.stack: "concat"}


def family_of(node, mods: dict) -> str | None:
    """The op family (a key of ``optkit.passes.prune.rules.FAMILIES``) of an fx node, or None (not followed)."""
    if node.op == "call_module":
        m = mods[node.target]
        return next((fam for classes, fam in _MODULE_FAMILIES  # pools by exact type: their dims come from the table
                     if (type(m) in classes if fam == "pool" else isinstance(m, classes))), None)
    if node.op == "call_function":
        try:
            return _FUNCTION_FAMILIES.get(node.target)
        except TypeError:  # an unhashable target
            return None
    if node.op == "call_method":
        return _METHOD_FAMILIES.get(node.target)
    return None


@dataclass
class _Use:
    """An fx node that reads the layer's channels: the rule's input."""

    node: object
    hits: list  # the node's inputs that carry the channels
    c: _Chan
    L: int  # channel count times block
    plan: _Plan
    chan: dict
    what: str  # how messages name the node

    @property
    def p(self) -> int:
        return self.c.pos()

    def set_out(self, cn: _Chan) -> None:
        self.chan[self.node] = cn

    def need_first(self) -> None:
        first = self.node.args[0] if self.node.args else None
        if not (self.hits == [first] and all(a is first for a in self.node.all_input_nodes)):
            raise _Fail(f"output feeds {self.what} other than as its only tensor input")

    def out_rank(self) -> int:
        s = _shape(self.node)
        if s is None:
            raise _Fail(f"output feeds {self.what}, whose output is not a tensor")
        return len(s)
