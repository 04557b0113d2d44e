"""Pure-TF versions of the losses.

Two kinds live here:

* The seeds' formulas, reproduced exactly (`bpmll_loss_pairwise`,
  `bpmll_loss_factored`, `correlation_loss`, `ccc_loss`). The fused ops
  match them wherever they are finite. They give NaN where the formulas
  divide by zero (rows without pairs, constant sequences' gradients).
* `*_pure_tf` functions: the same losses with the fused ops' conventions
  (stable sums, 0 for rows without pairs, finite gradients on degenerate
  rows). They back the `TF_FUSED_LOSSES_PY_OPS=1` fallback and run inside
  XLA-compiled functions, where custom ops cannot.
"""

import tensorflow as tf


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


def _masked_logsumexp(values, weights):
    """log sum_j weights_j e^{values_j} per row, over weights_j != 0.

    Rows with no active weight give 0 (callers mask them out); every
    intermediate stays finite there so that gradients do not turn NaN.
    """
    active = tf.not_equal(weights, 0)
    neg_inf = tf.constant(-float("inf"), values.dtype)
    shift = tf.stop_gradient(tf.reduce_max(tf.where(active, values, neg_inf), axis=1, keepdims=True))
    shift = tf.where(tf.math.is_finite(shift), shift, tf.zeros_like(shift))
    safe_values = tf.where(active, values - shift, tf.zeros_like(values))
    terms = tf.where(active, weights * tf.exp(safe_values), tf.zeros_like(values))
    total = tf.reduce_sum(terms, axis=1)
    return tf.math.log(tf.where(total > 0, total, tf.ones_like(total))) + tf.squeeze(shift, 1)


def bpmll_loss_pure_tf(y_true, y_pred):
    """BP-MLL with the fused op's conventions, in pure TF (XLA-compilable).

    Log-domain sums (finite wherever the true value is), loss 0 and gradient 0
    for rows without a positive or a negative label. Accumulates in float32
    at least, like the op.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    out_dtype = y_pred.dtype
    acc = tf.float64 if out_dtype == tf.float64 else tf.float32
    c = tf.cast(y_pred, acc)
    y = tf.cast(y_true, acc)
    pos_count = tf.reduce_sum(y, axis=1)
    neg_count = tf.reduce_sum(1 - y, axis=1)
    has_pairs = tf.logical_and(pos_count > 0, neg_count > 0)
    log_loss = (
        _masked_logsumexp(-c, y)
        + _masked_logsumexp(c, 1 - y)
        - tf.math.log(tf.where(has_pairs, pos_count, tf.ones_like(pos_count)))
        - tf.math.log(tf.where(has_pairs, neg_count, tf.ones_like(neg_count)))
    )
    loss = tf.where(has_pairs, tf.exp(log_loss), tf.zeros_like(log_loss))
    return tf.cast(loss, out_dtype)
