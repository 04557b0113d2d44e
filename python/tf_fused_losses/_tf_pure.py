"""The pure-TF forms of the losses, with the fused ops' conventions
(docs/semantics.md): log-domain sums, 0 for rows without pairs, gradient 0 on
degenerate Pearson rows, NaN confined to the rows that hold a NaN. They back
the TF path's `TF_FUSED_LOSSES_PY_OPS=1` fallback and run inside
XLA-compiled functions whose frontend has no lowerings. Their gradients are
written out in closed form with `tf.custom_gradient`: autodiff through
`tf.where` would let an unselected branch's inf or NaN poison the gradient
(0 * inf). Public as `reference.*_pure_tf`.
"""

import numpy as np
import tensorflow as tf


def _exp_extended(t):
    """e^t in IEEE extended arithmetic (e^{+inf} = inf, e^{-inf} = 0, NaN
    stays NaN) without handing an infinity to exp: XLA's CPU exp, once fused
    with its consumers, does not honour them (there e^{+inf} - inf reads
    -inf, not NaN)."""
    finite = tf.math.is_finite(t)
    e = tf.exp(tf.where(finite, t, tf.zeros_like(t)))
    inf = tf.constant(float("inf"), t.dtype)
    nan = tf.constant(float("nan"), t.dtype)
    zero = tf.zeros([], t.dtype)
    return tf.where(finite, e, tf.where(t > 0, inf, tf.where(t < 0, zero, nan)))


def _row_logsumexp(terms):
    """log sum_j e^{terms_j} per row of a (batch, n) tensor, in IEEE extended
    arithmetic: -inf for an empty row or one whose terms are all -inf, +inf
    when some term is +inf (never inf - inf). Forward only: callers give the
    gradient in closed form."""
    top = tf.reduce_max(terms, axis=1)
    finite_top = tf.math.is_finite(top)
    shift = tf.where(finite_top, top, tf.zeros_like(top))
    # With a finite maximum every exponent is <= 0 or -inf, and the total is
    # >= 1 (the maximum's own term is e^0). Rows whose maximum is infinite
    # (or NaN) take it as their value, whatever their sum reads.
    total = tf.reduce_sum(tf.exp(terms - shift[:, None]), axis=1)
    return tf.where(finite_top, shift + tf.math.log(total), top)


def _exp_difference(a, b):
    """e^a - e^b elementwise in IEEE extended arithmetic, for a, b in
    [-inf, inf] or NaN: NaN where either is NaN or both are +inf, +-inf where
    one side is +inf, and otherwise the finite-domain value
    sign(a - b) e^{max(a, b)} (1 - e^{-|a - b|}), which overflows only where
    the true value does (e^a - e^b would read inf - inf, i.e. NaN, when both
    sides overflow). Built from selects so that no infinity meets exp or an
    exp result (see _exp_extended)."""
    zero = tf.zeros_like(a)
    a_finite = tf.math.is_finite(a)
    b_finite = tf.math.is_finite(b)
    both = tf.logical_and(a_finite, b_finite)
    a0 = tf.where(both, a, zero)
    b0 = tf.where(both, b, zero)
    gap = a0 - b0
    # log(1 - e^{-|gap|}) is -inf at gap = 0, making the difference 0.
    scaled = tf.sign(gap) * tf.exp(tf.maximum(a0, b0) + tf.math.log(-tf.math.expm1(-tf.abs(gap))))
    only_a = tf.exp(tf.where(a_finite, a, zero))
    only_b = -tf.exp(tf.where(b_finite, b, zero))
    # b = -inf with a finite, a = -inf with b finite, both -inf: 0.
    diff = tf.where(both, scaled, tf.where(a_finite, only_a, tf.where(b_finite, only_b, zero)))
    inf = tf.constant(float("inf"), a.dtype)
    diff = tf.where(tf.equal(a, inf), tf.fill(tf.shape(a), inf), diff)
    diff = tf.where(tf.equal(b, inf), tf.fill(tf.shape(a), -inf), diff)
    undefined = tf.logical_or(
        tf.logical_or(tf.math.is_nan(a), tf.math.is_nan(b)), tf.logical_and(tf.equal(a, inf), tf.equal(b, inf))
    )
    return tf.where(undefined, tf.fill(tf.shape(a), tf.constant(float("nan"), a.dtype)), diff)


def _bpmll_labels_valid(y_true):
    """Per row: every label in [0, 1] (NaN is not), checked in y_true's own
    dtype as the op reads it."""
    if y_true.dtype.is_bool:
        return tf.ones(tf.shape(y_true)[:1], tf.bool)
    zero = tf.zeros([], y_true.dtype)
    one = tf.ones([], y_true.dtype)
    return tf.reduce_all(tf.logical_and(y_true >= zero, y_true <= one), axis=1)


