"""CorrelationLoss and CCCLoss inside Keras: the Keras mask, sample weights,
reductions, saving, XLA, and training a GRU sequence model."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_fused_losses as tfl
from tf_fused_losses import reference

try:
    from keras.src.backend import set_keras_mask
except ImportError:

    def set_keras_mask(x, mask):
        x._keras_mask = mask


LOSSES = {"pearson": (tfl.CorrelationLoss, tfl.correlation_loss), "ccc": (tfl.CCCLoss, tfl.ccc_loss)}


def sequences(rng, batch, steps):
    y = rng.normal(size=(batch, steps)).astype(np.float32)
    x = (0.5 * y + rng.normal(size=(batch, steps))).astype(np.float32)
    return y, x


@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "none"])
@pytest.mark.parametrize("weight_shape", [None, "batch", "batch_steps"])
def test_reductions_and_sample_weight(rng, kind, reduction, weight_shape):
    loss_class, loss_fn = LOSSES[kind]
    y, x = sequences(rng, 5, 30)
    per_step = loss_fn(y, x).numpy()
    weights = {None: None, "batch": rng.random(5), "batch_steps": rng.random((5, 30))}[weight_shape]
    weighted = per_step if weights is None else per_step * (weights[:, None] if weights.ndim == 1 else weights)
    got = loss_class(reduction=reduction)(y[..., None], x[..., None], sample_weight=weights).numpy()
    expected = {"sum_over_batch_size": weighted.mean(), "sum": weighted.sum(), "none": weighted}[reduction]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", LOSSES)
def test_per_step_sample_weight_gradient(rng, kind):
    """Keras' per-step weights reach the op as a non-uniform upstream gradient."""
    loss_class, _ = LOSSES[kind]
    seed = {"pearson": reference.correlation_loss, "ccc": reference.ccc_loss}[kind]
    y, x = sequences(rng, 4, 50)
    weights = rng.random((4, 50)).astype(np.float32)
    x_t = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x_t)
        total = loss_class(reduction="sum")(y, x_t, sample_weight=weights)
    x64 = tf.constant(x, tf.float64)
    with tf.GradientTape() as tape64:
        tape64.watch(x64)
        expected_total = tf.reduce_sum(seed(tf.constant(y, tf.float64), x64) * weights)
    np.testing.assert_allclose(total.numpy(), expected_total.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        tape.gradient(total, x_t).numpy(), tape64.gradient(expected_total, x64).numpy(), rtol=1e-3, atol=1e-6
    )


@pytest.mark.parametrize("kind", LOSSES)
def test_keras_mask_of_y_pred_is_used(rng, kind):
    loss_class, loss_fn = LOSSES[kind]
    y, x = sequences(rng, 4, 40)
    mask = np.arange(40)[None, :] < np.array([[40], [25], [3], [10]])
    y_pred = tf.constant(x[..., None])
    set_keras_mask(y_pred, tf.constant(mask))
    got = loss_class()(y[..., None], y_pred).numpy()
    # Keras averages over the valid steps; masked steps are 0 already.
    expected = loss_fn(y, x, mask=mask).numpy().sum() / mask.sum()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    unmasked = loss_class()(y[..., None], x[..., None]).numpy()
    assert abs(unmasked - got) > 1e-3


def test_masking_layer_in_a_model(rng):
    """Padded sequences behind a Masking layer: evaluate() computes each row's
    moments over its own steps."""
    lengths = np.array([30, 12, 21, 5])
    u = rng.normal(size=(4, 30, 2)).astype(np.float32)
    y = rng.normal(size=(4, 30)).astype(np.float32)
    mask = np.arange(30)[None, :] < lengths[:, None]
    u[~mask] = 0.0
    model = keras.Sequential(
        [
            keras.Input((30, 2)),
            keras.layers.Masking(0.0),
            keras.layers.GRU(4, return_sequences=True),
            keras.layers.Dense(1),
        ]
    )
    model.compile(loss=tfl.CorrelationLoss())
    got = model.evaluate(u, y[..., None], batch_size=4, verbose=0)
    prediction = model.predict(u, verbose=0)[..., 0]
    expected = tfl.correlation_loss(y, prediction, mask=mask).numpy().sum() / mask.sum()
    np.testing.assert_allclose(got, expected, rtol=1e-4)


