"""optkit.torch.distill: the KD loss against a hand computation, the Distiller's feature hooks and projections,
the frozen teacher, and the minimal fit() loop, on tiny models."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from optkit.torch import Distiller, distill_loss, fit  # noqa: E402

torch.set_num_threads(1)


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _logits(seed=0, n=6, c=5):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    t = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


def _hand(s, t, y, T, alpha):
    s, t, y = s.numpy(), t.numpy(), y.numpy()
    p, q = _softmax(t / T), _softmax(s / T)                       # teacher p, student q
    kl_pq = float((p * (np.log(p) - np.log(q))).sum(1).mean())   # KL(p || q), averaged over the batch
    kl_qp = float((q * (np.log(q) - np.log(p))).sum(1).mean())
    ce = float(-np.log(_softmax(s)[np.arange(len(y)), y]).mean())
    return kl_pq, kl_qp, ce


@pytest.mark.parametrize("T,alpha", [(4.0, 0.7), (2.5, 0.3), (1.0, 0.9)])
def test_loss_matches_hand_computation(T, alpha):
    s, t, y = _logits()
    kl_pq, kl_qp, ce = _hand(s, t, y, T, alpha)
    got = float(distill_loss(s, t, y, T=T, alpha=alpha))
    assert got == pytest.approx(alpha * T * T * kl_pq + (1 - alpha) * ce, rel=1e-5)
    # the KL direction matters: KL(student || teacher) would give a different number
    assert abs(kl_pq - kl_qp) > 1e-3
    assert got != pytest.approx(alpha * T * T * kl_qp + (1 - alpha) * ce, rel=1e-3)


def test_t_squared_scaling_and_pure_kd():
    s, t, y = _logits(1)
    for T in (1.0, 3.0, 8.0):
        kl_pq, _, _ = _hand(s, t, y, T, 1.0)
        assert float(distill_loss(s, t, T=T)) == pytest.approx(T * T * kl_pq, rel=1e-5)  # targets None: pure KD
        assert float(distill_loss(s, t, y, T=T, alpha=1.0)) == pytest.approx(T * T * kl_pq, rel=1e-5)
    # gradient of T^2 * KL wrt the student logits is T * (q - p) / N: the T^2 factor keeps it O(1/T) not O(1/T^2)
    T = 4.0
    s = s.clone().requires_grad_(True)
    distill_loss(s, t, T=T).backward()
    p, q = _softmax(t.numpy() / T), _softmax(s.detach().numpy() / T)
    np.testing.assert_allclose(s.grad.numpy(), T * (q - p) / len(p), rtol=1e-6, atol=1e-12)
    # identical logits: zero KD loss; the teacher's logits never get a gradient
    tt = t.clone().requires_grad_(True)
    assert float(distill_loss(tt.detach(), tt, T=T)) == pytest.approx(0.0, abs=1e-10)
    distill_loss(s, tt, T=T).backward()
    assert tt.grad is None


def test_alpha_zero_is_the_task_loss():
    s, t, y = _logits(2)
    assert torch.equal(distill_loss(s, t, y, alpha=0.0), F.cross_entropy(s, y))
    # the teacher is not even looked at
    assert torch.equal(distill_loss(s, torch.full_like(t, float("nan")), y, alpha=0.0), F.cross_entropy(s, y))
    mse = lambda a, b: F.mse_loss(a, F.one_hot(b, a.shape[-1]).to(a.dtype))  # noqa: E731
    assert torch.equal(distill_loss(s, t, y, alpha=0.0, task_loss=mse), mse(s, y))


def test_bad_hyperparameters():
    s, t, y = _logits()
    for kw in ({"T": 0.0}, {"T": -1.0}, {"alpha": 1.5}, {"alpha": -0.1}):
        with pytest.raises(ValueError):
            distill_loss(s, t, y, **kw)
    with pytest.raises(ValueError, match="shape"):
        distill_loss(s, t[:, :3])


# ---------------------------------------------------------------------------------------------------------------
# Distiller
# ---------------------------------------------------------------------------------------------------------------


def cnn(width: int, stride: int = 1, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1, stride=stride), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_feature_hooks_projection_and_gradients():
    teacher, student = cnn(16, seed=0), cnn(8, seed=1)
    seen = []

    def feat_loss(s, t):
        seen.append((tuple(s.shape), tuple(t.shape), s.requires_grad, t.requires_grad))
        return F.mse_loss(s, t)

    d = Distiller(teacher, student, T=4.0, alpha=0.5, features={"3": "3", "1": "1"}, feature_loss=feat_loss)
    # dims differ (8 vs 16 channels): 1x1-conv projections exist right after construction
    assert set(d.projections) == {"3", "1"}
    proj = d.projections["3"]
    assert isinstance(proj, nn.Conv2d) and proj.kernel_size == (1, 1) and (proj.in_channels, proj.out_channels) == (8, 16)
    tp = d.trainable_parameters()
    assert any(p is proj.weight for p in tp) and all(any(p is q for p in tp) for q in student.parameters())
    assert not any(p is q for p in tp for q in teacher.parameters())

    x, y = _batch()
    loss = d.loss(x, y)
    assert seen == [((8, 16, 8, 8), (8, 16, 8, 8), True, False)] * 2  # projected student vs detached teacher
    assert set(d.last) == {"kd", "task", "feature", "total"} and all(isinstance(v, float) for v in d.last.values())
    assert d.last["total"] == pytest.approx(0.5 * d.last["kd"] + 0.5 * d.last["task"] + d.last["feature"], rel=1e-5)
    assert d.last["feature"] > 0
    loss.backward()
    assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student[0].parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_spatial_mismatch_is_pooled_and_lazy_projection_warns():
    teacher, student = cnn(16, seed=0), cnn(8, stride=2, seed=1)  # student's layer-3 map is 4x4, teacher's 8x8
    x, y = _batch()
    # "4" is a ReLU: its width can't be read off the module, so without example_inputs it is made on first use
    d = Distiller(teacher, student, features={"4": "4"})
    assert len(d.projections) == 0
    with pytest.warns(RuntimeWarning, match="example_inputs"):
        d.loss(x, y).backward()
    assert d.projections["4"].weight.grad is not None
    # with example_inputs it exists up front, no warning
    d2 = Distiller(teacher, cnn(8, stride=2, seed=1), features={"4": "4"}, example_inputs=(x[:2],))
    assert isinstance(d2.projections["4"], nn.Conv2d)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d2.loss(x, y)
    assert d2.last["feature"] > 0


def test_same_dims_no_projection_and_linear_projection_for_sequences():
    teacher, student = cnn(8, seed=0), cnn(8, seed=1)
    d = Distiller(teacher, student, features={"3": "3"})
    assert len(d.projections) == 0
    d.loss(*_batch())

    class Seq(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.emb = nn.Linear(6, dim)
            self.mix = nn.Linear(dim, dim)
            self.head = nn.Linear(dim, 3)

        def forward(self, x):  # x [batch, seq, 6] -> logits [batch, 3]
            return self.head(torch.relu(self.mix(self.emb(x))).mean(1))

    torch.manual_seed(0)
    t, s = Seq(12), Seq(5)
    d = Distiller(t, s, features={"mix": "mix"})
    assert isinstance(d.projections["mix"], nn.Linear) and d.projections["mix"].weight.shape == (12, 5)
    loss = d.loss(torch.randn(4, 7, 6), torch.randint(0, 3, (4,)))
    loss.backward()
    assert d.projections["mix"].weight.grad.abs().sum() > 0


def test_teacher_unchanged_after_training_steps():
    teacher, student = cnn(16, seed=0), cnn(8, seed=1)
    before = copy.deepcopy(teacher.state_dict())
    d = Distiller(teacher, student, features={"3": "3"})
    d.train()  # must not flip the teacher into train mode (its BatchNorm stats would move)
    assert not teacher.training and student.training
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1)
    for i in range(3):
        loss = d.loss(*_batch(seed=i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(cnn(8, seed=1)[0].weight, student[0].weight)  # the student did move


def test_unknown_module_names():
    teacher, student = cnn(16), cnn(8)
    with pytest.raises(ValueError, match=r"student has no module named 'conv3'") as e:
        Distiller(teacher, student, features={"conv3": "3"})
    assert "near matches" in str(e.value) or "some names" in str(e.value)
    with pytest.raises(ValueError, match=r"teacher has no module named '33'.*near matches: 3"):
        Distiller(teacher, student, features={"3": "33"})
    with pytest.raises(ValueError, match="feature_loss"):
        Distiller(teacher, student, feature_loss="huber-ish")


def test_remove_detaches_hooks():
    teacher, student = cnn(16), cnn(8)
    d = Distiller(teacher, student, features={"3": "3", "0": "0"})
    assert len(student[3]._forward_hooks) == 1 and len(teacher[0]._forward_hooks) == 1
    d.remove()
    d.remove()  # idempotent
    assert all(len(m._forward_hooks) == 0 for m in list(student.modules()) + list(teacher.modules()))
    with pytest.raises(RuntimeError, match="remove"):
        d.loss(*_batch())
    with Distiller(teacher, student, features={"3": "3"}):
        assert len(student[3]._forward_hooks) == 1
    assert len(student[3]._forward_hooks) == 0


# ---------------------------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------------------------


def _blobs(n=256, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centers = np.array([[2.0, 0, 0, 0], [-2.0, 2.0, 0, 0], [0, -2.0, 2.0, 0]], np.float32)
    x = centers[y] + rng.standard_normal((n, 4)).astype(np.float32) * 0.5
    return x.astype(np.float32), y.astype(np.int64)


def mlp(hidden, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def test_fit_reduces_loss_and_distills():
    (x, y), (xe, ye) = _blobs(256, 0), _blobs(128, 1)
    teacher = mlp(32, 0)
    h0 = fit(teacher, (x, y), epochs=8, lr=1e-2, eval_data=(xe, ye))
    assert h0["loss"][-1] < 0.5 * h0["loss"][0] and h0["eval_top1"][-1] > 0.95
    assert h0["kd"] == [0.0] * 8 and len(h0["eval_top1"]) == 8

    student = mlp(8, 1)
    rng_state = torch.get_rng_state()
    logs = []
    h = fit(student, (torch.tensor(x), torch.tensor(y)), teacher=teacher, epochs=8, lr=3e-2, features={"1": "1"},
            eval_data=(xe, ye), log=logs.append, schedule="cosine")
    assert torch.equal(rng_state, torch.get_rng_state())  # fit forks the RNG
    assert h["loss"][-1] < 0.5 * h["loss"][0] and h["eval_top1"][-1] > 0.95
    assert h["kd"][-1] < h["kd"][0] and h["feature"][-1] < h["feature"][0]
    assert len(logs) == 8 and "eval top-1" in logs[-1]
    assert all(len(m._forward_hooks) == 0 for m in student.modules())  # fit removes its hooks

    # same seed, same data -> same history (deterministic)
    h2 = fit(mlp(8, 1), (x, y), teacher=teacher, epochs=2, lr=1e-2, seed=3)
    h3 = fit(mlp(8, 1), (x, y), teacher=teacher, epochs=2, lr=1e-2, seed=3)
    assert h2["loss"] == h3["loss"]


def test_fit_with_dataloader():
    x, y = _blobs(128, 0)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=32)
    student = mlp(8, 2)
    h = fit(student, loader, teacher=mlp(16, 3), epochs=3, lr=1e-2, alpha=0.5, optimizer="sgd")
    assert len(h["loss"]) == 3 and all(np.isfinite(h["loss"]))
    with pytest.raises(ValueError, match="optimizer"):
        fit(student, loader, epochs=1, optimizer="lion")