def _bpmll_rows(y, c, labels_valid):
    """Loss (batch,) and d loss / d c (batch, labels), in c's dtype.

    P = sum_j y_j e^{-c_j}, N = sum_j (1 - y_j) e^{c_j}, pairs = |Y| |Ybar|:
      loss   = exp(log P + log N - log pairs)
      grad_j = (1 - y_j) exp(c_j + log P - log pairs) - y_j exp(-c_j + log N - log pairs)
    with each side of grad_j exactly 0 where its weight is 0, in the log
    domain (finite wherever the true value is) and IEEE extended arithmetic
    for infinite logits. Then, per row and in this order: a bad label or a
    NaN logit makes the whole row NaN; a row without pairs is exactly 0.
    """
    dtype = c.dtype
    zero = tf.zeros([], dtype)
    positive = y > 0
    negative = y < 1
    # log(y_j) - c_j over positives and log(1 - y_j) + c_j over negatives;
    # log 0 = -inf elsewhere, where the logit is replaced by 0 so that a
    # weight-0 entry never meets an infinite one.
    log_pos_terms = tf.math.log(y) - tf.where(positive, c, zero)
    log_neg_terms = tf.math.log(1 - y) + tf.where(negative, c, zero)
    log_p = _row_logsumexp(log_pos_terms)
    log_n = _row_logsumexp(log_neg_terms)
    pos_count = tf.reduce_sum(y, axis=1)
    neg_count = tf.reduce_sum(1 - y, axis=1)
    has_pairs = tf.logical_and(pos_count > 0, neg_count > 0)
    one = tf.ones_like(pos_count)
    log_pairs = tf.math.log(tf.where(has_pairs, pos_count, one)) + tf.math.log(tf.where(has_pairs, neg_count, one))
    log_loss = log_p + log_n - log_pairs
    loss = _exp_extended(log_loss)
    # The two sides of grad_j in the log domain; a side of weight 0 is -inf.
    log_neg_side = log_neg_terms + (log_p - log_pairs)[:, None]
    log_pos_side = log_pos_terms + (log_n - log_pairs)[:, None]
    # Each side is at most the loss, so where log P and log N are finite and
    # the loss is well inside the range, e^a - e^b is exact IEEE arithmetic
    # with no infinity in sight (e^{-inf} = 0 for the sides of weight 0).
    # Other rows with pairs (infinite logits, or a loss near or beyond the
    # range) take the extended-arithmetic form, computed only when a batch
    # has one.
    nan_row = tf.logical_or(tf.logical_not(labels_valid), tf.reduce_any(tf.math.is_nan(c), axis=1))
    log_max = float(np.log(dtype.max)) - 1
    regular = tf.logical_and(tf.logical_and(tf.math.is_finite(log_p), tf.math.is_finite(log_n)), log_loss < log_max)
    special = tf.logical_and(tf.logical_and(has_pairs, tf.logical_not(nan_row)), tf.logical_not(regular))
    grad = tf.exp(log_neg_side) - tf.exp(log_pos_side)

    def extended():
        neg_inf = tf.constant(-float("inf"), dtype)
        # A side of weight 0 is exactly 0, even where its log reads
        # -inf + inf (NaN) in a row with an infinite log P or log N.
        a = tf.where(negative, log_neg_side, neg_inf)
        b = tf.where(positive, log_pos_side, neg_inf)
        return tf.where(special[:, None], _exp_difference(a, b), grad)

    grad = tf.cond(tf.reduce_any(special), extended, lambda: grad)
    # Rows without pairs are exactly 0, NaN rows NaN, whatever was computed.
    keep = tf.logical_and(has_pairs, tf.logical_not(nan_row))
    row_value = tf.where(nan_row, tf.fill(tf.shape(loss), tf.constant(float("nan"), dtype)), tf.zeros_like(loss))
    return tf.where(keep, loss, row_value), tf.where(keep[:, None], grad, row_value[:, None])


def bpmll_loss_pure_tf(y_true, y_pred):
    """BP-MLL with the fused op's conventions, in pure TF (XLA-compilable).

    Per row, in this order:
    1. a label outside [0, 1] or NaN: loss and whole gradient row NaN (as on
       a GPU: this path may run under XLA, where no check can raise);
    2. a NaN logit: loss and whole gradient row NaN;
    3. no positive or no negative label (no pairs): loss 0 and gradient
       exactly 0, whatever the logits (infinite ones included);
    4. loss = P N / pairs and its gradient, evaluated in the log domain
       (finite wherever the true value is) and, for infinite logits, in IEEE
       extended arithmetic (e^{+inf} = inf, e^{-inf} = 0, 0 inf = NaN).

    Accumulates in float32, float64 for float64 logits, like the op. The
    gradient is given in closed form (`tf.custom_gradient`), so that no
    branch of a `tf.where` leaks inf or NaN into it; the gradient with
    respect to y_true is None.
    """
    y_pred = tf.convert_to_tensor(y_pred)
    y_true = tf.convert_to_tensor(y_true)
    out_dtype = y_pred.dtype
    acc = tf.float64 if out_dtype == tf.float64 else tf.float32
    y = tf.stop_gradient(tf.cast(y_true, acc))
    labels_valid = _bpmll_labels_valid(y_true)

    @tf.custom_gradient
    def loss_of_logits(c):
        loss, grad_rows = _bpmll_rows(y, c, labels_valid)

        def grad(upstream):
            return upstream[:, None] * grad_rows

        return loss, grad

    return tf.cast(loss_of_logits(tf.cast(y_pred, acc)), out_dtype)


