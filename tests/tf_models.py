"""Tiny TensorFlow / Keras models built in code (no downloads) for the TensorFlow importer tests.

Import this module only after ``pytest.importorskip("tensorflow")``: it imports tensorflow and keras at the top.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
import keras

# keras_cnn: image [batch, 8, 8, 3] (NHWC) -> Conv(4, 3x3, same) -> ReLU -> BatchNorm -> GAP -> Dense(5) "logits"
CNN_HW, CNN_CH, CNN_CLASSES = 8, 3, 5
# ids_module: ids [batch, SEQ] int64 in [0, VOCAB) + feat [batch, DIM] float32 -> {"pooled", "score"}
VOCAB, SEQ, DIM, SCORES = 20, 5, 4, 3


def keras_cnn(seed: int = 0) -> keras.Model:
    """A functional Keras CNN with named input 'image' and output layer 'logits' (batch dim unknown)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((CNN_HW, CNN_HW, CNN_CH), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(CNN_CLASSES, name="logits")(x)
    return keras.Model(inp, out, name="tiny_cnn")


def save_keras(model: keras.Model, path) -> Path:
    """model.save to ``path`` (.keras native zip, or .h5 legacy HDF5 judged by the suffix)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


class IdsModule(tf.Module):
    """An embedding lookup plus a dense layer; one explicit two-input, two-output signature."""

    def __init__(self, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.emb = tf.Variable(rng.standard_normal((VOCAB, DIM)).astype(np.float32))
        self.w = tf.Variable(rng.standard_normal((DIM, SCORES)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, SEQ], tf.int64, name="ids"),
                                  tf.TensorSpec([None, DIM], tf.float32, name="feat")])
    def serve(self, ids, feat):
        pooled = tf.reduce_mean(tf.gather(self.emb, ids), axis=1)
        return {"pooled": pooled, "score": tf.nn.tanh(tf.matmul(pooled + feat, self.w))}


def ids_saved_model(path) -> Path:
    """A SavedModel directory of IdsModule with signatures 'serving_default' and 'other' (same function)."""
    module = IdsModule()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "other": module.serve})
    return Path(path)


def no_signature_saved_model(path) -> Path:
    """A SavedModel directory with variables but no signatures."""
    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(path))
    return Path(path)


def ids_feed(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"ids": rng.integers(0, VOCAB, size=(batch, SEQ)).astype(np.int64),
            "feat": rng.standard_normal((batch, DIM)).astype(np.float32)}


def image_feed(batch: int, seed: int = 0, name: str = "image") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((batch, CNN_HW, CNN_HW, CNN_CH)).astype(np.float32)}
