"""The fused BP-MLL op against the pure-TF references: values, gradients, edge cases, errors."""

import os

import numpy as np
import pytest
import tensorflow as tf

import tf_fused_losses as tfl
from tf_fused_losses import reference
from helpers import xla_lowerings_built

FLOAT_TYPES = [np.float32, np.float64]
# The last two hold 16 MiB or more of float32: their gradients are written
# with streaming stores (kStreamStoreMinBytes), by whole rows and by pieces.
SHAPES = [(0, 5), (1, 1), (1, 2), (3, 17), (3, 1000), (2, 100_000), (5, 2048), (4, 2049), (1, 70_001), (3, 200_001),
          (300, 15_001), (64, 70_001)]


def make_labels(rng, shape, kind):
    if kind == "dense":
        y = (rng.random(shape) < 0.5).astype(np.float64)
    elif kind == "sparse":
        y = (rng.random(shape) < 0.02).astype(np.float64)
        if shape[0] and shape[1] > 1:
            y[:, 0] = 1.0  # at least one positive, so most rows have pairs
    elif kind == "soft":
        y = rng.random(shape)
    else:
        raise ValueError(kind)
    return y


def reference_loss_and_grad(y, c):
    """float64 pure-TF factored form and its autodiff gradient."""
    c64 = tf.constant(c, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(c64)
        loss = reference.bpmll_loss_factored(tf.constant(y, tf.float64), c64)
        total = tf.reduce_sum(tf.where(tf.math.is_finite(loss), loss, tf.zeros_like(loss)))
    return loss.numpy(), tape.gradient(total, c64).numpy()


def gradient_scale(y, c):
    """Per row, the largest |term| of dE/dc_j = (-y_j e^{-c_j} N + (1 - y_j) e^{c_j} P) / pairs
    before the two terms cancel (float64): the size of the rounding error
    of any entry. For hard labels one term is 0 and this is max |dE/dc|."""
    y, c = np.asarray(y, np.float64), np.asarray(c, np.float64)
    shift = np.median(c, axis=1, keepdims=True) if c.size else 0.0  # cancels in P N
    pos, neg = y * np.exp(-(c - shift)), (1 - y) * np.exp(c - shift)
    pairs = y.sum(axis=1, keepdims=True) * (1 - y).sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        terms = (pos * neg.sum(axis=1, keepdims=True) + neg * pos.sum(axis=1, keepdims=True)) / pairs
    return np.nan_to_num(terms).max(axis=1, keepdims=True, initial=0)


def assert_grad_matches_reference(grad, ref_grad, rtol, name, y, c):
    """|grad - ref| <= rtol * gradient_scale(y, c), per row."""
    scale = gradient_scale(y, c) + 1e-300
    assert np.all(scale > 1e-200), "rows without gradient: compare them exactly"
    np.testing.assert_allclose(grad / scale, ref_grad / scale, atol=rtol, rtol=0, err_msg=name)


def fused_loss_and_grad(y, c, upstream=None):
    c_t = tf.constant(c)
    with tf.GradientTape() as tape:
        tape.watch(c_t)
        loss = tfl.bpmll_loss(tf.constant(y), c_t)
        total = tf.reduce_sum(loss * upstream) if upstream is not None else tf.reduce_sum(loss)
    return loss.numpy(), tape.gradient(total, c_t).numpy()


def has_pairs(y):
    return (y.sum(axis=1) > 0) & ((1 - y).sum(axis=1) > 0)


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["dense", "sparse", "soft"])
def test_matches_reference(rng, dtype, shape, kind):
    c = rng.normal(scale=2.0, size=shape).astype(dtype)
    y = make_labels(rng, shape, kind).astype(dtype)
    loss, grad = fused_loss_and_grad(y, c)
    ref_loss, ref_grad = reference_loss_and_grad(y, c)
    assert loss.shape == (shape[0],) and loss.dtype == dtype
    assert grad.shape == shape and grad.dtype == dtype
    pairs = has_pairs(y)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss[pairs], ref_loss[pairs], rtol=rtol)
    # Gradient entries are compared against the row's largest term (before
    # cancellation): tiny entries carry absolute, not relative, float error.
    # (Not against the loss: entries are ~loss / L, so an error of
    # rtol * loss would pass a zero gradient on long rows.)
    assert_grad_matches_reference(grad[pairs], ref_grad[pairs], rtol, "grad", y[pairs], c[pairs])
    assert np.all(loss[~pairs] == 0) and np.all(grad[~pairs] == 0)


