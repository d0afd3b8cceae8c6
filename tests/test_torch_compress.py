"""optkit.torch.prune / lowrank / count_flops on tiny torch models, and their consistency with the ONNX passes."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import onnx  # noqa: E402
from torch import nn  # noqa: E402

from optkit.data import Samples  # noqa: E402
from optkit.evaluate import Evaluator  # noqa: E402
from optkit.model import flops as onnx_flops  # noqa: E402
from optkit.passes import Context  # noqa: E402
from optkit.passes.lowrank import LowRank  # noqa: E402
from optkit.passes.prune import Prune, _keep_count, PruneConfig  # noqa: E402
from optkit.pipeline import run_model  # noqa: E402
from optkit.torch import count_flops, lowrank, prune  # noqa: E402

torch.set_num_threads(1)
X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking BatchNorm statistics with widely spread scales (so BN-folding changes filter rankings)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 3 + 0.05)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 4 + 0.1)
    return model.eval()


def cnn(bn: bool = True, seed: int = 0) -> nn.Sequential:
    """Conv-[BN]-ReLU-Conv-[BN]-ReLU-MaxPool-Flatten-Linear-ReLU-Linear on [N, 3, 8, 8]."""
    torch.manual_seed(seed)

    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1)] + ([nn.BatchNorm2d(o)] if bn else []) + [nn.ReLU()]

    m = nn.Sequential(*block(3, 16), *block(16, 16), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 32),
                      nn.ReLU(), nn.Linear(32, 10))
    return _randomize_bn(m, seed)


class MobileBlock(nn.Module):
    """Conv-BN-SiLU, depthwise Conv-BN-ReLU6, 1x1 Conv-Hardswish, mean over H,W, Linear: pass-through rules."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU6())
        self.pw = nn.Conv2d(16, 24, 1)
        self.act = nn.Hardswish()
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        y = self.act(self.pw(self.dw(self.stem(x))))
        return self.fc(y.mean((2, 3)))


class ViewNet(nn.Module):
    """Conv-ReLU-MaxPool, ``x.view(x.size(0), -1)`` into Linear-GELU-Linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.fc1 = nn.Linear(12 * 2 * 2, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        y = self.pool(torch.relu(self.conv(x)))
        y = y.view(y.size(0), -1)
        return self.fc2(nn.functional.gelu(self.fc1(y)))


class Scaled(nn.Module):
    """Conv * per-channel parameter + scalar, per-channel PReLU, [F.pad], Conv, amax over H,W, Linear."""

    def __init__(self, pad: bool = False):
        super().__init__()
        self.pad = pad
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gain = nn.Parameter(torch.randn(1, 16, 1, 1))
        self.prelu = nn.PReLU(16)
        self.conv2 = nn.Conv2d(16, 12, 3, padding=0 if pad else 1)
        self.fc = nn.Linear(12, 4)
        with torch.no_grad():
            self.prelu.weight.uniform_(-1, 1)

    def forward(self, x):
        y = self.prelu(self.conv(x) * self.gain + 0.5)
        if self.pad:
            y = nn.functional.pad(y, (1, 1, 1, 1))
        return self.fc(self.conv2(y).amax(dim=(2, 3)))


class Tokens(nn.Module):
    """[N, 64, 3] tokens: Linear-GELU-Linear (FFN) -> LayerNorm -> Linear -> x*sigmoid(x) -> Linear, mean."""

    def __init__(self):
        super().__init__()
        self.up, self.down, self.ln = nn.Linear(3, 32), nn.Linear(32, 8), nn.LayerNorm(8)
        self.c, self.d = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x):
        t = x.flatten(2).transpose(1, 2)
        h = self.c(self.ln(self.down(nn.functional.gelu(self.up(t)))))
        return self.d(torch.sigmoid(h) * h).mean(1)


class Residual(nn.Module):
    """stem conv -> x + conv(relu(x)) -> GAP -> Linear-ReLU-Linear: stem and res convs reach a residual Add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.res = nn.Conv2d(16, 16, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.res(torch.relu(x))
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.gap(x), 1))))


