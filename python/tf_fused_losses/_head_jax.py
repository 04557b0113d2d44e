"""The fused linear BP-MLL head on JAX arrays: the loss of hidden @ kernel +
bias against labels, per row or reduced, with gradients for hidden, kernel
and bias, without ever holding the (batch, labels) logits or their gradient.

The algorithms are `_head_tf`'s (see there for which form runs when), over
label chunks (a lax.fori_loop over the whole chunks, then the remainder):

* two passes (`_head`: no reduction, or dense labels): a forward folding
  each chunk's logits into per-row log P, log N and the label counts, and a
  `jax.custom_vjp` backward that recomputes each chunk's logits;
* one pass (`_one_pass_head`: label ids with a reduction): all three
  gradients in the forward, P first from the positives' gathered kernel
  columns, then one pass of chunk GEMMs, then the positives' gradient; the
  custom_vjp backward scales them by the scalar upstream. Each chunk takes
  the max-shifted log-sum-exp form (XLA fuses its elementwise work with the
  GEMM's consumers, where TensorFlow's graph mode runs each op on its own,
  which is why `_head_tf` adds a fast form).

Both write the chunk's columns of the kernel's and bias's gradient in place
(lax.dynamic_update_slice into the loop's carry, which XLA updates without a
copy). The numerics and the NaN/inf rule are those of the pure-TF form
(docs/semantics.md), written out here with jax.numpy; bad labels give their
row NaN, and so do bad ids under jax.jit (outside it they raise, naming the
id).
"""

import functools

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax

from ._head_validation import check_concrete_ids, check_head_arguments, check_reduction, chunk_width, reduction_divisor
from ._jax_ops import _as_array


def _exp_extended(t):
    """e^t with e^{+inf} = inf, e^{-inf} = 0 and NaN kept, without handing an
    infinity to exp (XLA's CPU exp, fused with its consumers, mishandles them)."""
    finite = jnp.isfinite(t)
    e = jnp.exp(jnp.where(finite, t, 0))
    return jnp.where(finite, e, jnp.where(t > 0, jnp.inf, jnp.where(t < 0, 0, jnp.nan)).astype(t.dtype))


def _row_logsumexp(terms):
    """log sum_j e^{terms_j} per row, -inf for a row of -inf terms, the
    maximum itself where it is +inf or NaN."""
    top = jnp.max(terms, axis=1) if terms.shape[1] else jnp.full(terms.shape[:1], -jnp.inf, terms.dtype)
    finite_top = jnp.isfinite(top)
    shift = jnp.where(finite_top, top, 0)
    total = jnp.sum(jnp.exp(terms - shift[:, None]), axis=1)
    return jnp.where(finite_top, shift + jnp.log(total), top)


def _logaddexp(a, b):
    """log(e^a + e^b) in extended arithmetic, for combining chunks."""
    top = jnp.maximum(a, b)
    finite = jnp.isfinite(top)
    safe_top = jnp.where(finite, top, 0)
    return jnp.where(finite, safe_top + jnp.log1p(jnp.exp(jnp.minimum(a, b) - safe_top)), top)


def _exp_difference(a, b):
    """e^a - e^b in extended arithmetic (as _tf_pure._exp_difference): NaN
    where either is NaN or both are +inf, +-inf where one side is +inf, else
    sign(a - b) e^{max(a, b)} (1 - e^{-|a - b|}), overflowing only where the
    true value does."""
    a_finite, b_finite = jnp.isfinite(a), jnp.isfinite(b)
    both = a_finite & b_finite
    a0, b0 = jnp.where(both, a, 0), jnp.where(both, b, 0)
    gap = a0 - b0
    scaled = jnp.sign(gap) * jnp.exp(jnp.maximum(a0, b0) + jnp.log(-jnp.expm1(-jnp.abs(gap))))
    only_a = jnp.exp(jnp.where(a_finite, a, 0))
    only_b = -jnp.exp(jnp.where(b_finite, b, 0))
    diff = jnp.where(both, scaled, jnp.where(a_finite, only_a, jnp.where(b_finite, only_b, 0)))
    diff = jnp.where(a == jnp.inf, jnp.inf, diff)
    diff = jnp.where(b == jnp.inf, -jnp.inf, diff)
    undefined = jnp.isnan(a) | jnp.isnan(b) | ((a == jnp.inf) & (b == jnp.inf))
    return jnp.where(undefined, jnp.nan, diff).astype(a.dtype)


