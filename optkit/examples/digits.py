"""The bundled example: a small CNN trained in seconds on scikit-learn's digits (real labeled 8x8 scans,
upsampled to 32x32), exported to ONNX with calibration and test data.

    python -m optkit.examples.digits --out examples/digits

writes ``digits_cnn.onnx`` (dynamic batch), ``calib.npz`` (128 training images + labels, stacked feeds of
batch 1), ``test.npz`` (the held-out images + labels) and ``train.json`` (accuracy, timing). Needs torch and
scikit-learn (``pip install 'optkit[dev]'``).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np


def load_digits_32(seed: int = 0):
    """Digits as float32 (N, 1, 32, 32) in [0, 1], split 80/20 with a fixed seed."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).numpy()
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(y))
    cut = int(0.8 * len(y))
    return (x[idx[:cut]], y[idx[:cut]]), (x[idx[cut:]], y[idx[cut:]])


def build_cnn():
    import torch.nn as nn

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(1, 32), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), *block(128, 128),
                         nn.MaxPool2d(2), *block(128, 256), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 10))


def train(epochs: int = 4, seed: int = 0, threads: int | None = None):
    import torch

    torch.manual_seed(seed)
    if threads:
        torch.set_num_threads(threads)
    (xtr, ytr), (xte, yte) = load_digits_32(seed)
    model = build_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (-(-len(ytr) // 64)))
    xt, yt = torch.tensor(xtr), torch.tensor(ytr)
    t0 = time.perf_counter()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(yt))
        for i in range(0, len(yt), 64):
            b = perm[i:i + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[b]), yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.tensor(xte)).argmax(1).numpy() == yte).mean())
    return model, {"epochs": epochs, "train_seconds": round(seconds, 1), "test_top1_torch": acc,
                   "train_images": int(len(ytr)), "test_images": int(len(yte))}, (xtr, ytr), (xte, yte)


def export(model, path: Path, opset: int = 17) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 1, 32, 32),), str(path), input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, dynamo=False)


def require_extras() -> None:
    """The example trains with torch and loads scikit-learn's digits: say how to get them, once, before any work."""
    import importlib.util

    def absent(mod: str) -> bool:
        try:
            return importlib.util.find_spec(mod) is None
        except (ImportError, ValueError):
            return True

    missing = [pkg for mod, pkg in (("torch", "torch"), ("sklearn", "scikit-learn")) if absent(mod)]
    if missing:
        raise SystemExit(f"error: the digits example needs {' and '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
                         "not installed; pip install 'optkit[dev]' (or: pip install torch scikit-learn)")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("examples/digits"))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--calib", type=int, default=128, help="calibration images (from the training split)")
    a = ap.parse_args(argv)
    require_extras()  # before any work: one line with the pip install, not a ModuleNotFoundError traceback
    a.out.mkdir(parents=True, exist_ok=True)
    model, info, (xtr, ytr), (xte, yte) = train(a.epochs)
    onnx_path = a.out / "digits_cnn.onnx"
    export(model, onnx_path, a.opset)
    # stacked feeds: one extra leading axis over the model's (batch, 1, 32, 32) input
    np.savez(a.out / "calib.npz", input=xtr[: a.calib, None], labels=ytr[: a.calib, None])
    np.savez(a.out / "test.npz", input=xte[:, None], labels=yte[:, None])
    info.update({"model": str(onnx_path), "opset": a.opset, "calib": str(a.out / "calib.npz"), "test": str(a.out / "test.npz")})
    (a.out / "train.json").write_text(json.dumps(info, indent=2))
    print(f"trained digits CNN in {info['train_seconds']} s: test top-1 {info['test_top1_torch']:.2%} "
          f"({info['test_images']} held-out images) -> {onnx_path}")
    return info


if __name__ == "__main__":
    main()