@pytest.mark.parametrize("kind", LOSSES)
def test_config_and_serialization(kind):
    loss_class, _ = LOSSES[kind]
    loss = loss_class(epsilon=1e-5, reduction="sum", name="my_loss")
    config = loss.get_config()
    assert config["epsilon"] == 1e-5 and config["reduction"] == "sum" and config["name"] == "my_loss"
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is loss_class and again.epsilon == 1e-5 and again.reduction == "sum"
    with pytest.raises(ValueError, match="epsilon must be finite and >= 0"):
        loss_class(epsilon=-1.0)


def test_saved_model_keeps_the_loss(rng, tmp_path):
    """The reloaded model evaluates to the original's loss, bit for bit, and
    that loss is the CCC of its predictions at the saved epsilon: a reload
    that lost the epsilon (or the class) evaluates differently."""
    epsilon = 0.5  # large against the data's variances, so that the default's value differs
    keras.utils.set_random_seed(0)
    u, y = sequence_task(rng, 32, steps=20)
    model = keras.Sequential([keras.Input((None, 1)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss=tfl.CCCLoss(epsilon=epsilon))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.loss, tfl.CCCLoss) and loaded.loss.epsilon == epsilon
    want = model.evaluate(u, y[..., None], batch_size=32, verbose=0)
    got = loaded.evaluate(u, y[..., None], batch_size=32, verbose=0)
    assert got == want, (got, want)
    prediction = model.predict(u, batch_size=32, verbose=0)[..., 0]
    at_epsilon = float(np.mean(tfl.ccc_loss(y, prediction, epsilon=epsilon).numpy()))
    at_default = float(np.mean(tfl.ccc_loss(y, prediction).numpy()))
    np.testing.assert_allclose(got, at_epsilon, rtol=1e-5)
    # A reload with the default epsilon would fail the comparison above.
    assert abs(at_default - at_epsilon) > 100 * 1e-5 * abs(at_epsilon), (at_default, at_epsilon)


def sequence_task(rng, n, steps=60, lag=4):
    """Targets are a lagged moving sum of white-noise inputs, with a
    per-sequence scale and offset: a GRU must remember the last steps."""
    u = rng.normal(size=(n, steps + lag, 1))
    y = sum(u[:, lag - k : lag - k + steps, 0] for k in range(1, lag + 1)) / np.sqrt(lag)
    y = y * rng.uniform(0.5, 2.0, size=(n, 1)) + rng.normal(size=(n, 1))
    return u[:, lag:].astype(np.float32), y.astype(np.float32)


def held_out_correlation(model, u, y):
    prediction = model.predict(u, verbose=0)[..., 0]
    return float(np.mean(1.0 - tfl.correlation_loss(y, prediction, epsilon=0.0).numpy().mean(axis=1)))


@pytest.mark.parametrize("kind", LOSSES)
def test_gru_training_raises_held_out_correlation(rng, kind):
    loss_class, _ = LOSSES[kind]
    keras.utils.set_random_seed(0)
    u, y = sequence_task(rng, 512)
    u_test, y_test = sequence_task(rng, 128)
    model = keras.Sequential(
        [keras.Input((None, 1)), keras.layers.GRU(16, return_sequences=True), keras.layers.Dense(1)]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=loss_class(), jit_compile=False)
    before = held_out_correlation(model, u_test, y_test)
    history = model.fit(u, y[..., None], batch_size=64, epochs=6, verbose=0)
    after = held_out_correlation(model, u_test, y_test)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after > 0.85 and after > before + 0.3, (before, after)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_traces_the_fused_op_with_and_without_xla(rng, monkeypatch, jit_compile):
    from tf_fused_losses import _tf_ops

    calls = []
    real_ops = _tf_ops.ops
    monkeypatch.setattr(_tf_ops, "ops", lambda: calls.append(1) or real_ops())
    u, y = sequence_task(rng, 64, steps=20)
    model = keras.Sequential([keras.Input((None, 1)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss=tfl.CorrelationLoss(), jit_compile=jit_compile)
    history = model.fit(u, y[..., None], batch_size=32, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert calls, "the fused op was not traced"