def _chunks(width, label_count, step, carry):
    """carry = step(start, width, carry) over [0, label_count) in chunks:
    the whole chunks in a lax.fori_loop, then the remainder as one step."""
    whole = label_count // width
    if whole:
        carry = lax.fori_loop(0, whole, lambda i, c: step(i * width, width, c), carry)
    tail = label_count - whole * width
    if tail:
        carry = step(whole * width, tail, carry)
    return carry


def _chunk_logits(hidden, kernel, bias, start, width, acc):
    kernel_chunk = lax.dynamic_slice_in_dim(kernel, start, width, axis=1)
    logits = hidden @ kernel_chunk + lax.dynamic_slice_in_dim(bias, start, width)
    return kernel_chunk, logits.astype(acc)


def _prepare_ids(ids, label_count, acc):
    """Sorted ids, which of them count (in range, not a repeat), the rows
    holding a bad id, and the positives per row."""
    ids = jnp.sort(ids, axis=1)
    # Sorted, a repeated id sits next to its first copy: it counts once.
    repeated = jnp.concatenate([jnp.zeros_like(ids[:, :1], bool), ids[:, 1:] == ids[:, :-1]], axis=1)
    in_range = (ids >= 0) & (ids < label_count)
    valid = in_range & ~repeated
    bad_rows = jnp.any(~in_range & (ids != -1), axis=1)
    ids = jnp.where(in_range, ids, 0).astype(jnp.int32)
    return ids, valid, bad_rows, jnp.sum(valid, axis=1).astype(acc)


def _terms(labels, label_ids, start, width, c):
    """(positive, negative, log_pos_terms, log_neg_terms, raw labels or
    None) of a chunk: log(y) - c over positives, log(1 - y) + c over
    negatives, -inf where a side's weight is 0."""
    if label_ids:
        ids, valid = labels
        local = ids - start
        in_chunk = valid & (local >= 0) & (local < width)
        rows = jnp.broadcast_to(jnp.arange(ids.shape[0])[:, None], ids.shape)
        # Ids outside the chunk go to column `width`, which mode="drop" drops.
        positive = jnp.zeros(c.shape, bool).at[rows, jnp.where(in_chunk, local, width)].set(True, mode="drop")
        negative = ~positive
        return positive, negative, jnp.where(positive, -c, -jnp.inf), jnp.where(negative, c, -jnp.inf), None
    raw = lax.dynamic_slice_in_dim(labels, start, width, axis=1)
    y = raw.astype(c.dtype)
    positive, negative = y > 0, y < 1
    return positive, negative, jnp.log(y) - jnp.where(positive, c, 0), jnp.log(1 - y) + jnp.where(negative, c, 0), raw


def _labels_valid(raw):
    if raw.dtype == jnp.bool_:
        return jnp.ones(raw.shape[:1], bool)
    return jnp.all((raw >= 0) & (raw <= 1), axis=1)


def _pairs(pos_count, neg_count):
    """Per row: whether it has a (positive, negative) pair, and log |Y| |Ybar|
    (0 where it has none)."""
    has_pairs = (pos_count > 0) & (neg_count > 0)
    return has_pairs, jnp.log(jnp.where(has_pairs, pos_count, 1)) + jnp.log(jnp.where(has_pairs, neg_count, 1))


