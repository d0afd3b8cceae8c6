"""The pieces of optkit.torch.distill.fit: batches from an (X, y) pair or a DataLoader, top-1 on held-out data, the
optimizer and learning-rate schedule by name, and one epoch of training steps."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ._distill_features import _call, _first_tensor


def _as_tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


def _batches(data, batch_size: int, gen: torch.Generator | None, device):
    """(x, y) batches from an (X, y) pair (shuffled with ``gen``) or from any iterable of batches (a DataLoader)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], (tuple, list, dict)):
        x, y = _as_tensor(data[0]), _as_tensor(data[1])
        n = len(x)
        order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
        for i in range(0, n, batch_size):
            b = order[i:i + batch_size]
            if len(b) == 1 and n > 1:  # a lone last sample breaks BatchNorm in train mode; skip it
                continue
            yield x[b].to(device), y[b].to(device)
        return
    for batch in data:
        if isinstance(batch, dict):
            yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}, None
        elif isinstance(batch, (tuple, list)):
            xb = batch[0].to(device) if isinstance(batch[0], torch.Tensor) else batch[0]
            yb = batch[1].to(device) if len(batch) > 1 and isinstance(batch[1], torch.Tensor) else None
            yield xb, yb
        else:
            yield batch.to(device), None


def _top1(model: nn.Module, data, batch_size: int, device) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    try:
        with torch.no_grad():
            for xb, yb in _batches(data, max(batch_size, 256), None, device):
                pred = _first_tensor(_call(model, xb)).argmax(-1)
                correct += int((pred == yb).sum())
                total += int(yb.numel())
    finally:
        model.train(was)
    return correct / max(total, 1)


def _optimizer(name, params, lr: float, weight_decay: float):
    if callable(name) and not isinstance(name, str):
        try:
            return name(params, lr=lr, weight_decay=weight_decay)
        except TypeError:
            return name(params, lr=lr)
    name = str(name).lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw', 'sgd' or a torch.optim class, got {name!r}")


def _scheduler(schedule, opt, train_data, batch_size: int, epochs: int):
    """None (constant lr) or a per-step cosine schedule to 0 over every epoch."""
    if schedule == "cosine":
        per_epoch = None
        if isinstance(train_data, (tuple, list)) and len(train_data) == 2:
            n = len(train_data[0])
            per_epoch = n // batch_size + (1 if n % batch_size > 1 else 0)
        else:
            try:
                per_epoch = len(train_data)
            except TypeError:
                raise ValueError("schedule='cosine' needs a train_data with a length") from None
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * per_epoch))
    if schedule not in (None, "constant"):
        raise ValueError(f"schedule must be None, 'constant' or 'cosine', got {schedule!r}")
    return None


def _epoch(student: nn.Module, distiller, train_data, batch_size: int, gen, device, opt, sched, task_loss):
    """One pass over train_data: (sums of the batch losses by part, number of steps)."""
    sums = {k: 0.0 for k in ("loss", "kd", "task", "feature")}
    steps = 0
    for xb, yb in _batches(train_data, batch_size, gen, device):
        if distiller is not None:
            loss = distiller.loss(xb, yb)
            parts = distiller._last
        else:
            if yb is None:
                raise ValueError("train_data has no targets and there is no teacher to distill from")
            loss = task_loss(_first_tensor(_call(student, xb)), yb)
            parts = {"task": loss.detach(), "kd": 0.0, "feature": 0.0}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        sums["loss"] += float(loss.detach())
        for k in ("kd", "task", "feature"):
            sums[k] += float(parts[k])
        steps += 1
    return sums, steps