@pytest.mark.parametrize("shape", [(4, 7), (3, 30)])
@pytest.mark.parametrize("kind", ["dense", "soft"])
def test_pairwise_and_factored_references_agree(rng, shape, kind):
    c = rng.normal(size=shape)
    y = make_labels(rng, shape, kind)
    y[:, 0], y[:, 1] = 1.0, 0.0  # every row has pairs: the seed's forms are NaN otherwise
    np.testing.assert_allclose(
        reference.bpmll_loss_pairwise(y, c).numpy(), reference.bpmll_loss_factored(y, c).numpy(), rtol=1e-12
    )
    np.testing.assert_allclose(tfl.bpmll_loss(y, c).numpy(), reference.bpmll_loss_pairwise(y, c).numpy(), rtol=1e-12)


def test_pairwise_reference_is_the_seed_mean_over_pairs():
    # Hand-computed: positives {0}, negatives {1, 2}: mean(e^{c1-c0}, e^{c2-c0}).
    c = np.array([[0.5, 1.0, -2.0]])
    y = np.array([[1.0, 0.0, 0.0]])
    expected = (np.exp(1.0 - 0.5) + np.exp(-2.0 - 0.5)) / 2
    np.testing.assert_allclose(reference.bpmll_loss_pairwise(y, c).numpy(), [expected], rtol=1e-14)
    np.testing.assert_allclose(tfl.bpmll_loss(y, c).numpy(), [expected], rtol=1e-14)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
@pytest.mark.parametrize("shape", [(3, 17), (4, 5000), (2, 70_000)])
def test_half_precision_logits(rng, dtype, shape):
    c = rng.normal(size=shape)
    y = make_labels(rng, shape, "dense")
    c_low = tf.cast(c, dtype)
    c_seen = tf.cast(c_low, tf.float64).numpy()  # the values the op really gets
    c_t = tf.Variable(c_low)
    with tf.GradientTape() as tape:
        loss = tfl.bpmll_loss(y.astype(np.float32), c_t)
    grad = tape.gradient(loss, c_t)
    assert loss.dtype == dtype and grad.dtype == dtype
    ref_loss, ref_grad = reference_loss_and_grad(y, c_seen)
    tol = 4e-3 if dtype == tf.float16 else 2e-2  # one rounding of the output
    np.testing.assert_allclose(tf.cast(loss, tf.float64).numpy(), ref_loss, rtol=tol)
    scale = np.abs(ref_grad).max(axis=1, keepdims=True)
    np.testing.assert_allclose(tf.cast(grad, tf.float64).numpy() / scale, ref_grad / scale, atol=tol)


@pytest.mark.parametrize("label_dtype", [tf.float16, tf.bfloat16, tf.float64, tf.int32, tf.int64, tf.uint8, tf.bool])
def test_every_label_type_gives_identical_results(rng, label_dtype):
    c = rng.normal(size=(5, 3001)).astype(np.float32)
    y = (rng.random((5, 3001)) < 0.3).astype(np.float32)
    expected_loss, expected_grad = fused_loss_and_grad(y, c)
    loss, grad = fused_loss_and_grad(tf.cast(y, label_dtype).numpy(), c)
    np.testing.assert_array_equal(loss, expected_loss)
    np.testing.assert_array_equal(grad, expected_grad)


def test_eager_and_tf_function_agree(rng):
    c = rng.normal(size=(7, 333)).astype(np.float32)
    y = make_labels(rng, (7, 333), "dense").astype(np.float32)

    @tf.function
    def graph(y, c):
        with tf.GradientTape() as tape:
            tape.watch(c)
            loss = tfl.bpmll_loss(y, c)
        return loss, tape.gradient(loss, c)

    eager_loss, eager_grad = fused_loss_and_grad(y, c)
    graph_loss, graph_grad = graph(tf.constant(y), tf.constant(c))
    np.testing.assert_array_equal(graph_loss.numpy(), eager_loss)
    np.testing.assert_array_equal(graph_grad.numpy(), eager_grad)


@pytest.mark.parametrize("kind", ["dense", "soft"])
def test_numeric_gradient(rng, kind):
    c = tf.constant(rng.normal(size=(3, 9)))
    y = tf.constant(make_labels(rng, (3, 9), kind))
    theoretical, numerical = tf.test.compute_gradient(lambda x: tfl.bpmll_loss(y, x), [c])
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=1e-6)