def export(model: nn.Module, x: torch.Tensor = X) -> onnx.ModelProto:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (x,), f, dynamo=False, input_names=["x"], output_names=["y"], opset_version=17)
    return onnx.load_from_string(f.getvalue())


def ort(model: onnx.ModelProto, x: torch.Tensor = X) -> np.ndarray:
    return run_model(model, [{"x": x.numpy()}])[0]["y"]


def run(model: nn.Module, x: torch.Tensor = X) -> np.ndarray:
    with torch.no_grad():
        return model.eval()(x).numpy()


def torch_name(onnx_node_name: str) -> str:
    """'/features/features.3/Conv' -> 'features.3' (the TorchScript exporter's scope naming)."""
    return onnx_node_name.split("/")[-2]


def onnx_skipped(metrics: dict) -> dict[str, dict]:
    """The ONNX prune pass's skipped layers by torch name: {name: {"reason": code, "via": node, "op": op type}}."""
    return {torch_name(name): facts for name, facts in metrics["skipped"].items()}


# ---------------------------------------------------------------------------------------------------------------
# prune
# ---------------------------------------------------------------------------------------------------------------


def test_prune_cnn_shrinks_every_consumer_and_runs():
    m = cnn(bn=True)
    ref = run(m)
    pm, rep = prune(m, 0.5, example_inputs=(X,))
    assert pm is not m and run(m).tolist() == ref.tolist()  # the original is untouched
    assert {k: (v["before"], v["after"]) for k, v in rep["layers"].items()} == {"0": (16, 8), "3": (16, 8),
                                                                                 "8": (32, 16)}
    assert rep["skipped"] == {"10": "channels reach a graph output"}
    for v in rep["layers"].values():
        assert v["kept"] == sorted(v["kept"]) and len(v["kept"]) == v["after"]
    assert (pm[0].weight.shape, pm[0].bias.shape) == ((8, 3, 3, 3), (8,))
    assert [t.shape for t in (pm[1].weight, pm[1].bias, pm[1].running_mean, pm[1].running_var)] == [(8,)] * 4
    assert pm[1].num_features == 8 and pm[4].num_features == 8
    assert pm[3].weight.shape == (8, 8, 3, 3) and pm[3].in_channels == pm[3].out_channels == 8
    assert pm[8].weight.shape == (16, 8 * 4 * 4) and (pm[8].in_features, pm[8].out_features) == (128, 16)
    assert pm[10].weight.shape == (10, 16)
    # the Linear after Flatten keeps the columns of the kept channels, each a block of the 4x4 positions
    kept0, kept3 = rep["layers"]["3"]["kept"], rep["layers"]["8"]["kept"]
    cols = (np.asarray(kept0)[:, None] * 16 + np.arange(16)).reshape(-1)
    assert torch.equal(pm[8].weight, m[8].weight[kept3][:, cols])
    assert run(pm).shape == (2, 10)
    # FLOPs: exactly the shrunk layers' MACs, at most what the ratio implies
    n, hw = 2, 64
    expected = 2 * n * (8 * hw * 27 + 8 * hw * 8 * 9 + 16 * 128 + 10 * 16)
    assert rep["flops_after"] == expected == count_flops(pm, (X,))
    assert rep["flops_before"] == 2 * n * (16 * hw * 27 + 16 * hw * 16 * 9 + 32 * 256 + 10 * 32)
    assert rep["flops_after"] <= (1 - 0.5) * rep["flops_before"]
    assert rep["params_after"] == sum(p.numel() for p in pm.parameters()) < rep["params_before"]
    # still trainable (fine-tuning is the point)
    opt = torch.optim.SGD(pm.parameters(), lr=0.01)
    pm.train()
    loss = nn.functional.cross_entropy(pm(X), torch.tensor([1, 2]))
    loss.backward()
    opt.step()


