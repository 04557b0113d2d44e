"""The fused linear BP-MLL head on JAX (python/tf_fused_losses/_head_jax.py):
the per-row loss and the gradients of hidden, kernel and bias against the
unfused path (the JAX `bpmll_loss` of hidden @ kernel + bias, autodiff), on
dense labels and padded ids, chunk sizes that do and do not divide the label
count, batch 0 and 1, rows without pairs, eagerly and under jax.jit; the
reductions (on ids the one-pass form) with row weights, their edge rows, NaN
and infinite logits and half precision; the top-k over chunks; BPMLLHead trained with Keras on the JAX backend. Needs
jax (skips without it); no TensorFlow."""

import os

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the JAX head needs jax")
import jax.numpy as jnp  # noqa: E402

from helpers.head_checks import assert_head_results_match  # noqa: E402

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


@pytest.mark.parametrize("reduction", [None, "sum"])
def test_bad_ids_raise_outside_jit_naming_the_first(rng, reduction):
    hidden, kernel, bias = problem(rng)
    ids, _ = ids_and_dense(rng, 6, 23, 3, 4)
    ids[4, 2] = 23
    ids[5, 0] = -2
    # The fused ids op's wording, for an id past the labels and a negative one.
    with pytest.raises(ValueError, match=r"^label_ids\[4, 2\] = 23 is outside \[0, 23\)$"):
        head.bpmll_head_loss(jnp.asarray(ids), hidden, kernel, bias, label_ids=True, chunk_size=5, reduction=reduction)
    ids[4, 2] = -1
    with pytest.raises(ValueError, match=r"^label_ids\[5, 0\] = -2 is neither a label id in \[0, 23\) nor the padding -1$"):
        head.bpmll_head_loss(jnp.asarray(ids), hidden, kernel, bias, label_ids=True, chunk_size=5, reduction=reduction)


# --------------------------------------------------------------------------
# Reductions: the one-pass form on ids, the two-pass form reduced on dense
# labels
# --------------------------------------------------------------------------

REDUCTIONS = ["sum", "sum_over_batch_size", "mean", "mean_with_sample_weight"]


def keras_reduce(rows, reduction, weights):
    """rows reduced as keras.losses.Loss reduces them (division by 0 gives 0)."""
    weighted = rows if weights is None else rows * weights
    if reduction in (None, "none"):
        return weighted
    total = jnp.sum(weighted)
    if reduction == "mean_with_sample_weight" and weights is not None:
        divisor = jnp.sum(weights)
    else:
        divisor = 1.0 if reduction == "sum" else float(rows.shape[0])
    return jnp.where(divisor == 0, 0, total / jnp.where(divisor == 0, 1, divisor))


def reduced_pair(labels, dense, upstream, reduction, weights=None, label_ids=True, **kwargs):
    """(fused, unfused) value-and-gradient functions of upstream x the
    reduced loss."""

    def scaled(loss_fn):
        def total(hidden, kernel, bias):
            loss = loss_fn(hidden, kernel, bias)
            return jnp.sum(loss * upstream), loss

        return jax.value_and_grad(total, argnums=(0, 1, 2), has_aux=True)

    fused = scaled(
        lambda h, k, b: head.bpmll_head_loss(
            jnp.asarray(labels), h, k, b, label_ids=label_ids, reduction=reduction, sample_weight=weights, **kwargs
        )
    )
    unfused = scaled(lambda h, k, b: keras_reduce(tfl.bpmll_loss(jnp.asarray(dense), h @ k + b), reduction, weights))
    return fused, unfused