def test_upstream_gradient_scales_each_row(rng):
    c = rng.normal(size=(4, 50))
    y = make_labels(rng, (4, 50), "dense")
    upstream = np.array([0.0, 1.0, -2.5, 10.0])
    _, grad = fused_loss_and_grad(y, c, upstream)
    _, unit_grad = fused_loss_and_grad(y, c)
    np.testing.assert_allclose(grad, unit_grad * upstream[:, None], rtol=1e-14)


def test_gradient_for_labels_is_none(rng):
    y = tf.constant(make_labels(rng, (2, 5), "soft"))
    c = tf.constant(rng.normal(size=(2, 5)))
    with tf.GradientTape() as tape:
        tape.watch([y, c])
        loss = tf.reduce_sum(tfl.bpmll_loss(y, c))
    assert tape.gradient(loss, y) is None


def test_rows_without_pairs_give_zero_loss_and_gradient():
    y = np.array([[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]], np.float32)
    c = np.array([[1, 2, 3], [4, 5, 6], [0, 0, 0], [-100, 100, 0]], np.float32)
    loss, grad = fused_loss_and_grad(y, c)
    np.testing.assert_array_equal(loss, [0, 0, 1, 0])
    np.testing.assert_array_equal(grad[[0, 1, 3]], 0)
    assert np.isnan(reference.bpmll_loss_factored(y, c).numpy()[0])  # the seed's formula


def test_single_label_rows_give_zeros():
    loss, grad = fused_loss_and_grad(np.array([[1.0], [0.0]], np.float32), np.array([[3.0], [-3.0]], np.float32))
    np.testing.assert_array_equal(loss, [0, 0])
    np.testing.assert_array_equal(grad, [[0], [0]])


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("offset", [100.0, -100.0, 80.0, 300.0])
def test_large_logits_of_one_sign_are_finite_and_correct(rng, dtype, offset):
    c = (offset + rng.normal(size=(3, 600))).astype(dtype)
    y = make_labels(rng, (3, 600), "dense").astype(dtype)
    loss, grad = fused_loss_and_grad(y, c)
    # exp(c_l - c_k) does not depend on the offset: compare with the centred logits in float64.
    ref_loss, ref_grad = reference_loss_and_grad(y.astype(np.float64), c.astype(np.float64) - offset)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    rtol = 1e-4 if dtype == np.float32 else 1e-10  # float32 logits near 300 carry 3e-5 absolute error
    np.testing.assert_allclose(loss, ref_loss, rtol=rtol)
    scale = np.abs(ref_grad).max(axis=1, keepdims=True)
    np.testing.assert_allclose(grad / scale, ref_grad / scale, atol=rtol)


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
@pytest.mark.parametrize("far", [30.0, 75.0, 200.0])
def test_chunks_far_from_the_row_maxima_match_the_reference(rng, dtype, far):
    """The gradient pass scales the terms that the statistics pass stored per
    2048-label chunk, around the chunk's first logit; chunks whose logits sit
    far from the row's maxima need factors beyond e^{+-70} and take the
    direct form instead. Both must agree with the reference."""
    shape = (4, 3 * 2048 + 5)
    c = rng.normal(size=shape)
    c[:, 2048:4096] += far  # the middle chunk holds the row's largest logits
    c[1, :2048] -= far
    y = (rng.random(shape) < 0.3).astype(np.float64)
    c, y = c.astype(dtype), y.astype(dtype)
    loss, grad = fused_loss_and_grad(y, c)
    ref_loss, ref_grad = reference_loss_and_grad(y, c)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    finite = ref_loss < np.finfo(dtype).max  # beyond it the op overflows, as it should
    assert np.all(np.isinf(loss[~finite]))
    np.testing.assert_allclose(loss[finite], ref_loss[finite], rtol=rtol)
    scale = np.abs(ref_grad).max(axis=1, keepdims=True) + 1e-300
    np.testing.assert_allclose((grad / scale)[finite], (ref_grad / scale)[finite], atol=rtol, rtol=0)


