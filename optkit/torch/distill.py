"""Knowledge distillation for torch modules: a loss, a drop-in ``Distiller`` and a minimal ``fit()`` loop.

Inside your own training loop::

    distiller = Distiller(teacher, student, T=4.0, alpha=0.7,
                          features={"layer3": "layer3"}, example_inputs=(x[:2],))
    opt = torch.optim.Adam(distiller.trainable_parameters(), lr=1e-3)   # student + projections
    for xb, yb in loader:
        loss = distiller.loss(xb, yb)          # teacher under no_grad, student with grad
        opt.zero_grad(); loss.backward(); opt.step()
    distiller.remove()                         # detach the forward hooks

The total loss is ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * task_loss(s, y)``
(Hinton et al. 2015; ``T^2`` keeps the soft-target gradients on the scale of the hard-target ones) plus
``feature_weight`` times the mean feature-matching loss over the ``features`` pairs (FitNets-style hints).

Feature matching: ``features`` maps student module names to teacher module names (as in ``named_modules()``).
Forward hooks record each module's output (the last call's, the first tensor of a tuple). When the student's
feature dim differs from the teacher's a learnable projection maps student -> teacher: a 1x1 conv on the channel
dim for 4-D / 5-D outputs, a ``Linear`` on the last dim for 2-D / 3-D outputs. Projections are registered under
``distiller.projections`` and returned by ``trainable_parameters()``. They are created at construction when the
dims can be read off the modules (Conv2d/3d, BatchNorm2d/3d, Linear, LayerNorm, Embedding) or found by running
``example_inputs`` once; otherwise on the first ``loss()`` call, with a warning, because an optimizer built
before then would not see them. A spatial (or sequence-length) mismatch is resolved by adaptive average pooling
the larger map to the smaller one's size.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._distill_features import (_FEATURE_LOSSES, _call, _first_tensor, _layout, _match_sizes,  # noqa: F401
                                _module, _pool_to, _projection, _static_dim)
from ._fit import _as_tensor, _batches, _epoch, _optimizer, _scheduler, _top1  # noqa: F401  (re-exported)

__all__ = ["distill_loss", "Distiller", "fit"]


# ---------------------------------------------------------------------------------------------------------------
# the loss
# ---------------------------------------------------------------------------------------------------------------


def _kd_term(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)), averaged over rows; the class dim is the last one."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    c = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, c), teacher_logits.detach().reshape(-1, c)
    if s.dtype in (torch.float16, torch.bfloat16):  # half-precision logits: the softmax/KL in float32
        s, t = s.float(), t.float()
    s, t = F.log_softmax(s / T, dim=-1), F.log_softmax(t.to(s.dtype) / T, dim=-1)
    # kl_div(input=log q, target=log p, log_target=True) = sum p * (log p - log q) = KL(p || q), p = teacher
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * (T * T)


def _check(T: float, alpha: float) -> None:
    if not (T > 0 and math.isfinite(T)):
        raise ValueError(f"temperature T must be a positive number, got {T!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")


def _components(student_logits, teacher_logits, targets, T, alpha, task_loss):
    """(total, kd, task) with kd = T^2 KL (unweighted) and task = task_loss (unweighted; None without targets)."""
    _check(T, alpha)
    if targets is None:  # pure KD: only the soft-target term, at full weight
        kd = _kd_term(student_logits, teacher_logits, T)
        return kd, kd, None
    task = task_loss(student_logits, targets)
    if alpha == 0.0:
        return task, None, task
    kd = _kd_term(student_logits, teacher_logits, T)
    return alpha * kd + (1.0 - alpha) * task, kd, task


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None = None, *,
                 T: float = 4.0, alpha: float = 0.7, task_loss: Callable = F.cross_entropy) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * task_loss(s, targets)``.

    The KL is averaged over rows (``batchmean``); logits of more than 2 dims (e.g. ``[batch, seq, vocab]``)
    are treated as rows of their last (class) dim. The teacher's logits are detached. With ``targets=None``
    the result is the pure KD term ``T^2 * KL`` (weight 1, ``alpha`` unused); ``alpha=0`` gives exactly
    ``task_loss(s, targets)`` and ``alpha=1`` only the KD term.
    """
    return _components(student_logits, teacher_logits, targets, T, alpha, task_loss)[0]


