"""Bad input that the other test files do not cover yet (the README's error
table lists every row and the test that covers it): each call must fail
with an error that names the argument, its shape or value, and what was
expected."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

import tf_fused_losses as tfl
from tf_fused_losses import _loader
from tf_fused_losses._loader import ops

ZEROS = np.zeros((2, 3), np.float32)
UNKNOWN_RANK = tf.TensorSpec(None, tf.float32)

# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def test_labels_of_another_rank_are_rejected_naming_the_shape():
    with pytest.raises(ValueError, match=r"^y_true must be rank 2 \(batch, labels\); got shape \(2, 3, 1\)$"):
        tfl.bpmll_loss(np.zeros((2, 3, 1), np.float32), ZEROS)


def test_complex_logits_are_rejected_naming_the_dtype():
    with pytest.raises(ValueError, match=r"^y_pred must be one of float16, bfloat16, float32, float64; got dtype complex64$"):
        tfl.bpmll_loss(ZEROS, ZEROS.astype(np.complex64))


@pytest.mark.parametrize("shape, shown", [((2, 3, 1), r"\[2,3,1\]"), ((3,), r"\[3\]")])
def test_rank_known_only_at_run_time_is_rejected_by_the_kernel(shape, shown):
    f = tf.function(tfl.bpmll_loss, input_signature=[UNKNOWN_RANK, UNKNOWN_RANK])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"FusedBpmllLoss: y_pred must be rank 2 \(batch, labels\), got shape " + shown):
        f(tf.zeros(shape), tf.zeros(shape))


@pytest.mark.parametrize("bad, shown", [(np.inf, "inf"), (-np.inf, "-inf")])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_infinite_labels_are_rejected_naming_the_element(bad, shown, dtype):
    labels = np.array([[0, 1, 0], [1, bad, 0]], dtype)
    # On CPU: a GPU marks the row NaN instead (README).
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=rf"labels in \[0, 1\]; y_true\[1, 1\] = {shown}"):
        tfl.bpmll_loss(labels, ZEROS.astype(dtype))


def test_nan_labels_are_rejected_naming_the_element():
    labels = np.array([[0, np.nan, 1]], np.float32)
    with tf.device("/CPU:0"), pytest.raises(tf.errors.InvalidArgumentError, match=r"labels in \[0, 1\]; y_true\[0, 1\] = nan"):
        tfl.bpmll_loss(labels, np.zeros((1, 3), np.float32))


@pytest.mark.parametrize("grad_loss_shape, shown", [((3,), r"\[3\] and \[2,4\]"), ((2, 1), r"\[2,1\] and \[2,4\]")])
def test_gradient_op_rejects_mismatched_shapes(grad_loss_shape, shown):
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"FusedBpmllLossGrad: grad_loss must be \(batch,\) and cached_grad \(batch, labels\); got " + shown,
    ):
        ops().fused_bpmll_loss_grad(grad_loss=tf.zeros(grad_loss_shape), cached_grad=tf.zeros((2, 4)))


@pytest.mark.parametrize(
    "grad_loss_shape, message",
    [
        ((2, 1), r"^Shape must be rank 1 but is rank 2 for '\{\{node FusedBpmllLossGrad\}\}.*input shapes: \[2,1\], \[2,4\]\.$"),
        ((3,), r"^Dimensions must be equal, but are 3 and 2 for '\{\{node FusedBpmllLossGrad\}\}.*input shapes: \[3\], \[2,4\]\.$"),
    ],
)
def test_gradient_op_in_a_graph_fails_at_trace_time(grad_loss_shape, message):
    # Static shapes in a tf.function: TF's shape inference, not the kernel,
    # answers, in its own words (the node and both input shapes).
    f = tf.function(lambda: ops().fused_bpmll_loss_grad(grad_loss=tf.zeros(grad_loss_shape), cached_grad=tf.zeros((2, 4))), autograph=False)
    with pytest.raises(ValueError, match=message):
        f()


# --------------------------------------------------------------------------
# Correlation and CCC
# --------------------------------------------------------------------------

SEQUENCE_LOSSES = {"correlation": tfl.correlation_loss, "ccc": tfl.ccc_loss}


@pytest.mark.parametrize("kind", SEQUENCE_LOSSES)
@pytest.mark.parametrize(
    "epsilon, message",
    [
        (True, r"^epsilon must be a real scalar >= 0; got True$"),
        ("0.1", r"^epsilon must be a real scalar >= 0; got str '0.1'$"),
        (None, r"^epsilon must be a real scalar >= 0; got NoneType None$"),
        (np.array([1e-3, 1e-3]), r"^epsilon must be a scalar, not an array; got shape \(2,\)$"),
        (tf.constant([1e-3]), r"^epsilon must be a scalar, not an array; got shape \(1,\)$"),
    ],
)
def test_epsilon_must_be_a_real_scalar(kind, epsilon, message):
    with pytest.raises(ValueError, match=message):
        SEQUENCE_LOSSES[kind](ZEROS, ZEROS, epsilon=epsilon)


@pytest.mark.parametrize("kind", SEQUENCE_LOSSES)
@pytest.mark.parametrize("epsilon", [np.float32(1e-3), np.float64(1e-3), tf.constant(1e-3), 1])
def test_epsilon_takes_numpy_and_eager_scalars(kind, epsilon):
    got = SEQUENCE_LOSSES[kind](ZEROS + [[0.0, 1.0, 2.0]], ZEROS + [[1.0, 0.0, 2.0]], epsilon=epsilon)
    want = SEQUENCE_LOSSES[kind](ZEROS + [[0.0, 1.0, 2.0]], ZEROS + [[1.0, 0.0, 2.0]], epsilon=float(epsilon))
    np.testing.assert_array_equal(got.numpy(), want.numpy())


@pytest.mark.parametrize("kind", SEQUENCE_LOSSES)
def test_infinite_epsilon_is_rejected(kind):
    with pytest.raises(ValueError, match=r"^epsilon must be finite and >= 0; got inf$"):
        SEQUENCE_LOSSES[kind](ZEROS, ZEROS, epsilon=float("inf"))


@pytest.mark.parametrize("loss_class", [tfl.CorrelationLoss, tfl.CCCLoss])
def test_keras_losses_check_epsilon_when_built(loss_class):
    with pytest.raises(ValueError, match=r"^epsilon must be finite and >= 0; got -1.0$"):
        loss_class(epsilon=-1.0)


@pytest.mark.parametrize("kind", SEQUENCE_LOSSES)
def test_a_rank_1_mask_is_rejected_naming_both_shapes(kind):
    with pytest.raises(ValueError, match=r"^mask must have shape \(batch, steps\) = \(2, 3\); got shape \(3,\)$"):
        SEQUENCE_LOSSES[kind](ZEROS, ZEROS, mask=np.ones(3, bool))


@pytest.mark.parametrize(
    "call",
    [
        lambda y, x: tfl.correlation_loss(y, x, epsilon=1e39),
        lambda y, x: tfl.ccc_loss(y, x, epsilon=1e39),
        lambda y, x: tfl.CorrelationLoss(epsilon=1e39)(y, x),
        lambda y, x: tfl.CCCLoss(epsilon=1e39)(y, x),
    ],
    ids=["correlation", "ccc", "CorrelationLoss", "CCCLoss"],
)
def test_epsilon_beyond_float32_is_rejected_naming_the_value(call):
    # The op's attribute is a float32, where 1e39 would become inf.
    with pytest.raises(ValueError, match=r"^epsilon must be at most 3\.402823e\+38 \(the float32 maximum\); got 1e\+39$"):
        call(ZEROS, ZEROS)


@pytest.mark.parametrize("kind", SEQUENCE_LOSSES)
def test_complex_targets_are_rejected_naming_the_dtype(kind):
    with pytest.raises(ValueError, match=r"^y_true must be numeric; got dtype complex64$"):
        SEQUENCE_LOSSES[kind](ZEROS.astype(np.complex64), ZEROS)


Z25 = tf.zeros((2, 5))
NO_MASK = tf.zeros([0], tf.bool)
ROW_STATS = tf.zeros((2, 5), tf.float64)


@pytest.mark.parametrize(
    "graph, kwargs, error, message",
    [
        (False, {"epsilon": -1.0}, tf.errors.InvalidArgumentError, r"FusedCorrelationLossGrad: epsilon must be finite and >= 0, got -1"),
        (
            False,
            {"y_true": tf.zeros((2, 4))},
            tf.errors.InvalidArgumentError,
            r"FusedCorrelationLossGrad: y_true and y_pred must have the same \(batch, steps\), got shapes \[2,4\] and \[2,5\]",
        ),
        (True, {"grad_loss": tf.zeros((2, 4))}, ValueError, r"^FusedCorrelationLossGrad: grad_loss must have shape \(batch, steps\) = \[2,5\], got shape \[2,4\]"),
        (True, {"row_stats": tf.zeros((1, 5), tf.float64)}, ValueError, r"^FusedCorrelationLossGrad: row_stats must have shape \(batch, 5\), got shape \[1,5\]"),
    ],
    ids=["eager-epsilon", "eager-y_true", "graph-grad_loss", "graph-row_stats"],
)
def test_correlation_gradient_op_rejects_bad_input(graph, kwargs, error, message):
    # Eagerly the kernel checks (as test_correlation.py's
    # test_bad_input_to_the_ops); in a tf.function with static shapes the
    # op's shape function raises the same words as a ValueError.
    args = {"grad_loss": Z25, "y_true": Z25, "y_pred": Z25, "mask": NO_MASK, "row_stats": ROW_STATS, **kwargs}
    call = lambda: ops().fused_correlation_loss_grad(**args)  # noqa: E731
    with pytest.raises(error, match=message):
        tf.function(call, autograph=False)() if graph else call()


# --------------------------------------------------------------------------
# Keras classes: the same checks when called
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss, shape, message",
    [
        (tfl.BPMLLLoss(), (2, 3, 1), r"^y_pred must be rank 2 \(batch, labels\); got shape \(2, 3, 1\)$"),
        (tfl.CorrelationLoss(), (2, 3, 2, 1), r"^y_true must be \(batch, steps\) or \(batch, steps, targets\); got shape \(2, 3, 2, 1\)$"),
        (tfl.CCCLoss(), (2, 3, 2, 1), r"^y_true must be \(batch, steps\) or \(batch, steps, targets\); got shape \(2, 3, 2, 1\)$"),
    ],
    ids=["BPMLLLoss", "CorrelationLoss", "CCCLoss"],
)
def test_keras_losses_check_shapes_when_called(loss, shape, message):
    with pytest.raises(ValueError, match=message):
        loss(np.zeros(shape, np.float32), np.zeros(shape, np.float32))


# --------------------------------------------------------------------------
# Loading the op library (test_loader.py covers a missing library)
# --------------------------------------------------------------------------


@pytest.fixture
def unloaded(monkeypatch):
    """The loader as if nothing were loaded yet; restored afterwards."""
    monkeypatch.setattr(_loader, "_library", None)


def test_a_tensorflow_without_a_frontend_is_refused_naming_the_versions(unloaded, monkeypatch):
    monkeypatch.setattr(_loader, "_builds", lambda: {"2.99": {"version": "2.99.1", "xla": True}})
    with pytest.raises(
        RuntimeError,
        match=rf"^TensorFlow {re.escape(tf.__version__)} is installed, but this tf_fused_losses holds op libraries for "
        r"TensorFlow 2\.99 only \(releases support 2\.16-2\.21\)\. .* pip install --no-build-isolation .* "
        r"Set TF_FUSED_LOSSES_PY_OPS=1 to use the pure implementations",
    ):
        _loader.ops()


def test_a_library_that_cannot_load_is_reported_with_the_loader_error(unloaded, monkeypatch, tmp_path):
    minor = ".".join(tf.__version__.split(".")[:2])
    monkeypatch.setattr(_loader, "_HERE", str(tmp_path))
    path = _loader.tf_library_path(minor)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"not a shared library")
    with pytest.raises(
        RuntimeError,
        match=rf"^Could not load {re.escape(path)}, built for TensorFlow unknown, into TensorFlow "
        rf"{re.escape(tf.__version__)}: .*libtf_fused_losses\.so.*\. Set TF_FUSED_LOSSES_PY_OPS=1",
    ):
        _loader.ops()


# --------------------------------------------------------------------------
# Both: no second derivatives
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fn, grad_op",
    [(tfl.bpmll_loss, "FusedBpmllLossGrad"), (tfl.correlation_loss, "FusedCorrelationLossGrad"), (tfl.ccc_loss, "FusedCorrelationLossGrad")],
)
def test_second_derivatives_fail_naming_the_gradient_op(fn, grad_op):
    y = tf.constant([[1.0, 0.0, 1.0, 0.0, 0.0]] * 2)
    c = tf.Variable(tf.random.stateless_normal((2, 5), seed=[1, 2]))
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = tf.reduce_sum(fn(y, c))
        gradient = inner.gradient(loss, c)
        gradient_norm = tf.reduce_sum(gradient * gradient)
    with pytest.raises(LookupError, match=f"^gradient registry has no entry for: {grad_op}$"):
        outer.gradient(gradient_norm, c)