def test_overflow_only_where_the_true_value_exceeds_the_range():
    # True loss e^{100} = 2.7e43: beyond float32, within float64.
    y = np.array([[1, 0], [1, 0]], np.float32)
    c = np.array([[-50, 50], [-40, 40]], np.float32)
    loss32 = tfl.bpmll_loss(y, c).numpy()
    assert np.isinf(loss32[0]) and np.isfinite(loss32[1])
    np.testing.assert_allclose(loss32[1], np.exp(80.0), rtol=1e-5)
    loss64 = tfl.bpmll_loss(y.astype(np.float64), c.astype(np.float64)).numpy()
    np.testing.assert_allclose(loss64, np.exp([100.0, 80.0]), rtol=1e-12)


def test_nan_stays_in_its_row(rng):
    c = rng.normal(size=(4, 3000)).astype(np.float32)
    y = make_labels(rng, (4, 3000), "dense").astype(np.float32)
    clean_loss, clean_grad = fused_loss_and_grad(y, c)
    c[1, 1234] = np.nan
    c[2, 5] = np.nan
    y[2, 5] = 0.0
    loss, grad = fused_loss_and_grad(y, c)
    assert np.isnan(loss[1]) and np.isnan(loss[2])
    # The other rows: the bits they have without the NaN rows.
    np.testing.assert_array_equal(loss[[0, 3]], clean_loss[[0, 3]])
    np.testing.assert_array_equal(grad[[0, 3]], clean_grad[[0, 3]])


def test_long_rows_in_pieces_match_float64_whatever_the_batch(rng):
    # One row of 300k labels is cut into pieces shared between threads; 8
    # copies of it in a batch too (rows over 65536 labels are always cut).
    # Each copy must give the bits of the row alone, and both the float64
    # reference.
    c = rng.normal(size=(1, 300_000)).astype(np.float32)
    y = make_labels(rng, (1, 300_000), "sparse").astype(np.float32)
    loss, grad = fused_loss_and_grad(y, c)
    loss8, grad8 = fused_loss_and_grad(np.repeat(y, 8, 0), np.repeat(c, 8, 0))
    ref_loss, ref_grad = reference_loss_and_grad(y, c)
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)
    assert_grad_matches_reference(grad, ref_grad, 2e-5, "grad", y, c)
    np.testing.assert_array_equal(loss8, np.repeat(loss, 8))
    np.testing.assert_array_equal(grad8, np.repeat(grad, 8, 0))


@pytest.mark.parametrize("dtype", FLOAT_TYPES)
def test_piece_path_and_whole_row_path_agree_with_each_other_and_float64(rng, dtype):
    """The CPU op does a row whole on one thread, or cuts it into pieces of
    32768 labels shared between threads, by the shape alone. A row of 60000
    labels (over 8192, at most 65536) alone in its batch takes the piece
    path; the same row in a batch of 16 rows or more takes the whole-row
    path. Both must match the float64 reference, and, for these soft labels,
    each other bit for bit (the pieces merge in a fixed order on both paths;
    only hard-label whole rows take their gradient from stored terms)."""
    length = 60_000
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = max(64, 2 * cpus)
    c = rng.normal(scale=2.0, size=(1, length)).astype(dtype)
    y = make_labels(rng, (1, length), "soft").astype(dtype)
    piece_loss, piece_grad = fused_loss_and_grad(y, c)
    whole_loss, whole_grad = fused_loss_and_grad(np.repeat(y, rows, 0), np.repeat(c, rows, 0))
    ref_loss, ref_grad = reference_loss_and_grad(y, c)
    rtol = 2e-5 if dtype == np.float32 else 1e-12
    for name, loss, grad in [("piece path", piece_loss, piece_grad), ("whole-row path", whole_loss, whole_grad)]:
        np.testing.assert_allclose(loss, np.repeat(ref_loss, len(loss)), rtol=rtol, err_msg=name)
        copies = len(grad)
        assert_grad_matches_reference(grad, np.repeat(ref_grad, copies, 0), rtol, name, np.repeat(y, copies, 0),
                                      np.repeat(c, copies, 0))
    # Every copy in the batch is the same row, done the same way.
    np.testing.assert_array_equal(whole_loss, np.repeat(whole_loss[:1], rows))
    np.testing.assert_array_equal(whole_grad, np.repeat(whole_grad[:1], rows, 0))
    np.testing.assert_array_equal(piece_loss, whole_loss[:1], err_msg="loss: piece path vs whole-row path")
    np.testing.assert_array_equal(piece_grad, whole_grad[:1], err_msg="grad: piece path vs whole-row path")


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------


