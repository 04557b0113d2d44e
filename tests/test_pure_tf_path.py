"""Regression tests for the pure-TF path (TF_FUSED_LOSSES_PY_OPS=1, and what
XLA-compiled functions run): the rule for rows without pairs, NaN and
infinite logits, huge finite logits, bad labels, and NaN or inf in
correlation rows, each eager, in a tf.function and under
jit_compile=True, with the expected values written out.

The gradients here come from `tf.custom_gradient` in closed form. Autodiff
through `tf.where` used to poison them: a branch not taken that overflows
still sends 0 * inf = NaN backwards (y = [0, 0], c = [100, 0] in float32
gave the gradient [nan, nan])."""

import numpy as np
import pytest
import tensorflow as tf

import tf_fused_losses as tfl

INF, NAN = np.inf, np.nan
MODES = ["eager", "function", "jit"]


@pytest.fixture(autouse=True)
def _pure_path(pure_tf):
    """Every test here runs the pure-TF path (conftest's pure_tf fixture)."""
    assert tfl.use_pure_tf()


def compiled(fn, mode):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "jit"))


def bpmll(y, c, mode, dtype="float32", label_dtype="float32", upstream=None):
    """Loss and d(sum upstream * loss)/d logits, as float64 numpy arrays."""
    c_t = tf.cast(tf.constant(np.asarray(c, np.float64)), dtype)
    y_t = tf.cast(tf.constant(np.asarray(y, np.float64)), label_dtype)
    g_t = tf.ones(c_t.shape[:1], dtype) if upstream is None else tf.cast(tf.constant(upstream), dtype)

    def run(y_t, c_t, g_t):
        with tf.GradientTape() as tape:
            tape.watch(c_t)
            loss = tfl.bpmll_loss(y_t, c_t)
            total = tf.reduce_sum(loss * g_t)
        return loss, tape.gradient(total, c_t)

    loss, grad = compiled(run, mode)(y_t, c_t, g_t)
    assert loss.dtype == dtype and grad.dtype == dtype
    return tf.cast(loss, tf.float64).numpy(), tf.cast(grad, tf.float64).numpy()


