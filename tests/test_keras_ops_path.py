"""The keras.ops forms of the losses (tf_fused_losses._keras_ops: what JAX
arrays run where the fused JAX ops cannot load or with
TF_FUSED_LOSSES_PY_OPS=1, and what torch and other Keras backends run)
against the float64 numpy references (tests/helpers/numpy_reference.py), on
whichever Keras backend is active (KERAS_BACKEND): values and gradients,
every dtype, shapes with 0, 1, odd and larger sizes, masks, and the NaN,
+-inf, no-pairs and degenerate classes of docs/semantics.md; eagerly and
compiled (tf.function(jit_compile=True) on tensorflow, jax.jit on jax).
Then against the backend's fused ops (the TF op on tensorflow, the JAX
custom calls on jax) where they load.

Gradients come from the backend's own machinery (tf.GradientTape,
jax.vjp, torch autograd), as vector-Jacobian products with an explicit
upstream gradient, through `loss_and_vjp`. Element classes, error bounds
and edge cases are those of tests/helpers/reference_checks.py (shared with
tests/test_properties.py, which tests the TF paths).
"""

import contextlib
import os

import keras
import ml_dtypes
import numpy as np
import pytest
from helpers import numpy_reference as npref
from helpers import reference_checks as rc
from helpers.reference_checks import DTYPES, INF, NAN, inject
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tf_fused_losses import _keras_ops

BACKEND = keras.backend.backend()
if BACKEND not in ("tensorflow", "jax", "torch"):
    pytest.skip(f"no gradient helper for the Keras backend {BACKEND!r}", allow_module_level=True)

