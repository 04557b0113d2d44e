"""The fused Pearson/CCC ops against the seed formulas: values and both
gradients over dtypes and shapes, masks, per-step weights, degenerate rows,
bad input, and the pure-TF / XLA paths."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import scipy.stats
import tensorflow as tf

import tf_fused_losses as tfl
from tf_fused_losses import reference
from helpers import xla_lowerings_built

KINDS = {
    "pearson": (tfl.correlation_loss, reference.correlation_loss, reference.correlation_loss_pure_tf),
    "ccc": (tfl.ccc_loss, reference.ccc_loss, reference.ccc_loss_pure_tf),
}
CHUNK = 2048  # kCpuChunk in cc/core/common/cpu_row_passes.h
PIECE = 1 << 15  # kCpuPiece
# (batch, steps): short rows, chunk and piece boundaries, rows done whole by
# one task and long rows cut into pieces (few rows, or longer than 2^17).
SHAPES = [
    (1, 2),
    (3, 3),
    (5, 100),
    (2, CHUNK - 1),
    (3, CHUNK),
    (2, CHUNK + 1),
    (1, PIECE + 1),
    (64, 3000),
    (3, 100_000),
    (1, 140_001),
    # 16 MiB or more of float32: losses and fresh gradients are written with
    # streaming stores (kStreamStoreMinBytes), by whole rows and by pieces.
    (40, 110_001),
    (2, 2_200_001),
]


def make_pair(rng, shape, dtype=np.float64, coupling=0.6):
    """Correlated targets and predictions with distinct means and scales."""
    y = rng.normal(loc=0.3, scale=1.5, size=shape)
    x = coupling * y + rng.normal(loc=-0.2, scale=0.8, size=shape)
    return y.astype(dtype), x.astype(dtype)


def loss_and_grads(fn, y_true, y_pred, upstream, mask=None, mode="eager", **kwargs):
    """loss, d(sum upstream * loss)/d y_true, d(...)/d y_pred."""

    def compute(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch([y_true, y_pred])
            loss = fn(y_true, y_pred, mask=mask, **kwargs)
            total = tf.reduce_sum(loss * tf.cast(upstream, loss.dtype))
        grad_true, grad_pred = tape.gradient(total, [y_true, y_pred])
        return loss, grad_true, grad_pred

    if mode == "function":
        compute = tf.function(compute)
    elif mode == "xla":
        compute = tf.function(compute, jit_compile=True)
    out = compute(tf.constant(y_true), tf.constant(y_pred))
    return [t.numpy() for t in out]


def seed_loss_and_grads(seed_fn, y_true, y_pred, upstream, mask=None, **kwargs):
    """The seed formula in float64, as the yardstick."""
    return loss_and_grads(
        seed_fn, y_true.astype(np.float64), y_pred.astype(np.float64), upstream.astype(np.float64), mask, **kwargs
    )


def assert_close_scaled(actual, expected, rtol, name=""):
    """|actual - expected| <= rtol * max|expected| (gradients shrink with T)."""
    scale = max(np.abs(expected).max(initial=0.0), 1e-300)
    err = np.abs(actual.astype(np.float64) - expected).max(initial=0.0)
    assert err <= rtol * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g}"


# --------------------------------------------------------------------------
# Values and gradients against the seed formulas
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_seed_formula(rng, kind, dtype, shape):
    fused, seed, _ = KINDS[kind]
    y, x = make_pair(rng, shape, dtype)
    upstream = rng.uniform(0.2, 2.0, size=shape)  # per-step weights
    loss, grad_true, grad_pred = loss_and_grads(fused, y, x, upstream.astype(dtype))
    ref_loss, ref_true, ref_pred = seed_loss_and_grads(seed, y, x, upstream)
    assert loss.shape == shape and loss.dtype == dtype
    assert grad_true.shape == shape and grad_true.dtype == dtype
    assert grad_pred.shape == shape and grad_pred.dtype == dtype
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=rtol)
    if shape[1] == 2 and kind == "pearson":
        # Two steps: r = +-1 whatever the values, so the gradient is only
        # epsilon's part, ~1e-7 of its terms: float32 keeps none of it, and
        # float64 rounds sqrt(vx) sqrt(vy) and sqrt(vx vy) apart.
        if dtype == np.float32:
            assert np.abs(grad_pred).max() < 1e-5 and np.abs(grad_true).max() < 1e-5
            return
        rtol = 1e-6
    assert_close_scaled(grad_pred, ref_pred, rtol, "grad y_pred")
    assert_close_scaled(grad_true, ref_true, rtol, "grad y_true")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("shape", [(3, 500), (40, 110_001)])  # the second streams its outputs
def test_a_tape_on_y_pred_alone_skips_the_gradient_of_y_true(rng, monkeypatch, kind, mode, shape):
    """In a training step y_true is a constant: the tape marks it as not
    needed, and the op then neither computes nor writes its gradient. In a
    function the graph's gradient op says so; eagerly the op runs at once,
    and the call is recorded (the op library's own wrapper, whatever Python
    calls it)."""
    fused = KINDS[kind][0]
    library = tfl._loader.ops()
    real_grad_op = library.fused_correlation_loss_grad
    eager_calls = []

    def recording_grad_op(*args, **kwargs):
        grads = real_grad_op(*args, **kwargs)
        eager_calls.append((kwargs.get("compute_grad_y_true"), tuple(grads[0].shape)))
        return grads

    if mode == "eager":
        monkeypatch.setattr(library, "fused_correlation_loss_grad", recording_grad_op)
    y, x = make_pair(rng, shape, np.float32)
    upstream = tf.constant(rng.uniform(0.5, 2.0, size=shape).astype(np.float32))

    def y_pred_only(y_true, y_pred):
        with tf.GradientTape() as tape:
            tape.watch(y_pred)
            total = tf.reduce_sum(fused(y_true, y_pred) * upstream)
        return tape.gradient(total, y_pred)

    if mode == "function":
        y_pred_only = tf.function(y_pred_only)
        graph = y_pred_only.get_concrete_function(tf.constant(y), tf.constant(x)).graph
        grad_ops = [op for op in graph.get_operations() if op.type == "FusedCorrelationLossGrad"]
        assert len(grad_ops) == 1 and grad_ops[0].get_attr("compute_grad_y_true") is False
    got = y_pred_only(tf.constant(y), tf.constant(x)).numpy()
    if mode == "eager":
        # One gradient op, asked for no y_true gradient, which gave an empty one.
        assert eager_calls == [(False, (0,))], eager_calls
        monkeypatch.undo()
    _, _, want = loss_and_grads(fused, y, x, upstream.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_the_gradient_op_without_y_true_returns_an_empty_grad_y_true(rng):
    y, x = make_pair(rng, (2, 50), np.float32)
    loss, row_stats = tfl._loader.ops().fused_correlation_loss(y_true=y, y_pred=x, mask=tf.zeros([0], tf.bool))
    grad_y_true, grad_y_pred = tfl._loader.ops().fused_correlation_loss_grad(
        grad_loss=tf.ones_like(loss), y_true=y, y_pred=x, mask=tf.zeros([0], tf.bool), row_stats=row_stats,
        compute_grad_y_true=False)
    assert grad_y_true.shape == (0,) and grad_y_pred.shape == (2, 50)


@pytest.mark.parametrize("kind", KINDS)
def test_eager_and_function_agree(rng, kind):
    fused, seed, _ = KINDS[kind]
    y, x = make_pair(rng, (4, 300), np.float32)
    upstream = rng.uniform(0.0, 1.0, size=(4, 300)).astype(np.float32)
    eager = loss_and_grads(fused, y, x, upstream, mode="eager")
    function = loss_and_grads(fused, y, x, upstream, mode="function")
    want = seed_loss_and_grads(seed, y, x, upstream)
    for name, e, f, w in zip(["loss", "grad y_true", "grad y_pred"], eager, function, want):
        np.testing.assert_array_equal(f, e, err_msg=name)  # the same kernels on the same inputs
        assert_close_scaled(e, w, 2e-4, name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_16_bit_types(rng, kind, dtype):
    fused, seed, _ = KINDS[kind]
    y, x = make_pair(rng, (3, 5000))
    # Round the inputs to the 16-bit type first, so that only the op's
    # arithmetic and its output rounding are measured.
    y16, x16 = tf.cast(y, dtype), tf.cast(x, dtype)
    y, x = tf.cast(y16, tf.float64).numpy(), tf.cast(x16, tf.float64).numpy()
    upstream = rng.uniform(0.5, 1.5, size=y.shape)
    with tf.GradientTape() as tape:
        tape.watch([y16, x16])
        loss = fused(y16, x16)
        total = tf.reduce_sum(loss * tf.cast(upstream, dtype))
    grad_true, grad_pred = tape.gradient(total, [y16, x16])
    assert loss.dtype == dtype and grad_true.dtype == dtype and grad_pred.dtype == dtype
    ref_loss, ref_true, ref_pred = seed_loss_and_grads(seed, y, x, upstream)
    rtol = 4e-3 if dtype == tf.float16 else 3e-2
    to64 = lambda t: tf.cast(t, tf.float64).numpy()
    assert_close_scaled(to64(loss), ref_loss, rtol, "loss")
    assert_close_scaled(to64(grad_pred), ref_pred, rtol, "grad y_pred")
    assert_close_scaled(to64(grad_true), ref_true, rtol, "grad y_true")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("masked", [False, True])
def test_compute_gradient_float64(rng, kind, masked):
    fused, _, _ = KINDS[kind]
    y, x = make_pair(rng, (3, 7))
    weights = tf.constant(rng.uniform(0.5, 1.5, size=(3, 7)))
    mask = tf.constant(rng.random((3, 7)) < 0.7) if masked else None

    def f(y_true, y_pred):
        return tf.reduce_sum(weights * fused(y_true, y_pred, mask=mask))

    theoretical, numerical = tf.test.compute_gradient(f, [tf.constant(y), tf.constant(x)], delta=1e-6)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-7)


def test_rank_3_layout_and_mixed_ranks(rng):
    y, x = make_pair(rng, (4, 50))
    upstream = rng.uniform(size=(4, 50))
    want = loss_and_grads(tfl.correlation_loss, y, x, upstream)
    got = loss_and_grads(tfl.correlation_loss, y[..., None], x[..., None], upstream)
    assert got[0].shape == (4, 50) and got[1].shape == (4, 50, 1) and got[2].shape == (4, 50, 1)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[2][..., 0], want[2])
    mixed = loss_and_grads(tfl.ccc_loss, y, x[..., None], upstream)
    assert mixed[1].shape == (4, 50) and mixed[2].shape == (4, 50, 1)
    # The seed's own layout: (B, T, 1) squeezed.
    seed = reference.ccc_loss(y[..., None], x[..., None]).numpy()
    np.testing.assert_allclose(mixed[0], seed, rtol=1e-12)


@pytest.mark.parametrize("shape", [(0, 5), (4, 0), (0, 0)])
def test_empty(shape):
    y = np.zeros(shape, np.float32)
    loss, grad_true, grad_pred = loss_and_grads(tfl.ccc_loss, y, y, y)
    assert loss.shape == shape and grad_true.shape == shape and grad_pred.shape == shape


def test_integer_targets_are_cast(rng):
    y = rng.integers(0, 5, size=(2, 30)).astype(np.int32)
    x = rng.normal(size=(2, 30)).astype(np.float32)
    loss = tfl.correlation_loss(y, x).numpy()
    ref = reference.correlation_loss(y.astype(np.float64), x.astype(np.float64)).numpy()
    assert loss.dtype == np.float32
    np.testing.assert_allclose(loss, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# What the per-step loss means
# --------------------------------------------------------------------------


def test_mean_is_pearson_r(rng):
    y, x = make_pair(rng, (6, 257))
    r = 1.0 - tfl.correlation_loss(y, x, epsilon=0.0).numpy().mean(axis=1)
    scipy_r = np.array([scipy.stats.pearsonr(x[i], y[i])[0] for i in range(6)])
    keras_r = keras.metrics.pearson_correlation(y, x).numpy()
    np.testing.assert_allclose(r, scipy_r, rtol=1e-10)
    np.testing.assert_allclose(r, keras_r, rtol=1e-10)


def test_mean_is_ccc(rng):
    y, x = make_pair(rng, (6, 257))
    ccc = 1.0 - tfl.ccc_loss(y, x, epsilon=0.0).numpy().mean(axis=1)
    # Lin's CCC from its textbook definition, population moments.
    covariance = ((x - x.mean(1, keepdims=True)) * (y - y.mean(1, keepdims=True))).mean(1)
    lin = 2 * covariance / (x.var(1) + y.var(1) + (x.mean(1) - y.mean(1)) ** 2)
    np.testing.assert_allclose(ccc, lin, rtol=1e-10)
    # Keras adds its epsilon (1e-7) to the denominator.
    keras_ccc = keras.metrics.concordance_correlation(y, x).numpy()
    ccc_eps = 1.0 - tfl.ccc_loss(y, x, epsilon=keras.backend.epsilon()).numpy().mean(axis=1)
    np.testing.assert_allclose(ccc_eps, keras_ccc, rtol=1e-9)


def test_large_offset_is_stable(rng):
    # std 1e-3 around 1e4: float32 keeps ~3 significant digits of each
    # deviation; single-pass sums of squares would lose all of them.
    y = (1e4 + 1e-3 * rng.normal(size=(2, 20_000))).astype(np.float32)
    x = (y + 1e-3 * rng.normal(size=y.shape)).astype(np.float32)
    r = 1.0 - tfl.correlation_loss(y, x, epsilon=0.0).numpy().mean(axis=1)
    exact = [scipy.stats.pearsonr(x[i].astype(np.float64), y[i].astype(np.float64))[0] for i in range(2)]
    np.testing.assert_allclose(r, exact, atol=2e-3)


# --------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_masked_rows_match_unpadded_rows(rng, kind, dtype):
    fused, seed, _ = KINDS[kind]
    lengths = [5, 1, 0, 40, 2049, 3000]  # 1 and 0 valid steps: degenerate
    steps = 3000
    y, x = make_pair(rng, (len(lengths), steps), dtype)
    mask = np.arange(steps)[None, :] < np.array(lengths)[:, None]
    # Padding holds garbage, NaN included: it must be selected away.
    x[~mask] = np.nan
    y[~mask] = 1e30
    upstream = rng.uniform(0.5, 1.5, size=x.shape)
    loss, grad_true, grad_pred = loss_and_grads(fused, y, x, upstream.astype(dtype), mask=mask)
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    for i, n in enumerate(lengths):
        assert np.all(loss[i, n:] == 0) and np.all(grad_true[i, n:] == 0) and np.all(grad_pred[i, n:] == 0)
        if n < 2:
            continue  # degenerate rows: see test_degenerate_rows
        ref = seed_loss_and_grads(seed, y[i : i + 1, :n], x[i : i + 1, :n], upstream[i : i + 1, :n])
        np.testing.assert_allclose(loss[i, :n], ref[0][0], rtol=rtol, atol=rtol)
        assert_close_scaled(grad_true[i, :n], ref[1][0], rtol)
        assert_close_scaled(grad_pred[i, :n], ref[2][0], rtol)


@pytest.mark.parametrize("kind", KINDS)
def test_scattered_mask_matches_valid_steps_alone(rng, kind):
    fused, seed, _ = KINDS[kind]
    y, x = make_pair(rng, (2, 5000))
    mask = rng.random(x.shape) < 0.6
    upstream = rng.uniform(0.5, 1.5, size=x.shape)
    loss, grad_true, grad_pred = loss_and_grads(fused, y, x, upstream, mask=mask)
    for i in range(2):
        v = mask[i]
        ref = seed_loss_and_grads(seed, y[i : i + 1, v], x[i : i + 1, v], upstream[i : i + 1, v])
        np.testing.assert_allclose(loss[i, v], ref[0][0], rtol=1e-10)
        assert_close_scaled(grad_true[i, v], ref[1][0], 1e-10)
        assert_close_scaled(grad_pred[i, v], ref[2][0], 1e-10)
        assert np.all(loss[i, ~v] == 0) and np.all(grad_pred[i, ~v] == 0)


@pytest.mark.parametrize("mask_dtype", [np.bool_, np.uint8, np.int32, np.int64, np.float32, np.float64])
def test_mask_dtypes(rng, mask_dtype):
    y, x = make_pair(rng, (3, 64))
    mask = rng.random(x.shape) < 0.5
    want = tfl.ccc_loss(y, x, mask=mask).numpy()
    got = tfl.ccc_loss(y, x, mask=mask.astype(mask_dtype)).numpy()
    np.testing.assert_array_equal(got, want)


def test_full_mask_equals_no_mask(rng):
    y, x = make_pair(rng, (3, 5000))
    # The same up to the order of the sums (the masked loops differ).
    np.testing.assert_allclose(
        tfl.correlation_loss(y, x, mask=np.ones(x.shape, bool)).numpy(), tfl.correlation_loss(y, x).numpy(), atol=1e-13
    )


# --------------------------------------------------------------------------
# Degenerate rows, against hand-derived expectations
# --------------------------------------------------------------------------


def degenerate_batch(rng, steps=3000):
    """Rows: x constant, y constant, both constant and equal, both constant
    and different, a large constant in float32, one valid step, no valid
    step, and a regular row."""
    y, x = make_pair(rng, (8, steps))
    x[0] = 0.7
    y[1] = -2.5
    x[2] = y[2] = 1.25
    x[3], y[3] = 3.0, -1.0
    x[4] = 1e6 + 0.1  # a sum / n mean would not reproduce it exactly
    mask = np.ones(x.shape, bool)
    mask[5, 1:] = False
    mask[6, :] = False
    return y, x, mask


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pure", [False, True])
def test_degenerate_rows_pearson(rng, monkeypatch, dtype, pure):
    if pure:
        monkeypatch.setenv(tfl.PURE_TF_ENV, "1")
    y, x, mask = degenerate_batch(rng)
    y, x = y.astype(dtype), x.astype(dtype)
    upstream = rng.uniform(0.5, 1.5, size=x.shape).astype(dtype)
    loss, grad_true, grad_pred = loss_and_grads(tfl.correlation_loss, y, x, upstream, mask=mask)
    for row in (0, 1, 2, 3, 4, 5):
        # r is undefined: loss exactly 1 on valid steps, no gradient.
        np.testing.assert_array_equal(loss[row], np.where(mask[row], 1.0, 0.0))
        np.testing.assert_array_equal(grad_true[row], 0.0)
        np.testing.assert_array_equal(grad_pred[row], 0.0)
    np.testing.assert_array_equal(loss[6], 0.0)
    np.testing.assert_array_equal(grad_pred[6], 0.0)
    np.testing.assert_array_equal(grad_true[6], 0.0)
    # The regular row: the seed formula, as in test_matches_seed_formula.
    ref = seed_loss_and_grads(reference.correlation_loss, y[7:], x[7:], upstream[7:])
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(loss[7], ref[0][0], rtol=rtol, atol=rtol)
    assert_close_scaled(grad_true[7], ref[1][0], rtol, "grad y_true")
    assert_close_scaled(grad_pred[7], ref[2][0], rtol, "grad y_pred")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pure", [False, True])
def test_degenerate_rows_ccc(rng, monkeypatch, dtype, pure):
    if pure:
        monkeypatch.setenv(tfl.PURE_TF_ENV, "1")
    eps = 1e-7
    y, x, mask = degenerate_batch(rng)
    y, x = y.astype(dtype), x.astype(dtype)
    upstream = rng.uniform(0.5, 1.5, size=x.shape).astype(dtype)
    loss, grad_true, grad_pred = loss_and_grads(tfl.ccc_loss, y, x, upstream, mask=mask, epsilon=eps)
    for row in (0, 1, 2, 3, 4, 5):
        np.testing.assert_array_equal(loss[row], np.where(mask[row], 1.0, 0.0))
    # Rows 0 and 4, x constant: cx = 0, so f = Wx = 0 and
    #   dL/dx_s = -2 (w_s cy_s - mean(w cy)) / D,  D = var y + (mx - my)^2 + eps,
    #   dL/dy_s = 0.
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    for row in (0, 4):
        yr, gr = y[row].astype(np.float64), upstream[row].astype(np.float64)
        cy = yr - yr.mean()
        denominator = yr.var() + (x[row, 0].astype(np.float64) - yr.mean()) ** 2 + eps
        assert_close_scaled(grad_pred[row], -2 * (gr * cy - (gr * cy).mean()) / denominator, rtol)
        np.testing.assert_array_equal(grad_true[row], 0.0)
    # Row 1, y constant: the same with x and y swapped.
    x1, g1 = x[1].astype(np.float64), upstream[1].astype(np.float64)
    cx = x1 - x1.mean()
    denominator = x1.var() + (x1.mean() + 2.5) ** 2 + eps
    assert_close_scaled(grad_true[1], -2 * (g1 * cx - (g1 * cx).mean()) / denominator, rtol)
    np.testing.assert_array_equal(grad_pred[1], 0.0)
    # Both constant, one valid step, no valid step: cx = cy = 0, no gradient.
    for row in (2, 3, 5, 6):
        np.testing.assert_array_equal(grad_true[row], 0.0)
        np.testing.assert_array_equal(grad_pred[row], 0.0)
    np.testing.assert_array_equal(loss[6], 0.0)
    # The regular row: the seed formula.
    ref = seed_loss_and_grads(reference.ccc_loss, y[7:], x[7:], upstream[7:], epsilon=eps)
    np.testing.assert_allclose(loss[7], ref[0][0], rtol=max(rtol, 1e-10), atol=max(rtol, 1e-10))
    assert_close_scaled(grad_true[7], ref[1][0], rtol, "grad y_true")
    assert_close_scaled(grad_pred[7], ref[2][0], rtol, "grad y_pred")


@pytest.mark.parametrize("kind", KINDS)
def test_single_step_rows(kind):
    fused, _, _ = KINDS[kind]
    y_true, y_pred = np.array([[2.0], [5.0]]), np.array([[1.0], [-3.0]])
    loss, grad_true, grad_pred = loss_and_grads(fused, y_true, y_pred, np.ones((2, 1)))
    np.testing.assert_array_equal(loss, 1.0)
    np.testing.assert_array_equal(grad_true, 0.0)
    np.testing.assert_array_equal(grad_pred, 0.0)


def test_nan_propagates(rng):
    y, x = make_pair(rng, (2, 100))
    x[0, 10] = np.nan
    loss = tfl.correlation_loss(y, x).numpy()
    assert np.all(np.isnan(loss[0])) and np.all(np.isfinite(loss[1]))


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "y_true, y_pred, kwargs, message",
    [
        (np.zeros((2, 5)), np.zeros((2, 5), np.int32), {}, "y_pred must be one of"),
        (np.zeros((2, 5)), np.zeros(5), {}, r"y_pred must be \(batch, steps\) or \(batch, steps, targets\); got shape \(5,"),
        (np.zeros((2, 5, 1, 1)), np.zeros((2, 5)), {}, r"y_true must be .*got shape \(2, 5, 1, 1\)"),
        (np.zeros((2, 5, 2)), np.zeros((2, 5, 3)), {}, r"same \(batch, steps\) and targets; got y_true \(2, 5, 2\)"),
        (np.zeros((2, 5)), np.zeros((2, 6)), {}, r"same \(batch, steps\) and targets; got y_true \(2, 5\) and y_pred \(2, 6\)"),
        (np.zeros((2, 5)), np.zeros((3, 5, 1)), {}, r"y_true \(2, 5\) and y_pred \(3, 5, 1\)"),
        (np.zeros((2, 5)), np.zeros((2, 5)), {"mask": np.ones((2, 4), bool)}, r"mask must have .*shape \(2, 4\)"),
        (np.zeros((2, 5)), np.zeros((2, 5)), {"mask": np.ones((2, 5, 1), bool)}, r"mask must have shape"),
        (np.zeros((2, 5)), np.zeros((2, 5)), {"mask": np.array([["a"] * 5] * 2)}, "mask must be bool or numeric"),
        (np.array([["a"] * 5] * 2), np.zeros((2, 5)), {}, "y_true must be numeric"),
        (np.zeros((2, 5)), np.zeros((2, 5)), {"epsilon": -1e-7}, "epsilon must be finite and >= 0"),
        (np.zeros((2, 5)), np.zeros((2, 5)), {"epsilon": float("nan")}, "epsilon must be finite"),
    ],
)
@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_at_trace_time(kind, y_true, y_pred, kwargs, message):
    fused = KINDS[kind][0]
    with pytest.raises(ValueError, match=message):
        fused(y_true, y_pred, **kwargs)


@pytest.mark.parametrize(
    "true_shape, pred_shape, mask_shape, message",
    [
        ((2, 5), (2, 6), None, r"y_true and y_pred must have the same \(batch, steps\), got shapes \[2,5\] and \[2,6"),
        ((2, 5, 3), (2, 5, 3), None, r"y_true must be \(batch, steps\) or \(batch, steps, 1\), got shape \[2,5,3\]"),
        ((2, 5), (2, 5), (2, 4), r"mask must have shape \(batch, steps\) = \[2,5\] .*got shape \[2,4\]"),
        ((5,), (5,), None, r"must be \(batch, steps\) or \(batch, steps, 1\), got shape \[5\]"),
    ],
)
def test_bad_input_at_run_time(true_shape, pred_shape, mask_shape, message):
    # Unknown static shapes: the kernel checks and names the shapes.
    unknown = tf.TensorSpec(None, tf.float32)

    @tf.function(input_signature=[unknown, unknown, tf.TensorSpec(None, tf.bool)])
    def f(y_true, y_pred, mask):
        return tfl.correlation_loss(y_true, y_pred, mask=mask)

    @tf.function(input_signature=[unknown, unknown])
    def f_no_mask(y_true, y_pred):
        return tfl.correlation_loss(y_true, y_pred)

    y_true, y_pred = tf.zeros(true_shape), tf.zeros(pred_shape)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        if mask_shape is None:
            f_no_mask(y_true, y_pred)
        else:
            f(y_true, y_pred, tf.ones(mask_shape, tf.bool))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64])
@pytest.mark.parametrize("shape", [(6, 3000), (1, 40_000)])
def test_gradient_written_over_its_upstream_buffer(rng, dtype, shape):
    """Inside a graph the upstream gradient is a temporary, and the backward
    kernel writes grad_y_pred into its buffer: the result must not change."""
    from tf_fused_losses._loader import ops

    y, x = (tf.constant(v, dtype) for v in make_pair(rng, shape))
    weights = tf.constant(rng.uniform(0.5, 1.5, size=shape), dtype)
    no_mask = tf.zeros([0], tf.bool)
    _, row_stats = ops().fused_correlation_loss(y_true=y, y_pred=x, mask=no_mask, concordance=True)

    def gradients(upstream):
        return ops().fused_correlation_loss_grad(
            grad_loss=upstream, y_true=y, y_pred=x, mask=no_mask, row_stats=row_stats, concordance=True
        )

    separate = [t.numpy() for t in gradients(weights * 2)]  # the caller holds the upstream tensor
    in_graph = [t.numpy() for t in tf.function(lambda w: gradients(w * 2))(weights)]
    for a, b in zip(in_graph, separate):
        np.testing.assert_array_equal(a, b)


def test_bad_input_to_the_ops():
    from tf_fused_losses._loader import ops

    z = tf.zeros((2, 5))
    no_mask = tf.zeros([0], tf.bool)
    with pytest.raises(tf.errors.InvalidArgumentError, match="epsilon must be finite and >= 0, got -1"):
        ops().fused_correlation_loss(y_true=z, y_pred=z, mask=no_mask, epsilon=-1.0)
    _, row_stats = ops().fused_correlation_loss(y_true=z, y_pred=z, mask=no_mask)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"grad_loss must have shape \(batch, steps\) = \[2,5\]"):
        ops().fused_correlation_loss_grad(
            grad_loss=tf.zeros((2, 4)), y_true=z, y_pred=z, mask=no_mask, row_stats=row_stats
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"row_stats must have shape \(batch, 5\)"):
        ops().fused_correlation_loss_grad(grad_loss=z, y_true=z, y_pred=z, mask=no_mask, row_stats=row_stats[:1])


# --------------------------------------------------------------------------
# The pure-TF fallback and XLA
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("path", ["pure_tf_env", "xla"])
def test_pure_tf_and_xla_paths_match_the_op(rng, monkeypatch, kind, dtype, path):
    fused = KINDS[kind][0]
    y, x = make_pair(rng, (5, 700), dtype)
    x[1] = 0.5  # a degenerate row
    mask = rng.random(x.shape) < 0.8
    mask[2, 3:] = False
    upstream = rng.uniform(0.5, 1.5, size=x.shape).astype(dtype)
    want = loss_and_grads(fused, y, x, upstream, mask=mask)
    if path == "pure_tf_env":
        monkeypatch.setenv(tfl.PURE_TF_ENV, "1")
        got = loss_and_grads(fused, y, x, upstream, mask=mask)
    else:
        got = loss_and_grads(fused, y, x, upstream, mask=mask, mode="xla")
    rtol = 1e-10 if dtype == np.float64 else 1e-4
    for g, w in zip(got, want):
        assert g.dtype == w.dtype
        if path == "xla" and xla_lowerings_built():  # the same kernels as XLA custom calls: the same bits
            np.testing.assert_array_equal(g, w)
        else:
            assert_close_scaled(g, w, rtol)


CPU_BUILD_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
import tf_fused_losses as tfl

rng = np.random.default_rng(5)
y = rng.normal(size=(3, 9000))
x = 0.5 * y + rng.normal(size=y.shape)
mask = rng.random(y.shape) < 0.9
out = []
for dtype in (np.float32, np.float64):
    for fn in (tfl.correlation_loss, tfl.ccc_loss):
        yt, xt = tf.constant(y.astype(dtype)), tf.constant(x.astype(dtype))
        with tf.GradientTape() as tape:
            tape.watch([yt, xt])
            loss = fn(yt, xt, mask=mask)
            total = tf.reduce_sum(loss * loss)
        out += [loss.numpy()] + [g.numpy() for g in tape.gradient(total, [yt, xt])]
np.savez(sys.argv[1], *out, cpu_isa=np.array(str(tfl.build_info().get("cpu_isa"))))
"""