def _forward(label_ids, label_count, width, labels, hidden, kernel, bias):
    """Loss (batch,) in the compute dtype and the per-row statistics the
    backward needs."""
    compute = kernel.dtype
    acc = jnp.float64 if compute == jnp.float64 else jnp.float32
    batch = hidden.shape[0]
    if label_ids:
        ids, valid, bad_rows, pos_count = _prepare_ids(labels, label_count, acc)
        chunk_labels = (ids, valid)
    else:
        chunk_labels = labels

    def step(start, width, carry):
        log_p, log_n, pos_count, neg_count, nan_row = carry
        _, c = _chunk_logits(hidden, kernel, bias, start, width, acc)
        _, _, log_pos, log_neg, raw = _terms(chunk_labels, label_ids, start, width, c)
        nan_row = nan_row | jnp.any(jnp.isnan(c), axis=1)
        if raw is not None:
            y = raw.astype(acc)
            pos_count = pos_count + jnp.sum(y, axis=1)
            neg_count = neg_count + jnp.sum(1 - y, axis=1)
            nan_row = nan_row | ~_labels_valid(raw)
        return (_logaddexp(log_p, _row_logsumexp(log_pos)), _logaddexp(log_n, _row_logsumexp(log_neg)),
                pos_count, neg_count, nan_row)

    neg_inf = jnp.full((batch,), -jnp.inf, acc)
    zeros = jnp.zeros((batch,), acc)
    log_p, log_n, dense_pos, dense_neg, nan_row = _chunks(
        width, label_count, step, (neg_inf, neg_inf, zeros, zeros, jnp.zeros((batch,), bool))
    )
    if label_ids:
        neg_count = label_count - pos_count
        nan_row = nan_row | bad_rows
    else:
        pos_count, neg_count = dense_pos, dense_neg
    has_pairs, log_pairs = _pairs(pos_count, neg_count)
    log_loss = log_p + log_n - log_pairs
    keep = has_pairs & ~nan_row
    log_max = float(np.log(jnp.finfo(acc).max)) - 1
    regular = jnp.isfinite(log_p) & jnp.isfinite(log_n) & (log_loss < log_max)
    special = keep & ~regular
    row_value = jnp.where(nan_row, jnp.nan, 0).astype(acc)
    loss = jnp.where(keep, _exp_extended(log_loss), row_value)
    statistics = (log_p - log_pairs, log_n - log_pairs, keep, special, row_value)
    return loss.astype(compute), (chunk_labels, statistics)


def _chunk_dlogits(chunk_labels, label_ids, statistics, start, width, c, upstream):
    log_p_per_pair, log_n_per_pair, keep, special, row_value = statistics
    positive, negative, log_pos, log_neg, _ = _terms(chunk_labels, label_ids, start, width, c)
    log_neg_side = log_neg + log_p_per_pair[:, None]
    log_pos_side = log_pos + log_n_per_pair[:, None]
    grad = jnp.exp(log_neg_side) - jnp.exp(log_pos_side)

    def extended(grad):
        a = jnp.where(negative, log_neg_side, -jnp.inf)
        b = jnp.where(positive, log_pos_side, -jnp.inf)
        return jnp.where(special[:, None], _exp_difference(a, b), grad)

    # Rows with infinite logits or a loss near overflow only: computed only
    # when the batch has one.
    grad = lax.cond(jnp.any(special), extended, lambda g: g, grad)
    grad = jnp.where(keep[:, None], grad, row_value[:, None])
    return upstream[:, None] * grad


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _head(label_ids, label_count, width, labels, hidden, kernel, bias):
    return _forward(label_ids, label_count, width, labels, hidden, kernel, bias)[0]


def _head_fwd(label_ids, label_count, width, labels, hidden, kernel, bias):
    loss, (chunk_labels, statistics) = _forward(label_ids, label_count, width, labels, hidden, kernel, bias)
    return loss, (chunk_labels, statistics, hidden, kernel, bias)


def _head_bwd(label_ids, label_count, width, residuals, upstream):
    chunk_labels, statistics, hidden, kernel, bias = residuals
    acc = statistics[0].dtype
    upstream = upstream.astype(acc)

    def step(start, width, gradients):
        kernel_chunk, c = _chunk_logits(hidden, kernel, bias, start, width, acc)
        dlogits = _chunk_dlogits(chunk_labels, label_ids, statistics, start, width, c, upstream)
        return _add_chunk_gradients(gradients, dlogits, hidden, kernel_chunk, start)

    carry = (jnp.zeros(hidden.shape, acc), jnp.zeros_like(kernel), jnp.zeros_like(bias))
    dhidden, dkernel, dbias = _chunks(width, label_count, step, carry)
    # Labels are constants: no cotangent.
    return None, dhidden.astype(hidden.dtype), dkernel, dbias


