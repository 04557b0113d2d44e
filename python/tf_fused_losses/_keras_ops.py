"""The losses in `keras.ops` alone: what JAX arrays run where the fused JAX
ops cannot load (or with TF_FUSED_LOSSES_PY_OPS=1), and what torch tensors
and every other Keras backend run.

Ports of `_tf_pure` (`reference.*_pure_tf`) (read their comments for the why), with the
fused ops' conventions (docs/semantics.md): O(B L) factored BP-MLL in the
log domain, 0 and gradient exactly 0 for rows without pairs, NaN confined to
the rows holding a NaN, IEEE extended arithmetic for infinite logits; per-step
Pearson and CCC with masks, degenerate rows at loss 1 and gradient 0, NaN
rows on a non-finite valid step. Gradients are written in closed form with
`keras.ops.custom_gradient` (autodiff through `where` would let an
unselected branch's inf or NaN into them), and no infinity reaches `exp`
where its result is used (XLA's fused CPU exp reads exp(inf) - exp(inf) as
-inf). float16 and bfloat16 accumulate in float32, float32 and float64 in
their own dtype; results are in y_pred's dtype.

Interface as every backend's (`_dispatch`): `bpmll_loss(y_true, y_pred)`
and `correlation_loss(y_true, y_pred, *, epsilon, mask, concordance)`, each
converting its arguments and checking them with `_validation`.
"""

import numpy as np

import keras
from keras import ops

from ._sequence_rows import ArrayFunctions, to_rows
from ._validation import check_bpmll_arguments, check_padded_ids_arguments, check_sequence_arguments

INF = float("inf")
NAN = float("nan")


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _accumulator(dtype):
    return "float64" if dtype == "float64" else "float32"


def _grad_function(gradients):
    """A custom_gradient's gradient function: `gradients(upstream)` called
    as every backend calls it (TF and JAX: grad(upstream); torch:
    grad(*inputs, upstream=upstream))."""

    def grad(*args, upstream=None):
        if upstream is None:
            (upstream,) = args
        return gradients(upstream)

    return grad


def _maximum(a, b):
    """max(a, b) elementwise in their dtype, for operands without NaN.
    Not `ops.maximum`: on torch it casts both operands to Keras'
    `result_type`, which off the tensorflow backend maps float64 to float32
    (`dtypes.BIT64_TO_BIT32_DTYPE`, Keras 3.15), so float64 moments and
    exponents would keep only float32's digits."""
    return ops.where(ops.greater(b, a), b, a)


def _static_empty(*tensors):
    """True where a dimension is known to be 0 (shapes are static on JAX and
    torch; TF may not know them, and handles empty reductions itself)."""
    return any(d == 0 for t in tensors for d in t.shape)


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def _exp_extended(t):
    """e^t in IEEE extended arithmetic (e^{+inf} = inf, e^{-inf} = 0, NaN
    stays NaN) without handing an infinity to exp."""
    finite = ops.isfinite(t)
    zero = ops.zeros_like(t)
    e = ops.exp(ops.where(finite, t, zero))
    special = ops.where(ops.greater(t, 0), ops.full_like(t, INF), ops.where(ops.less(t, 0), zero, ops.full_like(t, NAN)))
    return ops.where(finite, e, special)


def _row_logsumexp(terms):
    """log sum_j e^{terms_j} per row of a (batch, n) tensor, n > 0, in IEEE
    extended arithmetic: -inf where every term is -inf, +inf where some term
    is +inf, NaN where one is NaN. Forward only."""
    top = ops.max(terms, axis=1)
    finite_top = ops.isfinite(top)
    shift = ops.where(finite_top, top, ops.zeros_like(top))
    # With a finite maximum every exponent is <= 0 or -inf; rows whose
    # maximum is not finite take it as their value, and exp sees 0 there.
    exponent = ops.where(finite_top[:, None], terms - shift[:, None], ops.zeros_like(terms))
    total = ops.sum(ops.exp(exponent), axis=1)
    return ops.where(finite_top, shift + ops.log(total), top)


