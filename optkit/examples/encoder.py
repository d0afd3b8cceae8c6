"""A BERT-style transformer encoder written in plain PyTorch (embeddings + LayerNorm, multi-head self-attention
with an additive mask, GELU feed-forward, post-LayerNorm residuals), exported to ONNX with dynamic batch/seq.

It mirrors the graph structure of Hugging Face BERT so ORT's transformer fusions recognize it, without
depending on `transformers`. Weights are random (seeded): use it for speed and fidelity, not task accuracy.

    python -m optkit.examples.encoder --out examples/encoder --hidden 256 --layers 4
"""
from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import numpy as np


def build_encoder(vocab: int = 1000, hidden: int = 256, layers: int = 4, heads: int = 4, ffn: int = 1024,
                  max_positions: int = 512, seed: int = 0):
    import torch
    import torch.nn as nn

    class SelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads, self.head_dim = heads, hidden // heads
            self.query, self.key, self.value, self.out = (nn.Linear(hidden, hidden) for _ in range(4))
            self.norm = nn.LayerNorm(hidden, eps=1e-12)

        def split(self, x):
            b, t, _ = x.shape
            return x.view(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)

        def forward(self, x, mask):
            q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
            ctx = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
            ctx = ctx.view(ctx.shape[0], ctx.shape[1], -1)
            return self.norm(self.out(ctx) + x)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = SelfAttention()
            self.intermediate, self.output = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden)
            self.norm = nn.LayerNorm(hidden, eps=1e-12)

        def forward(self, x, mask):
            x = self.attention(x, mask)
            return self.norm(self.output(nn.functional.gelu(self.intermediate(x))) + x)

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.words, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(max_positions, hidden)
            self.token_types = nn.Embedding(2, hidden)
            self.norm = nn.LayerNorm(hidden, eps=1e-12)
            self.layers = nn.ModuleList(Layer() for _ in range(layers))

        def forward(self, input_ids, attention_mask):
            pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
            x = self.norm(self.words(input_ids) + self.positions(pos) + self.token_types(torch.zeros_like(input_ids)))
            mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, mask)
            return x

    torch.manual_seed(seed)
    return Encoder().eval()


def export(model, path: Path, seq: int = 128, opset: int = 17) -> None:
    import torch

    ids = torch.zeros(1, seq, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                                        "last_hidden_state": {0: "batch", 1: "seq"}},
                          opset_version=opset, dynamo=False)


def sample_feeds(n: int, seq: int = 128, vocab: int = 1000, seed: int = 1) -> dict[str, np.ndarray]:
    """Stacked feeds (n, 1, seq) of token ids with a random amount of right padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(n, 1, seq)).astype(np.int64)
    mask = np.ones((n, 1, seq), np.int64)
    for i in range(n):
        mask[i, 0, rng.integers(seq // 2, seq + 1):] = 0
    return {"input_ids": ids, "attention_mask": mask}


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples/encoder"))
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--samples", type=int, default=32)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "encoder.onnx"
    export(build_encoder(hidden=a.hidden, layers=a.layers, heads=a.heads, ffn=4 * a.hidden), path, a.seq)
    np.savez(a.out / "samples.npz", **sample_feeds(a.samples, a.seq))
    print(f"exported BERT-style encoder (hidden {a.hidden}, {a.layers} layers, {a.heads} heads, seq {a.seq}) -> {path}")
    return path


if __name__ == "__main__":
    main()