# ---------------------------------------------------------------------------------------------------------------
# Distiller
# ---------------------------------------------------------------------------------------------------------------


class Distiller(nn.Module):
    """Teacher -> student distillation as a loss object for your own loop (see the module docstring).

    ``teacher`` is frozen (``requires_grad_(False)``), kept in eval mode and run under ``no_grad``.
    ``features``: ``{student_module_name: teacher_module_name}``; unknown names raise ``ValueError``.
    ``feature_loss``: "mse" (default), "l1", "smooth_l1", "cosine" or a callable ``(student_feat, teacher_feat)``.
    ``example_inputs``: optional inputs (a tensor, tuple or dict) run once through both models at construction
    so every projection exists before you build the optimizer.
    After each ``loss()`` call ``distiller.last`` holds the components as floats:
    ``{"kd", "task", "feature", "total"}`` (unweighted kd/task/feature; 0.0 for a term that is off).
    """

    def __init__(self, teacher: nn.Module, student: nn.Module, *, T: float = 4.0, alpha: float = 0.7,
                 features: dict[str, str] | None = None, feature_weight: float = 1.0,
                 feature_loss: str | Callable = "mse", task_loss: Callable = F.cross_entropy, example_inputs=None):
        super().__init__()
        _check(T, alpha)
        if teacher is student:
            raise ValueError("teacher and student are the same module; pass a copy as the student")
        if isinstance(feature_loss, str):
            if feature_loss not in _FEATURE_LOSSES:
                raise ValueError(f"feature_loss must be one of {sorted(_FEATURE_LOSSES)} or a callable, got {feature_loss!r}")
            feature_loss = _FEATURE_LOSSES[feature_loss]
        self.T, self.alpha, self.feature_weight = float(T), float(alpha), float(feature_weight)
        self.task_loss, self.feature_loss = task_loss, feature_loss
        self.teacher, self.student = teacher, student
        teacher.requires_grad_(False)
        teacher.eval()
        self.features = dict(features or {})
        self.projections = nn.ModuleDict()
        self._handles: list = []
        self._s_feats: dict[str, torch.Tensor] = {}
        self._t_feats: dict[str, torch.Tensor] = {}
        self._last: dict[str, torch.Tensor | float] = {}
        pairs = [(sn, _module(student, sn, "student"), tn, _module(teacher, tn, "teacher"))
                 for sn, tn in self.features.items()]
        for sn, smod, tn, tmod in pairs:
            self._handles.append(smod.register_forward_hook(self._recorder(self._s_feats, sn, detach=False)))
            self._handles.append(tmod.register_forward_hook(self._recorder(self._t_feats, sn, detach=True)))
            sd, td = _static_dim(smod), _static_dim(tmod)
            if sd and td and sd[0] == td[0] and sd[1] != td[1]:
                self._add_projection(sn, sd[0], sd[1], td[1], smod)
        if example_inputs is not None and self.features:
            self._probe(example_inputs)

    # -- hooks ---------------------------------------------------------------------------------------------------

    @staticmethod
    def _recorder(store: dict, key: str, detach: bool):
        def hook(_module, _inputs, output):
            t = _first_tensor(output)
            if t is not None:
                store[key] = t.detach() if detach else t
        return hook

    @staticmethod
    def _key(student_name: str) -> str:
        return student_name.replace(".", "__") or "_root"

    def _add_projection(self, sn: str, kind: str, cin: int, cout: int, like: nn.Module | torch.Tensor):
        proj = _projection(kind, cin, cout)
        ref = like if isinstance(like, torch.Tensor) else next(iter(like.parameters()), None)
        if ref is not None:
            proj = proj.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        self.projections[self._key(sn)] = proj
        return proj

    def _probe(self, example_inputs) -> None:
        was = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                _call(self.teacher, example_inputs)
                _call(self.student, example_inputs)
                for sn in self.features:
                    self._ensure_projection(sn, warn=False)
        finally:
            self.student.train(was)
            self._s_feats.clear()
            self._t_feats.clear()

    def _ensure_projection(self, sn: str, warn: bool) -> nn.Module | None:
        key = self._key(sn)
        if key in self.projections:
            return self.projections[key]
        s, t = self._s_feats.get(sn), self._t_feats.get(sn)
        if s is None or t is None:
            missing = "student" if s is None else "teacher"
            raise RuntimeError(f"feature pair {sn!r} -> {self.features[sn]!r}: the {missing} module produced no "
                               f"tensor output in this forward pass")
        (ks, cs), (kt, ct) = _layout(s), _layout(t)
        if ks != kt:
            raise ValueError(f"feature pair {sn!r} -> {self.features[sn]!r}: student output {tuple(s.shape)} and "
                             f"teacher output {tuple(t.shape)} have different layouts")
        if cs == ct:
            return None
        if warn:
            warnings.warn(f"Distiller: created a {cs}->{ct} projection for feature {sn!r} on the first loss() call; "
                          "an optimizer built earlier does not train it. Pass example_inputs= to Distiller, or "
                          "build the optimizer from trainable_parameters() after the first call.",
                          RuntimeWarning, stacklevel=3)
        return self._add_projection(sn, ks, cs, ct, s)

    def remove(self) -> None:
        """Remove every forward hook this distiller registered (idempotent)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._s_feats.clear()
        self._t_feats.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    # -- training API --------------------------------------------------------------------------------------------

    def train(self, mode: bool = True):
        """Sets the student (and projections) to train/eval mode; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The student's trainable parameters followed by the projections' (what the optimizer should get)."""
        return [p for p in self.student.parameters() if p.requires_grad] + list(self.projections.parameters())

    def _feature_term(self):
        if not self.features:
            return None
        terms = []
        for sn in self.features:
            proj = self._ensure_projection(sn, warn=True)
            s, t = self._s_feats[sn], self._t_feats[sn]
            if proj is not None:
                s = proj(s)
            s, t = _match_sizes(s, t)
            if s.shape != t.shape:
                raise ValueError(f"feature pair {sn!r} -> {self.features[sn]!r}: shapes {tuple(s.shape)} and "
                                 f"{tuple(t.shape)} still differ after projection and pooling")
            if s.dtype in (torch.float16, torch.bfloat16):
                s = s.float()
            terms.append(self.feature_loss(s, t.to(s.dtype)))
        return torch.stack(terms).mean()

    def loss(self, inputs, targets=None) -> torch.Tensor:
        """Runs the teacher (no_grad) and the student on ``inputs`` and returns the total loss (a scalar with grad).

        ``inputs``: a tensor, a tuple (``model(*inputs)``) or a dict (``model(**inputs)``). ``targets=None``
        gives pure distillation (soft targets + features, no task loss)."""
        if self.features and not self._handles:
            raise RuntimeError("Distiller.remove() was called: the feature hooks are gone")
        self._s_feats.clear()
        self._t_feats.clear()
        if self.teacher.training:
            self.teacher.eval()
        need_teacher = bool(self.features) or targets is None or self.alpha > 0.0
        t_logits = None
        if need_teacher:
            with torch.no_grad():
                t_logits = _first_tensor(_call(self.teacher, inputs))
        s_logits = _first_tensor(_call(self.student, inputs))
        # alpha == 0 with targets: _components returns the task loss without touching the (absent) teacher logits
        total, kd, task = _components(s_logits, t_logits, targets, self.T, self.alpha, self.task_loss)
        feat = self._feature_term()
        if feat is not None:
            total = total + self.feature_weight * feat
        zero = 0.0
        self._last = {"kd": kd.detach() if kd is not None else zero, "task": task.detach() if task is not None else zero,
                      "feature": feat.detach() if feat is not None else zero, "total": total.detach()}
        self._s_feats.clear()
        self._t_feats.clear()
        return total

    def forward(self, inputs, targets=None) -> torch.Tensor:
        return self.loss(inputs, targets)

    @property
    def last(self) -> dict[str, float]:
        """The last ``loss()`` call's components as floats (converted lazily, so the loop itself never syncs)."""
        return {k: float(v) for k, v in self._last.items()}