def test_prune_ratio_zero_is_identity():
    m = cnn(bn=True)
    pm, rep = prune(m, 0.0, example_inputs=(X,))
    assert np.array_equal(run(pm), run(m))
    assert all(v["before"] == v["after"] for v in rep["layers"].values())
    assert rep["flops_after"] == rep["flops_before"] and rep["params_after"] == rep["params_before"]


def test_prune_keep_counts_follow_the_onnx_rule():
    m = cnn(bn=False)
    pm, rep = prune(m, 0.3, example_inputs=(X,), min_channels=8, multiple_of=4, skip=["0"], layers={"2": 0.75})
    cfg = PruneConfig(ratio=0.3, min_channels=8, multiple_of=4)
    assert rep["skipped"]["0"] == "in the skip list" and "0" not in rep["layers"]
    assert rep["layers"]["2"]["after"] == _keep_count(16, 0.75, cfg) == 8  # 4 -> min_channels 8
    assert rep["layers"]["6"]["after"] == _keep_count(32, 0.3, cfg) == 24  # 22 -> multiple of 4
    assert pm[0].out_channels == 16 and pm[2].out_channels == 8 and pm[6].out_features == 24
    _, rep2 = prune(m, 0.3, example_inputs=(X,), skip=["nope"])
    assert rep2["unknown_names"] == ["nope"] and rep["unknown_names"] == []


def test_prune_inplace():
    m = cnn(bn=False)
    pm, _ = prune(m, 0.5, example_inputs=X, inplace=True)
    assert pm is m and m[0].out_channels == 8


@pytest.mark.parametrize("kind, importance, scope", [
    ("cnn", "l1", "layer"),
    ("cnn-bn", "l1", "layer"),
    ("cnn-bn", "l2", "global"),
    ("mobile", "l1", "layer"),
    ("view", "l2", "layer"),
    ("scaled", "l1", "layer"),
    ("tokens", "l1", "global"),
])
def test_prune_consistent_with_onnx_pass(kind, importance, scope):
    """(a) prune in torch, then export  ==  (b) export, then the ONNX prune pass (compensate off).

    With BatchNorm the exporter folds BN into the Conv, so the ONNX pass ranks W*gamma/sqrt(var+eps); the torch
    side multiplies the filter norm by the same BN factor (as the ONNX pass does for an unfolded Conv->BN), so
    the kept channels are the same, not merely their counts."""
    m = {"cnn": lambda: cnn(bn=False), "cnn-bn": lambda: cnn(bn=True), "mobile": lambda: _randomize_bn(MobileBlock()),
         "view": ViewNet, "scaled": Scaled, "tokens": Tokens}[kind]().eval()
    ratio = 0.4
    pm, rep = prune(m, ratio, example_inputs=(X,), importance=importance, scope=scope)
    a = export(pm)
    res = Prune({"ratio": ratio, "importance": importance, "scope": scope, "compensate": False}).run(export(m), Context())
    b = res.model
    assert rep["layers"], "nothing was pruned"
    assert {k: v["after"] for k, v in rep["layers"].items()} == \
        {torch_name(k): v["kept"] for k, v in res.metrics["layers"].items()}
    assert set(rep["skipped"]) == set(onnx_skipped(res.metrics))
    assert any(v["after"] < v["before"] for v in rep["layers"].values())
    assert float(np.abs(ort(a) - ort(b)).max()) < 1e-4
    assert float(np.abs(run(pm) - ort(b)).max()) < 1e-4
    assert rep["flops_after"] == onnx_flops(b)["total"] == onnx_flops(a)["total"]
    if kind == "cnn-bn" and importance == "l1":
        # the BN factor matters here: plain filter norms would keep other channels
        plain = m[0].weight.detach().abs().sum((1, 2, 3)).numpy()
        plain_keep = sorted(np.argsort(-plain, kind="stable")[:rep["layers"]["0"]["after"]].tolist())
        assert plain_keep != rep["layers"]["0"]["kept"]


