"""Property-based tests: the fused ops against the pure-TF references over
random shapes, label densities, soft labels, masks, dtypes, label types,
epsilons and logit scales from 1e-3 to 1e4, with NaN and inf mixed in.

Each example must either match the float64 reference (evaluated on the very
values the op receives) within a dtype-aware tolerance, or do what the README
documents: a finite value wherever the true value is representable (also
where the seed formula overflows), 0 for rows without pairs or valid steps,
and NaN or inf confined to the rows that hold one.

The default profile is derandomized and CI-sized; TFL_HYPOTHESIS_PROFILE=
thorough runs many more examples with a database under /tmp.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from scipy.special import logsumexp

import tf_fused_losses as tfl
from tf_fused_losses import reference

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=1500,
    deadline=None,
    database=DirectoryBasedExampleDatabase("/tmp/tf_fused_losses_hypothesis"),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(os.environ.get("TFL_HYPOTHESIS_PROFILE", "ci"))

DTYPES = ["float16", "bfloat16", "float32", "float64"]
# Rounding unit of the accumulation type (float32 for the 16-bit types) and
# of the output type.
ACC_EPS = {"float16": 2.0**-24, "bfloat16": 2.0**-24, "float32": 2.0**-24, "float64": 2.0**-53}
OUT_EPS = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
TINY = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126, "float64": 2.0**-1022}
LARGEST = {"float16": 65504.0, "bfloat16": 3.3895e38, "float32": 3.4028e38, "float64": 1.7977e308}


def as_op_input(values, dtype):
    """The tensor the op gets, and its exact values in float64."""
    t = tf.cast(tf.constant(values, tf.float64), dtype)
    return t, tf.cast(t, tf.float64).numpy()


def lengths(max_short):
    """Short rows, and rows around the CPU kernels' chunk of 2048."""
    return st.one_of(st.integers(1, max_short), st.sampled_from([2047, 2048, 2049, 4097]))