def cpu_build_inputs():
    """CPU_BUILD_SCRIPT's inputs, drawn as it draws them."""
    rng = np.random.default_rng(5)
    y = rng.normal(size=(3, 9000))
    x = 0.5 * y + rng.normal(size=y.shape)
    return y, x, rng.random(y.shape) < 0.9


def cpu_build_condition(y, x, mask):
    """The magnitude of the terms in the rows' sums over the outputs' scale:
    the sums of centred values and their products, against the rows'
    spreads (as reference_checks.check_correlation's condition), largest
    over the rows."""
    conditions = []
    for yr, xr in zip(np.where(mask, y, np.nan), np.where(mask, x, np.nan)):
        yr, xr = yr[~np.isnan(yr)], xr[~np.isnan(xr)]
        spread = xr.std() + yr.std()
        reach = np.abs(xr.mean()) + np.abs(yr.mean()) + np.abs(xr - xr.mean()).max() + np.abs(yr - yr.mean()).max()
        conditions.append(1 + reach / spread)
    return max(conditions)


@pytest.mark.slow
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_every_cpu_build_agrees(tmp_path, isa):
    """The chunk loops of each x86-64 level against the baseline build, each
    capped by TFL_CPU_ISA in a process of its own (the cap is read once, at
    the first call), within what the order of their sums and FMA
    contraction can move (reference_checks.cpu_build_rtol): they are not
    bit-equal. And this process, uncapped, runs its CPU's best build."""
    from helpers import cpu_isa_level, runnable_cpu_isas, subprocess_env
    from helpers.reference_checks import cpu_build_rtol

    best = cpu_isa_level()
    if isa not in runnable_cpu_isas() or "baseline" not in runnable_cpu_isas():
        pytest.skip(f"this CPU ({best}) or library ({tfl.build_info().get('cpu_isas')}) cannot run the {isa} build")
    script = tmp_path / "run.py"
    script.write_text(CPU_BUILD_SCRIPT)
    runs = {}
    for cap in ("baseline", isa):
        env = subprocess_env({"TFL_CPU_ISA": cap}, pure_tf=False)
        subprocess.run([sys.executable, str(script), str(tmp_path / f"{cap}.npz")], check=True, env=env, timeout=300)
        runs[cap] = np.load(tmp_path / f"{cap}.npz")
        # The cap took effect.
        assert str(runs[cap]["cpu_isa"]) == cap, f"TFL_CPU_ISA={cap}, but build_info() reports {runs[cap]['cpu_isa']}"
    if "TFL_CPU_ISA" not in os.environ and not tfl.use_pure_tf():
        tfl.correlation_loss(np.ones((1, 3), np.float32), np.arange(3, dtype=np.float32)[None])  # loads the library
        expected = runnable_cpu_isas()[-1]
        in_use = tfl.build_info().get("cpu_isa")
        assert in_use == expected, f"uncapped on a {best} CPU, build_info() reports {in_use}"
    condition = cpu_build_condition(*cpu_build_inputs())
    keys = sorted((key for key in runs["baseline"].files if key != "cpu_isa"), key=lambda k: int(k.split("_")[1]))
    assert len(keys) == 12  # loss, grad y_true, grad y_pred; Pearson, CCC; float32, float64
    for i, key in enumerate(keys):
        dtype = "float32" if i < 6 else "float64"
        base = runs["baseline"][key]
        assert base.dtype == dtype, (key, base.dtype)
        assert_close_scaled(runs[isa][key], base, cpu_build_rtol(dtype, base.shape[1], condition), f"{isa}: {key}")
