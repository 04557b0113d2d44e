"""BPMLLLoss inside Keras: reductions, sample weights, training, saving."""

import numpy as np
import pytest
import keras
import tensorflow as tf

import tf_fused_losses as tfl


def multilabel_task(rng, samples=1536, features=20, labels=24):
    """Labels are thresholded linear functions of the features: learnable."""
    x = rng.normal(size=(samples, features)).astype(np.float32)
    w = rng.normal(size=(features, labels))
    scores = x @ w + rng.normal(scale=0.5, size=(samples, labels))
    y = (scores > np.quantile(scores, 0.8, axis=1, keepdims=True)).astype(np.float32)
    return x, y


def ranking_accuracy(y, scores):
    """Mean over samples of the share of (positive, negative) pairs ranked right; 0.5 is chance."""
    accs = []
    for yi, si in zip(y, scores):
        pos, neg = si[yi == 1], si[yi == 0]
        if len(pos) and len(neg):
            accs.append(np.mean(pos[:, None] > neg[None, :]))
    return float(np.mean(accs))


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean", "none", None])
def test_reductions_and_sample_weight(rng, reduction):
    y = (rng.random((6, 40)) < 0.3).astype(np.float32)
    y[:, 0] = 1
    c = rng.normal(size=(6, 40)).astype(np.float32)
    weights = rng.random(6).astype(np.float32)
    per_sample = tfl.bpmll_loss(y, c).numpy() * weights
    got = tfl.BPMLLLoss(reduction=reduction)(y, c, sample_weight=weights).numpy()
    expected = {
        "sum_over_batch_size": per_sample.sum() / 6,
        "sum": per_sample.sum(),
        "mean": per_sample.sum() / 6,
        "none": per_sample,
        None: per_sample,
    }[reduction]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
def test_training_learns_to_rank(rng, jit_compile):
    keras.utils.set_random_seed(0)
    x, y = multilabel_task(rng)
    x_test, y_test = x[1024:], y[1024:]
    x, y = x[:1024], y[:1024]
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(y.shape[1])])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=tfl.BPMLLLoss(), jit_compile=jit_compile)
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=64, epochs=8, verbose=0)
    after = model.evaluate(x, y, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after < 0.5 * before
    accuracy = ranking_accuracy(y_test, model.predict(x_test, verbose=0))
    assert accuracy > 0.85, accuracy


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_traces_the_fused_op_with_and_without_xla(rng, monkeypatch, jit_compile):
    from tf_fused_losses import _tf_ops

    calls = []
    real_ops = _tf_ops.ops
    monkeypatch.setattr(_tf_ops, "ops", lambda: calls.append(1) or real_ops())
    x, y = multilabel_task(rng, samples=64)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(y.shape[1])])
    model.compile(optimizer="sgd", loss=tfl.BPMLLLoss(), jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert calls, "the fused op was not traced"


def test_keras_file_round_trip_keeps_the_loss(tmp_path, rng):
    x, y = multilabel_task(rng, samples=64)
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(y.shape[1])])
    model.compile(optimizer="adam", loss=tfl.BPMLLLoss(reduction="sum"))
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.loss, tfl.BPMLLLoss)
    assert loaded.loss.reduction == "sum"
    np.testing.assert_allclose(loaded.evaluate(x, y, verbose=0), model.evaluate(x, y, verbose=0), rtol=1e-6)


def test_loss_config_round_trip():
    loss = tfl.BPMLLLoss(reduction="sum", name="ranking")
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, tfl.BPMLLLoss)
    assert restored.reduction == "sum" and restored.name == "ranking"
