"""Pure-TF versions of the losses.

Two kinds live here:

* The formulas of the Stack Overflow questions the package answers (the
  "seeds", ../shared/seeds), reproduced exactly (`bpmll_loss_pairwise`,
  `bpmll_loss_factored`, `correlation_loss`, `ccc_loss`). The fused ops
  match them wherever they are finite. They give NaN where the formulas
  divide by zero (rows without pairs, constant sequences' gradients).
* `*_pure_tf` functions (from `_tf_pure`): the same losses with the fused
  ops' conventions. They back the `TF_FUSED_LOSSES_PY_OPS=1` fallback and
  run inside XLA-compiled functions whose frontend has no lowerings.
"""

import tensorflow as tf

from ._tf_pure import _as_steps, bpmll_loss_pure_tf, ccc_loss_pure_tf, correlation_loss_pure_tf

__all__ = [
    "bpmll_loss",
    "bpmll_loss_factored",
    "bpmll_loss_pairwise",
    "bpmll_loss_pure_tf",
    "ccc_loss",
    "ccc_loss_pure_tf",
    "correlation_loss",
    "correlation_loss_pure_tf",
]


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def bpmll_loss_pairwise(y_true, y_pred):
    """The seed's "Update 3", per sample: builds the (B, L, L) pair tensor.

    Computed in float64 as in the seed; returned in y_pred's dtype. Memory is
    O(B L^2): use only at small L.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    out_dtype = y_pred.dtype
    y_true = tf.cast(y_true, tf.float64)
    y_pred = tf.cast(y_pred, tf.float64)
    positive = y_true * tf.exp(-y_pred)
    negative = (1 - y_true) * tf.exp(y_pred)
    pairs = tf.reduce_sum(y_true, axis=1) * tf.reduce_sum(1 - y_true, axis=1)
    outer = positive[:, :, None] * negative[:, None, :]
    batch = tf.shape(y_true)[0]
    outer = tf.reshape(outer, (batch, -1))
    loss = tf.reduce_sum(outer / pairs[:, None], axis=1)
    return tf.cast(loss, out_dtype)


def bpmll_loss_factored(y_true, y_pred):
    """The same loss, factored: O(B L), in y_pred's dtype, not stabilised."""
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.cast(y_true, y_pred.dtype)
    positive = tf.reduce_sum(y_true * tf.exp(-y_pred), axis=1)
    negative = tf.reduce_sum((1 - y_true) * tf.exp(y_pred), axis=1)
    pairs = tf.reduce_sum(y_true, axis=1) * tf.reduce_sum(1 - y_true, axis=1)
    return positive * negative / pairs


def bpmll_loss(y_true, y_pred, form="factored"):
    """The seed's BP-MLL loss per sample; form is "factored" or "pairwise"."""
    if form == "factored":
        return bpmll_loss_factored(y_true, y_pred)
    if form == "pairwise":
        return bpmll_loss_pairwise(y_true, y_pred)
    raise ValueError(f"form must be 'factored' or 'pairwise', got {form!r}")


# --------------------------------------------------------------------------
# Correlation and CCC (per step, for sequence labelling)
# --------------------------------------------------------------------------


def _seed_moments(seq, valid):
    """Mean and centred values of each row over the valid steps; population
    variance. valid is None (every step) or a bool (batch, steps) mask."""
    if valid is None:
        mean = tf.reduce_mean(seq, axis=-1, keepdims=True)
        centred = seq - mean
        return mean, centred, tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
    weights = tf.cast(valid, seq.dtype)
    count = tf.reduce_sum(weights, axis=-1, keepdims=True)
    mean = tf.reduce_sum(tf.where(valid, seq, 0), axis=-1, keepdims=True) / count
    centred = tf.where(valid, seq - mean, 0)
    return mean, centred, tf.reduce_sum(tf.square(centred), axis=-1, keepdims=True) / count


def _seed_correlation(y_true, y_pred, epsilon, mask, concordance):
    y_pred = _as_steps(tf.convert_to_tensor(y_pred))
    y_true = _as_steps(tf.cast(y_true, y_pred.dtype))
    valid = None if mask is None else tf.cast(mask, tf.bool)
    mean_true, centred_true, var_true = _seed_moments(y_true, valid)
    mean_pred, centred_pred, var_pred = _seed_moments(y_pred, valid)
    nominator = centred_true * centred_pred
    if concordance:
        loss = 1.0 - 2.0 * nominator / (var_true + var_pred + tf.square(mean_true - mean_pred) + epsilon)
    else:
        loss = 1.0 - nominator / (tf.sqrt(var_true * var_pred) + epsilon)
    return loss if valid is None else tf.where(valid, loss, tf.zeros_like(loss))


def correlation_loss(y_true, y_pred, epsilon=1e-7, mask=None):
    """The seed's final `my_loss`, per step, shape (batch, steps):

        1 - (y_t - mean y)(x_t - mean x) / (sqrt(var y * var x) + epsilon)

    with x = y_pred, population moments over the steps, computed in y_pred's
    dtype. Inputs are (batch, steps) or (batch, steps, 1). With a mask
    (batch, steps), true on valid steps, the moments use the valid steps
    only and masked steps give 0. A constant row gives 0/eps terms, fine in
    value, but its gradient is of order 1/epsilon, and a row with no valid
    step gives NaN.
    """
    return _seed_correlation(y_true, y_pred, epsilon, mask, concordance=False)


def ccc_loss(y_true, y_pred, epsilon=1e-7, mask=None):
    """The concordance correlation loss of the AVEC baselines, per step:

        1 - 2 (y_t - mean y)(x_t - mean x) / (var y + var x + (mean y - mean x)^2 + epsilon)

    Same conventions as `correlation_loss`.
    """
    return _seed_correlation(y_true, y_pred, epsilon, mask, concordance=True)
