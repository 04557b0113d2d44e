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
    at least, like the op. A row holding a label outside [0, 1] or NaN has
    loss NaN, as on a GPU: this path may run under XLA, where no check can
    raise.
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
    labels_valid = tf.reduce_all(tf.logical_and(y >= 0, y <= 1), axis=1)  # NaN fails both
    loss = tf.where(labels_valid, loss, tf.fill(tf.shape(loss), tf.constant(float("nan"), acc)))
    return tf.cast(loss, out_dtype)


# --------------------------------------------------------------------------
# Correlation and CCC (per step, for sequence labelling)
# --------------------------------------------------------------------------


def _as_steps(t):
    """(batch, steps) view of a (batch, steps) or (batch, steps, 1) tensor."""
    if t.shape.rank == 3:
        return tf.squeeze(t, axis=-1)
    if t.shape.rank is None:
        return tf.reshape(t, tf.shape(t)[:2])
    return t


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


def _correlation_pure_tf(y_true, y_pred, epsilon, mask, concordance):
    y_pred = tf.convert_to_tensor(y_pred)
    out_dtype = y_pred.dtype
    acc = tf.float64 if out_dtype == tf.float64 else tf.float32
    x = tf.cast(_as_steps(y_pred), acc)
    y = tf.cast(_as_steps(tf.convert_to_tensor(y_true)), acc)
    valid = tf.ones_like(x, dtype=tf.bool) if mask is None else tf.cast(mask, tf.bool)
    count = tf.reduce_sum(tf.cast(valid, acc), axis=1, keepdims=True)
    safe_count = tf.maximum(count, 1)
    # Shifting by the first valid value makes a constant row's centred
    # values exactly 0 (as in the op); the shift cancels in every moment.
    first = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)

    def centred(v):
        shifted = v - tf.stop_gradient(tf.gather(v, first, axis=1, batch_dims=1))[:, None]
        shifted = tf.where(valid, shifted, tf.zeros_like(shifted))
        mean_shifted = tf.reduce_sum(shifted, axis=1, keepdims=True) / safe_count
        c = tf.where(valid, shifted - mean_shifted, tf.zeros_like(shifted))
        return c, mean_shifted, tf.reduce_sum(tf.square(c), axis=1, keepdims=True) / safe_count

    cx, mean_shifted_x, var_x = centred(x)
    cy, mean_shifted_y, var_y = centred(y)
    if concordance:
        shift_gap = tf.stop_gradient(tf.gather(x - y, first, axis=1, batch_dims=1))[:, None]
        gap = shift_gap + mean_shifted_x - mean_shifted_y
        denominator = var_x + var_y + tf.square(gap) + epsilon
        degenerate = tf.logical_or(count == 0, denominator == 0)
        numerator_scale = 2.0
    else:
        degenerate = tf.logical_or(count < 2, tf.logical_or(var_x == 0, var_y == 0))
        # The inner where keeps sqrt's derivative at 0 (inf) out of the
        # gradient of degenerate rows, which the outer where then zeroes.
        std_x = tf.sqrt(tf.where(degenerate, tf.ones_like(var_x), var_x))
        std_y = tf.sqrt(tf.where(degenerate, tf.ones_like(var_y), var_y))
        denominator = std_x * std_y + epsilon
        numerator_scale = 1.0
    safe_denominator = tf.where(degenerate, tf.ones_like(denominator), denominator)
    scale = tf.where(degenerate, tf.zeros_like(denominator), numerator_scale / safe_denominator)
    loss = tf.where(valid, 1.0 - scale * cx * cy, tf.zeros_like(cx))
    return tf.cast(loss, out_dtype)


def correlation_loss_pure_tf(y_true, y_pred, epsilon=1e-7, mask=None):
    """Per-step Pearson loss with the fused op's conventions, in pure TF
    (XLA-compilable): accumulates in float32 at least; constant rows and rows
    with fewer than 2 valid steps give loss 1 on valid steps and gradient 0;
    masked steps give 0; denominator sqrt(var x) sqrt(var y) + epsilon."""
    return _correlation_pure_tf(y_true, y_pred, epsilon, mask, concordance=False)


def ccc_loss_pure_tf(y_true, y_pred, epsilon=1e-7, mask=None):
    """Per-step CCC loss with the fused op's conventions, in pure TF."""
    return _correlation_pure_tf(y_true, y_pred, epsilon, mask, concordance=True)
