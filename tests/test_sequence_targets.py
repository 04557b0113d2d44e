"""The correlation losses on several targets at once, (batch, steps,
targets), and over a whole corpus (corpus=True), on every backend present:
each target of each row is the op's row, or, with corpus=True, each target
over every valid step of every row; against the same op on the rearranged
rows (bits) and against numpy's concordance of the concatenated valid steps
(float64). A masked (batch, time, 2) Keras model trains."""

import importlib.util

import numpy as np
import pytest

import tf_fused_losses as tfl

HAS_TF = importlib.util.find_spec("tensorflow") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None
FRAMEWORKS = [
    pytest.param("tensorflow", marks=pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow")),
    pytest.param("jax", marks=pytest.mark.skipif(not HAS_JAX, reason="needs jax")),
    pytest.param("torch", marks=pytest.mark.skipif(not HAS_TORCH, reason="needs torch")),
]
LOSSES = {"pearson": tfl.correlation_loss, "ccc": tfl.ccc_loss}


def as_framework(framework, *arrays):
    if framework == "tensorflow":
        import tensorflow as tf

        return [tf.constant(a) for a in arrays]
    if framework == "jax":
        import jax.numpy as jnp

        return [jnp.asarray(a) for a in arrays]
    import torch

    return [torch.as_tensor(a) for a in arrays]


def to_numpy(x):
    if hasattr(x, "detach"):
        x = x.detach()
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def draw(rng, batch=3, steps=11, targets=2):
    y = rng.normal(size=(batch, steps, targets)).astype(np.float64)
    x = (0.6 * y + rng.normal(scale=0.8, size=y.shape) + 0.3).astype(np.float64)
    mask = rng.random((batch, steps)) > 0.25
    mask[:, :3] = True
    return y, x, mask


def numpy_ccc(y, x, concordance):
    """Population moments over the given values: Lin's CCC or Pearson's r."""
    my, mx = y.mean(), x.mean()
    vy, vx = ((y - my) ** 2).mean(), ((x - mx) ** 2).mean()
    cov = ((y - my) * (x - mx)).mean()
    return 2 * cov / (vx + vy + (mx - my) ** 2) if concordance else cov / np.sqrt(vx * vy)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("masked", [False, True])
def test_each_target_is_a_row_of_its_own(rng, framework, kind, masked):
    y, x, mask = draw(rng)
    loss_fn = LOSSES[kind]
    y_t, x_t, m_t = as_framework(framework, y, x, mask)
    got = to_numpy(loss_fn(y_t, x_t, mask=m_t if masked else None))
    assert got.shape == y.shape
    for d in range(y.shape[2]):
        yd, xd, md = as_framework(framework, y[:, :, d].copy(), x[:, :, d].copy(), mask)
        want = to_numpy(loss_fn(yd, xd, mask=md if masked else None))
        np.testing.assert_array_equal(got[:, :, d], want)


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("targets", [1, 2])
def test_corpus_is_the_coefficient_of_the_concatenated_valid_steps(rng, framework, kind, targets):
    y, x, mask = draw(rng, targets=targets)
    loss_fn = LOSSES[kind]
    y_t, x_t, m_t = as_framework(framework, y, x, mask)
    loss = to_numpy(loss_fn(y_t, x_t, epsilon=0.0, mask=m_t, corpus=True))
    assert loss.shape == (y.shape if targets > 1 else y.shape[:2])
    loss = loss.reshape(y.shape)
    rtol = 1e-12 if loss.dtype == np.float64 else 1e-5  # JAX without x64 computes in float32
    for d in range(targets):
        coefficient = 1.0 - loss[:, :, d][mask].mean()
        want = numpy_ccc(y[:, :, d][mask], x[:, :, d][mask], concordance=kind == "ccc")
        np.testing.assert_allclose(coefficient, want, rtol=rtol)
        assert np.all(loss[:, :, d][~mask] == 0)


@pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow")
@pytest.mark.parametrize("kind", LOSSES)
def test_targets_and_corpus_under_xla_and_their_gradients(rng, kind):
    import tensorflow as tf

    y, x, mask = draw(rng)
    loss_fn = LOSSES[kind]
    weights = tf.constant(rng.normal(size=y.shape), tf.float32)
    for corpus in (False, True):

        def step(y, x, m, corpus=corpus):
            with tf.GradientTape() as tape:
                tape.watch([y, x])
                loss = loss_fn(y, x, mask=m, corpus=corpus)
                total = tf.reduce_sum(loss * weights)
            return (loss, *tape.gradient(total, [y, x]))

        args = as_framework("tensorflow", y.astype(np.float32), x.astype(np.float32), mask)
        eager = step(*args)
        jitted = tf.function(step, jit_compile=True)(*args)
        for e, j in zip(eager, jitted):
            np.testing.assert_array_equal(e.numpy(), j.numpy())


@pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow")
def test_a_masked_two_target_keras_model_trains_and_saves(rng, tmp_path):
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("this Keras model runs on the tensorflow backend here")
    batch, steps, features = 64, 20, 3
    u = rng.normal(size=(batch, steps, features)).astype(np.float32)
    y = np.stack([u[..., 0] + 0.5 * u[..., 1], u[..., 2] - u[..., 0]], axis=-1).astype(np.float32)
    lengths = rng.integers(8, steps + 1, size=batch)
    padded = np.arange(steps)[None, :] >= lengths[:, None]
    u[padded] = 0.0
    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [keras.Input((steps, features)), keras.layers.Masking(0.0), keras.layers.Dense(2)]
    )
    for loss in (tfl.CCCLoss(), tfl.CCCLoss(corpus=True)):
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
        history = model.fit(u, y, batch_size=16, epochs=8, verbose=0).history["loss"]
        assert np.all(np.isfinite(history)) and history[-1] < 0.5 * history[0], history
    path = str(tmp_path / "corpus.keras")
    model.save(path)
    assert keras.models.load_model(path).loss.corpus is True


@pytest.mark.parametrize("targets", [1, 2])
def test_corpus_ccc_metric_streams_the_concatenated_corpus(rng, targets):
    """CorpusCCC over batches equals numpy's concordance of all valid steps
    of all batches at once (means far from 0 included), and resets."""
    pytest.importorskip("keras")
    import keras

    from tf_fused_losses.keras_metrics import CorpusCCC

    metric = CorpusCCC(targets=targets)
    ys, xs, ms = [], [], []
    for offset in (1000.0, 1003.0, 997.0):
        y, x, mask = draw(rng, batch=4, steps=9, targets=targets)
        y, x = (y + offset).astype(np.float32), (x + offset).astype(np.float32)
        if targets == 1:
            y, x = y[..., 0], x[..., 0]
        metric.update_state(y, x, sample_weight=mask.astype(np.float32))
        ys.append(y.reshape(4, 9, targets)[mask])
        xs.append(x.reshape(4, 9, targets)[mask])
    y_all, x_all = np.concatenate(ys).astype(np.float64), np.concatenate(xs).astype(np.float64)
    per_target = [numpy_ccc(y_all[:, d], x_all[:, d], concordance=True) for d in range(targets)]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(metric.result_per_target()), per_target, rtol=2e-4)
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(metric.result())), np.mean(per_target), rtol=2e-4)
    metric.reset_state()
    assert float(keras.ops.convert_to_numpy(metric.result())) == 0.0
    assert CorpusCCC.from_config(metric.get_config()).targets == targets