def test_prune_activation_importance_consistent_with_onnx_pass():
    m = cnn(bn=True)
    g = torch.Generator().manual_seed(5)
    calib = [(torch.randn(2, 3, 8, 8, generator=g),) for _ in range(4)]
    with pytest.raises(ValueError, match="calib_inputs"):
        prune(m, 0.5, example_inputs=(X,), importance="activation")
    pm, rep = prune(m, 0.5, example_inputs=(X,), importance="activation", calib_inputs=calib)
    _, rep_l1 = prune(m, 0.5, example_inputs=(X,))
    assert rep["layers"]["0"]["kept"] != rep_l1["layers"]["0"]["kept"]
    samples = Samples([{"x": c[0].numpy()} for c in calib], source="test")
    res = Prune({"ratio": 0.5, "importance": "activation", "compensate": False}).run(export(m), Context(samples=samples, evaluator=Evaluator()))
    assert float(np.abs(run(pm) - ort(res.model)).max()) < 1e-4


def test_prune_follows_pad_and_per_channel_parameters():
    m = Scaled(pad=True).eval()
    pm, rep = prune(m, 0.5, example_inputs=(X,), min_channels=4)
    assert {k: v["after"] for k, v in rep["layers"].items()} == {"conv": 8, "conv2": 6}
    keep = rep["layers"]["conv"]["kept"]
    assert torch.equal(pm.gain, m.gain[:, keep]) and torch.equal(pm.prelu.weight, m.prelu.weight[keep])
    assert pm.prelu.num_parameters == 8 and pm.conv2.in_channels == 8 and pm.fc.in_features == 6
    assert run(pm).shape == (2, 4)
    # the ONNX export computes F.pad's pads at run time: the ONNX pass follows them only once simplified
    res = Prune({"ratio": 0.5, "compensate": False}).run(export(m), Context())
    assert onnx_skipped(res.metrics)["conv"]["reason"] == "runtime_params"
    assert onnx_skipped(res.metrics)["conv"]["op"] == "Pad"


def test_prune_residual_block_is_skipped():
    m = Residual().eval()
    pm, rep = prune(m, 0.5, example_inputs=(X,))
    assert "residual" in rep["skipped"]["stem"] and "residual" in rep["skipped"]["res"]
    assert rep["skipped"]["fc2"] == "channels reach a graph output"
    assert rep["layers"] == {"fc1": {"before": 32, "after": 16, "kept": rep["layers"]["fc1"]["kept"]}}
    assert pm.stem.out_channels == pm.res.out_channels == 16 and pm.fc1.out_features == 16
    res = Prune({"ratio": 0.5, "compensate": False}).run(export(m), Context())
    skipped = onnx_skipped(res.metrics)
    assert {k: v["reason"] for k, v in skipped.items()} == {"stem": "residual", "res": "residual",
                                                            "fc2": "graph_output"}
    assert float(np.abs(run(pm) - ort(res.model)).max()) < 1e-4


def test_prune_untraceable_model_fails_clearly():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(ValueError, match="torch.fx cannot trace"):
        prune(Branchy(), 0.5, example_inputs=(torch.ones(1, 4),))


# ---------------------------------------------------------------------------------------------------------------
# lowrank
# ---------------------------------------------------------------------------------------------------------------


def mlp(low_rank: int | None = None, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))
    if low_rank:
        with torch.no_grad():
            for i in (0, 2):
                w = m[i].weight
                w.copy_(torch.randn(w.shape[0], low_rank) @ torch.randn(low_rank, w.shape[1]) / low_rank)
    return m.eval()


XM = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))


