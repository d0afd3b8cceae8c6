"""The rules of ``optkit.torch.prune``'s fx tracer: one per op family, keyed by the family names of the ONNX pass
(``optkit.passes.prune.rules.FAMILIES``), so both tracers follow the same ops by the same policy. A rule gets a
``_Use`` (the fx node reading the channels) and records edits in the plan, sets where the channels go next, or
raises ``_Fail`` with the reason the layer is skipped."""
from __future__ import annotations

import operator

import numpy as np
import torch
from torch.nn.modules.conv import _ConvTransposeNd

from .fx_ops import (_INSTANCE_DIMS, _POOL_DIMS, _POOL_FUNCS, _SHAPE_ATTRS, _arg, _Chan, _dims, _Fail, _Plan, _shape,
                     _Use)

# -- helpers the rules share -----------------------------------------------------------------------------------


def _binary_args(tr, node, hits, c: _Chan, L: int, plan: _Plan, what: str, set_out, out_rank, pow_op: bool) -> None:
    args = list(node.args) + list(node.kwargs.values())
    if pow_op and (not node.args or node.args[0] not in hits or any(a in hits for a in args[1:])):
        raise _Fail(f"output feeds the exponent of {what}")
    for a in args:
        if not hasattr(a, "op") or a in hits:  # python scalars / options, or our own channels (x * sigmoid(x))
            continue
        if a.op == "get_attr":
            _const(tr, a, c, L, plan, what)
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

def _const(tr, a, c: _Chan, L: int, plan: _Plan, what: str) -> None:
    """A get_attr tensor broadcast against the channels: fine if size 1 there, sliced if per-channel."""
    target = a.target
    v = tr.params.get(target)
    if v is None:
        v = tr.buffers.get(target)
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
    if tr.get_attrs.get(target, 0) != 1 or len(a.users) != 1:
        raise _Fail(f"per-channel constant {target!r} of {what} is used elsewhere")
    owner, _, attr = target.rpartition(".")
    if owner in tr.calls:
        raise _Fail(f"per-channel constant {target!r} belongs to a module that is also called")
    plan.slices.append((owner, attr, p, c.block))

def _pad_ok(pad: list[int], c: _Chan, what: str) -> None:
    m = len(pad) // 2
    p = c.pos()
    k = c.rank - 1 - p  # pad pairs are listed from the last dim backwards
    if k < m and (pad[2 * k] or pad[2 * k + 1]):
        raise _Fail(f"{what} pads the channel axis")

def _flatten_to(node, start, end, c: _Chan, what: str, set_out) -> None:
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

def _reduce_over(node, c: _Chan, what: str, set_out) -> None:
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

def _squeeze_to(node, op: str, c: _Chan, what: str, set_out) -> None:
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

def _reshape_to(node, hits, c: _Chan, what: str, set_out, shape: list) -> None:
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

def _shape_readers(node, p: int, what: str) -> None:
    """``x.size()`` / ``x.shape`` is fine if only other dims are read from it (``x.size()[0]``)."""
    for u in node.users:
        idx = u.args[1] if u.op == "call_function" and u.target is operator.getitem and len(u.args) == 2 else None
        if not isinstance(idx, int) or idx < 0 or idx == p:
            raise _Fail(f"the shape of the channels is read by {what} (channel count used at run time)")


# -- one rule per op family (the families of optkit.passes.prune.rules.FAMILIES) ---------------------------------


def _unary(tr, u: _Use) -> None:
    u.need_first()
    u.set_out(u.c)


def _binary(tr, u: _Use) -> None:
    node, c, t = u.node, u.c, u.node.target
    if node.op != "call_module":
        _binary_args(tr, node, u.hits, c, u.L, u.plan, u.what, u.set_out, u.out_rank,
                     pow_op=t in (operator.pow, torch.pow) or t == "pow")
        return
    u.need_first()  # nn.PReLU: one slope, or one per channel (sliced)
    m = tr.mods[t]
    if m.num_parameters == 1:
        u.set_out(c)
    elif m.num_parameters == u.L and u.p == 1 and c.block == 1 and tr.calls[t] == 1:
        u.plan.slices.append((t, "weight", 0, 1))
        u.plan.sets.append((t, "num_parameters", 1))
        u.set_out(c)
    else:
        raise _Fail(f"output feeds {u.what} whose slopes are not per channel on the channel axis")


def _pool(tr, u: _Use) -> None:
    u.need_first()
    node, c = u.node, u.c
    if node.op == "call_module":
        m = tr.mods[node.target]
        dims, indices = _POOL_DIMS[type(m)], getattr(m, "return_indices", False)
    else:
        dims, indices = _POOL_FUNCS[node.target], node.kwargs.get("return_indices")
    if u.p != 1 or c.block != 1 or c.rank != dims + 2 or indices:
        raise _Fail(f"output feeds {u.what} along another axis")
    u.set_out(c)


