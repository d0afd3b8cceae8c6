"""Structured pruning (``prune``) that physically shrinks tensors, and magnitude sparsification (``sparsify``).

``prune`` removes whole output channels / features, so every later kernel gets smaller and ONNX Runtime (or
any dense backend) actually runs faster:

* Conv (and ConvTranspose, group=1) output channels, chosen by the L1/L2 norm of each filter (times the
  scale of a BatchNormalization that directly follows, which is what the filter is worth once ORT fuses the
  two). The removed channels are followed through the graph and every consumer is rewritten to match: the
  Conv bias; BatchNormalization / InstanceNormalization parameters; channel-preserving elementwise ops
  (Relu, LeakyRelu, Clip, Sigmoid, HardSwish, Gelu, Erf, Tanh, ..., and Add/Sub/Mul/Div/PRelu/Pow with a
  constant that is scalar or per-channel: per-channel constants are sliced too; binary ops whose two inputs
  both carry the same channels, e.g. SiLU ``x * sigmoid(x)``); Max/Average/Global pools, Pad, Resize,
  Reduce* over other axes, Squeeze/Unsqueeze; depthwise Convs (their channels are sliced too); the next
  Conv's input channels (weight axis 1, group=1); Flatten / Reshape to [batch, C*H*W] (static H*W) feeding a
  Gemm/MatMul, whose weight rows are sliced in blocks (transB honoured).
* Gemm/MatMul output features (constant 2-D weight) followed, optionally through a bias Add and an
  activation (Relu, Gelu op, the erf-GELU subgraph torch exports, tanh-GELU, Sigmoid, Tanh, ...), by another
  MatMul/Gemm with a constant weight: MLP hidden layers and transformer FFN neurons.

Anything the tracer cannot follow safely (a residual Add of two activations, Concat, grouped convs, a graph
output, a Reshape that mixes channels with other dims, LayerNorm/Softmax over the channels, subgraphs, ...)
leaves that layer unpruned, and the notes say why. Attention-head pruning is not implemented.

With real samples (``--data``; synthetic ones are not used) two things use measured activations:
bias compensation (on by default) adds the mean contribution of every removed channel to the bias of the layer
that read it, so only its variance is lost (on the bundled digits CNN, 20% pruning kept 94% top-1 with it and
37% without); ``importance: activation`` ranks channels by that lost variance times the weights reading them
(82% vs 66% at 30%). Without fine-tuning, pruning costs accuracy: tune per-layer ratios with ``layers``.

Layer names are node names (the first output's name for unnamed nodes); :func:`prunable_layers` lists them.

``sparsify`` zeroes weights (unstructured magnitude or 2:4) without changing shapes: dense CPU kernels gain
nothing from that; it is for sparse-capable backends (TensorRT sparse tactics on Ampere+).

The package, by concern: ``graph`` (the graph index), ``channels`` + ``rules`` (channel propagation, one rule per
op family in ``rules.RULES``), ``layers`` (the prunable layers), ``importance`` (how many and which channels stay),
``compensate`` (bias compensation), ``rewrite`` (the graph rewrite), ``structured`` (the ``prune`` pass),
``sparsify`` (the ``sparsify`` pass). ``optkit.torch.prune`` shares the keep counts and importance.
"""
from __future__ import annotations

from .channels import _Chan, _expand, _Fail, _Plan  # noqa: F401
from .graph import _Graph  # noqa: F401
from .importance import _channel_stats, _keep_count, _round_keep, keep_counts  # noqa: F401
from .layers import _analyze, _importance, _Layer, prunable_layers  # noqa: F401
from .rewrite import _apply  # noqa: F401
from .rules import RULES, trace  # noqa: F401
from .sparsify import SPARSE_NOTE, Sparsify, SparsifyConfig  # noqa: F401
from .structured import Prune, PruneConfig  # noqa: F401

__all__ = ["Prune", "PruneConfig", "Sparsify", "SparsifyConfig", "prunable_layers", "keep_counts", "RULES", "SPARSE_NOTE"]