settings.register_profile(
    "keras_ops_ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "keras_ops_thorough",
    max_examples=800,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile(
    "keras_ops_thorough" if os.environ.get("TFL_HYPOTHESIS_PROFILE") == "thorough" else "keras_ops_ci"
)

MODES = ["eager", "jit"]
NUMPY_DTYPES = {"bfloat16": ml_dtypes.bfloat16}


# --------------------------------------------------------------------------
# The backend's machinery
# --------------------------------------------------------------------------


@contextlib.contextmanager
def precision(dtype):
    """float64 on JAX needs x64 switched on (Keras leaves it off)."""
    if BACKEND == "jax" and dtype == "float64":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def as_input(values, dtype):
    """The backend tensor a call gets, and its exact values in float64."""
    array = np.asarray(values, np.float64).astype(NUMPY_DTYPES.get(dtype, dtype))
    return keras.ops.convert_to_tensor(array), array.astype(np.float64)


def to64(t):
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.cast(t, tf.float64).numpy()
    if BACKEND == "torch":
        t = t.detach().float() if t.dtype.is_floating_point and t.dtype.itemsize < 4 else t.detach()
        return t.cpu().numpy().astype(np.float64)
    return np.asarray(keras.ops.convert_to_numpy(t)).astype(np.float64)


def loss_and_vjp(fn, inputs, upstream, wrt, mode):
    """fn(*inputs) and the vector-Jacobian products upstream^T d fn / d
    inputs[i] for i in wrt (None where the backend says there is no
    gradient), eager or compiled."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def run(inputs, upstream):
            with tf.GradientTape() as tape:
                for i in wrt:
                    tape.watch(inputs[i])
                loss = fn(*inputs)
            return loss, tape.gradient(loss, [inputs[i] for i in wrt], output_gradients=upstream)

        if mode == "jit":
            run = tf.function(run, jit_compile=True)
        loss, grads = run(list(inputs), upstream)
        return loss, list(grads)
    if BACKEND == "jax":
        import jax

        def run(inputs, upstream):
            def of(*diff):
                full = list(inputs)
                for i, d in zip(wrt, diff):
                    full[i] = d
                return fn(*full)

            loss, pullback = jax.vjp(of, *[inputs[i] for i in wrt])
            return loss, list(pullback(upstream))

        if mode == "jit":
            run = jax.jit(run)
        return run(list(inputs), upstream)
    if mode == "jit":
        pytest.skip("no compiled mode for torch here")
    inputs = [x.detach().clone().requires_grad_(i in wrt) for i, x in enumerate(inputs)]
    loss = fn(*inputs)
    if loss.requires_grad:  # else no input in wrt reaches the loss: no gradient (None), as TF's tape says
        loss.backward(upstream)
    return loss.detach(), [inputs[i].grad for i in wrt]


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def check_bpmll(mode, y, c, upstream, dtype, label_dtype=None):
    """Loss and gradient of the keras.ops BP-MLL on one mode against the
    numpy rule, element by element (rc.check_bpmll)."""
    rows, labels = c.shape
    with precision(dtype):
        y_t, y_seen = as_input(y, label_dtype or dtype)
        c_t, c_seen = as_input(c, dtype)
        g_t, g_seen = as_input(upstream, dtype)
        loss_t, (grad_t,) = loss_and_vjp(_keras_ops.bpmll_loss, [y_t, c_t], g_t, [1], mode)
        assert keras.backend.standardize_dtype(loss_t.dtype) == dtype and tuple(loss_t.shape) == (rows,)
        assert keras.backend.standardize_dtype(grad_t.dtype) == dtype and tuple(grad_t.shape) == (rows, labels)
        loss, grad = to64(loss_t), to64(grad_t)

    # The row's gradient is formed in the accumulation type, then scaled.
    rc.check_bpmll(loss, grad, y_seen, c_seen, g_seen, dtype)


def bpmll_labels(rng, shape, kind):
    hard = (rng.random(shape) < 0.3).astype(np.float64)
    if kind == "hard":
        return hard
    soft = rng.random(shape)
    return soft if kind == "soft" else np.where(rng.random(shape) < 0.5, hard, soft)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (1, 1), (1, 2), (5, 17), (2, 1001)], ids=str)
def test_bpmll_shapes_and_dtypes(rng, mode, dtype, shape):
    y = bpmll_labels(rng, shape, "mixed")
    c = 2 * rng.standard_normal(shape)
    check_bpmll(mode, y, c, rng.uniform(0.5, 1.5, size=shape[0]), dtype)


@pytest.mark.parametrize("label_dtype", ["bool", "int32", "int64", "uint8", "float16", "bfloat16", "float64"])
def test_bpmll_label_dtypes(rng, label_dtype):
    shape = (4, 23)
    check_bpmll("eager", bpmll_labels(rng, shape, "hard"), rng.standard_normal(shape), np.ones(4), "float32", label_dtype)


@pytest.mark.parametrize("mode", MODES)
@seed(20261122)
@settings(PROFILE)
@given(data=st.data())
def test_bpmll_matches_the_numpy_reference(mode, data):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rows = data.draw(st.integers(0, 5), label="rows")
    labels = data.draw(st.one_of(st.integers(1, 70), st.sampled_from([257, 2049])), label="labels")
    kind = data.draw(st.sampled_from(["hard", "soft", "mixed"]), label="label_kind")
    y, c, upstream = rc.draw_bpmll_rows(data, (rows, labels), lambda rng, shape: bpmll_labels(rng, shape, kind))
    check_bpmll(mode, y, c, upstream, dtype)


# (y, c, dtype): the rule's cases (rc.BPMLL_EDGE_CASES), with 16-bit rows
# whose logits are huge for their type, all-infinite rows, the classic
# tf.where trap and a bfloat16 NaN.
BPMLL_EDGE_CASES = rc.with_cases(
    rc.BPMLL_EDGE_CASES,
    "no_pairs_huge_float64",
    no_pairs_huge_float16=([[0, 0, 0], [1, 1, 1]], [[60000, -60000, 0], [-100, 100, 0]], "float16"),
    no_pairs_huge_bfloat16=([[0, 0, 0], [1, 1, 1]], [[1e30, -1e30, 0], [-100, 100, 0]], "bfloat16"),
)
BPMLL_EDGE_CASES = rc.with_cases(
    BPMLL_EDGE_CASES,
    "no_pairs_infinite",
    no_pairs_all_infinite=([[0, 0, 0], [1, 1, 1]], [[INF, INF, INF], [-INF, -INF, -INF]], "float32"),
    classic_where_trap=([[0, 0]], [[100, 0]], "float32"),
)
BPMLL_EDGE_CASES = rc.with_cases(
    BPMLL_EDGE_CASES,
    "nan_logit_float16",
    nan_logit_bfloat16=([[1, 0, 0], [1, 1, 1]], [[0, 1, NAN], [NAN, 2, 3]], "bfloat16"),
)


@pytest.mark.parametrize("case", list(BPMLL_EDGE_CASES))
@pytest.mark.parametrize("mode", MODES)
def test_bpmll_edge_cases(mode, case):
    y, c, upstream, dtype = rc.bpmll_edge_case(BPMLL_EDGE_CASES[case])
    check_bpmll(mode, y, c, upstream, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "label_dtype, bad", [("float32", 1.5), ("float32", -0.5), ("float32", NAN), ("float32", INF), ("int32", 2), ("int32", -1)]
)
def test_bpmll_bad_labels_make_their_row_nan(mode, label_dtype, bad):
    """keras.ops cannot raise on a value (as on a GPU and the pure-TF path):
    a bad label gives its row NaN loss and gradient, and no other row."""
    y = np.array([[1, 0, 0], [1, 0, bad], [0, 1, 1]], np.float64)
    c = np.array([[0.5, -1, 2], [3, 1, -2], [0, 0, 0]], np.float64)
    with precision("float32"):
        y_t, _ = as_input(y, label_dtype)
        c_t, _ = as_input(c, "float32")
        g_t, _ = as_input(np.ones(3), "float32")
        loss, (grad,) = loss_and_vjp(_keras_ops.bpmll_loss, [y_t, c_t], g_t, [1], mode)
    loss, grad = to64(loss), to64(grad)
    assert np.isnan(loss[1]) and np.all(np.isnan(grad[1]))
    assert np.all(np.isfinite(loss[[0, 2]])) and np.all(np.isfinite(grad[[0, 2]]))


def test_bpmll_gives_labels_no_gradient(rng):
    y = bpmll_labels(rng, (3, 9), "soft")
    c = rng.standard_normal((3, 9))
    y_t, _ = as_input(y, "float32")
    c_t, _ = as_input(c, "float32")
    g_t, _ = as_input(np.ones(3), "float32")
    _, (grad_y,) = loss_and_vjp(_keras_ops.bpmll_loss, [y_t, c_t], g_t, [0], "eager")
    assert grad_y is None or np.all(to64(grad_y) == 0)


# --------------------------------------------------------------------------
# Correlation and CCC
# --------------------------------------------------------------------------


def correlation_fn(concordance, epsilon, masked):
    if masked:
        return lambda y, x, m: _keras_ops.correlation_loss(y, x, epsilon=epsilon, mask=m, concordance=concordance)
    return lambda y, x: _keras_ops.correlation_loss(y, x, epsilon=epsilon, mask=None, concordance=concordance)


def check_correlation(mode, concordance, y, x, upstream, mask, epsilon, dtype, rank_3=False, mask_dtype="bool"):
    """Loss and both gradients on one mode against the numpy reference,
    element by element (rc.check_correlation)."""
    shape = x.shape
    with precision(dtype):
        y_t, y_seen = as_input(y, dtype)
        x_t, x_seen = as_input(x, dtype)
        g_t, g_seen = as_input(upstream, dtype)
        if rank_3:
            y_t, x_t = keras.ops.expand_dims(y_t, -1), keras.ops.expand_dims(x_t, -1)
        inputs = [y_t, x_t] + ([] if mask is None else [as_input(mask, mask_dtype)[0]])
        loss_t, (grad_y_t, grad_x_t) = loss_and_vjp(
            correlation_fn(concordance, epsilon, mask is not None), inputs, g_t, [0, 1], mode
        )
        for t, want_shape in ((loss_t, shape), (grad_y_t, y_t.shape), (grad_x_t, x_t.shape)):
            assert keras.backend.standardize_dtype(t.dtype) == dtype and tuple(t.shape) == tuple(want_shape)
        loss, grad_y, grad_x = (to64(t).reshape(shape) for t in (loss_t, grad_y_t, grad_x_t))

    rc.check_correlation(loss, grad_y, grad_x, y_seen, x_seen, mask, epsilon, g_seen, concordance, dtype)


def sequences(rng, shape):
    y = rng.standard_normal(shape) * 2 + 0.5
    x = 0.6 * y + rng.standard_normal(shape) - 0.3
    return y, x


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (1, 1), (2, 2), (5, 17), (3, 1001)], ids=str)
@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
def test_correlation_shapes_and_dtypes(rng, mode, dtype, shape, concordance):
    y, x = sequences(rng, shape)
    mask = rng.random(shape) < 0.8
    check_correlation(mode, concordance, y, x, rng.uniform(0.5, 1.5, size=shape), mask, 1e-7, dtype)
    check_correlation(mode, concordance, y, x, rng.uniform(0.5, 1.5, size=shape), None, 1e-7, dtype, rank_3=True)


@pytest.mark.parametrize("mask_dtype", ["float32", "int32", "uint8"])
def test_numeric_masks_mean_nonzero(rng, mask_dtype):
    y, x = sequences(rng, (3, 12))
    mask = (rng.random((3, 12)) < 0.7) * rng.choice([1, 2, 3], size=(3, 12))
    check_correlation("eager", False, y, x, np.ones((3, 12)), mask, 1e-7, "float32", mask_dtype=mask_dtype)


@pytest.mark.parametrize("mode", MODES)
@seed(20261122)
@settings(PROFILE)
@given(data=st.data())
def test_correlation_and_ccc_match_the_numpy_reference(mode, data):
    concordance = data.draw(st.booleans(), label="concordance")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = (data.draw(st.integers(0, 5), label="rows"), data.draw(st.integers(1, 60), label="steps"))
    rank_3 = data.draw(st.booleans(), label="rank_3")
    epsilon = data.draw(st.sampled_from([0.0, 1e-7, 1e-3, 1.0]), label="epsilon")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    y, x = rc.make_sequences(data, rng, shape)
    mask_kind = data.draw(st.sampled_from(["none", "scattered", "padding"]), label="mask")
    mask = {
        "none": None,
        "scattered": rng.random(shape) < data.draw(st.floats(0, 1), label="valid_share"),
        "padding": np.arange(shape[1])[None, :] < rng.integers(0, shape[1] + 1, size=(shape[0], 1)),
    }[mask_kind]
    if mask is not None and data.draw(st.booleans(), label="nan_padding"):
        x[~mask] = NAN
    specials = data.draw(st.sampled_from([0, 0, 1, 3]), label="non_finite_values")
    inject(rng, y, specials // 2, [NAN, INF, -INF])
    inject(rng, x, specials - specials // 2, [NAN, INF, -INF])
    check_correlation(mode, concordance, y, x, rng.uniform(0.5, 1.5, size=shape), mask, epsilon, dtype, rank_3)


# (y, x, mask, epsilon, dtype): rc.CORRELATION_EDGE_CASES, with a bfloat16
# constant row and a row of two valid steps.
CORRELATION_EDGE_CASES = rc.with_cases(
    rc.CORRELATION_EDGE_CASES,
    "constant_rows",
    constant_rows_bfloat16=([[1.5] * 5, rc.CASE_Y], [rc.CASE_X, [-2.0] * 5], None, 1e-7, "bfloat16"),
)
CORRELATION_EDGE_CASES = rc.with_cases(
    CORRELATION_EDGE_CASES, two_valid_steps=([rc.CASE_Y], [rc.CASE_X], [[0, 1, 0, 1, 0]], 1e-7, "float32")
)


@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("case", list(CORRELATION_EDGE_CASES))
@pytest.mark.parametrize("mode", MODES)
def test_correlation_edge_cases(mode, case, concordance):
    y, x, upstream, mask, epsilon, dtype = rc.correlation_edge_case(CORRELATION_EDGE_CASES[case])
    check_correlation(mode, concordance, y, x, upstream, mask, epsilon, dtype)


def test_integer_targets_are_cast_to_the_predictions_dtype(rng):
    y = rng.integers(-3, 4, size=(3, 10))
    x = rng.standard_normal((3, 10)).astype(np.float32)
    y_t = keras.ops.convert_to_tensor(y.astype(np.int32))
    x_t = keras.ops.convert_to_tensor(x)
    got = to64(_keras_ops.correlation_loss(y_t, x_t, epsilon=1e-7, mask=None, concordance=True))
    want = npref.correlation(y.astype(np.float32), x, None, float(np.float32(1e-7)), np.ones((3, 10)), True).loss
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Against the backend's fused ops
# --------------------------------------------------------------------------


def fused_functions():
    """(bpmll(y, c), correlation(y, x, mask, concordance)) of this backend's
    fused path, or a skip saying why there is none."""
    if BACKEND == "tensorflow":
        import tensorflow as tf  # noqa: F401

        import tf_fused_losses as tfl

        try:
            tfl.load_ops()
        except RuntimeError as e:
            pytest.skip(f"the TF op library does not load here: {e}")
        if tfl.use_pure_tf():
            pytest.skip(f"{tfl.PURE_TF_ENV} is set: the public functions run the pure-TF path")
        return tfl.bpmll_loss, lambda y, x, m, concordance: (tfl.ccc_loss if concordance else tfl.correlation_loss)(
            y, x, mask=m
        )
    if BACKEND == "jax":
        try:
            from tf_fused_losses import _jax_ops

            _jax_ops.load()
        except (ImportError, RuntimeError) as e:
            pytest.skip(f"the fused JAX ops do not load here: {e}")
        return _jax_ops.bpmll_loss, lambda y, x, m, concordance: _jax_ops.correlation_loss(
            y, x, epsilon=1e-7, mask=m, concordance=concordance
        )
    pytest.skip(f"no fused ops for the Keras backend {BACKEND!r}")


def assert_same_classes_and_close(got, want, rtol, what):
    """The same NaN, infinities and zeros; finite elements within rtol of
    their row's largest finite magnitude (an entry where two sides cancel
    is known only to that)."""
    got, want = to64(got), to64(want)
    assert np.array_equal(np.isnan(got), np.isnan(want)), what
    assert np.array_equal(np.isinf(got), np.isinf(want)) and np.array_equal(got[np.isinf(got)], want[np.isinf(want)]), what
    assert np.array_equal(got == 0, want == 0), what
    finite = np.isfinite(want)
    rows = want.reshape(len(want), -1)
    scale = np.where(np.isfinite(rows), np.abs(rows), 0).max(axis=1, initial=0).reshape((-1,) + (1,) * (want.ndim - 1))
    with np.errstate(invalid="ignore"):
        ok = ~finite | (np.abs(got - want) <= rtol * np.broadcast_to(scale, want.shape))
    assert ok.all(), (what, np.argwhere(~ok)[:5], got[~ok][:5], want[~ok][:5])


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_bpmll_agrees_with_the_fused_op(rng, dtype):
    fused_bpmll, _ = fused_functions()
    shape = (9, 300)
    y = bpmll_labels(rng, shape, "mixed")
    y[0], y[1] = 0, 1  # rows without pairs
    c = 3 * rng.standard_normal(shape)
    c[2, 5], c[3, 7], c[4, 11] = NAN, INF, -INF
    rtol = {"float32": 1e-5, "float64": 1e-12, "bfloat16": 1e-2}[dtype]
    with precision(dtype):
        y_t, _ = as_input(y, dtype)
        c_t, _ = as_input(c, dtype)
        g_t, _ = as_input(rng.uniform(0.5, 1.5, size=9), dtype)
        got = loss_and_vjp(_keras_ops.bpmll_loss, [y_t, c_t], g_t, [1], "eager")
        want = loss_and_vjp(fused_bpmll, [y_t, c_t], g_t, [1], "eager")
        assert_same_classes_and_close(got[0], want[0], rtol, "loss")
        assert_same_classes_and_close(got[1][0], want[1][0], rtol, "grad")


@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_correlation_agrees_with_the_fused_op(rng, concordance, dtype):
    _, fused_correlation = fused_functions()
    shape = (7, 200)
    y, x = sequences(rng, shape)
    y[0] = 0.25  # a constant row
    x[1, 3] = NAN  # a NaN row
    mask = rng.random(shape) < 0.9
    mask[2] = False  # no valid step
    mask[3, 1:] = False  # one valid step
    x[4, ~mask[4]] = INF  # masked infinities
    rtol = {"float32": 2e-4, "float64": 1e-9, "float16": 2e-2}[dtype]
    with precision(dtype):
        y_t, _ = as_input(y, dtype)
        x_t, _ = as_input(x, dtype)
        m_t = keras.ops.convert_to_tensor(mask)
        g_t, _ = as_input(rng.uniform(0.5, 1.5, size=shape), dtype)
        got = loss_and_vjp(correlation_fn(concordance, 1e-7, True), [y_t, x_t, m_t], g_t, [0, 1], "eager")
        want = loss_and_vjp(
            lambda y, x, m: fused_correlation(y, x, m, concordance), [y_t, x_t, m_t], g_t, [0, 1], "eager"
        )
        for name, g, w in zip(["loss", "grad y_true", "grad y_pred"], [got[0], *got[1]], [want[0], *want[1]]):
            gw, ww = to64(g), to64(w)
            assert np.array_equal(np.isnan(gw), np.isnan(ww)), name
            assert np.array_equal(gw[~mask], ww[~mask]), name  # masked steps: exactly 0
            scale = np.nan_to_num(np.abs(ww), nan=0).max(axis=1, keepdims=True) + 1e-30
            ok = np.isnan(ww) | (np.abs(gw - ww) <= rtol * scale)
            assert ok.all(), (name, np.argwhere(~ok)[:5])
