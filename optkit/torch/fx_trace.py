"""``optkit.torch.prune``'s tracer over the fx graph: which modules are layers, and where each layer's channels go
(through ``optkit/torch/fx_rules.py``, one rule per op family)."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from ..passes.prune import _importance
from .fx_ops import _STOPS, _Chan, _describe, _Fail, _Layer, _Plan, _shape, _Use, family_of
from .fx_rules import TORCH_RULES


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
        """One fx node that reads the channels: checked here, then handed to its family's rule (``TORCH_RULES``)."""
        if node.op == "output":
            raise _Fail("channels reach a graph output")
        what = _describe(node, self.mods)
        c = chan[hits[0]]
        if any(chan[h] != c for h in hits):
            raise _Fail(f"output reaches {what} twice with different layouts")
        u = _Use(node, hits, c, L0 * c.block, plan, chan, what)
        if node.op == "call_module":
            u.need_first()  # a module reads one tensor
        fam = family_of(node, self.mods)
        rule = TORCH_RULES.get(fam) if fam is not None else None
        if rule is None:
            stop = _STOPS.get(node.target) if node.op == "call_function" and _hashable(node.target) else None
            raise _Fail(f"output feeds {what}" + (f" ({stop})" if stop else ""))
        rule(self, u)


def _hashable(x) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


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