def test_rank_other_than_two_is_rejected_naming_the_shape():
    with pytest.raises(ValueError, match=r"y_pred must be rank 2 .*\(2, 3, 4\)"):
        tfl.bpmll_loss(np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match=r"y_pred must be rank 2 .*\(5,\)"):
        tfl.bpmll_loss(np.zeros((5,), np.float32), np.zeros((5,), np.float32))


def test_mismatched_shapes_are_rejected_naming_both():
    with pytest.raises(ValueError, match=r"y_true \(2, 3\) and y_pred \(2, 4\)"):
        tfl.bpmll_loss(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))


def test_mismatched_shapes_known_only_at_run_time_are_rejected():
    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)] * 2)
    def f(y, c):
        return tfl.bpmll_loss(y, c)

    with pytest.raises(tf.errors.InvalidArgumentError, match=r"same shape.*\[2,3\] and \[2,4\]"):
        f(tf.zeros((2, 3)), tf.zeros((2, 4)))


def test_integer_logits_are_rejected_naming_the_dtype():
    with pytest.raises(ValueError, match="y_pred must be one of .*got dtype int32"):
        tfl.bpmll_loss(np.zeros((2, 3), np.float32), np.zeros((2, 3), np.int32))


def test_string_labels_are_rejected_naming_the_dtype():
    with pytest.raises(ValueError, match="y_true must be one of .*got dtype string"):
        tfl.bpmll_loss(tf.constant([["a", "b"]]), np.zeros((1, 2), np.float32))


@pytest.mark.parametrize(
    "labels, where",
    [
        (np.array([[0, 2, 1]], np.float32), r"y_true\[0, 1\] = 2"),
        (np.array([[0, 1], [-0.5, 1]], np.float32), r"y_true\[1, 0\] = -0.5"),
        (np.array([[0, 1, 7]], np.uint8), r"y_true\[0, 2\] = 7"),
        (np.array([[0, 1, -1]], np.int64), r"y_true\[0, 2\] = -1"),
    ],
)
def test_labels_outside_zero_one_are_rejected(labels, where):
    # On CPU: a GPU marks the row NaN instead (README).
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=r"labels in \[0, 1\]; " + where):
        tfl.bpmll_loss(labels, np.zeros(labels.shape, np.float32))


# --------------------------------------------------------------------------
# The pure-TF path: fallback and XLA
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["dense", "sparse", "soft"])
def test_pure_tf_fallback_matches_the_op(rng, pure_tf, kind):
    c = rng.normal(scale=3, size=(6, 400)).astype(np.float32)
    y = make_labels(rng, (6, 400), kind).astype(np.float32)
    y[0] = 0  # a row without pairs
    assert tfl.use_pure_tf()
    loss, grad = fused_loss_and_grad(y, c)
    assert not any(op.type == "FusedBpmllLoss" for op in tf.function(tfl.bpmll_loss).get_concrete_function(
        tf.constant(y), tf.constant(c)).graph.get_operations())
    pure_loss, pure_grad = loss, grad
    del os.environ[tfl.PURE_TF_ENV]
    op_loss, op_grad = fused_loss_and_grad(y, c)
    np.testing.assert_allclose(pure_loss, op_loss, rtol=2e-5)
    np.testing.assert_allclose(pure_grad, op_grad, rtol=2e-4, atol=1e-7)
    assert pure_loss[0] == 0 and np.all(pure_grad[0] == 0)


@pytest.mark.parametrize("bad", [2.0, -0.5, np.nan])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_pure_tf_path_marks_rows_with_bad_labels_nan(monkeypatch, bad, jit_compile):
    """The pure-TF path cannot raise under XLA: like a GPU, it makes the
    row's loss NaN, and only that row's."""
    y = np.array([[0, 1, 0], [1, bad, 0], [1, 0, 1]], np.float32)
    c = np.zeros((3, 3), np.float32)
    monkeypatch.setenv(tfl.PURE_TF_ENV, "1")
    loss = tf.function(tfl.bpmll_loss, jit_compile=jit_compile)(tf.constant(y), tf.constant(c)).numpy()
    assert np.isnan(loss[1]) and np.all(np.isfinite(loss[[0, 2]])), loss
    np.testing.assert_allclose(loss[[0, 2]], [1.0, 1.0])