def _exp_difference(a, b):
    """e^a - e^b elementwise in IEEE extended arithmetic (see
    `_tf_pure._exp_difference`), from selects, so that no infinity meets
    exp or an exp result."""
    zero = ops.zeros_like(a)
    a_finite = ops.isfinite(a)
    b_finite = ops.isfinite(b)
    both = ops.logical_and(a_finite, b_finite)
    a0 = ops.where(both, a, zero)
    b0 = ops.where(both, b, zero)
    gap = a0 - b0
    # log(1 - e^{-|gap|}) is -inf at gap = 0, making the difference 0.
    scaled = ops.sign(gap) * ops.exp(_maximum(a0, b0) + ops.log(-ops.expm1(-ops.abs(gap))))
    only_a = ops.exp(ops.where(a_finite, a, zero))
    only_b = -ops.exp(ops.where(b_finite, b, zero))
    # b = -inf with a finite, a = -inf with b finite, both -inf: 0.
    diff = ops.where(both, scaled, ops.where(a_finite, only_a, ops.where(b_finite, only_b, zero)))
    a_inf = ops.equal(a, INF)
    b_inf = ops.equal(b, INF)
    diff = ops.where(a_inf, ops.full_like(a, INF), diff)
    diff = ops.where(b_inf, ops.full_like(a, -INF), diff)
    undefined = ops.logical_or(ops.logical_or(ops.isnan(a), ops.isnan(b)), ops.logical_and(a_inf, b_inf))
    return ops.where(undefined, ops.full_like(a, NAN), diff)


def _labels_valid(y_true):
    """Per row: every label in [0, 1] (NaN is not), in y_true's own dtype."""
    if _dtype(y_true) == "bool":
        return ops.all(ops.logical_or(y_true, ops.logical_not(y_true)), axis=1)
    return ops.all(ops.logical_and(ops.greater_equal(y_true, 0), ops.less_equal(y_true, 1)), axis=1)


def _bpmll_rows(y, c, labels_valid):
    """Loss (batch,) and d loss / d c (batch, labels), in c's dtype: the
    rule of `_tf_pure._bpmll_rows`, step for step."""
    dtype = _dtype(c)
    zero = ops.zeros_like(c)
    positive = ops.greater(y, 0)
    negative = ops.less(y, 1)
    # log 0 = -inf where a weight is 0, where the logit is replaced by 0 so
    # that a weight-0 entry never meets an infinite one.
    log_pos_terms = ops.log(y) - ops.where(positive, c, zero)
    log_neg_terms = ops.log(1 - y) + ops.where(negative, c, zero)
    log_p = _row_logsumexp(log_pos_terms)
    log_n = _row_logsumexp(log_neg_terms)
    pos_count = ops.sum(y, axis=1)
    neg_count = ops.sum(1 - y, axis=1)
    has_pairs = ops.logical_and(ops.greater(pos_count, 0), ops.greater(neg_count, 0))
    one = ops.ones_like(pos_count)
    log_pairs = ops.log(ops.where(has_pairs, pos_count, one)) + ops.log(ops.where(has_pairs, neg_count, one))
    log_loss = log_p + log_n - log_pairs
    loss = _exp_extended(log_loss)
    log_neg_side = log_neg_terms + (log_p - log_pairs)[:, None]
    log_pos_side = log_pos_terms + (log_n - log_pairs)[:, None]
    nan_row = ops.logical_or(ops.logical_not(labels_valid), ops.any(ops.isnan(c), axis=1))
    # (A tensor of log_loss's dtype: a Python float would reach torch as a
    # float32 tensor.)
    log_max = float(np.log(np.finfo(dtype).max)) - 1
    regular = ops.logical_and(
        ops.logical_and(ops.isfinite(log_p), ops.isfinite(log_n)), ops.less(log_loss, ops.full_like(log_loss, log_max))
    )
    special = ops.logical_and(ops.logical_and(has_pairs, ops.logical_not(nan_row)), ops.logical_not(regular))
    # Rows that are not regular may read inf - inf here; they are replaced
    # below (special ones by the extended form, the others by 0 or NaN).
    grad = ops.exp(log_neg_side) - ops.exp(log_pos_side)

    def extended():
        neg_inf = ops.full_like(c, -INF)
        # A side of weight 0 is exactly 0, even where its log reads
        # -inf + inf (NaN) in a row with an infinite log P or log N.
        a = ops.where(negative, log_neg_side, neg_inf)
        b = ops.where(positive, log_pos_side, neg_inf)
        return ops.where(special[:, None], _exp_difference(a, b), grad)

    grad = ops.cond(ops.any(special), extended, lambda: grad)
    keep = ops.logical_and(has_pairs, ops.logical_not(nan_row))
    row_value = ops.where(nan_row, ops.full_like(loss, NAN), ops.zeros_like(loss))
    return ops.where(keep, loss, row_value), ops.where(keep[:, None], grad, row_value[:, None])


