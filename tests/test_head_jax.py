"""The fused linear BP-MLL head on JAX (python/tf_fused_losses/_head_jax.py):
the per-row loss and the gradients of hidden, kernel and bias against the
unfused path (the JAX `bpmll_loss` of hidden @ kernel + bias, autodiff), on
dense labels and padded ids, chunk sizes that do and do not divide the label
count, batch 0 and 1, rows without pairs, eagerly and under jax.jit; the
top-k over chunks; BPMLLHead trained with Keras on the JAX backend. Needs
jax (skips without it); no TensorFlow."""

import os

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX head needs jax")
import jax.numpy as jnp  # noqa: E402

import tf_fused_losses as tfl  # noqa: E402
from tf_fused_losses import head  # noqa: E402

LOSS_RTOL = 1e-5
GRAD_RTOL = 2e-5  # max abs error over the gradient's max abs value


def ids_and_dense(rng, batch, labels, per_row, width):
    """Padded ids with -1 padding, a repeated id and a padding-only row, and
    the 0/1 matrix they stand for."""
    ids = np.full((batch, width), -1, np.int32)
    for i in range(batch):
        chosen = rng.choice(labels, min(per_row, labels), replace=False)
        ids[i, : len(chosen)] = chosen
    if batch > 2:
        ids[1] = -1
        ids[2, -1] = ids[2, 0]
    dense = np.zeros((batch, labels), np.float32)
    for i, row in enumerate(ids):
        dense[i, row[row >= 0]] = 1
    return ids, dense


def problem(rng, batch=6, d=5, labels=23):
    return (
        jnp.asarray(rng.normal(size=(batch, d)), jnp.float32),
        jnp.asarray(0.5 * rng.normal(size=(d, labels)), jnp.float32),
        jnp.asarray(0.3 * rng.normal(size=(labels,)), jnp.float32),
    )


def value_and_grads(loss_fn, upstream):
    def total(hidden, kernel, bias):
        loss = loss_fn(hidden, kernel, bias)
        return jnp.sum(loss * upstream), loss

    return jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)


def assert_matches(got, want):
    (_, got_loss), got_grads = got
    (_, want_loss), want_grads = want
    np.testing.assert_allclose(got_loss, want_loss, rtol=LOSS_RTOL, atol=0)
    for name, g, w in zip(("hidden", "kernel", "bias"), got_grads, want_grads):
        g, w = np.asarray(g), np.asarray(w)
        assert g.shape == w.shape, name
        if w.size:
            error = np.max(np.abs(g - w)) / max(np.max(np.abs(w)), np.finfo(np.float32).tiny)
            assert error <= GRAD_RTOL, f"d/d{name}: max abs error {error:.3g} of its scale"


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 4, 7, 23])
@pytest.mark.parametrize("form", ["ids", "dense", "soft"])
def test_head_matches_the_unfused_loss_and_gradients(rng, form, chunk_size, jit):
    hidden, kernel, bias = problem(rng)
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    if form == "soft":
        dense = (rng.uniform(size=dense.shape) * (rng.uniform(size=dense.shape) < 0.4)).astype(np.float32)
        dense[3] = 1
    labels = jnp.asarray(ids if form == "ids" else dense)
    upstream = jnp.linspace(0.5, 2.0, 6)
    fused = value_and_grads(
        lambda h, k, b: head.bpmll_head_loss(labels, h, k, b, label_ids=form == "ids", chunk_size=chunk_size), upstream
    )
    unfused = value_and_grads(lambda h, k, b: tfl.bpmll_loss(jnp.asarray(dense), h @ k + b), upstream)
    got = (jax.jit(fused) if jit else fused)(hidden, kernel, bias)
    assert_matches(got, unfused(hidden, kernel, bias))
    pairless = 3 if form == "soft" else 1
    assert got[0][1][pairless] == 0 and not np.any(np.asarray(got[1][0])[pairless])


@pytest.mark.parametrize("batch", [0, 1])
@pytest.mark.parametrize("form", ["ids", "dense"])
def test_batch_zero_and_one(rng, batch, form):
    hidden, kernel, bias = problem(rng, batch=batch)
    ids, dense = ids_and_dense(rng, batch, 23, 4, 5)
    labels = jnp.asarray(ids if form == "ids" else dense)
    upstream = jnp.ones((batch,))
    fused = value_and_grads(lambda h, k, b: head.bpmll_head_loss(labels, h, k, b, label_ids=form == "ids", chunk_size=5), upstream)
    unfused = value_and_grads(lambda h, k, b: tfl.bpmll_loss(jnp.asarray(dense), h @ k + b), upstream)
    assert_matches(jax.jit(fused)(hidden, kernel, bias), unfused(hidden, kernel, bias))


def test_nan_logits_and_bad_ids_give_their_row_nan(rng):
    hidden, kernel, bias = problem(rng)
    hidden = hidden.at[0, 1].set(jnp.nan)
    ids, dense = ids_and_dense(rng, 6, 23, 3, 4)
    ids[4, 0] = 23
    loss = jax.jit(lambda h: head.bpmll_head_loss(jnp.asarray(ids), h, kernel, bias, label_ids=True, chunk_size=5))(hidden)
    loss = np.asarray(loss)
    assert np.isnan(loss[0]) and np.isnan(loss[4])
    rest = [1, 2, 3, 5]
    want = tfl.bpmll_loss(jnp.asarray(dense[rest]), hidden[jnp.asarray(rest)] @ kernel + bias)
    np.testing.assert_allclose(loss[rest], want, rtol=LOSS_RTOL)


@pytest.mark.parametrize("chunk_size", [3, 8, 23])
def test_top_k_over_chunks(rng, chunk_size):
    hidden, kernel, bias = problem(rng)
    scores, ids = jax.jit(lambda h: head.bpmll_head_top_k(h, kernel, bias, k=4, chunk_size=chunk_size))(hidden)
    want_scores, want_ids = jax.lax.top_k(hidden @ kernel + bias, 4)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    np.testing.assert_array_equal(ids, want_ids)


def test_keras_on_jax_trains_on_padded_ids_and_round_trips(rng, tmp_path):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    from tf_fused_losses.head_layers import BPMLLHead

    keras.utils.set_random_seed(0)
    x = rng.normal(size=(96, 10)).astype(np.float32)
    ids, dense = ids_and_dense(rng, 96, 40, 3, 5)
    features = keras.Input((10,))
    labels = keras.Input((5,), dtype="int32")
    hidden = keras.layers.Dense(16, activation="relu")(features)
    layer = BPMLLHead(40, label_ids=True, chunk_size=16)
    model = keras.Model([features, labels], layer(hidden, labels=labels))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    before = model.evaluate((x, ids), batch_size=96, verbose=0)
    model.fit((x, ids), batch_size=32, epochs=4, verbose=0)
    after = model.evaluate((x, ids), batch_size=96, verbose=0)
    assert after < before
    logits = keras.Model(features, hidden)(x) @ layer.kernel.value + layer.bias.value
    np.testing.assert_allclose(after, np.mean(tfl.bpmll_loss(jnp.asarray(dense), logits)), rtol=1e-5)
    path = os.path.join(tmp_path, "head.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.evaluate((x, ids), batch_size=96, verbose=0), after, rtol=1e-6)