def labels_from_padded_ids(label_ids, labels):
    """The (batch, labels) uint8 0/1 matrix of padded label ids (-1 =
    padding; a repeated id counts once), for the pure path, which has no
    other way to read ids. A row holding an id outside [0, labels) other
    than the padding gets the label 2 everywhere, which `bpmll_loss_pure_tf`
    turns into a NaN row, as it does bad dense labels (nothing can raise
    inside XLA). A scatter of the ids, so it compiles under XLA."""
    label_ids = tf.cast(label_ids, tf.int64)
    labels = tf.cast(labels, tf.int64)
    shape = tf.shape(label_ids, out_type=tf.int64)
    valid = tf.logical_and(label_ids >= 0, label_ids < labels)
    bad_row = tf.reduce_any(tf.logical_and(tf.logical_not(valid), label_ids != -1), axis=1)
    rows = tf.broadcast_to(tf.range(shape[0])[:, None], shape)
    indices = tf.stack([rows, tf.where(valid, label_ids, tf.zeros_like(label_ids))], axis=-1)
    counts = tf.scatter_nd(indices, tf.cast(valid, tf.int32), tf.stack([shape[0], labels]))
    dense = tf.cast(tf.minimum(counts, 1), tf.uint8)
    return tf.where(bad_row[:, None], tf.constant(2, tf.uint8), dense)


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


def _correlation_rows(y, x, valid, epsilon, concordance):
    """Per-step loss (batch, steps) and the closed-form gradient function
    of a (batch, steps) pair in the accumulation dtype; valid is bool.

    Population moments over each row's valid steps, shifted by the row's
    first valid value so that a constant row's centred values and variance
    are exactly 0 (the shift cancels in every moment). With k = 1 (Pearson)
    or 2 (CCC), loss_t = 1 - k cx_t cy_t / D on valid steps, 0 on masked
    ones. Degenerate rows (Pearson: n < 2 or a constant x or y; CCC: D = 0;
    both: n = 0) have scale 0: loss 1 on valid steps, gradient 0. A NaN or
    inf at a valid step makes the row NaN on its valid steps.
    """
    dtype = x.dtype
    count = tf.reduce_sum(tf.cast(valid, dtype), axis=1, keepdims=True)
    inv_count = 1 / tf.maximum(count, 1)
    first = tf.argmax(tf.cast(valid, tf.int32), axis=1, output_type=tf.int32)
    zero = tf.zeros([], dtype)

    def moments(v):
        # Rows without a valid step would shift by a masked value: 0.
        shift = tf.where(count > 0, tf.gather(v, first, axis=1, batch_dims=1)[:, None], zero)
        shifted = tf.where(valid, v - shift, zero)  # masked steps may hold NaN
        total = tf.reduce_sum(shifted, axis=1, keepdims=True)
        mean_shifted = total * inv_count
        centred = tf.where(valid, shifted - mean_shifted, zero)
        var = tf.reduce_sum(tf.square(centred), axis=1, keepdims=True) * inv_count
        return shift + mean_shifted, centred, var, total

    mean_x, cx, var_x, total_x = moments(x)
    mean_y, cy, var_y, total_y = moments(y)
    # A NaN or inf at a valid step (the shift included) leaves its row's sum
    # non-finite: the row is NaN on its valid steps, through its scale.
    bad_row = tf.logical_not(tf.math.is_finite(total_x + total_y))
    ones = tf.ones_like(var_x)
    if concordance:
        gap = mean_x - mean_y
        denominator = var_x + var_y + tf.square(gap) + epsilon
        degenerate = tf.logical_or(count == 0, denominator == 0)
        k = 2.0
    else:
        std_x, std_y = tf.sqrt(var_x), tf.sqrt(var_y)
        denominator = std_x * std_y + epsilon
        degenerate = tf.logical_or(
            tf.logical_or(count < 2, denominator == 0), tf.logical_or(var_x == 0, var_y == 0)
        )
        k = 1.0
    degenerate = tf.logical_and(degenerate, tf.logical_not(bad_row))
    safe_denominator = tf.where(degenerate, ones, denominator)
    scale = tf.where(degenerate, tf.zeros_like(ones), k / safe_denominator)
    scale = tf.where(bad_row, tf.fill(tf.shape(scale), tf.constant(float("nan"), dtype)), scale)
    loss = tf.where(valid, 1 - scale * cx * cy, zero)

    def gradients(upstream):
        """d(sum_t upstream_t loss_t) / d y and / d x, in closed form (see
        cc/core/correlation/correlation_math.h): with w = upstream on valid steps,
        f = sum w cx cy, Wx = sum w cx, Wy = sum w cy,
          dL/dx_s = -k (w_s cy_s - Wy/n) / D + k f (dD/dx_s) / D^2
        where dD/dx_s = (sy/sx) cx_s / n (Pearson), (2 cx_s + 2 gap) / n (CCC).
        """
        w = tf.where(valid, upstream, zero)
        f = tf.reduce_sum(w * cx * cy, axis=1, keepdims=True)
        weighted_x = tf.reduce_sum(w * cx, axis=1, keepdims=True)
        weighted_y = tf.reduce_sum(w * cy, axis=1, keepdims=True)
        # Per-row coefficients: 0 on degenerate rows (scale 0), NaN on rows
        # holding a NaN or inf (scale NaN).
        offset_x = scale * weighted_y * inv_count
        offset_y = scale * weighted_x * inv_count
        f_over_nd2 = (f * inv_count / safe_denominator) / safe_denominator
        live = tf.where(degenerate, tf.zeros_like(ones), scale * 0 + 1)
        if concordance:
            self_x = self_y = live * 4 * f_over_nd2
            gap_term = live * 4 * f_over_nd2 * gap
            offset_x += gap_term
            offset_y -= gap_term
        else:
            safe_std_x = tf.where(degenerate, ones, std_x)
            safe_std_y = tf.where(degenerate, ones, std_y)
            # f / sx is bounded by sqrt(n) sum |w cy|; sy / sx alone is not.
            self_x = live * (f_over_nd2 / safe_std_x) * safe_std_y
            self_y = live * (f_over_nd2 / safe_std_y) * safe_std_x
        grad_x = tf.where(valid, -scale * w * cy + self_x * cx + offset_x, zero)
        grad_y = tf.where(valid, -scale * w * cx + self_y * cy + offset_y, zero)
        return grad_y, grad_x

    return loss, gradients