def inject(rng, values, count):
    """Puts NaN, +inf or -inf at count random places."""
    for _ in range(count):
        if values.size:
            values.flat[rng.integers(values.size)] = rng.choice([np.nan, np.inf, -np.inf])


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def bpmll_reference(y, c):
    """Loss and gradient of the pure-TF reference in float64."""
    c = tf.constant(c, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = reference.bpmll_loss_pure_tf(tf.constant(y, tf.float64), c)
    return loss.numpy(), tape.gradient(loss, c).numpy()


def bpmll_limit(y, c):
    """The loss of rows holding infinities, as the limit of the formula, in
    the log domain (an infinite logit's term is 0 or inf). NaN where the
    limit is undefined (0 times inf)."""
    with np.errstate(all="ignore"):
        log_positive = logsumexp(np.where(y > 0, -c, -np.inf), b=y, axis=1)
        log_negative = logsumexp(np.where(y < 1, c, -np.inf), b=1 - y, axis=1)
        log_pairs = np.log(y.sum(axis=1)) + np.log((1 - y).sum(axis=1))
        return np.exp(log_positive + log_negative - log_pairs)


def one_side_all_vanishing(y, c):
    """Rows whose positive logits are all +inf or whose negative logits are
    all -inf: the kernel shifts by that infinity and gives NaN, while the
    limit may be finite (README: non-finite logits)."""
    positives_gone = np.all(np.where(y > 0, c == np.inf, True), axis=1)
    negatives_gone = np.all(np.where(y < 1, c == -np.inf, True), axis=1)
    return positives_gone | negatives_gone


def assert_loss_close(got, want, rtol, dtype):
    """got in the output type, want the float64 truth: equal within rtol,
    inf where the truth exceeds the type's range (either near the edge)."""
    largest = LARGEST[dtype]
    for g, w in zip(got, want):
        if w > largest * (1 + rtol):
            assert g == np.inf, (g, w)
        elif w < largest * (1 - rtol):
            assert abs(g - w) <= rtol * abs(w) + 4 * TINY[dtype], (g, w, rtol)


@settings(PROFILE)
@given(data=st.data())
def test_bpmll_matches_the_reference(data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rows = data.draw(st.integers(0, 5), label="rows")
    labels = data.draw(lengths(70), label="labels")
    label_kind = data.draw(st.sampled_from(["hard", "soft", "mixed"]), label="label_kind")
    label_dtype = data.draw(
        st.sampled_from(["same", "float32", "bool", "int32", "uint8"] if label_kind == "hard" else ["same", "float32"]),
        label="label_dtype",
    )
    density = data.draw(st.floats(0, 1), label="density")
    log_scale = data.draw(st.floats(-3, 4), label="log10_scale")
    offset = data.draw(st.sampled_from([0.0, 1.0, -1.0]), label="offset_sign") * 10**log_scale
    specials = data.draw(st.sampled_from([0, 0, 1, 3]), label="non_finite_logits")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))

    shape = (rows, labels)
    hard = (rng.random(shape) < density).astype(np.float64)
    soft = np.clip(rng.random(shape) * 2 * density, 0, 1)
    y = {"hard": hard, "soft": soft, "mixed": np.where(rng.random(shape) < 0.5, hard, soft)}[label_kind]
    # TF runs CPU kernels with denormals flushed to zero, so the terms
    # y e^{-c - shift} of labels near the accumulation type's underflow
    # vanish (README: soft labels below 1e-20 lose precision).
    y[y < 1e-20] = 0
    c = offset + 10**log_scale * rng.standard_normal(shape)
    inject(rng, c, specials)
    c_t, c_seen = as_op_input(c, dtype)
    y_t = tf.cast(tf.constant(y), dtype if label_dtype == "same" else label_dtype)
    y_seen = tf.cast(y_t, tf.float64).numpy()

    with tf.GradientTape() as tape:
        tape.watch(c_t)
        loss_t = tfl.bpmll_loss(y_t, c_t)
    grad_t = tape.gradient(loss_t, c_t)
    assert loss_t.dtype == dtype and loss_t.shape == (rows,)
    assert grad_t.dtype == dtype and grad_t.shape == shape
    loss = tf.cast(loss_t, tf.float64).numpy()
    grad = tf.cast(grad_t, tf.float64).numpy()

    # Rows are independent: the batch reversed gives the rows reversed.
    reversed_loss = tfl.bpmll_loss(y_t[::-1], c_t[::-1])
    np.testing.assert_array_equal(tf.cast(reversed_loss, tf.float64).numpy()[::-1], loss)

    pairs = (y_seen.sum(axis=1) > 0) & ((1 - y_seen).sum(axis=1) > 0)
    finite_rows = np.all(np.isfinite(c_seen), axis=1)
    nan_rows = np.any(np.isnan(c_seen), axis=1)
    assert np.all(loss[~pairs] == 0) and np.all(grad[~pairs] == 0)

    # Non-finite rows: NaN stays NaN, an infinity gives the limit or, where
    # a whole side vanishes, NaN.
    assert np.all(np.isnan(loss[pairs & nan_rows]))
    inf_rows = pairs & ~finite_rows & ~nan_rows
    if np.any(inf_rows):
        limit = bpmll_limit(y_seen[inf_rows], c_seen[inf_rows])
        got = loss[inf_rows]
        undefined_here = one_side_all_vanishing(y_seen[inf_rows], c_seen[inf_rows])
        for g, want, undefined in zip(got, limit, undefined_here):
            if not np.isfinite(want):
                assert not np.isfinite(g), (g, want)
            elif not (undefined and np.isnan(g)):
                assert_loss_close([g], [want], 1e-4 + 2 * OUT_EPS[dtype], dtype)

    checked = pairs & finite_rows
    if not np.any(checked):
        return
    ref_loss, ref_grad = bpmll_reference(y_seen[checked], c_seen[checked])
    # Accumulation error grows with the size of the exponents that meet in
    # the sums and with the row length; then one rounding to the output.
    exponent = np.abs(c_seen[checked]).max(axis=1).clip(1, 120)
    rtol = 64 * ACC_EPS[dtype] * exponent * np.sqrt(labels) + 2 * OUT_EPS[dtype]
    for got, want, tol in zip(loss[checked], ref_loss, rtol):
        assert_loss_close([got], [want], tol, dtype)

    # Finite wherever the true value is representable (the seed's formula in
    # the op's type overflows far earlier: exp(c) alone leaves float16 at 11).
    representable = ref_loss < LARGEST[dtype] / 2
    assert np.all(np.isfinite(loss[checked][representable]))

    # Gradients, where the loss is comfortably inside the range: each entry is
    # at most the row's loss, which sets the scale of the error.
    inside = representable & (ref_loss < LARGEST[dtype] / 1e3)
    scale = np.maximum(np.abs(ref_grad).max(axis=1), ref_loss)[:, None]
    with np.errstate(invalid="ignore"):  # inf - inf outside `inside`
        err = np.abs(grad[checked] - ref_grad)
    bound = rtol[:, None] * scale + 4 * TINY[dtype]
    assert np.all(err[inside] <= 2 * bound[inside]), float((err[inside] / bound[inside]).max())


