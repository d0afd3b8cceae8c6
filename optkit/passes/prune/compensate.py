"""Bias compensation: the mean contribution of every removed channel, folded into the bias of the layer that
read it, so only the channel's variance is lost."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ...model import node_attr as _attr
from .channels import _expand
from .graph import _Graph

if TYPE_CHECKING:
    from .layers import _Layer


@dataclass
class _Comp:
    edits: dict = field(default_factory=dict)  # (node, input) -> [("add", delta) | ("replace", value)]
    new_inputs: list = field(default_factory=list)  # (node, input index, value): a bias the node did not have
    inserts: list = field(default_factory=list)  # (node, value): Add(value) inserted after a MatMul
    layers: int = 0


def _compensation(gr: _Graph, chosen: list[tuple[_Layer, np.ndarray]], means: dict) -> _Comp:
    """Per consumer of removed channels: the mean contribution those channels made, added to its bias.

    Removing channel c from a layer's input is replacing it by 0; replacing it by its mean instead keeps the
    first moment of every output, and that constant folds into the bias."""
    comp = _Comp()
    own = {layer.index: keep for layer, keep in chosen}  # a consumer may itself lose output channels

    def own_slice(i: int, v: np.ndarray) -> np.ndarray:
        return v[..., own[i]] if i in own else v

    for layer, keep in chosen:
        removed = np.setdiff1d(np.arange(layer.n), keep)
        for i, tensor, c in layer.plan.terminals:
            mu = means.get(tensor)
            if mu is None:
                continue
            rem = _expand(removed, c.block)
            node = gr.nodes[i]
            w = gr.const(node.input[1]).astype(np.float64)
            op = node.op_type
            if op == "Conv":
                delta = w.sum(axis=tuple(range(2, w.ndim)))[:, rem] @ mu[rem]
            elif op == "ConvTranspose":
                strides = _attr(node, "strides") or [1] * (w.ndim - 2)
                delta = mu[rem] @ w.sum(axis=tuple(range(2, w.ndim)))[rem] / float(np.prod(strides))
            elif op == "Gemm":
                wb = w.T if int(_attr(node, "transB", 0)) else w
                beta = float(_attr(node, "beta", 1.0))
                if beta == 0:
                    continue
                delta = float(_attr(node, "alpha", 1.0)) * (mu[rem] @ wb[rem]) / beta
            else:  # MatMul
                delta = mu[rem] @ w[rem]
            comp.layers += 1
            n_out = delta.shape[0]
            if op in ("Conv", "ConvTranspose", "Gemm") and len(node.input) > 2 and node.input[2]:
                b = gr.const(node.input[2])
                if b.ndim >= 1 and b.shape[-1] == n_out:
                    comp.edits.setdefault((i, 2), []).append(("add", delta))
                else:  # a scalar/row-broadcast Gemm C: write it out whole
                    comp.edits.setdefault((i, 2), []).append(("replace", own_slice(i, np.asarray(b + delta))))
            elif op in ("Conv", "ConvTranspose", "Gemm"):
                comp.new_inputs.append((i, 2, own_slice(i, delta)))
            else:
                cons = gr.consumers.get(node.output[0], [])
                add = gr.nodes[cons[0][0]] if len(cons) == 1 else None
                j = 1 - cons[0][1] if add is not None else None
                is_add = add is not None and add.op_type == "Add" and node.output[0] not in gr.outputs
                b = gr.const(add.input[j]) if is_add else None
                if b is not None and b.ndim >= 1 and b.shape[-1] == n_out:
                    comp.edits.setdefault((cons[0][0], j), []).append(("add", delta))
                else:
                    comp.inserts.append((i, own_slice(i, delta)))
    return comp