_head.defvjp(_head_fwd, _head_bwd)


def _add_chunk_gradients(gradients, dlogits, hidden, kernel_chunk, start):
    """(dhidden, dkernel, dbias) with a chunk's share from its dlogits
    (batch, width): dhidden += dlogits kernel_chunk^T, and the chunk's
    columns of the kernel's (hidden^T dlogits) and bias's gradients written
    in place (dynamic-update-slice of the loop's carry). Two GEMMs in the
    compute dtype; each gradient keeps its dtype."""
    dhidden, dkernel, dbias = gradients
    dlogits_compute = dlogits.astype(kernel_chunk.dtype)
    dhidden = dhidden + (dlogits_compute @ kernel_chunk.T).astype(dhidden.dtype)
    dkernel = lax.dynamic_update_slice_in_dim(dkernel, hidden.T @ dlogits_compute, start, axis=1)
    dbias = lax.dynamic_update_slice_in_dim(dbias, jnp.sum(dlogits, axis=0).astype(dbias.dtype), start, axis=0)
    return dhidden, dkernel, dbias


def _divide_no_nan(x, y):
    """x / y, 0 where y is 0 (Keras' reduction divides so)."""
    return jnp.where(y == 0, 0, x / jnp.where(y == 0, 1, y)).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _one_pass_head(label_count, width, ids, weights, divisor, hidden, kernel, bias):
    """(loss, per-row loss) in the compute dtype of a reduction over padded
    label ids, sum_i weights_i loss_i / divisor: all three gradients come
    from the forward (`_one_pass`), the backward scales them by the scalar
    upstream. Callers pass the per-row loss through stop_gradient."""
    return _one_pass_head_fwd(label_count, width, ids, weights, divisor, hidden, kernel, bias)[0]


def _one_pass_head_fwd(label_count, width, ids, weights, divisor, hidden, kernel, bias):
    compute = kernel.dtype
    row_scale = _divide_no_nan(weights, divisor)
    rows, gradients, any_nan = _one_pass(label_count, width, ids, row_scale, hidden, kernel, bias)
    loss = _divide_no_nan(jnp.sum(weights * rows), divisor)
    return (loss.astype(compute), rows.astype(compute)), (gradients, any_nan)


def _one_pass_head_bwd(label_count, width, residuals, cotangents):
    (dhidden, dkernel, dbias), any_nan = residuals
    upstream = cotangents[0].astype(dhidden.dtype)  # the per-row loss's is zero (stop_gradient)
    # Any NaN row makes the kernel's and bias's gradients NaN throughout, as
    # the unfused H^T dlogits does.
    weight_scale = jnp.where(any_nan, jnp.nan, upstream)
    compute = dkernel.dtype
    # Ids, weights and divisor are constants: no cotangent.
    return (
        None,
        None,
        None,
        (dhidden * upstream).astype(compute),
        dkernel * weight_scale.astype(compute),
        (dbias * weight_scale).astype(compute),
    )


_one_pass_head.defvjp(_one_pass_head_fwd, _one_pass_head_bwd)