@settings(PROFILE)
@given(data=st.data())
def test_bpmll_names_the_first_bad_label(data):
    """Labels outside [0, 1], NaN included, fail the call on CPU, naming the
    first bad element in row-major order whichever thread saw it (a GPU marks
    the rows NaN instead)."""
    label_dtype = data.draw(st.sampled_from(["float16", "bfloat16", "float32", "float64", "int32", "int64"]), label="label_dtype")
    shape = (data.draw(st.integers(1, 4), label="rows"), data.draw(lengths(40), label="labels"))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    integer = label_dtype.startswith("int")
    y = (rng.random(shape) < 0.4).astype(np.float64)
    if not integer:
        y = np.where(rng.random(shape) < 0.5, y, rng.random(shape))
    bad_values = [-1.0, 2.0, 7.0] if integer else [-0.5, 1.5, 2.0, -np.inf, np.inf, np.nan]
    for _ in range(data.draw(st.integers(1, 3), label="bad_labels")):
        y.flat[rng.integers(y.size)] = rng.choice(bad_values)
    first = np.argwhere(~((y >= 0) & (y <= 1)))[0]
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=rf"labels in \[0, 1\]; y_true\[{first[0]}, {first[1]}\] = "):
        tfl.bpmll_loss(tf.cast(tf.constant(y), label_dtype) if not integer else y.astype(label_dtype), np.zeros(shape, np.float32))


# --------------------------------------------------------------------------
# Correlation and CCC
# --------------------------------------------------------------------------

CORRELATION = {
    False: (tfl.correlation_loss, reference.correlation_loss_pure_tf),
    True: (tfl.ccc_loss, reference.ccc_loss_pure_tf),
}