def _norm(tr, u: _Use) -> None:
    u.need_first()
    name, c = u.node.target, u.c
    m = tr.mods[name]
    dims = _INSTANCE_DIMS.get(type(m))
    if u.p != 1 or c.block != 1 or (dims is not None and c.rank != dims + 2):
        raise _Fail(f"output feeds {u.what} on another axis")
    if tr.calls[name] > 1:
        raise _Fail(f"output feeds {u.what}, which is called more than once")
    if m.num_features != u.L:
        raise _Fail(f"{u.what} does not match the channel count")
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if getattr(m, attr, None) is not None:
            u.plan.slices.append((name, attr, 0, 1))
    u.plan.sets.append((name, "num_features", 1))
    u.set_out(c)


def _conv(tr, u: _Use) -> None:
    u.need_first()
    name, c, plan, L = u.node.target, u.c, u.plan, u.L
    m = tr.mods[name]
    if u.p != 1 or c.block != 1 or c.rank != m.weight.dim():
        raise _Fail(f"output feeds {u.what} on another axis")
    if tr.calls[name] > 1:
        raise _Fail(f"output feeds {u.what}, which is called more than once")
    transposed = isinstance(m, _ConvTransposeNd)
    if m.groups == 1:
        if m.in_channels != L:
            raise _Fail(f"{u.what} does not match the channel count")
        plan.slices.append((name, "weight", 0 if transposed else 1, 1))
        plan.sets.append((name, "in_channels", 1))
        plan.terminals.append((name, c))
    elif not transposed and m.groups == L and m.out_channels == L and m.weight.shape[1] == 1:
        plan.slices.append((name, "weight", 0, 1))  # depthwise: its channels are ours
        if m.bias is not None:
            plan.slices.append((name, "bias", 0, 1))
        for attr in ("in_channels", "out_channels", "groups"):
            plan.sets.append((name, attr, 1))
        u.set_out(_Chan(c.axis, u.out_rank(), c.block))
    else:
        raise _Fail(f"output feeds grouped conv {u.what} (groups={m.groups})")


def _linear(tr, u: _Use) -> None:
    u.need_first()
    name, c = u.node.target, u.c
    m = tr.mods[name]
    if c.axis != -1 or m.in_features != u.L:
        raise _Fail(f"output feeds {u.what} on another axis")
    if tr.calls[name] > 1:
        raise _Fail(f"output feeds {u.what}, which is called more than once")
    u.plan.slices.append((name, "weight", 1, c.block))
    u.plan.sets.append((name, "in_features", c.block))
    u.plan.terminals.append((name, c))


def _pad(tr, u: _Use) -> None:
    u.need_first()
    node = u.node
    if node.op == "call_module":
        pad = list(tr.mods[node.target].padding)
    else:
        mode, pad = _arg(node, 2, "mode", "constant"), _arg(node, 1, "pad")
        if mode == "circular" or not isinstance(pad, (list, tuple)) or not all(isinstance(v, int) for v in pad):
            raise _Fail(f"output feeds {u.what} with circular or run-time pads")
    _pad_ok(list(pad), u.c, u.what)
    u.set_out(u.c)


def _flatten(tr, u: _Use) -> None:
    u.need_first()
    node = u.node
    if node.op == "call_module":
        m = tr.mods[node.target]
        start, end = m.start_dim, m.end_dim
    else:
        start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    _flatten_to(node, start, end, u.c, u.what, u.set_out)


def _reduce(tr, u: _Use) -> None:
    u.need_first()
    _reduce_over(u.node, u.c, u.what, u.set_out)


def _reshape(tr, u: _Use) -> None:
    node = u.node
    if node.op == "call_function":  # torch.reshape(x, shape)
        shape = list(_arg(node, 1, "shape", ()) or ())
    else:  # x.view(*shape) / x.reshape(shape)
        shape = list(node.args[1:])
        if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
            shape = list(shape[0])
        if not shape:
            shape = list(node.kwargs.get("shape", node.kwargs.get("size", ())) or ())
    _reshape_to(node, u.hits, u.c, u.what, u.set_out, shape)


def _squeeze(tr, u: _Use) -> None:
    u.need_first()
    t = u.node.target
    _squeeze_to(u.node, "squeeze" if t in (torch.squeeze, "squeeze") else "unsqueeze", u.c, u.what, u.set_out)


def _metadata(tr, u: _Use) -> None:
    """Reads of the tensor's metadata: fine unless they read the channel count."""
    node, c = u.node, u.c
    if node.op == "call_function":  # getattr(x, name)
        if len(node.args) != 2 or node.args[0] not in u.chan:
            raise _Fail(f"output feeds {u.what}")
        attr = node.args[1]
        if attr == "shape":
            _shape_readers(node, u.p, u.what)
        elif attr not in _SHAPE_ATTRS:
            raise _Fail(f"output feeds {u.what} (attribute {attr!r})")
        return
    u.need_first()
    if node.target == "size":
        d = _arg(node, 1, "dim")
        if d is None:
            _shape_readers(node, u.p, u.what)
        elif not isinstance(d, int) or (d + c.rank if d < 0 else d) == u.p:
            raise _Fail(f"the channel count is read by {u.what} (used at run time)")


TORCH_RULES = {"unary": _unary, "binary": _binary, "pool": _pool, "norm": _norm, "conv": _conv, "linear": _linear,
               "pad": _pad, "flatten": _flatten, "reduce": _reduce, "reshape": _reshape, "squeeze": _squeeze,
               "shape": _metadata}