def test_lowrank_exact_rank_reconstructs_and_energy_one_changes_nothing():
    m = mlp(low_rank=8)
    lm, rep = lowrank(m, energy=0.999999, min_size=4096, example_inputs=(XM,))
    assert {k: v["rank"] for k, v in rep["layers"].items()} == {"0": 8, "2": 8}
    assert rep["layers"]["0"]["shape"] == [128, 64] and rep["layers"]["0"]["energy"] > 0.999999
    assert rep["skipped"] == {"4": "min_size (640 < 4096 elements)"}
    assert isinstance(lm[0], nn.Sequential) and lm[0][0].weight.shape == (8, 64) and lm[0][1].weight.shape == (128, 8)
    assert lm[0][0].bias is None and torch.equal(lm[0][1].bias, m[0].bias)
    assert float(np.abs(run(lm, XM) - run(m, XM)).max()) < 1e-4
    assert rep["flops_after"] == count_flops(lm, (XM,)) < rep["flops_before"]
    lm1, rep1 = lowrank(m, energy=1.0, example_inputs=(XM,))
    assert rep1["layers"] == {} and np.array_equal(run(lm1, XM), run(m, XM))
    # an explicit rank at or above the no-gain bound (64*128/192 = 42.7) is kept as it is
    _, rep2 = lowrank(m, ranks={"0": 43})
    assert "saves nothing" in rep2["skipped"]["0"] and rep2["flops_before"] is None


def test_lowrank_keep_flops_halves_flops():
    m = mlp()
    lm, rep = lowrank(m, keep_flops=0.5, min_size=0, example_inputs=(XM,))
    r1, r2, r3 = (64 * 128 // 2) // 192, (128 * 64 // 2) // 192, (64 * 10 // 2) // 74
    assert {k: v["rank"] for k, v in rep["layers"].items()} == {"0": r1, "2": r2, "4": r3}
    ratio = rep["flops_after"] / rep["flops_before"]
    assert 0.45 < ratio <= 0.5
    assert rep["flops_after"] == 2 * 4 * (r1 * 192 + r2 * 192 + r3 * 74)


@pytest.mark.parametrize("options", [{"energy": 0.8}, {"keep_flops": 0.4, "multiple_of": 4}])
def test_lowrank_consistent_with_onnx_pass(options):
    m = mlp()
    lm, rep = lowrank(m, example_inputs=(XM,), **options)
    res = LowRank(options).run(export(m, XM), Context())
    onnx_ranks = {torch_name(k): v["rank"] for k, v in res.metrics["layers"].items() if v["factorized"]}
    assert {k: v["rank"] for k, v in rep["layers"].items()} == onnx_ranks and onnx_ranks
    assert set(rep["skipped"]) == {torch_name(k) for k in res.metrics.get("skipped", {})} | \
        {torch_name(k) for k, v in res.metrics["layers"].items() if not v["factorized"]}
    assert float(np.abs(run(lm, XM) - ort(res.model, XM)).max()) < 1e-4
    assert float(np.abs(ort(export(lm, XM), XM) - ort(res.model, XM)).max()) < 1e-4
    assert rep["flops_after"] == onnx_flops(res.model)["total"]


def test_lowrank_conv1x1_consistent_with_onnx_pass():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 96, 1, stride=2, padding=1),
                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10)).eval()
    lm, rep = lowrank(m, keep_flops=0.5, example_inputs=(X,))
    assert list(rep["layers"]) == ["2"] and lm[2][0].stride == (2, 2) and lm[2][1].stride == (1, 1)
    res = LowRank({"keep_flops": 0.5}).run(export(m), Context())
    assert rep["layers"]["2"]["rank"] == res.metrics["layers"]["/2/Conv"]["rank"]
    assert float(np.abs(run(lm) - ort(res.model)).max()) < 1e-4
    assert rep["flops_after"] == onnx_flops(export(lm))["total"]


