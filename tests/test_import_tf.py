"""TensorFlow importer (optkit.importers.tf): SavedModel / Keras .keras / .h5 / in-memory models -> ONNX via tf2onnx,
parity against onnxruntime, dynamic batch, and the one-line errors. Needs the [tf] extra; skipped without it."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow import tests need the [tf] extra: pip install 'optkit[tf]'")
pytest.importorskip("tf2onnx", reason="TensorFlow import tests need the [tf] extra: pip install 'optkit[tf]'")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

import tf_models  # noqa: E402  (tests/ is on sys.path, like conftest)

from optkit.errors import ExportError, InputError  # noqa: E402
from optkit.importers import tf as tfi  # noqa: E402

TOL = 1e-4


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _io(model: onnx.ModelProto):
    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
    return ({vi.name: dims(vi) for vi in model.graph.input}, {vi.name: dims(vi) for vi in model.graph.output})


def _check_parity(source, model, feeds):
    """ORT outputs == source.run() for each feed; graph I/O names == input_specs() / run() keys."""
    onnx.checker.check_model(model)
    ins, outs = _io(model)
    assert list(ins) == [s.name for s in source.input_specs()]
    sess = _ort(model)
    for feed in feeds:
        want = source.run(feed)
        assert list(want) == list(outs)
        got = sess.run(None, feed)
        for (name, ref), out in zip(want.items(), got):
            assert out.shape == ref.shape, name
            np.testing.assert_allclose(out, ref, atol=TOL, rtol=TOL, err_msg=name)


@pytest.fixture(scope="module")
def cnn():
    return tf_models.keras_cnn()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return tf_models.ids_saved_model(tmp_path_factory.mktemp("tf") / "ids_sm")


def test_available_and_lazy_import():
    assert tfi.available() is None
    code = "import sys, optkit.importers.tf; assert 'tensorflow' not in sys.modules"
    import subprocess
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_is_tf_path(tmp_path, saved_model):
    assert tfi.is_tf_path(saved_model)
    assert tfi.is_tf_path(tmp_path / "m.keras") and tfi.is_tf_path(tmp_path / "m.h5")
    assert not tfi.is_tf_path(tmp_path / "m.onnx") and not tfi.is_tf_path(tmp_path)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras_file_parity_dynamic_batch(tmp_path, cnn, suffix):
    path = tf_models.save_keras(cnn, tmp_path / f"cnn{suffix}")
    source = tfi.load_source(path)
    assert source.framework == "tensorflow" and str(path) in source.description
    (spec,) = source.input_specs()
    assert (spec.name, spec.dtype, spec.shape) == ("image", "float32", ("batch", 8, 8, 3))
    model, info = source.to_onnx(tf_models.image_feed(1))
    assert info["exporter"] == "tf2onnx" and info["opset"] == 17 and info["signature"] == "serving_default"
    assert info["framework_version"] and info["exporter_version"]
    ins, outs = _io(model)
    assert ins == {"image": ["batch", 8, 8, 3]} and outs == {"logits": ["batch", 5]}
    _check_parity(source, model, [tf_models.image_feed(1, seed=1), tf_models.image_feed(3, seed=2)])


def test_saved_model_two_inputs_two_outputs(saved_model):
    source = tfi.load_source(saved_model)
    assert "serving_default" in source.description
    specs = {s.name: (s.dtype, s.shape) for s in source.input_specs()}
    assert specs == {"ids": ("int64", ("batch", 5)), "feat": ("float32", ("batch", 4))}
    model, info = source.to_onnx(tf_models.ids_feed(1), opset=15, output_names=["p", "s"])
    assert info["opset"] == 15 and info["signature"] == "serving_default"
    assert [o.name for o in model.graph.output] == ["p", "s"]
    _check_parity(source, model, [tf_models.ids_feed(1), tf_models.ids_feed(4, seed=3)])


def test_saved_model_other_signature_and_fixed_dim(saved_model):
    source = tfi.load_source(saved_model, signature="other")
    assert source.signature == "other"
    with pytest.raises(ExportError, match="fixes ids axis 1 to 5"):
        source.to_onnx(tf_models.ids_feed(1), dynamic={"ids": {1: "seq"}})
    model, _ = source.to_onnx(tf_models.ids_feed(1), dynamic={"ids": {0: "n"}})
    assert _io(model)[0]["ids"] == ["n", 5]


def test_keras_from_object_extra_dynamic_axis():
    # a fully convolutional model: H/W may be dynamic too (re-traced with None there)
    inp = tf_models.keras.Input((8, 8, 3), name="img")
    y = tf_models.keras.layers.Conv2D(2, 3, padding="same", name="conv")(inp)
    model_k = tf_models.keras.Model(inp, [y, tf_models.keras.layers.GlobalMaxPooling2D(name="pool")(y)])
    source = tfi.from_object(model_k)
    assert source.description.startswith("in-memory Keras model")
    model, _ = source.to_onnx(tf_models.image_feed(2, name="img"), dynamic={"img": {1: "h", 2: "w"}})
    ins, outs = _io(model)
    assert ins == {"img": ["batch", "h", "w", 3]} and list(outs) == ["conv", "pool"]
    rng = np.random.default_rng(0)
    _check_parity(source, model, [tf_models.image_feed(1, name="img"),
                                  {"img": rng.standard_normal((3, 12, 10, 3)).astype(np.float32)}])


def test_in_memory_keras_cnn(cnn):
    source = tfi.from_object(cnn)
    model, _ = source.to_onnx(tf_models.image_feed(1))
    _check_parity(source, model, [tf_models.image_feed(2, seed=5)])


def test_unknown_signature_lists_keys(saved_model):
    with pytest.raises(InputError) as err:
        tfi.load_source(saved_model, signature="predict")
    assert "'predict'" in str(err.value) and "other, serving_default" in str(err.value)


def test_saved_model_without_signatures(tmp_path):
    path = tf_models.no_signature_saved_model(tmp_path / "nosig")
    with pytest.raises(InputError, match="no serving signatures.*model.export"):
        tfi.load_source(path)


@pytest.mark.parametrize("name,data", [("bad.keras", b"not a zip file at all"), ("bad.h5", b"\x89HDF\r\n garbage")])
def test_corrupt_keras_file(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(InputError, match="not a loadable Keras model") as err:
        tfi.load_source(path)
    assert "\n" not in str(err.value)


def test_missing_path_and_empty_dir(tmp_path):
    with pytest.raises(InputError, match="not found"):
        tfi.load_source(tmp_path / "nope.keras")
    with pytest.raises(InputError, match="without saved_model.pb"):
        tfi.load_source(tmp_path)


def test_unsupported_op_is_one_line_export_error():
    tf = tf_models.tf

    class Digamma(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def f(self, x):
            return {"y": tf.math.digamma(x)}

    source = tfi.from_object(Digamma())
    with pytest.raises(ExportError) as err:
        source.to_onnx({"x": np.ones((1, 3), np.float32)})
    msg = str(err.value)
    assert "Digamma" in msg and "--opset" in msg and "\n" not in msg


def test_opset_out_of_range(saved_model):
    with pytest.raises(ExportError, match="opset 30"):
        tfi.load_source(saved_model).to_onnx(tf_models.ids_feed(1), opset=30)


def test_nothing_on_stdout(tmp_path, cnn, capfd):
    path = tf_models.save_keras(cnn, tmp_path / "q.keras")
    capfd.readouterr()
    source = tfi.load_source(path)
    source.to_onnx(tf_models.image_feed(1))
    assert capfd.readouterr().out == ""


def test_import_model_core_and_cli_on_keras_file(tmp_path, cnn):
    """Through optkit's front door: import_model (parity + dynamic batch check) and `optkit import` / `optimize`
    on a .keras file, the input file untouched."""
    import json

    from conftest import run_cli, sha256
    from optkit.importers import import_model

    path = tf_models.save_keras(cnn, tmp_path / "cnn.keras")
    before = sha256(path)
    imp = import_model(path)  # the signature gives names/shapes: no --shape needed
    assert imp.info["framework"] == "tensorflow" and imp.info["parity"]["passed"]
    assert imp.info["parity"]["dynamic_check"]["shapes"] == {"image": [2, 8, 8, 3]}
    np.savez(tmp_path / "feeds.npz", image=np.stack([tf_models.image_feed(1, seed=i)["image"] for i in range(4)]))
    r = run_cli("import", path, "--out", tmp_path / "cnn.onnx", "--data", tmp_path / "feeds.npz", "--format", "json",
                timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["exporter"] == "tf2onnx" and info["parity"]["feeds"] == 4 and info["parity"]["max_abs"] < 1e-4
    r = run_cli("optimize", path, "--recipe", "int8-ort", "--data", tmp_path / "feeds.npz", "--output", tmp_path / "out",
                timeout=300)
    assert r.returncode == 0, r.stderr
    man = json.loads((tmp_path / "out" / "cnn" / "1" / "manifest.json").read_text())
    assert man["import"]["framework"] == "tensorflow" and man["input"]["path"] == "input.onnx"
    r = run_cli("import", path, "--out", tmp_path / "x.onnx", "--signature", "nope")
    assert r.returncode == 2 and "nope" in r.stderr and "serving_default" in r.stderr and "Traceback" not in r.stderr
    assert sha256(path) == before and not (tmp_path / "x.onnx").exists()