def _correlation_pure_tf(y_true, y_pred, epsilon, mask, concordance):
    y_pred = _as_steps(tf.convert_to_tensor(y_pred))
    y_true = _as_steps(tf.convert_to_tensor(y_true))
    out_dtype = y_pred.dtype
    acc = tf.float64 if out_dtype == tf.float64 else tf.float32
    # The op's epsilon is a float32 attribute, whatever the dtype.
    epsilon = tf.cast(tf.cast(epsilon, tf.float32), acc)
    x = tf.cast(y_pred, acc)
    y = tf.cast(y_true, acc) if y_true.dtype.is_floating else tf.stop_gradient(tf.cast(y_true, acc))
    valid = tf.ones_like(x, dtype=tf.bool) if mask is None else tf.cast(mask, tf.bool)

    @tf.custom_gradient
    def loss_of(y, x):
        loss, gradients = _correlation_rows(y, x, valid, epsilon, concordance)
        return loss, gradients

    return tf.cast(loss_of(y, x), out_dtype)


def correlation_loss_pure_tf(y_true, y_pred, epsilon=1e-7, mask=None):
    """Per-step Pearson loss with the fused op's conventions, in pure TF
    (XLA-compilable): population moments over each row's valid steps,
    accumulated in float32 at least; denominator sqrt(var x) sqrt(var y) +
    epsilon (epsilon rounded to float32, as the op's attribute is). Masked
    steps give loss 0 and gradient 0 whatever they hold; rows with no valid
    step give 0; constant rows and rows with fewer than 2 valid steps give
    loss 1 on valid steps and gradient 0; a NaN or inf at a valid step makes
    the row's loss and both gradients NaN on its valid steps. Gradients to
    both inputs, in closed form (`tf.custom_gradient`)."""
    return _correlation_pure_tf(y_true, y_pred, epsilon, mask, concordance=False)


def ccc_loss_pure_tf(y_true, y_pred, epsilon=1e-7, mask=None):
    """Per-step CCC loss with the fused op's conventions, in pure TF:
    denominator var x + var y + (mean x - mean y)^2 + epsilon, its exact
    gradient on every row (a row with D = 0, i.e. epsilon 0 and both rows
    constant and equal, gives loss 1 and gradient 0); otherwise as
    `correlation_loss_pure_tf`."""
    return _correlation_pure_tf(y_true, y_pred, epsilon, mask, concordance=True)