# ---------------------------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------------------------


def fit(student: nn.Module, train_data, *, teacher: nn.Module | None = None, epochs: int = 10, lr: float = 1e-3,
        T: float = 4.0, alpha: float = 0.7, features: dict[str, str] | None = None, feature_weight: float = 1.0,
        batch_size: int = 64, optimizer="adam", weight_decay: float = 0.0, schedule: str | None = None,
        task_loss: Callable = F.cross_entropy, seed: int = 0, eval_data=None,
        log: Callable[[str], None] | None = None) -> dict:
    """A minimal training loop: fine-tune ``student`` in place, distilling from ``teacher`` when one is given.

    ``train_data``: an ``(X, y)`` pair of tensors/arrays (shuffled each epoch with ``seed``) or an iterable of
    ``(x, y)`` batches such as a DataLoader. ``teacher=None`` is plain ``task_loss`` fine-tuning (the baseline
    to compare distillation against). ``optimizer``: "adam", "adamw", "sgd" (momentum 0.9) or a torch.optim class;
    ``schedule``: None (constant lr) or "cosine" (per step, to 0). ``eval_data``: an ``(X, y)`` pair scored by
    top-1 after every epoch. ``log``: e.g. ``print``.

    Returns ``{"loss": [...], "kd": [...], "task": [...], "feature": [...], "eval_top1": [...], "seconds": s}``:
    per-epoch means of the batch losses (``eval_top1`` only with ``eval_data``). The student's train/eval mode
    is restored at the end; the global torch RNG state is left as it was.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    device = next(iter(student.parameters())).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        distiller, params = _trainee(student, teacher, train_data, features, batch_size, device, T=T, alpha=alpha,
                                     feature_weight=feature_weight, task_loss=task_loss)
        opt = _optimizer(optimizer, params, lr, weight_decay)
        sched = _scheduler(schedule, opt, train_data, batch_size, epochs)
        hist: dict[str, list] = {"loss": [], "kd": [], "task": [], "feature": []}
        if eval_data is not None:
            hist["eval_top1"] = []
        was = student.training
        t0 = time.perf_counter()
        try:
            for ep in range(epochs):
                student.train()
                sums, steps = _epoch(student, distiller, train_data, batch_size, gen, device, opt, sched, task_loss)
                for k, v in sums.items():
                    hist[k].append(v / max(steps, 1))
                msg = f"epoch {ep + 1}/{epochs}: loss {hist['loss'][-1]:.4f}"
                if eval_data is not None:
                    hist["eval_top1"].append(_top1(student, eval_data, batch_size, device))
                    msg += f", eval top-1 {hist['eval_top1'][-1]:.2%}"
                if log is not None:
                    log(msg)
        finally:
            if distiller is not None:
                distiller.remove()
            student.train(was)
        hist["seconds"] = round(time.perf_counter() - t0, 3)
        hist["epochs"] = epochs
    return hist


def _trainee(student, teacher, train_data, features, batch_size: int, device, **kw):
    """(the Distiller or None, the parameters to train): with a teacher, the student's and the projections'."""
    if teacher is not None:
        example = None
        if features:  # one batch up front so every projection exists before the optimizer is built
            example = next(iter(_batches(train_data, min(batch_size, 8), None, device)))[0]
        distiller = Distiller(teacher, student, features=features, example_inputs=example, **kw)
        return distiller, distiller.trainable_parameters()
    if features:
        raise ValueError("features= needs a teacher")
    return None, [p for p in student.parameters() if p.requires_grad]
