"""Property-based tests: every path of the public functions against
independent float64 numpy references (tests/helpers/numpy_reference.py),
over random shapes, label densities, soft labels, label types, masks,
dtypes, epsilons and logit scales from 1e-3 to 1e4, with NaN, +-inf, huge
finite logits (+-100, +-800) and rows without pairs or valid steps mixed in.

Paths, each fed the same examples (a fixed seed in the CI profile), and
the same fixed edge cases:
  op        the public function, eager (the fused CPU op)
  op_jit    the public function in tf.function(jit_compile=True) (the
            fused kernels as XLA custom calls where they lower, else the
            pure-TF path)
  pure      TF_FUSED_LOSSES_PY_OPS=1, eager
  pure_jit  TF_FUSED_LOSSES_PY_OPS=1, in tf.function(jit_compile=True)
The op path is never fed BP-MLL labels outside [0, 1] (the CPU op raises;
test_bpmll_names_the_first_bad_label); the pure path's NaN rows for them
are in tests/test_pure_tf_path.py.

Every element's class is stated by the reference: NaN where it is NaN, the
same infinity where it is infinite, exactly 0 (or 1) where that value is
structural (rows without pairs, masked steps, degenerate rows), and
otherwise within a dtype-aware error bound, where a value beyond the output
type's range must read as the infinity of its sign.

The default profile is derandomized and CI-sized; TFL_HYPOTHESIS_PROFILE=
thorough runs many more examples with a database under /tmp.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import numpy_reference as npref
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

import tf_fused_losses as tfl

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    # Shrinking an XLA-compiled example takes minutes; the blob reproduces it.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
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
PROFILE_NAME = os.environ.get("TFL_HYPOTHESIS_PROFILE", "ci")
PROFILE = settings.get_profile(PROFILE_NAME)


def same_examples_on_every_path(test):
    """A fixed seed in the CI profile, so that each path of a parametrized
    test sees the very same examples (derandomize alone gives each
    parametrization a sequence of its own)."""
    return seed(20261122)(test) if PROFILE_NAME == "ci" else test


PATHS = ["op", "op_jit", "pure", "pure_jit"]
DTYPES = ["float16", "bfloat16", "float32", "float64"]
# Rounding unit of the accumulation type (float32 for the 16-bit types) and
# of the output type.
ACC_EPS = {"float16": 2.0**-24, "bfloat16": 2.0**-24, "float32": 2.0**-24, "float64": 2.0**-53}
OUT_EPS = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
TINY = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126, "float64": 2.0**-1022}
LARGEST = {name: float(tf.as_dtype(name).max) for name in DTYPES}


def run_on_path(path, compute, *args):
    """compute(*args) on one path: eager or XLA-compiled, with or without
    the pure-TF switch (read when the public function is called or traced)."""
    fn = tf.function(compute, jit_compile=True) if path.endswith("_jit") else compute
    with pytest.MonkeyPatch.context() as mp:
        if path.startswith("pure"):
            mp.setenv(tfl.PURE_TF_ENV, "1")
        else:
            mp.delenv(tfl.PURE_TF_ENV, raising=False)
        return fn(*args)


def as_input(values, dtype):
    """The tensor a path gets, and its exact values in float64."""
    t = tf.cast(tf.constant(values, tf.float64), dtype)
    return t, tf.cast(t, tf.float64).numpy()


def to64(t):
    return tf.cast(t, tf.float64).numpy()


def lengths(max_short):
    """Short rows, and rows around the CPU kernels' chunk of 2048."""
    return st.one_of(st.integers(1, max_short), st.sampled_from([2047, 2048, 2049, 4097]))


def inject(rng, values, count, choices):
    """Puts one of `choices` at count random places."""
    for _ in range(count):
        if values.size:
            values.flat[rng.integers(values.size)] = rng.choice(choices)