def correlation_reference(fn, y, x, mask, epsilon, upstream):
    """Loss and gradients (y_true, y_pred) of the pure-TF reference in float64."""
    y, x = tf.constant(y, tf.float64), tf.constant(x, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([y, x])
        loss = fn(y, x, epsilon=epsilon, mask=mask)
        total = tf.reduce_sum(loss * upstream)
    grad_y, grad_x = tape.gradient(total, [y, x])
    return loss.numpy(), grad_y.numpy(), grad_x.numpy()


def row_moments(v, valid):
    count = np.maximum(valid.sum(axis=1), 1)
    mean = np.where(valid, v, 0).sum(axis=1) / count
    centred = np.where(valid, v - mean[:, None], 0)
    return mean, centred, (centred**2).sum(axis=1) / count


def make_sequences(data, rng, shape):
    """Targets y and predictions x with their own scales, offsets and
    correlation; some rows constant."""
    log_scales = [data.draw(st.floats(-3, 4), label=f"log10_scale_{v}") for v in "yx"]
    offsets = [data.draw(st.floats(-10, 10), label=f"offset_{v}_in_scales") for v in "yx"]
    coupling = data.draw(st.floats(-1, 1), label="coupling")
    z = rng.standard_normal(shape)
    noise = rng.standard_normal(shape)
    y = (offsets[0] + z) * 10 ** log_scales[0]
    x = (offsets[1] + coupling * z + np.sqrt(1 - coupling**2) * noise) * 10 ** log_scales[1]
    for _ in range(data.draw(st.sampled_from([0, 0, 1, 2]), label="constant_rows")):
        if shape[0]:
            row = rng.integers(shape[0])
            target = y if rng.random() < 0.5 else x
            target[row] = target[row, 0]
    return y, x


def make_mask(data, rng, shape):
    kind = data.draw(st.sampled_from(["none", "scattered", "padding"]), label="mask")
    if kind == "none":
        return None
    if kind == "scattered":
        return rng.random(shape) < data.draw(st.floats(0, 1), label="valid_share")
    return np.arange(shape[1])[None, :] < rng.integers(0, shape[1] + 1, size=(shape[0], 1))


@settings(PROFILE)
@given(data=st.data())
def test_correlation_and_ccc_match_the_reference(data):
    concordance = data.draw(st.booleans(), label="concordance")
    fused, pure = CORRELATION[concordance]
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = (data.draw(st.integers(0, 5), label="rows"), data.draw(lengths(60), label="steps"))
    rank_3 = data.draw(st.booleans(), label="rank_3")
    epsilon = data.draw(st.sampled_from([0.0, 1e-7, 1e-3, 1.0]), label="epsilon")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    y, x = make_sequences(data, rng, shape)
    mask = make_mask(data, rng, shape)
    valid = np.ones(shape, bool) if mask is None else mask
    if mask is not None and data.draw(st.booleans(), label="nan_padding"):
        x[~mask] = np.nan  # masked steps may hold anything
    specials = data.draw(st.sampled_from([0, 0, 1, 3]), label="non_finite_values")
    inject(rng, y, specials // 2)
    inject(rng, x, specials - specials // 2)

    y_t, y_seen = as_op_input(y, dtype)
    x_t, x_seen = as_op_input(x, dtype)
    g_t, g_seen = as_op_input(rng.uniform(0.5, 1.5, size=shape), dtype)
    if rank_3:
        y_t, x_t = y_t[..., None], x_t[..., None]
    with tf.GradientTape() as tape:
        tape.watch([y_t, x_t])
        loss_t = fused(y_t, x_t, epsilon=epsilon, mask=mask)
        total = tf.reduce_sum(loss_t * g_t)
    grad_y_t, grad_x_t = tape.gradient(total, [y_t, x_t])
    assert loss_t.dtype == dtype and loss_t.shape == shape
    assert grad_y_t.dtype == dtype and grad_x_t.shape == y_t.shape and grad_y_t.shape == y_t.shape
    loss, grad_y, grad_x = (tf.cast(tf.reshape(t, shape), tf.float64).numpy() for t in (loss_t, grad_y_t, grad_x_t))

    # Both formulas are symmetric in x and y; rows are independent.
    swapped = fused(x_t[::-1], y_t[::-1], epsilon=epsilon, mask=None if mask is None else mask[::-1])
    swapped = tf.cast(tf.reshape(swapped, shape), tf.float64).numpy()[::-1]
    finite = np.isfinite(loss)
    np.testing.assert_array_equal(np.isfinite(swapped), finite)
    # Evaluation order differs: a float32 rounding, then up to one unit of the
    # output type's last place.
    np.testing.assert_allclose(swapped[finite], loss[finite], rtol=2 * OUT_EPS[dtype] + 1e-5, atol=1e-4)

    assert np.all(loss[~valid] == 0) and np.all(grad_x[~valid] == 0) and np.all(grad_y[~valid] == 0)
    bad_rows = np.any(valid & ~(np.isfinite(x_seen) & np.isfinite(y_seen)), axis=1)
    assert np.all(np.isnan(loss[bad_rows][valid[bad_rows]]))
    good = ~bad_rows
    if not np.any(good):
        return

    yg, xg, vg, gg = (np.where(valid[good], a[good], 0) for a in (y_seen, x_seen, valid, g_seen))
    vg = vg.astype(bool)
    # The op's epsilon is a float attribute: float32 whatever the dtype.
    epsilon = float(np.float32(epsilon))
    ref_loss, ref_grad_y, ref_grad_x = correlation_reference(pure, yg, xg, vg, epsilon, gg)
    mean_x, centred_x, var_x = row_moments(xg, vg)
    mean_y, centred_y, var_y = row_moments(yg, vg)
    if concordance:
        denominator = var_x + var_y + (mean_x - mean_y) ** 2 + epsilon
    else:
        denominator = np.sqrt(var_x * var_y) + epsilon
    # Rounding of the centred values is relative to each row's spread; the
    # CCC's mean gap is relative to the means. Then one output rounding.
    spread = np.sqrt(var_x) + np.sqrt(var_y)
    condition = 1 + (np.abs(mean_x) + np.abs(mean_y)) / np.where(spread > 0, spread, 1)
    steps = np.maximum(vg.sum(axis=1), 1)
    rtol = (64 * ACC_EPS[dtype] * condition * np.sqrt(steps))[:, None]
    loss_error = np.abs(loss[good] - ref_loss)
    assert np.all(loss_error <= rtol * (1 + np.abs(1 - ref_loss)) + 2 * OUT_EPS[dtype] * np.abs(ref_loss))

    # Each gradient entry sums terms up to k |g| |c_other| / D and the
    # row's own entries; that sets the scale of its error.
    k = 2.0 if concordance else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        term = k * np.abs(gg).max(axis=1) * np.maximum(np.abs(centred_x).max(axis=1), np.abs(centred_y).max(axis=1))
        term = np.where(denominator > 0, term / denominator, 0)
    scale = np.maximum(term, np.maximum(np.abs(ref_grad_x).max(axis=1), np.abs(ref_grad_y).max(axis=1)))[:, None]
    for got, want in ((grad_x[good], ref_grad_x), (grad_y[good], ref_grad_y)):
        error = np.abs(got - want)
        assert np.all(error <= rtol * scale + 2 * OUT_EPS[dtype] * np.abs(want) + 4 * TINY[dtype]), float(
            (error / (rtol * scale + 1e-300)).max()
        )