# ---------------------------------------------------------------------------------------------------------------
# count_flops
# ---------------------------------------------------------------------------------------------------------------


class Mixed(nn.Module):
    """Conv, grouped conv, ConvTranspose, Linear on a 3-D tensor (MatMul) and an activation matmul."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.group = nn.Conv2d(8, 8, 3, stride=2, groups=4)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.tok = nn.Linear(4, 6)
        self.head = nn.Linear(6, 5)

    def forward(self, x):
        y = self.up(torch.relu(self.group(torch.relu(self.conv(x)))))  # [N, 4, 6, 6]
        t = self.tok(y.flatten(2).transpose(1, 2))  # [N, 36, 6]
        att = t @ t.transpose(1, 2)  # [N, 36, 36]
        return self.head((att @ t).mean(1))


@pytest.mark.parametrize("model", [lambda: cnn(bn=True), MobileBlock, Mixed])
def test_count_flops_matches_onnx_flops(model):
    m = model().eval()
    assert count_flops(m, (X,)) == onnx_flops(export(m))["total"] > 0


# ---------------------------------------------------------------------------------------------------------------
# bad options
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, kwargs, match", [
    (prune, {"ratio": 1.0}, "'ratio' must be in"),
    (prune, {"ratio": -0.1}, "'ratio' must be in"),
    (prune, {"ratio": "0.3"}, "'ratio' must be a number"),
    (prune, {"importance": "l3"}, "'importance' must be one of"),
    (prune, {"scope": "model"}, "'scope' must be one of"),
    (prune, {"min_channels": 0}, "'min_channels' must be >= 1"),
    (prune, {"multiple_of": 0}, "'multiple_of' must be >= 1"),
    (prune, {"layers": {"0": 1.5}}, "'layers' needs values"),
    (prune, {"skip": "0"}, "'skip' must be a list"),
    (prune, {"example_inputs": "x"}, "example_inputs must be a tuple"),
    (lowrank, {"energy": 0.0}, "'energy' must be in"),
    (lowrank, {"energy": 1.5}, "'energy' must be in"),
    (lowrank, {"keep_flops": 2.0}, "'keep_flops' must be in"),
    (lowrank, {"min_rank": 0}, "'min_rank' must be >= 1"),
    (lowrank, {"multiple_of": 0}, "'multiple_of' must be >= 1"),
    (lowrank, {"min_size": -1}, "'min_size' must be >= 0"),
    (lowrank, {"ranks": {"0": 0}}, "'ranks' needs values >= 1"),
    (lowrank, {"ranks": {"0": 2.5}}, "must be an integer"),
])
def test_bad_options_raise_value_error(fn, kwargs, match):
    m = cnn(bn=False)
    if fn is prune:
        kwargs = {"example_inputs": (X,), **kwargs}
    with pytest.raises(ValueError, match=match) as e:
        fn(m, **kwargs)
    assert "\n" not in str(e.value) and str(e.value).startswith(fn.__name__ + ": ")


def test_the_fx_tracer_follows_the_onnx_op_families():
    """Both tracers speak one vocabulary: every family the fx tracer classifies into has a torch rule, and every
    torch rule is a family of the ONNX pass's rule table."""
    from optkit.passes.prune.rules import FAMILIES, FAMILY_RULES
    from optkit.torch import fx_ops
    from optkit.torch.fx_rules import TORCH_RULES

    classified = ({fam for _, fam in fx_ops._MODULE_FAMILIES} | set(fx_ops._FUNCTION_FAMILIES.values())
                  | set(fx_ops._METHOD_FAMILIES.values()))
    assert classified == set(TORCH_RULES)
    assert set(TORCH_RULES) <= set(FAMILIES) == set(FAMILY_RULES)
    assert fx_ops.family_of(torch.fx.symbolic_trace(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())).graph.find_nodes(
        op="call_module", target="1")[0], {"1": nn.ReLU()}) == "unary"
