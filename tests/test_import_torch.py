"""PyTorch → ONNX import: every input form, parity against torch, dynamic axes checked at a second size,
clear errors (state_dict without --module, unsupported op, baked-in sizes), and optimize/bench on a .pt file."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'optkit[torch]')")
from torch import nn  # noqa: E402

from conftest import run_cli, sha256  # noqa: E402
from optkit.errors import ExportError, InputError  # noqa: E402
from optkit.importers import METADATA_KEY, import_model, parse_dynamic  # noqa: E402


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5)).eval()


FACTORY = '''
import torch.nn as nn, torch
def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 5))
def wrong():
    return nn.Sequential(nn.Conv2d(3, 4, 3))
'''


def ort_run(model: onnx.ModelProto, feed: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_cnn_parity_and_dynamic_batch(exporter):
    m = small_cnn()
    imp = import_model(m, example_inputs=(torch.randn(1, 3, 8, 8),), exporter=exporter, output_names=["logits"])
    info = imp.info
    assert info["exporter"] == f"torch.onnx ({exporter})" and info["opset"] == (18 if exporter == "dynamo" else 17)
    assert info["parity"]["passed"] and info["parity"]["max_abs"] < 1e-5
    # default --dynamic is batch: checked at batch 2 during import, and the model really takes any batch
    assert info["parity"]["dynamic_check"]["shapes"] == {"input": [2, 3, 8, 8]}
    assert info["inputs"][0]["shape"][0] == "batch" and info["outputs"][0]["shape"][0] == "batch"
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(ort_run(imp.model, {"input": x})[0], m(torch.from_numpy(x)).detach().numpy(), atol=1e-5)
    meta = {p.key: p.value for p in imp.model.metadata_props}
    assert json.loads(meta[METADATA_KEY])["parity"]["passed"] is True


def test_transformer_encoder_dynamic_batch_and_seq():
    from optkit.examples.encoder import build_encoder

    enc = build_encoder(vocab=100, hidden=32, layers=1, heads=2, ffn=64).eval()
    ids = torch.randint(0, 100, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.int64)
    imp = import_model(enc, example_inputs=(ids, mask), dynamic="batch,seq", exporter="dynamo")
    assert [i["name"] for i in imp.info["inputs"]] == ["input_ids", "attention_mask"]  # forward()'s parameter names
    assert imp.info["parity"]["dynamic_check"]["shapes"]["input_ids"] == [2, 13]
    feed = {"input_ids": np.random.default_rng(0).integers(0, 100, (3, 20)), "attention_mask": np.ones((3, 20), np.int64)}
    ref = enc(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])).detach().numpy()
    np.testing.assert_allclose(ort_run(imp.model, feed)[0], ref, atol=1e-4)


def test_torchscript_export_that_bakes_a_size_is_caught():
    """nn.TransformerEncoder through the TorchScript exporter bakes batch*heads into a Reshape: the export is fine at
    the traced size and wrong at any other. The dynamic-shape check must catch it instead of shipping it."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1, enable_nested_tensor=False).eval()
    x = torch.randn(2, 6, 16)
    with pytest.raises(ExportError, match="dynamic|reshape"):
        import_model(layer, example_inputs=(x,), dynamic="batch,seq", exporter="torchscript")
    # static shapes export fine with the MHA fast path off (the documented workaround)
    imp = import_model(layer, example_inputs=(x,), dynamic="none", exporter="torchscript")
    assert imp.info["parity"]["passed"] and "dynamic_check" not in imp.info["parity"]
    # and auto (dynamo first) gets the dynamic version right
    imp = import_model(layer, example_inputs=(x,), dynamic="batch,seq")
    assert imp.info["exporter"] == "torch.onnx (dynamo)" and imp.info["parity"]["dynamic_check"]["passed"]