def bpmll_loss(y_true, y_pred, name=None):
    """Per-sample BP-MLL loss (batch,) in y_pred's dtype, with the fused op's
    conventions (`_tf_pure.bpmll_loss_pure_tf`'s rules in keras.ops). Bad
    labels give their row NaN (nothing here can raise on a value). The
    gradient with respect to y_true is zero. `name` is for the backends'
    common signature (TF's name scope); unused here."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    check_bpmll_arguments(y_true, y_pred)
    out_dtype = _dtype(y_pred)
    acc = _accumulator(out_dtype)
    c = ops.cast(y_pred, acc)
    if _static_empty(c):
        # No row or no label: no pairs anywhere. (c * 0 keeps the result
        # connected to y_pred, whose gradient is then empty or zero.)
        return ops.cast(ops.sum(c * 0, axis=1), out_dtype)
    y = ops.stop_gradient(ops.cast(y_true, acc))
    labels_valid = _labels_valid(y_true)

    @ops.custom_gradient
    def loss_of_logits(c):
        loss, grad_rows = _bpmll_rows(y, c, labels_valid)
        return loss, _grad_function(lambda upstream: upstream[:, None] * grad_rows)

    return ops.cast(loss_of_logits(c), out_dtype)


def bpmll_loss_from_ids(label_ids, y_pred, name=None):
    """BP-MLL from padded label ids (batch, K), -1 = padding, with the fused
    op's conventions: the ids become the 0/1 label matrix (a scatter; a
    repeated id counts once) and `bpmll_loss` runs on it. A row holding an
    id outside [0, labels) other than the padding is NaN, as bad dense
    labels are here. The fused backends never build that matrix."""
    label_ids = ops.convert_to_tensor(label_ids)
    y_pred = ops.convert_to_tensor(y_pred)
    check_padded_ids_arguments(label_ids, y_pred)
    batch, labels = ops.shape(y_pred)[0], ops.shape(y_pred)[1]
    ids = ops.cast(label_ids, "int32")
    valid = ops.logical_and(ops.greater_equal(ids, 0), ops.less(ids, labels))
    bad_row = ops.any(ops.logical_and(ops.logical_not(valid), ops.not_equal(ids, -1)), axis=1)
    rows = ops.broadcast_to(ops.expand_dims(ops.arange(batch, dtype="int32"), 1), ops.shape(ids))
    indices = ops.reshape(ops.stack([rows, ops.where(valid, ids, ops.zeros_like(ids))], axis=-1), (-1, 2))
    counts = ops.scatter(indices, ops.reshape(ops.cast(valid, "int32"), (-1,)), (batch, labels))
    dense = ops.cast(ops.minimum(counts, 1), "uint8")
    dense = ops.where(ops.expand_dims(bad_row, 1), ops.full_like(dense, 2), dense)
    return bpmll_loss(dense, y_pred)


# --------------------------------------------------------------------------
# Correlation and CCC
# --------------------------------------------------------------------------


def _correlation_rows(y, x, valid, epsilon, concordance):
    """Per-step loss (batch, steps) and the closed-form gradient function of
    a (batch, steps) pair in the accumulation dtype; valid is bool. The rule
    of `_tf_pure._correlation_rows`: moments over each row's valid steps,
    shifted by the row's first valid value (so that a constant row's centred
    values and variance are exactly 0), degenerate rows at scale 0, rows
    with a NaN or inf at a valid step at scale NaN."""
    zero = ops.zeros_like(x)
    count = ops.sum(ops.cast(valid, x.dtype), axis=1, keepdims=True)
    inv_count = 1 / _maximum(count, ops.ones_like(count))
    # The first valid step of each row (none in a row without one).
    first = ops.logical_and(valid, ops.equal(ops.cumsum(ops.cast(valid, "int32"), axis=1), 1))

    def moments(v):
        shift = ops.sum(ops.where(first, v, zero), axis=1, keepdims=True)  # exactly v at the first valid step
        shifted = ops.where(valid, v - shift, zero)  # masked steps may hold NaN
        total = ops.sum(shifted, axis=1, keepdims=True)
        mean_shifted = total * inv_count
        centred = ops.where(valid, shifted - mean_shifted, zero)
        var = ops.sum(ops.square(centred), axis=1, keepdims=True) * inv_count
        return shift + mean_shifted, centred, var, total

    mean_x, cx, var_x, total_x = moments(x)
    mean_y, cy, var_y, total_y = moments(y)
    bad_row = ops.logical_not(ops.isfinite(total_x + total_y))
    ones = ops.ones_like(var_x)
    zeros = ops.zeros_like(var_x)
    if concordance:
        gap = mean_x - mean_y
        denominator = var_x + var_y + ops.square(gap) + epsilon
        degenerate = ops.logical_or(ops.equal(count, 0), ops.equal(denominator, 0))
        k = 2.0
    else:
        std_x, std_y = ops.sqrt(var_x), ops.sqrt(var_y)
        denominator = std_x * std_y + epsilon
        degenerate = ops.logical_or(
            ops.logical_or(ops.less(count, 2), ops.equal(denominator, 0)),
            ops.logical_or(ops.equal(var_x, 0), ops.equal(var_y, 0)),
        )
        k = 1.0
    degenerate = ops.logical_and(degenerate, ops.logical_not(bad_row))
    safe_denominator = ops.where(degenerate, ones, denominator)
    scale = ops.where(degenerate, zeros, k / safe_denominator)
    scale = ops.where(bad_row, ops.full_like(scale, NAN), scale)
    loss = ops.where(valid, 1 - scale * cx * cy, zero)

    def gradients(upstream):
        """d(sum_t upstream_t loss_t) / d y and / d x (see
        `_tf_pure._correlation_rows`)."""
        w = ops.where(valid, upstream, zero)
        f = ops.sum(w * cx * cy, axis=1, keepdims=True)
        weighted_x = ops.sum(w * cx, axis=1, keepdims=True)
        weighted_y = ops.sum(w * cy, axis=1, keepdims=True)
        offset_x = scale * weighted_y * inv_count
        offset_y = scale * weighted_x * inv_count
        f_over_nd2 = (f * inv_count / safe_denominator) / safe_denominator
        live = ops.where(degenerate, zeros, scale * 0 + 1)
        if concordance:
            self_x = self_y = live * 4 * f_over_nd2
            gap_term = live * 4 * f_over_nd2 * gap
            offset_x = offset_x + gap_term
            offset_y = offset_y - gap_term
        else:
            safe_std_x = ops.where(degenerate, ones, std_x)
            safe_std_y = ops.where(degenerate, ones, std_y)
            # f / sx is bounded by sqrt(n) sum |w cy|; sy / sx alone is not.
            self_x = live * (f_over_nd2 / safe_std_x) * safe_std_y
            self_y = live * (f_over_nd2 / safe_std_y) * safe_std_x
        grad_x = ops.where(valid, -scale * w * cy + self_x * cx + offset_x, zero)
        grad_y = ops.where(valid, -scale * w * cx + self_y * cy + offset_y, zero)
        return grad_y, grad_x

    return loss, gradients


def correlation_loss(y_true, y_pred, *, epsilon=1e-7, mask=None, concordance=False, corpus=False, name=None):
    """Per-step Pearson (concordance=False) or CCC loss (batch, steps) in
    y_pred's dtype, with the fused ops' conventions
    (`_tf_pure.correlation_loss_pure_tf`'s rules in keras.ops). Inputs
    (batch, steps) or (batch, steps, 1); y_true is cast to y_pred's dtype;
    mask None or (batch, steps), nonzero on valid steps; epsilon is rounded
    to float32, as the op's attribute is. Gradients to both inputs."""
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if mask is not None:
        mask = ops.convert_to_tensor(mask)
    epsilon, _ = check_sequence_arguments(y_true, y_pred, epsilon, mask, corpus)
    if mask is not None and _dtype(mask) != "bool":
        mask = ops.not_equal(mask, 0)  # nonzero = valid
    (y_true, y_pred, mask), back = to_rows(_ARRAY_FUNCTIONS, y_true, y_pred, mask, corpus)
    return back(_correlation_rows_loss(y_true, y_pred, epsilon, mask, concordance))


_ARRAY_FUNCTIONS = ArrayFunctions(ops.transpose, ops.reshape, ops.broadcast_to, lambda x: list(ops.shape(x)))


def _correlation_rows_loss(y_true, y_pred, epsilon, mask, concordance):
    """The loss of (rows, length) pairs, mask bool or None."""
    out_dtype = _dtype(y_pred)
    acc = _accumulator(out_dtype)
    if _dtype(y_true) != out_dtype:
        y_true = ops.cast(y_true, out_dtype)
    x = ops.cast(y_pred, acc)
    y = ops.cast(y_true, acc)
    if _static_empty(x, y):
        return ops.cast(x * 0 + y * 0, out_dtype)  # no step anywhere: loss and gradients empty
    epsilon = float(np.float32(epsilon))
    valid = ops.ones_like(x, dtype="bool") if mask is None else mask

    @ops.custom_gradient
    def loss_of(y, x):
        loss, gradients = _correlation_rows(y, x, valid, epsilon, concordance)
        return loss, _grad_function(gradients)

    return ops.cast(loss_of(y, x), out_dtype)