def _one_pass(label_count, width, ids, row_scale, hidden, kernel, bias):
    """The per-row loss (batch,), the gradients of sum_i row_scale_i loss_i
    (dhidden and dbias in the accumulation dtype, dkernel in the compute
    dtype) and whether any row is NaN, in one pass over the label chunks
    (the unfused step's three GEMMs); `_head_tf._one_pass` explains the
    steps: the positives' sum A first from their gathered kernel columns,
    then per chunk its logits, log N over its negatives (the positives
    masked by id) and the negatives' dlogits with their two GEMMs, then the
    positives' dlogits through the gathered columns, scatter-added into the
    kernel's and bias's gradients."""
    compute = kernel.dtype
    acc = row_scale.dtype
    batch = hidden.shape[0]
    ids, valid, bad_rows, pos_count = _prepare_ids(ids, label_count, acc)
    has_pairs, log_pairs = _pairs(pos_count, label_count - pos_count)
    # Rows whose gradient is known to be 0 (no pairs) or NaN (a bad id, set
    # at the end) skip the chunks' arithmetic.
    counted = has_pairs & ~bad_rows
    positive_kernel = jnp.take(kernel, ids, axis=1)  # (d, batch, ids)
    positive_logits = (jnp.einsum("bd,dbk->bk", hidden, positive_kernel) + bias[ids]).astype(acc)
    log_a = _row_logsumexp(jnp.where(valid, -positive_logits, -jnp.inf))
    log_negative_factor = (log_a - log_pairs)[:, None]

    def step(start, width, carry):
        gradients, log_n, nan_row = carry
        kernel_chunk, c = _chunk_logits(hidden, kernel, bias, start, width, acc)
        positive = _terms((ids, valid), True, start, width, c)[0]
        log_n = _logaddexp(log_n, _row_logsumexp(jnp.where(positive, -jnp.inf, c)))
        nan_row = nan_row | jnp.any(jnp.isnan(c), axis=1)
        negative_counted = counted[:, None] & ~positive
        dlogits = row_scale[:, None] * jnp.where(negative_counted, _exp_extended(c + log_negative_factor), 0)
        return _add_chunk_gradients(gradients, dlogits, hidden, kernel_chunk, start), log_n, nan_row

    gradients = (jnp.zeros(hidden.shape, acc), jnp.zeros_like(kernel), jnp.zeros(bias.shape, acc))
    start = (gradients, jnp.full((batch,), -jnp.inf, acc), jnp.zeros((batch,), bool))
    (dhidden, dkernel, dbias), log_n, nan_row = _chunks(width, label_count, step, start)
    nan_row = nan_row | bad_rows
    keep = has_pairs & ~nan_row
    rows = jnp.where(keep, _exp_extended(log_a + log_n - log_pairs), jnp.where(nan_row, jnp.nan, 0).astype(acc))

    positive_side = _exp_extended(-positive_logits + (log_n - log_pairs)[:, None])
    dpositive = -row_scale[:, None] * jnp.where(counted[:, None] & valid, positive_side, 0)  # (batch, ids)
    dpositive_compute = dpositive.astype(compute)
    dhidden = dhidden + jnp.einsum("bk,dbk->bd", dpositive_compute, positive_kernel).astype(acc)
    # Entries not valid add an exact 0 (not 0 x h, which an infinite h makes NaN).
    columns = jnp.where(valid[None], jnp.einsum("bd,bk->dbk", hidden, dpositive_compute), 0)
    flat_ids = ids.reshape(-1)
    dkernel = dkernel.at[:, flat_ids].add(columns.reshape(kernel.shape[0], -1))
    dbias = dbias.at[flat_ids].add(dpositive.reshape(-1))
    dhidden = jnp.where(nan_row[:, None], jnp.nan, dhidden)
    return rows, (dhidden, dkernel, dbias), jnp.any(nan_row)


def bpmll_head_loss(labels, hidden, kernel, bias=None, **options):
    """BP-MLL of hidden @ kernel + bias against labels, per row (batch,) or
    reduced to a scalar, in kernel's dtype; options (label_ids, chunk_size,
    reduction, sample_weight, name) and rules as `head.bpmll_head_loss`."""
    return bpmll_head_loss_and_rows(labels, hidden, kernel, bias, **options)[0]