def assert_same(got, want, rtol=0.0):
    """Equal element by element: NaN where want is NaN, the same infinity,
    exactly equal where rtol is 0, else within rtol (relative)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), (got, want)
    exact = np.isinf(want) | (want == 0) | (rtol == 0)
    assert np.array_equal(got[exact & ~nan], want[exact & ~nan]), (got, want)
    close = ~nan & ~exact
    np.testing.assert_allclose(got[close], want[close], rtol=rtol)


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------

NO_PAIRS = {
    # dtype: logits of rows without pairs (all negative, all positive)
    "float32": [[100, 0, -100], [-100, 100, 0], [100, 100, 100]],
    "float64": [[800, 0, -800], [-800, 800, 0], [800, 800, 800]],
    "float16": [[100, 0, -100], [-100, 100, 0], [60000, -60000, 0]],
    "bfloat16": [[100, 0, -100], [-100, 100, 0], [1e30, -1e30, 0]],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", list(NO_PAIRS))
def test_rows_without_pairs_give_zero_loss_and_exactly_zero_gradient(mode, dtype):
    """Huge finite logits in rows without pairs: no NaN from the branch that
    is not taken. The last row has pairs and is unaffected."""
    c = NO_PAIRS[dtype] + [[0, 0, 0]]
    y = [[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0]]
    loss, grad = bpmll(y, c, mode, dtype)
    assert_same(loss, [0, 0, 0, 1])
    assert_same(grad, [[0, 0, 0]] * 3 + [[-1, 0.5, 0.5]])


@pytest.mark.parametrize("mode", MODES)
def test_the_classic_where_trap(mode):
    """y = [0, 0], c = [100, 0] in float32: e^100 overflows in the branch of
    the old tf.where that was not taken; its gradient was [nan, nan]."""
    loss, grad = bpmll([[0, 0]], [[100, 0]], mode)
    assert_same(loss, [0])
    assert_same(grad, [[0, 0]])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("logits", [[[INF, -INF, 0], [-INF, INF, 7]], [[INF, INF, INF], [-INF, -INF, -INF]]])
def test_rows_without_pairs_ignore_infinite_logits(mode, logits):
    loss, grad = bpmll([[0, 0, 0], [1, 1, 1]], logits, mode)
    assert_same(loss, [0, 0])
    assert_same(grad, np.zeros((2, 3)))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_a_nan_logit_makes_its_row_nan_and_no_other(mode, dtype):
    """Rows with pairs and without: NaN loss and a NaN gradient everywhere
    in the row (the old path gave loss 1.0 for [[1, 0]], [[nan, 0]]... and 0
    for a row without pairs)."""
    y = [[1, 0], [1, 0], [0, 0], [1, 1]]
    c = [[NAN, 0], [0, 0], [NAN, 1], [3, NAN]]
    loss, grad = bpmll(y, c, mode, dtype)
    assert_same(loss, [NAN, 1, NAN, NAN])
    assert_same(grad, [[NAN, NAN], [-1, 1], [NAN, NAN], [NAN, NAN]])


# (labels, logits) -> (loss, gradient), IEEE extended arithmetic
INFINITE_LOGITS = {
    "positive_at_plus_inf": ([1, 0], [INF, 0], 0, [0, 0]),
    "positive_at_minus_inf": ([1, 0], [-INF, 0], INF, [-INF, INF]),
    "both_at_plus_inf": ([1, 0], [INF, INF], NAN, [NAN, NAN]),
    "negatives_at_both_infinities": ([1, 0, 0], [0, INF, -INF], INF, [-INF, INF, 0]),
    "negative_at_minus_inf": ([1, 0], [0, -INF], 0, [0, 0]),
    "positive_at_minus_inf_no_negative_mass": ([1, 0], [-INF, -INF], NAN, [NAN, NAN]),
    "soft_label_against_an_infinite_side": ([0.5, 1, 0], [0, -INF, 3], INF, [INF, -INF, INF]),
    "soft_labels_at_both_infinities": ([0.5, 0.5], [INF, -INF], INF, [NAN, NAN]),
    "plus_inf_positive_among_finite": ([1, 1, 0], [INF, 0, 0], 0.5, [0, -0.5, 0.5]),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(INFINITE_LOGITS))
def test_infinite_logits(mode, case):
    y, c, want_loss, want_grad = INFINITE_LOGITS[case]
    # A finite bystander row, padded with m negatives at -inf: they add
    # nothing to N but count in the pairs, so its loss is 1 / (1 + m).
    m = len(y) - 2
    loss, grad = bpmll([y, [1, 0] + [0] * m], [c, [0, 0] + [-INF] * m], mode)
    assert_same(loss, [want_loss, 1 / (1 + m)], rtol=1e-6)
    assert_same(grad, [want_grad, [-1 / (1 + m), 1 / (1 + m)] + [0] * m], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_huge_finite_logits_stay_in_the_log_domain(mode):
    """The seed's formula overflows (e^800 in float32) where the loss is 1."""
    loss, grad = bpmll([[1, 0], [1, 0]], [[800, 800], [100, 90]], mode, "float32")
    assert_same(loss, [1, np.exp(-10)], rtol=1e-5)
    assert_same(grad, [[-1, 1], [-np.exp(-10), np.exp(-10)]], rtol=1e-5)
    loss, grad = bpmll([[1, 0, 0]], [[800, 800, -800]], mode, "float64")
    # Exponents of 800 meet in the sums: a few units of 800 * 2^-53.
    assert_same(loss, [0.5], rtol=1e-12)
    assert_same(grad, [[-0.5, 0.5, 0]], rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradient_entries_stay_finite_where_the_loss_overflows(mode, dtype):
    """|grad_j| <= loss, but not every entry is as large: e^{-800} e^{800}
    terms are exactly representable where the loss (e^{800}/2) is not."""
    big = 800.0 if dtype == "float32" else 2000.0
    loss, grad = bpmll([[1, 1, 0], [1, 0, 1]], [[big, 0, big], [big, big, 0]], mode, dtype)
    assert_same(loss, [INF, INF])
    # Exponents of 800 (2000) meet: a few units of 800 * 2^-24 (2000 * 2^-53).
    assert_same(grad, [[-0.5, -INF, INF], [-0.5, INF, -INF]], rtol=2e-4 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_soft_label_whose_two_sides_overflow(mode):
    """y = 0.5 at c = 0 in a row with e^{+-100}: both sides of its gradient
    are about e^100 (beyond float32) and equal, so the gradient is 0; the
    other entries and the loss overflow float32 for real."""
    y, c = [[0.5, 1, 0]], [[0, -100, 100]]
    loss, grad = bpmll(y, c, mode, "float32")
    assert_same(loss, [INF])
    assert_same(grad, [[0, -INF, INF]])
    p = n = 0.5 + np.exp(100.0)
    loss, grad = bpmll(y, c, mode, "float64")
    assert_same(loss, [p * n / 2.25], rtol=1e-13)
    np.testing.assert_allclose(grad[0, 1:], [-np.exp(100.0) * n / 2.25, np.exp(100.0) * p / 2.25], rtol=1e-13)
    assert abs(grad[0, 0]) <= 1e-13 * np.exp(100.0) * p  # 0 up to rounding of e^200-sized sides


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("label_dtype", ["float32", "float64", "int32"])
def test_bad_labels_make_the_row_and_its_gradient_nan(mode, label_dtype):
    bad = [2.0, -1.0] if label_dtype == "int32" else [2.0, -0.5, NAN, INF]
    y = [[1, 0, 0]] + [[1, b, 0] for b in bad]
    loss, grad = bpmll(y, np.zeros((len(y), 3)), mode, label_dtype=label_dtype)
    assert_same(loss, [1] + [NAN] * len(bad))
    assert_same(grad, [[-1, 0.5, 0.5]] + [[NAN] * 3] * len(bad))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_logits_accumulate_in_float32(mode, dtype):
    """Results in the 16-bit type, rounded once from float32: e^{-8} and
    e^{12} (beyond float16's 65504, not bfloat16's range); a row without
    pairs at +-100 stays exactly 0."""
    loss, grad = bpmll([[1, 0], [1, 0], [0, 0]], [[4, -4], [-6, 6], [100, -100]], mode, dtype)
    e8, e12 = np.exp(8.0), np.exp(12.0)
    out_rtol = 2.0**-10 if dtype == "float16" else 2.0**-7
    assert_same(loss[[0, 2]], [1 / e8, 0], rtol=out_rtol)
    assert_same(grad[[0, 2]], [[-1 / e8, 1 / e8], [0, 0]], rtol=out_rtol)
    if dtype == "float16":
        assert_same(loss[1], INF)
        assert_same(grad[1], [-INF, INF])
    else:
        assert_same(loss[1], e12, rtol=out_rtol)
        assert_same(grad[1], [-e12, e12], rtol=out_rtol)


@pytest.mark.parametrize("mode", MODES)
def test_upstream_gradient_scales_each_row(mode):
    loss, grad = bpmll([[1, 0], [0, 1]], [[0, 0], [0, 1]], mode, "float64", "float64", upstream=[2.0, -3.0])
    assert_same(loss, [1, np.exp(-1)], rtol=1e-15)
    assert_same(grad, [[-2, 2], [-3 * np.exp(-1), 3 * np.exp(-1)]], rtol=1e-15)


@pytest.mark.parametrize("mode", MODES)
def test_no_gradient_for_labels(mode):
    def run(y, c):
        with tf.GradientTape() as tape:
            tape.watch([y, c])
            loss = tfl.bpmll_loss(y, c)
        return tape.gradient(loss, y, unconnected_gradients=tf.UnconnectedGradients.ZERO)

    grad_y = compiled(run, mode)(tf.constant([[0.3, 0.7]]), tf.constant([[1.0, 2.0]]))
    assert np.all(grad_y.numpy() == 0)
    y, c = tf.constant([[0.3, 0.7]]), tf.constant([[1.0, 2.0]])
    with tf.GradientTape() as tape:
        tape.watch([y, c])
        loss = tfl.bpmll_loss(y, c)
    assert tape.gradient(loss, y) is None


# --------------------------------------------------------------------------
# Correlation and CCC
# --------------------------------------------------------------------------

KINDS = {"pearson": tfl.correlation_loss, "ccc": tfl.ccc_loss}
Y = [0.5, -1.0, 2.0, 0.25, 1.5, -0.5]
X = [0.2, -0.7, 1.1, 0.9, 0.4, -0.1]


def correlation(kind, y, x, mode, mask=None, dtype="float32", epsilon=1e-7):
    """Loss, d(sum loss)/d y_true, d(sum loss)/d y_pred, float64 numpy."""
    y_t = tf.cast(tf.constant(np.asarray(y, np.float64)), dtype)
    x_t = tf.cast(tf.constant(np.asarray(x, np.float64)), dtype)
    mask_t = tf.ones(x_t.shape, tf.bool) if mask is None else tf.constant(np.asarray(mask, bool))

    def run(y_t, x_t, mask_t):
        with tf.GradientTape() as tape:
            tape.watch([y_t, x_t])
            loss = KINDS[kind](y_t, x_t, epsilon=epsilon, mask=mask_t)
        return (loss, *tape.gradient(loss, [y_t, x_t]))

    out = compiled(run, mode)(y_t, x_t, mask_t)
    assert all(t.dtype == dtype for t in out)
    return [tf.cast(t, tf.float64).numpy() for t in out]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize(
    "bad, where", [(NAN, "y_pred"), (INF, "y_pred"), (-INF, "y_true"), (NAN, "y_true")], ids=["nan_x", "inf_x", "minus_inf_y", "nan_y"]
)
def test_a_non_finite_value_at_a_valid_step_makes_the_row_nan(mode, kind, dtype, bad, where):
    """The row's loss and both gradients are NaN on its valid steps, 0 on its
    masked steps; the other rows are as computed without it."""
    y = np.array([Y, Y, Y])
    x = np.array([X, X, [0.3, 0.1, -0.4, 0.8, 0.0, 0.6]])
    (x if where == "y_pred" else y)[0, 1] = bad
    mask = np.ones(y.shape, bool)
    mask[0, 4] = False
    mask[2, 0] = False
    loss, grad_y, grad_x = correlation(kind, y, x, mode, mask, dtype)
    for t in (loss, grad_y, grad_x):
        assert np.all(np.isnan(t[0][mask[0]])), t[0]
        assert t[0, 4] == 0
        assert np.all(np.isfinite(t[1:]))
    alone = correlation(kind, y[1:], x[1:], mode, mask[1:], dtype)
    # Equal up to the summation order a batch of another size may get.
    tol = {"float16": 2.0**-9, "bfloat16": 2.0**-6, "float32": 1e-6, "float64": 1e-14}[dtype]
    for t, a in zip((loss, grad_y, grad_x), alone):
        np.testing.assert_allclose(t[1:], a, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_masked_steps_may_hold_anything(mode, kind):
    y = np.array([Y, Y])
    x = np.array([X, X])
    mask = np.array([[1, 1, 0, 1, 0, 1], [1, 1, 1, 1, 1, 0]], bool)
    clean = correlation(kind, y, x, mode, mask)
    y[0, 2], x[0, 4], x[1, 5], y[1, 5] = NAN, INF, -INF, NAN
    dirty = correlation(kind, y, x, mode, mask)
    for c, d in zip(clean, dirty):
        np.testing.assert_array_equal(d, c)
        assert np.all(d[~mask] == 0)
        assert np.all(np.isfinite(d))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_degenerate_rows(mode, dtype):
    """Pearson: a constant row or fewer than 2 valid steps -> loss exactly 1,
    gradient exactly 0. CCC (epsilon 0): loss exactly 1 on a constant row,
    whose partner still gets a gradient (the constant side's is exactly 0);
    gradient 0 when both rows are constant and equal (D = 0) or n = 1.
    No valid step: loss 0, gradient 0."""
    y = np.array([[1.5] * 6, Y, [0.25] * 6, Y, Y])
    x = np.array([X, [-2.0] * 6, [0.25] * 6, X, X])
    mask = np.ones(y.shape, bool)
    mask[3] = [0, 0, 1, 0, 0, 0]  # one valid step
    mask[4] = False  # none
    loss, grad_y, grad_x = correlation("pearson", y, x, mode, mask, dtype)
    assert np.all(loss[:4][mask[:4]] == 1) and np.all(loss[~mask] == 0) and np.all(loss[4] == 0)
    assert np.all(grad_y == 0) and np.all(grad_x == 0)
    loss, grad_y, grad_x = correlation("ccc", y, x, mode, mask, dtype, epsilon=0.0)
    assert np.all(loss[:4][mask[:4]] == 1) and np.all(loss[~mask] == 0)
    assert np.any(grad_y[0] != 0) and np.all(grad_x[0] == 0)  # y constant
    assert np.any(grad_x[1] != 0) and np.all(grad_y[1] == 0)  # x constant
    for g in (grad_y, grad_x):
        assert np.all(np.isfinite(g))
        assert np.all(g[2:] == 0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(KINDS))
def test_correlation_gradients_are_the_closed_form(mode, kind):
    """float64 gradients against central differences of the loss."""
    rng = np.random.default_rng(3)
    y = rng.normal(size=(2, 7))
    x = 0.4 * y + rng.normal(size=(2, 7))
    mask = rng.random((2, 7)) < 0.8
    mask[:, :3] = True
    weights = rng.uniform(0.5, 1.5, size=(2, 7))

    def total(y, x):
        loss = KINDS[kind](tf.constant(y), tf.constant(x), mask=tf.constant(mask))
        return float(tf.reduce_sum(loss * weights))

    def run(y_t, x_t):
        with tf.GradientTape() as tape:
            tape.watch([y_t, x_t])
            loss = KINDS[kind](y_t, x_t, mask=tf.constant(mask))
            t = tf.reduce_sum(loss * weights)
        return tape.gradient(t, [y_t, x_t])

    grads = [g.numpy() for g in compiled(run, mode)(tf.constant(y), tf.constant(x))]
    h = 1e-6
    for k, (arr, got) in enumerate(zip((y, x), grads)):
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            up, down = arr.copy(), arr.copy()
            up[idx] += h
            down[idx] -= h
            args_up = (up, x) if k == 0 else (y, up)
            args_down = (down, x) if k == 0 else (y, down)
            numeric[idx] = (total(*args_up) - total(*args_down)) / (2 * h)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)
        assert np.all(got[~mask] == 0)