def assert_elements(got, want, tol, exact, dtype, what, largest=None):
    """Each element in the class its reference value states:
    NaN -> NaN; +-inf -> the same infinity; exact -> equal (0 or 1, bit for
    bit); otherwise finite and within tol of want, or the infinity of want's
    sign where want is within tol of the largest representable value or
    beyond it (a finite output cannot be within tol of such a want).
    largest: the output type's by default, or per element (an intermediate
    in the accumulation type may bound it)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    tol = np.broadcast_to(np.asarray(tol, np.float64), want.shape)
    exact = np.broadcast_to(np.asarray(exact, bool), want.shape)
    largest = np.broadcast_to(LARGEST[dtype] if largest is None else np.asarray(largest, np.float64), want.shape)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        nan_want = np.isnan(want)
        inf_want = np.isinf(want)
        approx = ~nan_want & ~inf_want & ~exact
        close = np.isfinite(got) & (np.abs(got - want) <= tol)
        overflow = np.isinf(got) & (np.sign(got) == np.sign(want)) & (np.abs(want) + tol >= largest)
        ok = np.where(nan_want, np.isnan(got), False)
        ok |= inf_want & (got == want)
        ok |= exact & ~nan_want & ~inf_want & (got == want)
        ok |= approx & (close | overflow)
    if not ok.all():
        lines = [
            f"  {what}{tuple(int(k) for k in i)}: got {got[tuple(i)]!r}, want {want[tuple(i)]!r}"
            f" ({'exact' if exact[tuple(i)] else f'tol {tol[tuple(i)]:.3g}'})"
            for i in np.argwhere(~ok)[:10]
        ]
        raise AssertionError(f"{int((~ok).sum())} of {ok.size} elements of {what} wrong ({dtype}):\n" + "\n".join(lines))


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def bpmll_loss_and_grad(y, c, upstream):
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = tfl.bpmll_loss(y, c)
        total = tf.reduce_sum(loss * upstream)
    return loss, tape.gradient(total, c)


def bpmll_expected(y, c):
    """The rule's loss and gradient in float64; where a row is finite, short
    and its spread fits float64, the seed's pairwise formula instead (it must
    agree with the rule there)."""
    rule = npref.bpmll_rule(y, c)
    loss, grad = rule.loss.copy(), rule.grad.copy()
    finite = np.all(np.isfinite(c), axis=1)
    if y.shape[1] <= 300 and np.any(finite):
        spread = np.ptp(np.where(np.isfinite(c), c, 0), axis=1) if c.size else np.zeros(len(c))
        rows = finite & (spread < 600)
        if np.any(rows):
            pair_loss, pair_grad = npref.bpmll_pairwise(y[rows], c[rows])
            np.testing.assert_allclose(rule.loss[rows], pair_loss, rtol=1e-9, atol=1e-300)
            scale = rule.grad_scale[rows] + 1e-300
            assert np.all(np.abs(rule.grad[rows] - pair_grad) <= 1e-9 * scale)
            loss[rows], grad[rows] = pair_loss, pair_grad
    return rule, loss, grad


@pytest.mark.parametrize("path", PATHS)
@same_examples_on_every_path
@settings(PROFILE)
@given(data=st.data())
def test_bpmll_matches_the_numpy_reference(path, data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rows = data.draw(st.integers(0, 5), label="rows")
    labels = data.draw(lengths(70), label="labels")
    label_kind = data.draw(st.sampled_from(["hard", "soft", "mixed"]), label="label_kind")
    label_dtype = data.draw(
        st.sampled_from(
            ["same", "float32", "float64", "bool", "int32", "int64", "uint8"] if label_kind == "hard" else ["same", "float32"]
        ),
        label="label_dtype",
    )
    density = data.draw(st.floats(0, 1), label="density")
    log_scale = data.draw(st.floats(-3, 4), label="log10_scale")
    offset = data.draw(st.sampled_from([0.0, 1.0, -1.0]), label="offset_sign") * 10**log_scale
    specials = data.draw(st.sampled_from([0, 0, 1, 3]), label="non_finite_logits")
    huge = data.draw(st.sampled_from([0, 0, 1, 4]), label="huge_logits")
    no_pairs = data.draw(st.sampled_from([0, 0, 1, 2]), label="rows_without_pairs")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))

    shape = (rows, labels)
    hard = (rng.random(shape) < density).astype(np.float64)
    soft = np.clip(rng.random(shape) * 2 * density, 0, 1)
    y = {"hard": hard, "soft": soft, "mixed": np.where(rng.random(shape) < 0.5, hard, soft)}[label_kind]
    # TF runs CPU kernels with denormals flushed to zero, so the terms of
    # labels near the accumulation type's underflow vanish (README: soft
    # labels below 1e-20 lose precision).
    y[y < 1e-20] = 0
    for _ in range(no_pairs if rows else 0):
        y[rng.integers(rows)] = rng.choice([0.0, 1.0])
    c = offset + 10**log_scale * rng.standard_normal(shape)
    inject(rng, c, huge, [100.0, -100.0, 800.0, -800.0])
    inject(rng, c, specials, [np.nan, np.inf, -np.inf])
    y_t = tf.cast(tf.constant(y), dtype if label_dtype == "same" else label_dtype)
    check_bpmll(path, y_t, tf.cast(tf.constant(c), dtype), rng.uniform(0.5, 1.5, size=rows))


def check_bpmll(path, y_t, c_t, upstream):
    """Loss and gradient of sum(upstream * loss) on one path against the
    numpy references, element by element."""
    dtype = c_t.dtype.name
    rows, labels = c_t.shape
    g_t, g_seen = as_input(upstream, dtype)
    c_seen, y_seen = to64(c_t), to64(y_t)
    loss_t, grad_t = run_on_path(path, bpmll_loss_and_grad, y_t, c_t, g_t)
    assert loss_t.dtype == dtype and loss_t.shape == (rows,)
    assert grad_t.dtype == dtype and grad_t.shape == (rows, labels)

    rule, want_loss, want_grad = bpmll_expected(y_seen, c_seen)
    # Accumulation error grows with the size of the exponents that meet in
    # the sums and with the row length; then one rounding to the output.
    finite_c = np.where(np.isfinite(c_seen), np.abs(c_seen), 0)
    exponent = np.maximum(finite_c.max(axis=1, initial=0), 1)
    rtol = 64 * ACC_EPS[dtype] * exponent * np.sqrt(labels) + 2 * OUT_EPS[dtype]
    with np.errstate(invalid="ignore", over="ignore"):
        loss_tol = rtol * np.abs(want_loss) + 4 * TINY[dtype]
        # Each gradient entry is the difference of two sides, each known to
        # rtol; its error is measured against their sum (wide for a soft
        # label whose two sides are huge and nearly cancel: such an entry is
        # ill-conditioned on every path).
        scale = np.minimum(rule.grad_scale, np.finfo(np.float64).max)
        grad_tol = (rtol * g_seen)[:, None] * scale + 4 * TINY[dtype]
        want_grad = g_seen[:, None] * want_grad
    # The gradient of a row's loss is formed in the accumulation type, then
    # scaled by the upstream gradient g: g * grad may be representable where
    # grad is not.
    # The fused op caches that gradient in y_pred's dtype (its second output)
    # before the scaling: in 16-bit types g * grad may be finite where the
    # cached grad is already inf (README, Limits).
    acc_largest = LARGEST["float64" if dtype == "float64" else "float32"]
    cached_largest = LARGEST[dtype] if path.startswith("op") else acc_largest
    grad_largest = np.minimum(LARGEST[dtype], cached_largest * np.minimum(g_seen, 1))[:, None]
    assert_elements(to64(loss_t), want_loss, loss_tol, rule.loss_exact_zero, dtype, "loss")
    assert_elements(to64(grad_t), want_grad, grad_tol, rule.grad_exact_zero, dtype, "grad", grad_largest)


INF, NAN = np.inf, np.nan
# (y, c, dtype): the cases of the rule, each through every path.
BPMLL_EDGE_CASES = {
    "no_pairs_huge_float32": ([[0, 0], [1, 1], [0, 0]], [[100, 0], [-100, 100], [-100, -100]], "float32"),
    "no_pairs_huge_float64": ([[0, 0], [1, 1]], [[800, -800], [-800, 800]], "float64"),
    "no_pairs_huge_bfloat16": ([[0, 0, 0], [1, 1, 1]], [[100, 0, -100], [-100, 100, 0]], "bfloat16"),
    "no_pairs_infinite": ([[0, 0, 0], [1, 1, 1]], [[INF, -INF, 0], [-INF, INF, 5]], "float32"),
    "nan_logit_row": ([[1, 0], [1, 0]], [[NAN, 0], [0, 0]], "float32"),
    "nan_logit_row_without_pairs": ([[0, 0], [1, 0]], [[NAN, 0], [0, 0]], "float32"),
    "nan_logit_float16": ([[1, 0, 0], [0, 1, 0]], [[0, NAN, 1], [1, 2, 3]], "float16"),
    "positive_at_plus_inf": ([[1, 0]], [[INF, 0]], "float32"),
    "positive_at_minus_inf": ([[1, 0]], [[-INF, 0]], "float32"),
    "both_at_plus_inf": ([[1, 0]], [[INF, INF]], "float32"),
    "negatives_at_both_infinities": ([[1, 0, 0]], [[0, INF, -INF]], "float32"),
    "negative_at_minus_inf_only": ([[1, 0], [1, 0]], [[0, -INF], [5, -INF]], "float64"),
    "positive_at_minus_inf_soft": ([[0.5, 1, 0, 0.25]], [[0, -INF, 3, 1]], "float32"),
    "soft_sides_both_infinite": ([[0.5, 0.25, 0.75, 0.5]], [[0, INF, -INF, 1]], "float32"),
    "log_domain_float32": ([[1, 0], [1, 0]], [[800, 800], [100, 90]], "float32"),
    "log_domain_float64": ([[1, 0, 0]], [[800, 800, -800]], "float64"),
    "soft_sides_overflow": ([[0.5, 1, 0]], [[0, -100, 100]], "float32"),
    "loss_overflows_but_some_gradients_do_not": ([[1, 1, 0], [1, 0, 1]], [[800, 0, 800], [100, 50, -100]], "float32"),
    "loss_overflows_float64": ([[1, 0, 1, 0]], [[2000, 2000, 0, 0]], "float64"),
    "overflow_float16": ([[1, 0], [1, 0]], [[-8, 8], [8, -8]], "float16"),
}


@pytest.mark.parametrize("case", list(BPMLL_EDGE_CASES))
@pytest.mark.parametrize("path", PATHS)
def test_bpmll_edge_cases(path, case):
    y, c, dtype = BPMLL_EDGE_CASES[case]
    y, c = np.array(y, np.float64), np.array(c, np.float64)
    check_bpmll(path, tf.constant(y, tf.float32), tf.cast(tf.constant(c), dtype), np.linspace(0.5, 1.5, len(y)))


@settings(PROFILE)
@given(data=st.data())
def test_bpmll_names_the_first_bad_label(data):
    """Labels outside [0, 1], NaN included, fail the call on CPU, naming the
    first bad element in row-major order whichever thread saw it (a GPU and
    the pure-TF path mark the rows NaN instead: tests/test_pure_tf_path.py)."""
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


@settings(PROFILE)
@given(data=st.data())
def test_numpy_bpmll_rule_is_the_seed_formula(data):
    """The yardstick itself: the rule's log-domain evaluation equals the
    seed's pairwise sum on finite logits, soft labels included."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    shape = (data.draw(st.integers(1, 4), label="rows"), data.draw(st.integers(1, 40), label="labels"))
    y = np.where(rng.random(shape) < 0.5, rng.random(shape) < 0.4, rng.random(shape))
    # Logit spreads up to 600: the pairwise terms e^{c_l - c_k} stay finite.
    c = np.clip(rng.standard_normal(shape) * 10 ** data.draw(st.floats(-2, 2.5), label="log10_scale"), -300, 300)
    rule = npref.bpmll_rule(y, c)
    loss, grad = npref.bpmll_pairwise(y, c)
    np.testing.assert_allclose(rule.loss, loss, rtol=1e-10, atol=1e-300)
    assert np.all(np.abs(rule.grad - grad) <= 1e-10 * rule.grad_scale + 1e-300)
    no_pairs = (y.sum(axis=1) == 0) | ((1 - y).sum(axis=1) == 0)
    assert np.array_equal(rule.loss_exact_zero, no_pairs)