def assert_matches_extended(got, want, grad_rtol=GRAD_RTOL, loss_rtol=LOSS_RTOL):
    """As assert_matches, where NaN and infinities may appear: got and want
    are ((_, loss), (dhidden, dkernel, dbias)) (helpers.head_checks)."""
    (_, got_loss), got_grads = got
    (_, want_loss), want_grads = want
    assert_head_results_match((got_loss, *got_grads), (want_loss, *want_grads), grad_rtol, loss_rtol)


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("chunk_size", [None, 4, 7, 64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("form", ["ids", "dense"])
def test_reduced_loss_matches_the_unfused_loss_and_gradients(rng, form, reduction, chunk_size, jit):
    """On ids the one-pass form (gradients in the forward, scaled by the
    upstream, here 3 and 1), on dense labels the two-pass form reduced; with
    and without row weights (one of them 0)."""
    hidden, kernel, bias = problem(rng)
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    for weights, upstream in ((None, 3.0), (jnp.asarray([0.5, 2, 0, 1, 1.5, 1], jnp.float32), 1.0)):
        fused, unfused = reduced_pair(ids if form == "ids" else dense, dense, upstream, reduction, weights,
                                      label_ids=form == "ids", chunk_size=chunk_size)
        got = (jax.jit(fused) if jit else fused)(hidden, kernel, bias)
        assert got[0][1].shape == ()
        assert_matches(got, unfused(hidden, kernel, bias))


def test_one_pass_edge_rows(rng):
    """Rows with no positive (padding only), every label positive, repeated
    ids, a label count below the chunk and chunks that do not divide it, a
    row with logits +-25 (tiny terms: still the loss to float32 precision)."""
    hidden, kernel, bias = problem(rng, batch=5, labels=6)
    ids = np.array(
        [[0, 1, 2, 3, 4, 5, -1], [-1, -1, -1, -1, -1, -1, -1], [2, 2, 5, 5, -1, 2, 0], [4, -1, -1, -1, -1, -1, -1],
         [1, 3, 5, -1, -1, -1, -1]],
        np.int32,
    )
    dense = np.zeros((5, 6), np.float32)
    for i, row in enumerate(ids):
        dense[i, row[row >= 0]] = 1
    hidden = hidden.at[4].set(0)
    bias = jnp.asarray(np.where(dense[4] > 0, 25, -25), jnp.float32)
    for chunk_size in (None, 4, 5, 6, 100):
        fused, unfused = reduced_pair(ids, dense, 2.0, "sum", chunk_size=chunk_size)
        assert_matches(jax.jit(fused)(hidden, kernel, bias), unfused(hidden, kernel, bias))
        rows = head.bpmll_head_loss_and_rows(jnp.asarray(ids), hidden, kernel, bias, label_ids=True,
                                             chunk_size=chunk_size, reduction="sum")[1]
        np.testing.assert_allclose(rows, tfl.bpmll_loss(jnp.asarray(dense), hidden @ kernel + bias), rtol=LOSS_RTOL)
        assert rows[0] == 0 and rows[1] == 0 and 0 < rows[4] < 1e-20


@pytest.mark.parametrize("jit", [False, True])
def test_one_pass_nan_and_infinite_logits(rng, jit):
    """A NaN logit makes its row's loss and dhidden NaN and all of dkernel
    and dbias, as the unfused H^T dlogits; infinite logits give the unfused
    path's infinities and NaNs; a bad id makes its row NaN under jax.jit."""
    hidden, kernel, bias = problem(rng)
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    bias_inf = bias.at[ids[0, 0]].set(jnp.inf).at[ids[3, 1]].set(-jnp.inf)
    fused, unfused = reduced_pair(ids, dense, 1.0, "sum", chunk_size=7)
    got = (jax.jit(fused) if jit else fused)(hidden, kernel, bias_inf)
    assert_matches_extended(got, unfused(hidden, kernel, bias_inf))
    with_nan = hidden.at[2, 1].set(jnp.nan).at[1, 0].set(jnp.nan)  # row 1 has no positive: NaN before "no pairs"
    fused, unfused = reduced_pair(ids, dense, 1.0, "sum_over_batch_size", chunk_size=7)
    got = (jax.jit(fused) if jit else fused)(with_nan, kernel, bias)
    assert np.isnan(got[0][1]) and np.all(np.isnan(got[1][1])) and np.all(np.isnan(got[1][2]))
    assert_matches_extended(got, unfused(with_nan, kernel, bias))
    bad = ids.copy()
    bad[4, 0] = 23
    loss, rows = jax.jit(lambda b: head.bpmll_head_loss_and_rows(b, hidden, kernel, bias, label_ids=True, chunk_size=7,
                                                                 reduction="sum"))(jnp.asarray(bad))
    assert np.isnan(loss) and np.isnan(rows[4]) and not np.any(np.isnan(np.delete(np.asarray(rows), 4)))


@pytest.mark.parametrize("batch", [0, 1])
def test_one_pass_batch_zero_and_one(rng, batch):
    hidden, kernel, bias = problem(rng, batch=batch)
    ids, dense = ids_and_dense(rng, batch, 23, 4, 5)
    fused, unfused = reduced_pair(ids, dense, 1.5, "sum_over_batch_size", chunk_size=5)
    assert_matches(jax.jit(fused)(hidden, kernel, bias), unfused(hidden, kernel, bias))


@pytest.mark.parametrize("dtype,rtol", [(jnp.float16, 2e-2), (jnp.bfloat16, 2e-2)])
def test_one_pass_half_precision(rng, dtype, rtol):
    """float16/bfloat16 kernels: logits and GEMMs in that dtype, the row
    statistics in float32, against the unfused loss of the same logits."""
    hidden, kernel, bias = (a.astype(dtype) for a in problem(rng))
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    fused, unfused = reduced_pair(ids, dense, 2.0, "sum_over_batch_size", chunk_size=5)
    got = jax.jit(fused)(hidden, kernel, bias)
    assert got[0][1].dtype == dtype and all(g.dtype == dtype for g in got[1])
    cast = lambda result: ((result[0][0], result[0][1].astype(jnp.float32)), [g.astype(jnp.float32) for g in result[1]])  # noqa: E731
    assert_matches_extended(cast(got), cast(unfused(hidden, kernel, bias)), grad_rtol=rtol, loss_rtol=rtol)


def test_per_row_weights_and_the_rows_output(rng):
    hidden, kernel, bias = problem(rng)
    ids, dense = ids_and_dense(rng, 6, 23, 5, 7)
    weights = jnp.linspace(0, 2, 6)
    want = tfl.bpmll_loss(jnp.asarray(dense), hidden @ kernel + bias)
    for form, labels in (("ids", ids), ("dense", dense)):
        got = head.bpmll_head_loss(jnp.asarray(labels), hidden, kernel, bias, label_ids=form == "ids",
                                   sample_weight=weights)
        np.testing.assert_allclose(got, want * weights, rtol=LOSS_RTOL)
    # The one-pass form's per-row loss: the unweighted rows, without a gradient.
    def rows_total(kernel):
        return jnp.sum(head.bpmll_head_loss_and_rows(jnp.asarray(ids), hidden, kernel, bias, label_ids=True,
                                                     reduction="sum", sample_weight=weights)[1])

    np.testing.assert_allclose(rows_total(kernel), jnp.sum(want), rtol=LOSS_RTOL)
    assert not np.any(jax.grad(rows_total)(kernel))


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
