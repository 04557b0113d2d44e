"""Per-step Pearson correlation and CCC losses for sequence labelling: fused
ops, their gradient, Keras losses."""

import math
import threading

import numpy as np

import keras
import tensorflow as tf

from . import reference
from ._loader import ops, use_pure_tf
from ._validation import check_float_dtype

try:
    from keras.src.backend import get_keras_mask as _get_keras_mask
except ImportError:  # the attribute Keras 3 keeps the mask in

    def _get_keras_mask(x):
        return getattr(x, "_keras_mask", None)


_LAYOUT = "(batch, steps) or (batch, steps, 1)"

# The Keras mask of the y_pred whose loss is being computed on this thread,
# from the loss's __call__ to its call (MirroredStrategy traces replicas in
# threads of their own, so this cannot live on the loss object).
_call_mask = threading.local()


def _batch_steps(name, t):
    """The static (batch, steps) of a (batch, steps[, 1]) input, checked."""
    rank = t.shape.rank
    if rank is None:
        return tf.TensorShape([None, None])
    if rank not in (2, 3) or (rank == 3 and t.shape[2] not in (None, 1)):
        raise ValueError(f"{name} must be {_LAYOUT}; got shape {t.shape}")
    return t.shape[:2]


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_epsilon(epsilon):
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise ValueError(f"epsilon must be a Python float >= 0; got {epsilon!r}")
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon!r}")
    if epsilon > _FLOAT32_MAX:  # the op's attribute is a float32
        raise ValueError(f"epsilon must be at most {_FLOAT32_MAX:.7g} (the float32 maximum); got {epsilon!r}")
    return epsilon


def _mask_argument(mask, batch_steps):
    """mask as a bool (batch, steps) tensor: nonzero means valid."""
    mask = tf.convert_to_tensor(mask)
    if not (mask.dtype.is_bool or mask.dtype.is_integer or mask.dtype.is_floating):
        raise ValueError(f"mask must be bool or numeric (nonzero = valid step); got dtype {mask.dtype.name}")
    if mask.shape.rank is not None and (mask.shape.rank != 2 or not mask.shape.is_compatible_with(batch_steps)):
        raise ValueError(f"mask must have shape (batch, steps) = {batch_steps}; got shape {mask.shape}")
    return mask if mask.dtype.is_bool else tf.not_equal(mask, tf.zeros([], mask.dtype))


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
    epsilon = _check_epsilon(epsilon)
    if mask is not None:
        mask = _mask_argument(mask, batch_steps)
    if use_pure_tf():
        pure = reference.ccc_loss_pure_tf if concordance else reference.correlation_loss_pure_tf
        return pure(y_true, y_pred, epsilon=epsilon, mask=mask)
    if mask is None:
        mask = tf.zeros([0], tf.bool)  # the op's "every step is valid"
    loss, _ = ops().fused_correlation_loss(
        y_true=y_true, y_pred=y_pred, mask=mask, concordance=concordance, epsilon=epsilon
    )
    return loss


def correlation_loss(y_true, y_pred, epsilon=1e-7, mask=None, name=None):
    """Per-step Pearson correlation loss, shape (batch, steps), in y_pred's dtype.

        loss_t = 1 - (x_t - mean x)(y_t - mean y) / (std x * std y + epsilon)

    with x = y_pred, y = y_true and population moments over the (valid) steps
    of each row, so that the mean over steps of 1 - loss_t is Pearson's r.
    Equal to the seed formula `reference.correlation_loss` wherever that is
    finite.

    Args:
      y_true: (batch, steps) or (batch, steps, 1); cast to y_pred's dtype.
      y_pred: (batch, steps) or (batch, steps, 1): float16, bfloat16,
        float32 or float64.
      epsilon: Python float >= 0 added to the denominator.
      mask: optional (batch, steps), bool or numeric, nonzero on valid steps.
        Moments use the valid steps only; masked steps get loss 0 and
        gradient 0.

    Rows with fewer than 2 valid steps or a constant y_true or y_pred get
    loss 1 on their valid steps and gradient 0 (r is undefined there; the
    epsilon-regularised formula's gradient would be of order 1/epsilon).
    Gradients flow to both y_true and y_pred. Computed by a fused op (moments
    and loss in one kernel, both gradients in another; XLA-compiled functions
    run them as custom calls); with TF_FUSED_LOSSES_PY_OPS=1 by
    `reference.correlation_loss_pure_tf`.
    """
    with tf.name_scope(name or "correlation_loss"):
        return _sequence_loss(y_true, y_pred, epsilon, mask, concordance=False)