def test_parity_failure_is_an_error():
    m = small_cnn()
    with pytest.raises(ExportError, match="parity check failed"):
        import_model(m, example_inputs=(torch.randn(1, 3, 8, 8),), exporter="torchscript", rtol=0.0, atol=0.0)


def test_unsupported_operator_is_named():
    class Hist(nn.Module):
        def forward(self, x):
            return torch.histc(x, bins=4) + x.sum()

    with pytest.raises(ExportError) as ei:
        import_model(Hist(), example_inputs=(torch.randn(2, 4),), dynamic="none")
    msg = str(ei.value)
    assert "histc" in msg and "no ONNX conversion" in msg and "tried dynamo, torchscript" in msg
    assert "\n" not in msg


def test_file_forms(tmp_path):
    m = small_cnn()
    x = torch.randn(2, 3, 8, 8)
    torch.save(m, tmp_path / "full.pt")
    torch.jit.save(torch.jit.trace(m, x), tmp_path / "ts.pt")
    torch.save({"epoch": 3, "model_state_dict": m.state_dict()}, tmp_path / "ckpt.pth")
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    (tmp_path / "arch.py").write_text(FACTORY)
    feed = {"input": x.numpy()}
    ref = m(x).detach().numpy()
    cases = {"full.pt": ({"trust_pickle": True}, "pickled Sequential"), "ts.pt": ({}, "TorchScript"),
             "ckpt.pth": ({"module": f"{tmp_path}/arch.py:build"}, "state_dict"),
             "sd.pt": ({"module": f"{tmp_path}/arch.py:build"}, "state_dict")}
    for fname, (kw, desc) in cases.items():
        imp = import_model(tmp_path / fname, shapes={"input": (1, 3, 8, 8)}, exporter="torchscript", **kw)
        assert desc in imp.info["source"]
        np.testing.assert_allclose(ort_run(imp.model, feed)[0], ref, atol=1e-5, err_msg=fname)
    prog = torch.export.export(m, (x,))
    torch.export.save(prog, tmp_path / "prog.pt2")
    imp = import_model(tmp_path / "prog.pt2", shapes={"input": (2, 3, 8, 8)}, dynamic="none", trust_pickle=True)
    np.testing.assert_allclose(ort_run(imp.model, {"x": x.numpy()} if imp.info["inputs"][0]["name"] == "x" else feed)[0],
                               ref, atol=1e-5)


def test_file_errors(tmp_path):
    m = small_cnn()
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    (tmp_path / "arch.py").write_text(FACTORY)
    with pytest.raises(InputError, match=r"state_dict \(\d+ tensors\) with no architecture.*--module"):
        import_model(tmp_path / "sd.pt", shapes={"input": (1, 3, 8, 8)})
    with pytest.raises(InputError, match="does not fit --module.*size mismatch for 0.weight"):
        import_model(tmp_path / "sd.pt", shapes={"input": (1, 3, 8, 8)}, module=f"{tmp_path}/arch.py:wrong")
    with pytest.raises(InputError, match="has no callable 'nope'"):
        import_model(tmp_path / "sd.pt", shapes={"input": (1, 3, 8, 8)}, module=f"{tmp_path}/arch.py:nope")
    with pytest.raises(InputError, match="no input signature"):
        import_model(tmp_path / "sd.pt", module=f"{tmp_path}/arch.py:build")
    with pytest.raises(InputError, match="fails on the example inputs"):
        import_model(m, shapes={"input": (1, 5, 8, 8)})
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(InputError, match="not a readable PyTorch file"):
        import_model(tmp_path / "junk.pt", shapes={"input": (1, 3, 8, 8)})
    with pytest.raises(InputError, match="cannot tell what framework"):
        import_model(tmp_path / "arch.py")