def test_xla_compiled_function_runs_the_fused_kernels_bit_for_bit(rng):
    if not xla_lowerings_built():
        pytest.skip(f"TensorFlow {tf.__version__}'s frontend has no XLA lowerings (test_loader covers its pure path)")
    c = rng.normal(size=(5, 300)).astype(np.float32)
    y = make_labels(rng, (5, 300), "dense").astype(np.float32)

    @tf.function(jit_compile=True)
    def compiled(y, c):
        with tf.GradientTape() as tape:
            tape.watch(c)
            loss = tfl.bpmll_loss(y, c)
        return loss, tape.gradient(loss, c)

    loss, grad = compiled(tf.constant(y), tf.constant(c))
    op_loss, op_grad = fused_loss_and_grad(y, c)
    np.testing.assert_array_equal(loss.numpy(), op_loss)
    np.testing.assert_array_equal(grad.numpy(), op_grad)
    hlo = compiled.experimental_get_compiler_ir(tf.constant(y), tf.constant(c))(stage="hlo")
    assert 'custom_call_target="tfl_bpmll_loss"' in hlo and 'custom_call_target="tfl_bpmll_loss_grad"' in hlo


_EVERY_BUILD_SCRIPT = """
import sys, numpy as np, tensorflow as tf, tf_fused_losses as tfl
rng = np.random.default_rng(7)
out = {}
for name, pred_dtype, label_dtype, shape in [
    ("f32", tf.float32, tf.float32, (3, 5001)), ("f16_u8", tf.float16, tf.uint8, (2, 4099)),
    ("bf16_bool", tf.bfloat16, tf.bool, (2, 333)), ("f64_soft", tf.float64, tf.float64, (2, 2049)),
    ("long_row", tf.float32, tf.float32, (1, 200_003)),
]:
    c = tf.cast(rng.normal(size=shape) * 3, pred_dtype)
    y = rng.random(shape) if name == "f64_soft" else (rng.random(shape) < 0.2)
    y = tf.cast(y, label_dtype)
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = tfl.bpmll_loss(y, c)
    grad = tape.gradient(loss, c)
    out[name + "_loss"] = tf.cast(loss, tf.float64).numpy()
    out[name + "_grad"] = tf.cast(grad, tf.float64).numpy()
np.savez(sys.argv[1], cpu_isa=np.array(str(tfl.build_info().get("cpu_isa"))), **out)
"""


def test_every_cpu_build_gives_the_same_results(tmp_path):
    """The AVX2 and AVX-512 builds of the chunk loops against the baseline
    build (TFL_CPU_ISA caps the choice), within what the order of their sums
    and FMA contraction can move (reference_checks.cpu_build_rtol): they are
    not bit-equal."""
    import subprocess
    import sys

    from helpers import runnable_cpu_isas, subprocess_env
    from helpers.reference_checks import cpu_build_rtol

    caps = runnable_cpu_isas()  # those built into the library that this CPU runs, lowest first
    if len(caps) < 2 or caps[0] != "baseline":
        pytest.skip(f"this CPU and library run only {caps}: no two builds to compare")
    results = {}
    for cap in caps:
        path = tmp_path / f"{cap}.npz"
        env = subprocess_env({"TFL_CPU_ISA": cap}, pure_tf=False)
        subprocess.run([sys.executable, "-c", _EVERY_BUILD_SCRIPT, str(path)], env=env, check=True)
        results[cap] = np.load(path)
        # The cap took effect: the build in use is the one asked for.
        in_use = str(results[cap]["cpu_isa"])
        assert in_use == cap, f"TFL_CPU_ISA={cap}, but build_info() reports {in_use}"
    dtypes = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "f64": "float64", "long": "float32"}
    for key in results["baseline"].files:
        if key == "cpu_isa":
            continue
        base = results["baseline"][key]
        steps = results["baseline"][key.rsplit("_", 1)[0] + "_grad"].shape[-1]
        tol = cpu_build_rtol(dtypes[key.split("_")[0]], steps)
        # Losses each against itself, gradients against their row's largest
        # entry: rows differ in size by orders of magnitude, and a gradient
        # entry's error is the loss's (its factor) and its row sum's.
        scale = (np.abs(base) if base.ndim == 1 else np.abs(base).max(axis=-1, keepdims=True)) + 1e-300
        for cap in caps[1:]:
            np.testing.assert_allclose(results[cap][key] / scale, base / scale, atol=tol, rtol=0,
                                       err_msg=f"{cap} vs baseline: {key}")