def ccc_loss(y_true, y_pred, epsilon=1e-7, mask=None, name=None):
    """Per-step concordance correlation coefficient (CCC) loss, shape
    (batch, steps), in y_pred's dtype.

        loss_t = 1 - 2 (x_t - mean x)(y_t - mean y) / (var x + var y + (mean x - mean y)^2 + epsilon)

    so that the mean over steps of 1 - loss_t is Lin's CCC (AVEC baselines).
    Arguments as `correlation_loss`. The denominator is at least epsilon, so
    every row has its exact gradient; a row with no valid step gives loss 0
    and gradient 0. Pure-TF fallback: `reference.ccc_loss_pure_tf`.
    """
    with tf.name_scope(name or "ccc_loss"):
        return _sequence_loss(y_true, y_pred, epsilon, mask, concordance=True)


@tf.RegisterGradient("FusedCorrelationLoss")
def _fused_correlation_loss_grad(op, grad_loss, unused_grad_row_stats):
    # row_stats is an internal output; second derivatives are not provided.
    y_true, y_pred, mask = op.inputs
    # A GradientTape says which inputs it needs no gradient for: in a training
    # step y_true is a constant, and its gradient would be a (batch, steps)
    # tensor computed and written for nothing. (tf.gradients sets no such
    # attribute: both are computed.)
    want_grad_y_true = 0 not in (getattr(op, "skip_input_indices", None) or ())
    grad_y_true, grad_y_pred = ops().fused_correlation_loss_grad(
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


class _SequenceCorrelationLoss(keras.losses.Loss):
    """Shared Keras plumbing: epsilon in the config, and the Keras mask of
    y_pred (e.g. from a Masking layer) passed to the op."""

    _loss_function = None

    def __init__(self, epsilon=1e-7, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = _check_epsilon(epsilon)

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Loss.__call__ converts y_pred before call(), which can drop the
        # mask: read it first. Keras still applies sample_weight, the mask
        # and the reduction to the per-step losses (masked steps are 0).
        outer_mask = getattr(_call_mask, "mask", None)
        _call_mask.mask = _get_keras_mask(y_pred)
        if sample_weight is not None:
            sample_weight = tf.convert_to_tensor(sample_weight)
            if sample_weight.shape.rank == 1:
                # (batch,) weights every step of a row; Keras would only
                # broadcast it against (batch, 1) losses.
                sample_weight = sample_weight[:, None]
        try:
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        finally:
            _call_mask.mask = outer_mask

    def call(self, y_true, y_pred):
        mask = getattr(_call_mask, "mask", None)
        return type(self)._loss_function(y_true, y_pred, epsilon=self.epsilon, mask=mask)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class CorrelationLoss(_SequenceCorrelationLoss):
    """Keras loss: per-step Pearson correlation loss (see `correlation_loss`)
    for (batch, steps[, 1]) targets. sample_weight may be (batch,) or
    (batch, steps); a Keras mask on y_pred restricts each row's moments to
    its valid steps."""

    _loss_function = staticmethod(correlation_loss)

    def __init__(self, epsilon=1e-7, reduction="sum_over_batch_size", name="correlation_loss", dtype=None):
        super().__init__(epsilon=epsilon, reduction=reduction, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class CCCLoss(_SequenceCorrelationLoss):
    """Keras loss: per-step concordance correlation (CCC) loss (see
    `ccc_loss`); same conventions as `CorrelationLoss`."""

    _loss_function = staticmethod(ccc_loss)

    def __init__(self, epsilon=1e-7, reduction="sum_over_batch_size", name="ccc_loss", dtype=None):
        super().__init__(epsilon=epsilon, reduction=reduction, name=name, dtype=dtype)
