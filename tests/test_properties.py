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

Every element's class is stated by the reference, and the error bounds,
edge cases and drawn examples are those of tests/helpers/reference_checks.py
(shared with the JAX and keras.ops tests): NaN where it is NaN, the same
infinity where it is infinite, exactly 0 (or 1) where that value is
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
from helpers import reference_checks as rc
from helpers.reference_checks import BPMLL_EDGE_CASES, CORRELATION_EDGE_CASES, lengths
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


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def bpmll_loss_and_grad(y, c, upstream):
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = tfl.bpmll_loss(y, c)
        total = tf.reduce_sum(loss * upstream)
    return loss, tape.gradient(total, c)


@pytest.mark.parametrize("path", PATHS)
@same_examples_on_every_path
@settings(PROFILE)
@given(data=st.data())
def test_bpmll_matches_the_numpy_reference(path, data):
    y, c, upstream, dtype, label_dtype = rc.draw_bpmll_example(data)
    check_bpmll(path, tf.cast(tf.constant(y), label_dtype), tf.cast(tf.constant(c), dtype), upstream)


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

    # The fused op caches the row's gradient in y_pred's dtype (its second
    # output) before the scaling by the upstream gradient; the pure path
    # forms it in the accumulation type.
    rc.check_bpmll(
        to64(loss_t), to64(grad_t), y_seen, c_seen, g_seen, dtype,
        pairwise=True, cross_check=True, cached_grad=path.startswith("op"),
    )


@pytest.mark.parametrize("case", list(BPMLL_EDGE_CASES))
@pytest.mark.parametrize("path", PATHS)
def test_bpmll_edge_cases(path, case):
    y, c, upstream, dtype = rc.bpmll_edge_case(BPMLL_EDGE_CASES[case])
    check_bpmll(path, tf.constant(y, tf.float32), tf.cast(tf.constant(c), dtype), upstream)


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


@pytest.mark.parametrize("path", PATHS)
@same_examples_on_every_path
@settings(PROFILE)
@given(data=st.data())
def test_correlation_and_ccc_match_the_numpy_reference(path, data):
    e = rc.draw_correlation_example(data)
    check_correlation(path, e.concordance, e.y, e.x, e.upstream, e.mask, e.epsilon, e.dtype, e.rank_3)


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

    rc.check_correlation(loss, grad_y, grad_x, y_seen, x_seen, mask, epsilon, g_seen, concordance, dtype)


@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("case", list(CORRELATION_EDGE_CASES))
@pytest.mark.parametrize("path", PATHS)
def test_correlation_edge_cases(path, case, concordance):
    y, x, upstream, mask, epsilon, dtype = rc.correlation_edge_case(CORRELATION_EDGE_CASES[case])
    check_correlation(path, concordance, y, x, upstream, mask, epsilon, dtype)


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