def test_parse_dynamic():
    feed = {"ids": np.zeros((1, 8), np.int64), "pix": np.zeros((1, 3, 4, 4), np.float32), "s": np.zeros(3, np.float32)}
    d = parse_dynamic("batch,seq", feed)
    assert d == {"ids": {0: "batch", 1: "seq"}, "pix": {0: "batch", 1: "seq"}, "s": {0: "batch"}}
    assert parse_dynamic(["ids:1=tokens", "pix:-1"], feed) == {"ids": {1: "tokens"}, "pix": {3: "pix_dim3"}}
    assert parse_dynamic("none", feed) == {}
    for bad in ("whatever", "ids:x", "nope:0", "ids:5"):
        with pytest.raises(InputError):
            parse_dynamic(bad, feed)


def test_cli_import_and_optimize_from_pt(tmp_path):
    """The command line end to end: import writes a checked ONNX and leaves the input alone; optimize takes the
    .pt directly, keeps the imported ONNX as the bench reference, and records the import in the manifest."""
    from optkit.examples.digits import build_cnn

    torch.manual_seed(0)
    m = build_cnn().eval()
    torch.save(m, tmp_path / "digits.pt")
    before = sha256(tmp_path / "digits.pt")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "feeds.npz", input=rng.random((8, 1, 1, 32, 32), dtype=np.float32),
             labels=rng.integers(0, 10, (8, 1)))
    r = run_cli("import", tmp_path / "digits.pt", "--out", tmp_path / "d.onnx", "--data", tmp_path / "feeds.npz",
                "--output-names", "logits", "--exporter", "torchscript", "--format", "json", "--trust-pickle")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["parity"]["feeds"] == 8 and info["parity"]["feeds_source"].endswith("feeds.npz")
    assert onnx.load(str(tmp_path / "d.onnx")).graph.output[0].name == "logits"
    assert sha256(tmp_path / "digits.pt") == before

    r = run_cli("optimize", tmp_path / "digits.pt", "--recipe", "int8-ort", "--data", tmp_path / "feeds.npz",
                "--exporter", "torchscript", "--output", tmp_path / "out", "--trust-pickle")
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # rich wraps long lines
    assert "imported pickled Sequential" in text and "parity vs torch on 8 feed(s)" in text
    art = tmp_path / "out" / "digits" / "1"
    man = json.loads((art / "manifest.json").read_text())
    assert man["input"]["path"] == "input.onnx" and man["input"]["source_sha256"] == before
    assert man["import"]["exporter"] == "torch.onnx (torchscript)" and man["import"]["parity"]["passed"]
    r = run_cli("bench", art, "--rounds", "1", "--round-time", "0.05", "--format", "json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["reference"].endswith("input.onnx") and res["accuracy"]["vs_reference"]["cosine"] > 0.99

    # a failing import leaves no output behind and says so in one line
    r = run_cli("import", tmp_path / "digits.pt", "--out", tmp_path / "bad.onnx", "--shape", "input=1x3x32x32",
                "--trust-pickle")
    assert r.returncode == 2 and "fails on the example inputs" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad.onnx").exists()
    r = run_cli("optimize", tmp_path / "d.onnx", "--recipe", "int8-ort", "--module", "x:y")
    assert r.returncode == 2 and "already ONNX" in r.stderr


def test_library_optimize_takes_a_module(tmp_path):
    import optkit

    m = small_cnn()
    man = optkit.optimize(m, "fp32-ort", example_inputs=(torch.randn(2, 3, 8, 8),), output=tmp_path,
                          import_options={"exporter": "torchscript"})
    art = tmp_path / "Sequential" / "1"
    assert man["artifact"] == str(art) and (art / "input.onnx").exists()
    assert man["import"]["source"] == "nn.Module Sequential" and man["accuracy"]["vs_input"]["max_abs"] < 1e-4
    imp = optkit.export(m, (torch.randn(1, 3, 8, 8),), tmp_path / "m.onnx", exporter="torchscript")
    assert imp.info["path"] == str(tmp_path / "m.onnx") and (tmp_path / "m.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".optkit-import-")]
