"""The TensorFlow path: the fused ops, the gradients registered for them, and
the pure-TF fallback (TF_FUSED_LOSSES_PY_OPS=1).

Imported only when TensorFlow is used (a TF tensor reaches a loss, a Keras
loss runs on the tensorflow backend, or `load_ops()` is called); importing
it registers the ops' gradients, before any of the ops can run.

The op library and the pure-TF switch are looked up through the public
modules (`bpmll.ops`, `correlation.ops`, `reference.*_pure_tf`) at each
call, so that they can be replaced there (the tests record op calls so).
"""

import tensorflow as tf

from . import _loader, bpmll, correlation, reference
from ._validation import check_epsilon, check_float_dtype, check_label_dtype, check_rank, check_same_shape


def load_ops():
    """Loads the op library now and registers its ops with TensorFlow, and
    their gradients.

    The losses do this on their first call. Call it yourself before
    `tf.saved_model.load` of a SavedModel whose graphs hold the fused ops:
    TensorFlow needs the ops registered to load them (and their gradients to
    differentiate them). Raises RuntimeError, saying why, where the library
    cannot load (see PURE_TF_ENV)."""
    _loader.load_ops()


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def bpmll_loss(y_true, y_pred, name=None):
    """`tf_fused_losses.bpmll_loss` on the TF path."""
    with tf.name_scope(name or "bpmll_loss"):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.convert_to_tensor(y_true)
        check_float_dtype("y_pred", y_pred)
        check_label_dtype("y_true", y_true)
        check_rank("y_pred", y_pred, (2,), "(batch, labels)")
        check_rank("y_true", y_true, (2,), "(batch, labels)")
        check_same_shape(y_true, y_pred)
        if bpmll.use_pure_tf():
            return reference.bpmll_loss_pure_tf(y_true, y_pred)
        loss, _ = bpmll.ops().fused_bpmll_loss(y_true=y_true, y_pred=y_pred)
        return loss


@tf.RegisterGradient("FusedBpmllLoss")
def _fused_bpmll_loss_grad(op, grad_loss, unused_grad_of_grad):
    # The op already wrote d loss_i / d y_pred; this scales its rows, in place
    # where TF allows. Second derivatives are not provided.
    return [None, bpmll.ops().fused_bpmll_loss_grad(grad_loss=grad_loss, cached_grad=op.outputs[1])]


# --------------------------------------------------------------------------
# Correlation and CCC
# --------------------------------------------------------------------------


def _batch_steps(name, t):
    """The static (batch, steps) of a (batch, steps[, 1]) input, checked."""
    rank = t.shape.rank
    if rank is None:
        return tf.TensorShape([None, None])
    if rank not in (2, 3) or (rank == 3 and t.shape[2] not in (None, 1)):
        raise ValueError(f"{name} must be {correlation.LAYOUT}; got shape {t.shape}")
    return t.shape[:2]


def _mask_argument(mask, batch_steps):
    """mask as a bool (batch, steps) tensor: nonzero means valid."""
    mask = tf.convert_to_tensor(mask)
    if not (mask.dtype.is_bool or mask.dtype.is_integer or mask.dtype.is_floating):
        raise ValueError(f"mask must be bool or numeric (nonzero = valid step); got dtype {mask.dtype.name}")
    if mask.shape.rank is not None and (mask.shape.rank != 2 or not mask.shape.is_compatible_with(batch_steps)):
        raise ValueError(f"mask must have shape (batch, steps) = {batch_steps}; got shape {mask.shape}")
    return mask if mask.dtype.is_bool else tf.not_equal(mask, tf.zeros([], mask.dtype))


def sequence_loss(y_true, y_pred, epsilon, mask, concordance, name=None):
    """`tf_fused_losses.correlation_loss` (concordance False) or `ccc_loss`
    (True) on the TF path."""
    with tf.name_scope(name or ("ccc_loss" if concordance else "correlation_loss")):
        return _sequence_loss(y_true, y_pred, epsilon, mask, concordance)


def _sequence_loss(y_true, y_pred, epsilon, mask, concordance):
    y_pred = tf.convert_to_tensor(y_pred)
    check_float_dtype("y_pred", y_pred)
    y_true = tf.convert_to_tensor(y_true)
    if not (y_true.dtype.is_floating or y_true.dtype.is_integer or y_true.dtype.is_bool):
        raise ValueError(f"y_true must be numeric; got dtype {y_true.dtype.name}")
    if y_true.dtype != y_pred.dtype:
        y_true = tf.cast(y_true, y_pred.dtype)
    true_steps = _batch_steps("y_true", y_true)
    pred_steps = _batch_steps("y_pred", y_pred)
    if not true_steps.is_compatible_with(pred_steps):
        raise ValueError(
            f"y_true and y_pred must have the same (batch, steps); got y_true {y_true.shape} and y_pred {y_pred.shape}"
        )
    batch_steps = true_steps.merge_with(pred_steps)
    epsilon = check_epsilon(epsilon)
    if mask is not None:
        mask = _mask_argument(mask, batch_steps)
    if correlation.use_pure_tf():
        pure = reference.ccc_loss_pure_tf if concordance else reference.correlation_loss_pure_tf
        return pure(y_true, y_pred, epsilon=epsilon, mask=mask)
    if mask is None:
        mask = tf.zeros([0], tf.bool)  # the op's "every step is valid"
    loss, _ = correlation.ops().fused_correlation_loss(
        y_true=y_true, y_pred=y_pred, mask=mask, concordance=concordance, epsilon=epsilon
    )
    return loss


@tf.RegisterGradient("FusedCorrelationLoss")
def _fused_correlation_loss_grad(op, grad_loss, unused_grad_row_stats):
    # row_stats is an internal output; second derivatives are not provided.
    y_true, y_pred, mask = op.inputs
    # A GradientTape says which inputs it needs no gradient for: in a training
    # step y_true is a constant, and its gradient would be a (batch, steps)
    # tensor computed and written for nothing. (tf.gradients sets no such
    # attribute: both are computed.)
    want_grad_y_true = 0 not in (getattr(op, "skip_input_indices", None) or ())
    grad_y_true, grad_y_pred = correlation.ops().fused_correlation_loss_grad(
        grad_loss=grad_loss,
        y_true=y_true,
        y_pred=y_pred,
        mask=mask,
        row_stats=op.outputs[1],
        concordance=op.get_attr("concordance"),
        epsilon=op.get_attr("epsilon"),
        compute_grad_y_true=want_grad_y_true,
    )
    return [grad_y_true if want_grad_y_true else None, grad_y_pred, None]


def sequence_sample_weight(sample_weight):
    """A Keras loss's sample_weight for (batch, steps) losses: (batch,)
    weighs every step of a row (Keras would only broadcast it against
    (batch, 1) losses)."""
    sample_weight = tf.convert_to_tensor(sample_weight)
    if sample_weight.shape.rank == 1:
        sample_weight = sample_weight[:, None]
    return sample_weight