# --------------------------------------------------------------------------
# Correlation and CCC
# --------------------------------------------------------------------------

CORRELATION = {False: tfl.correlation_loss, True: tfl.ccc_loss}


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


@pytest.mark.parametrize("path", PATHS)
@same_examples_on_every_path
@settings(PROFILE)
@given(data=st.data())
def test_correlation_and_ccc_match_the_numpy_reference(path, data):
    concordance = data.draw(st.booleans(), label="concordance")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = (data.draw(st.integers(0, 5), label="rows"), data.draw(lengths(60), label="steps"))
    rank_3 = data.draw(st.booleans(), label="rank_3")
    epsilon = data.draw(st.sampled_from([0.0, 1e-7, 1e-3, 1.0]), label="epsilon")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    y, x = make_sequences(data, rng, shape)
    mask = make_mask(data, rng, shape)
    if mask is not None and data.draw(st.booleans(), label="nan_padding"):
        x[~mask] = np.nan  # masked steps may hold anything
    specials = data.draw(st.sampled_from([0, 0, 1, 3]), label="non_finite_values")
    inject(rng, y, specials // 2, [np.nan, np.inf, -np.inf])
    inject(rng, x, specials - specials // 2, [np.nan, np.inf, -np.inf])

    check_correlation(path, concordance, y, x, rng.uniform(0.5, 1.5, size=shape), mask, epsilon, dtype, rank_3)


def check_correlation(path, concordance, y, x, upstream, mask, epsilon, dtype, rank_3=False):
    """Loss and both gradients of sum(upstream * loss) on one path against
    the numpy reference, element by element."""
    fn = CORRELATION[concordance]
    shape = x.shape
    y_t, y_seen = as_input(y, dtype)
    x_t, x_seen = as_input(x, dtype)
    g_t, g_seen = as_input(upstream, dtype)
    if rank_3:
        y_t, x_t = y_t[..., None], x_t[..., None]
    mask_t = None if mask is None else tf.constant(mask)

    def compute(y_t, x_t, g_t, *mask_arg):
        with tf.GradientTape() as tape:
            tape.watch([y_t, x_t])
            loss = fn(y_t, x_t, epsilon=epsilon, mask=mask_arg[0] if mask_arg else None)
            total = tf.reduce_sum(loss * g_t)
        return (loss, *tape.gradient(total, [y_t, x_t]))

    loss_t, grad_y_t, grad_x_t = run_on_path(path, compute, y_t, x_t, g_t, *([] if mask_t is None else [mask_t]))
    assert loss_t.dtype == dtype and loss_t.shape == shape
    assert grad_y_t.dtype == dtype and grad_x_t.dtype == dtype
    assert grad_y_t.shape == y_t.shape and grad_x_t.shape == x_t.shape
    loss, grad_y, grad_x = (to64(tf.reshape(t, shape)) for t in (loss_t, grad_y_t, grad_x_t))

    # The op's epsilon is a float attribute: float32 whatever the dtype.
    epsilon = float(np.float32(epsilon))
    ref = npref.correlation(y_seen, x_seen, mask, epsilon, g_seen, concordance)
    valid = np.ones(shape, bool) if mask is None else mask
    with np.errstate(invalid="ignore", over="ignore"):
        xv, yv = np.where(valid, x_seen, 0), np.where(valid, y_seen, 0)
        steps = np.maximum(valid.sum(axis=1), 1)
        mean_x, mean_y = xv.sum(axis=1) / steps, yv.sum(axis=1) / steps
        centred_x = np.where(valid, xv - mean_x[:, None], 0)
        centred_y = np.where(valid, yv - mean_y[:, None], 0)
        var_x, var_y = (centred_x**2).sum(axis=1) / steps, (centred_y**2).sum(axis=1) / steps
        spread = np.sqrt(var_x) + np.sqrt(var_y)
        # Rounding of the centred values is relative to each row's spread;
        # the CCC's mean gap is relative to the means. Then one output
        # rounding. (Rows holding NaN or inf are in the NaN class: their
        # bound is unused.)
        condition = 1 + (np.abs(mean_x) + np.abs(mean_y)) / np.where(spread > 0, spread, 1)
        rtol = (64 * ACC_EPS[dtype] * condition * np.sqrt(steps))[:, None]
        loss_tol = rtol * (1 + np.abs(1 - ref.loss)) + 2 * OUT_EPS[dtype] * np.abs(ref.loss)
        # Each gradient entry sums terms up to k |g| |c_other| / D and the
        # row's own entries; that sets the scale of its error.
        k = 2.0 if concordance else 1.0
        if concordance:
            denominator = var_x + var_y + (mean_x - mean_y) ** 2 + epsilon
        else:
            denominator = np.sqrt(var_x * var_y) + epsilon
        term = k * np.where(valid, np.abs(g_seen), 0).max(axis=1, initial=0) * np.maximum(
            np.abs(centred_x).max(axis=1, initial=0), np.abs(centred_y).max(axis=1, initial=0)
        )
        term = np.where(denominator > 0, term / np.where(denominator > 0, denominator, 1), 0)
        grad_peak = np.maximum(
            np.nan_to_num(np.abs(ref.grad_x), nan=0).max(axis=1, initial=0),
            np.nan_to_num(np.abs(ref.grad_y), nan=0).max(axis=1, initial=0),
        )
        scale = np.maximum(term, grad_peak)[:, None]
        grad_tols = [rtol * scale + 2 * OUT_EPS[dtype] * np.abs(np.nan_to_num(want)) + 4 * TINY[dtype] for want in (ref.grad_x, ref.grad_y)]
    assert_elements(loss, ref.loss, loss_tol, ref.exact_loss, dtype, "loss")
    assert_elements(grad_x, ref.grad_x, grad_tols[0], ref.exact_grad, dtype, "grad_y_pred")
    assert_elements(grad_y, ref.grad_y, grad_tols[1], ref.exact_grad, dtype, "grad_y_true")


_Y = [0.5, -1.0, 2.0, 0.25, 1.5]
_X = [0.2, -0.7, 1.1, 0.9, 0.4]
# (y, x, mask, epsilon, dtype): NaN and inf at valid and masked steps,
# degenerate rows, each through every path, Pearson and CCC.
CORRELATION_EDGE_CASES = {
    "nan_in_y_pred": ([_Y, _Y], [[0.2, NAN, 1.1, 0.9, 0.4], _X], None, 1e-7, "float32"),
    "inf_in_y_pred": ([_Y, _Y], [_X, [0.2, -0.7, INF, 0.9, 0.4]], None, 1e-7, "float32"),
    "minus_inf_in_y_true": ([[0.5, -1.0, 2.0, -INF, 1.5], _Y], [_X, _X], None, 1e-7, "float64"),
    "nan_in_both_float16": ([[NAN, -1.0, 2.0, 0.25, 1.5], _Y], [_X, [0.2, -0.7, 1.1, 0.9, NAN]], None, 1e-3, "float16"),
    "inf_bfloat16": ([_Y, _Y], [[INF, -0.7, 1.1, 0.9, 0.4], _X], None, 1e-3, "bfloat16"),
    "masked_nan_and_inf_ignored": (
        [[0.5, -1.0, NAN, 0.25, 1.5], _Y],
        [[0.2, -0.7, 1.1, INF, 0.4], [0.2, -0.7, 1.1, 0.9, -INF]],
        [[1, 1, 0, 0, 1], [1, 1, 1, 1, 0]],
        1e-7,
        "float32",
    ),
    "nan_at_valid_step_masked_row": ([_Y, _Y], [[NAN, -0.7, 1.1, 0.9, 0.4], _X], [[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]], 1e-7, "float32"),
    "constant_rows": ([[1.5] * 5, _Y, [0.3] * 5], [_X, [-2.0] * 5, [0.3] * 5], None, 1e-7, "float32"),
    "constant_equal_rows_epsilon_0": ([[0.3] * 5, _Y], [[0.3] * 5, _X], None, 0.0, "float64"),
    "one_and_no_valid_step": ([_Y, _Y, _Y], [_X, _X, _X], [[0, 0, 1, 0, 0], [0] * 5, [1] * 5], 1e-7, "float32"),
}


@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("case", list(CORRELATION_EDGE_CASES))
@pytest.mark.parametrize("path", PATHS)
def test_correlation_edge_cases(path, case, concordance):
    y, x, mask, epsilon, dtype = CORRELATION_EDGE_CASES[case]
    y, x = np.array(y, np.float64), np.array(x, np.float64)
    mask = None if mask is None else np.array(mask, bool)
    check_correlation(path, concordance, y, x, np.linspace(0.5, 1.5, x.size).reshape(x.shape), mask, epsilon, dtype)


@settings(PROFILE)
@given(data=st.data())
def test_numpy_correlation_gradients_are_the_derivatives(data):
    """The yardstick itself: its closed-form gradients against central
    differences of its own loss, Pearson and CCC, with masks and per-step
    weights."""
    concordance = data.draw(st.booleans(), label="concordance")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    shape = (data.draw(st.integers(1, 3), label="rows"), data.draw(st.integers(3, 12), label="steps"))
    epsilon = data.draw(st.sampled_from([0.0, 1e-3, 1.0]), label="epsilon")
    y = rng.standard_normal(shape) * 2 + rng.standard_normal()
    x = 0.5 * y + rng.standard_normal(shape) + rng.standard_normal()
    mask = rng.random(shape) < 0.8
    mask[:, :2] = True  # at least 2 valid steps: a non-degenerate Pearson row
    g = rng.uniform(0.5, 1.5, size=shape)
    ref = npref.correlation(y, x, mask, epsilon, g, concordance)
    h = 1e-6
    for which, want in (("x", ref.grad_x), ("y", ref.grad_y)):
        numeric = np.zeros(shape)
        for idx in np.ndindex(shape):
            up, down = [np.array(v) for v in (y, x)], [np.array(v) for v in (y, x)]
            k = 1 if which == "x" else 0
            up[k][idx] += h
            down[k][idx] -= h
            numeric[idx] = (
                npref.correlation_total(*up, mask, epsilon, g, concordance)
                - npref.correlation_total(*down, mask, epsilon, g, concordance)
            ) / (2 * h)
        np.testing.assert_allclose(want, numeric, rtol=1e-5, atol=1e-7, err_msg=which)
        assert np.all(want[~mask] == 0)