def bpmll_head_loss_and_rows(
    labels, hidden, kernel, bias=None, *, label_ids=False, chunk_size=None, reduction=None, sample_weight=None, name=None
):
    """(loss, per-row loss): `bpmll_head_loss` and the unweighted per-row
    loss (batch,) it reduced; see `head.bpmll_head_loss_and_rows`."""
    labels = _as_array("labels", labels)
    hidden = _as_array("hidden", hidden)
    kernel = _as_array("kernel", kernel)
    bias = None if bias is None else _as_array("bias", bias)
    sample_weight = None if sample_weight is None else _as_array("sample_weight", sample_weight)
    label_count = check_head_arguments(labels, hidden, kernel, bias, label_ids)
    reduction = check_reduction(reduction, sample_weight, hidden.shape[0])
    compute = kernel.dtype
    acc = jnp.float64 if compute == jnp.float64 else jnp.float32
    width = chunk_width(chunk_size, hidden.shape[0], label_count)
    # Without a bias the head adds zeros, whose gradient is dropped.
    bias = jnp.zeros((label_count,), compute) if bias is None else bias.astype(compute)
    hidden = hidden.astype(compute)
    labels = lax.stop_gradient(labels)
    if label_ids and not isinstance(labels, jax.core.Tracer):
        # Outside jax.jit an id that is neither a label nor -1 raises, naming
        # it; traced, nothing can raise, and it makes its row NaN.
        check_concrete_ids(np.asarray(labels), label_count)
    weights, divisor = _weights_and_divisor(reduction, sample_weight, hidden.shape[0], acc)
    if reduction is not None and label_ids:
        weights = jnp.ones(hidden.shape[:1], acc) if weights is None else weights
        loss, rows = _one_pass_head(label_count, width, labels, weights, divisor, hidden, kernel, bias)
        return loss, lax.stop_gradient(rows)
    rows = _head(bool(label_ids), label_count, width, labels, hidden, kernel, bias)
    weighted = rows.astype(acc) if weights is None else rows.astype(acc) * weights
    if reduction is None:
        return weighted.astype(compute), rows
    return _divide_no_nan(jnp.sum(weighted), divisor).astype(compute), rows


def _weights_and_divisor(reduction, sample_weight, batch, acc):
    """The row weights (batch,), or None for all 1 (constants: no
    gradient), and what their weighted sum is divided by (None without a
    reduction; `reduction_divisor`)."""
    weights = None if sample_weight is None else jnp.broadcast_to(lax.stop_gradient(sample_weight).astype(acc), (batch,))
    divisor = reduction_divisor(reduction, weights is not None)
    if divisor is None:
        return weights, None
    if divisor == "weight_sum":
        return weights, jnp.sum(weights)
    return weights, jnp.asarray(1 if divisor == "one" else batch, acc)


def bpmll_head_top_k(hidden, kernel, bias=None, *, k, chunk_size=None):
    """The k largest logits of hidden @ kernel + bias per row and their
    label ids (int32), best first, over label chunks (lax.top_k per chunk,
    merged into the running k)."""
    hidden = _as_array("hidden", hidden)
    kernel = _as_array("kernel", kernel)
    label_count = kernel.shape[1]
    if not 1 <= k <= label_count:
        raise ValueError(f"k must be in [1, {label_count}] (the label count); got {k}")
    compute = kernel.dtype
    hidden = hidden.astype(compute)
    bias = jnp.zeros((label_count,), compute) if bias is None else _as_array("bias", bias).astype(compute)
    width = chunk_width(chunk_size, hidden.shape[0], label_count)
    batch = hidden.shape[0]

    def step(start, width, carry):
        scores, ids = carry
        logits = hidden @ lax.dynamic_slice_in_dim(kernel, start, width, axis=1)
        logits = logits + lax.dynamic_slice_in_dim(bias, start, width)
        chunk_scores, chunk_ids = lax.top_k(logits, min(k, width))
        both_scores = jnp.concatenate([scores, chunk_scores], axis=1)
        both_ids = jnp.concatenate([ids, chunk_ids.astype(jnp.int32) + start], axis=1)
        scores, best = lax.top_k(both_scores, k)
        return scores, jnp.take_along_axis(both_ids, best, axis=1)

    start = (jnp.full((batch, k), -jnp.inf, compute), jnp.full((batch, k), -1, jnp.int32))
    return _chunks(width, label_count, step, start)
