"""The fused linear BP-MLL head on TensorFlow: the per-row loss of
hidden @ kernel + bias against labels, with gradients for hidden, kernel and
bias, without ever holding the (batch, labels) logits or their gradient.

The labels are walked in chunks of `width` columns (a tf.while_loop, so a
traced function holds one copy of the step, and `parallel_iterations=1`, so
one chunk's scratch is alive at a time). BP-MLL factors per row,
loss = P N / (|Y| |Ybar|) with P = sum y e^{-c}, N = sum (1-y) e^{c}:

* forward, one pass: each chunk's logits (a GEMM), folded into log P and
  log N (log-sum-exp, max-shifted per chunk, combined across chunks in the
  log domain) and the label counts;
* backward, a second pass (Cut Cross-Entropy's recompute): each chunk's
  logits again (a GEMM), its dlogits in closed form from the saved per-row
  statistics, dhidden += dlogits kernel_chunk^T and dkernel_chunk =
  hidden^T dlogits (two GEMMs): four GEMMs per step against the unfused
  step's three, for O(batch x chunk) scratch instead of the logits, their
  gradient and the fused op's cached gradient.

With label ids the chunk's positive columns come from the ids (scattered
into a (batch, chunk) mask), so the negatives' sum skips them exactly rather
than subtracting them from a total; each positive's logit comes from the
same chunk GEMM as the negatives' (no separate gather of the positives'
kernel columns, which the two-pass form does not need, and whose dot
products could round differently from the GEMM's). The kernel's gradient
is written in place under XLA (dynamic-update-slice into the loop's carry);
outside XLA it collects in a TensorArray and is assembled once (transient
copies of the kernel gradient). The numerics and the NaN/inf rule are
those of `_tf_pure._bpmll_rows` (docs/semantics.md), except that bad labels
and bad ids give their row NaN rather than raising (the head may run under
XLA, where nothing can raise).
"""

import numpy as np
import tensorflow as tf

# XLA's dynamic-update-slice, which TensorFlow exposes only here (used under
# jit_compile alone, where the op compiles).
from tensorflow.compiler.tf2xla.python import xla

from . import _loader
from ._head_validation import check_head_arguments, chunk_width
from ._tf_pure import _exp_difference, _exp_extended, _row_logsumexp


def _logaddexp(a, b):
    """log(e^a + e^b) per element in extended arithmetic (-inf + -inf is
    -inf, anything + inf is inf), for combining chunks' log-sum-exps; NaN
    rows are flagged separately, so their value here does not matter."""
    top = tf.maximum(a, b)
    finite = tf.math.is_finite(top)
    safe_top = tf.where(finite, top, tf.zeros_like(top))
    rest = tf.exp(tf.minimum(a, b) - safe_top)
    return tf.where(finite, safe_top + tf.math.log1p(rest), top)


class _Labels:
    """One chunk's labels as the log-domain terms need them, from a dense
    label matrix or from padded ids, plus per-row facts fixed up front."""

    def __init__(self, labels, label_ids, label_count, acc):
        self.acc = acc
        self.label_ids = label_ids
        self.label_count = label_count
        if label_ids:
            ids = tf.sort(labels, axis=1)
            # Sorted, a repeated id sits next to its first copy: it counts once.
            repeated = tf.concat([tf.zeros_like(ids[:, :1], tf.bool), ids[:, 1:] == ids[:, :-1]], axis=1)
            in_range = tf.logical_and(ids >= 0, ids < label_count)
            self.valid_ids = tf.logical_and(in_range, tf.logical_not(repeated))
            # Neither a label nor the padding -1: the row is NaN (no raise under XLA).
            self.bad_rows = tf.reduce_any(tf.logical_and(tf.logical_not(in_range), ids != -1), axis=1)
            self.ids = tf.cast(tf.where(in_range, ids, tf.zeros_like(ids)), tf.int32)
            self.pos_count = tf.reduce_sum(tf.cast(self.valid_ids, acc), axis=1)
            self.neg_count = label_count - self.pos_count
        else:
            self.labels = labels

    def positives(self, start, width):
        """(batch, width) bool: the chunk's columns that are a row's positive label."""
        local = self.ids - start
        in_chunk = tf.logical_and(self.valid_ids, tf.logical_and(local >= 0, local < width))
        rows = tf.broadcast_to(tf.range(tf.shape(self.ids)[0])[:, None], tf.shape(self.ids))
        # Out-of-chunk ids scatter a 0 to column 0, which adds nothing.
        where = tf.stack([rows, tf.where(in_chunk, local, tf.zeros_like(local))], axis=-1)
        hits = tf.scatter_nd(where, tf.cast(in_chunk, tf.int32), tf.stack([tf.shape(self.ids)[0], width]))
        return hits > 0

    def terms(self, start, width, c):
        """(positive, negative, log_pos_terms, log_neg_terms, y or None) of
        the chunk: log(y) - c over positives and log(1 - y) + c over
        negatives, -inf where a side's weight is 0 (its logit replaced by 0
        there, so that a weight-0 entry never meets an infinite one)."""
        zero = tf.zeros([], self.acc)
        if self.label_ids:
            positive = self.positives(start, width)
            negative = tf.logical_not(positive)
            neg_inf = tf.constant(-np.inf, self.acc)
            log_pos = tf.where(positive, -c, neg_inf)
            log_neg = tf.where(negative, c, neg_inf)
            return positive, negative, log_pos, log_neg, None
        raw = _columns(self.labels, start, width)
        y = tf.cast(raw, self.acc)
        positive = y > 0
        negative = y < 1
        log_pos = tf.math.log(y) - tf.where(positive, c, zero)
        log_neg = tf.math.log(1 - y) + tf.where(negative, c, zero)
        return positive, negative, log_pos, log_neg, raw


def _labels_valid(raw):
    """Per row of a label chunk: every label in [0, 1] (NaN is not)."""
    if raw.dtype.is_bool:
        return tf.ones(tf.shape(raw)[:1], tf.bool)
    zero = tf.zeros([], raw.dtype)
    one = tf.ones([], raw.dtype)
    return tf.reduce_all(tf.logical_and(raw >= zero, raw <= one), axis=1)


def _chunks(width, label_count, step, carry):
    """carry = step(start, width, carry) over [0, label_count) in chunks:
    the whole chunks in a tf.while_loop (one chunk's scratch alive at a
    time), then the remainder, if any, as one narrower step."""
    whole = label_count // width
    if whole:
        carry = tf.while_loop(
            lambda i, *_: i < whole,
            lambda i, *c: (i + 1,) + tuple(step(i * width, width, c)),
            (tf.constant(0),) + tuple(carry),
            parallel_iterations=1,
        )[1:]
    tail = label_count - whole * width
    if tail:
        carry = step(whole * width, tail, carry)
    return tuple(carry)


def _columns(matrix, start, width):
    """matrix[:, start:start + width] for a traced start. The row count is
    spelled out, not -1: TF's XLA lowering of a slice whose size reads -1
    with a traced begin pads the whole input to twice its size in each
    dimension first (four copies of the kernel)."""
    return tf.slice(matrix, tf.stack([0, start]), tf.stack([tf.shape(matrix)[0], width]))


def _chunk_logits(hidden, kernel, bias, start, width, acc):
    kernel_chunk = _columns(kernel, start, width)
    logits = tf.matmul(hidden, kernel_chunk) + tf.slice(bias, [start], [width])
    return kernel_chunk, tf.cast(logits, acc)


def bpmll_head_loss(labels, hidden, kernel, bias=None, *, label_ids=False, chunk_size=None, name=None):
    """Per-row BP-MLL loss (batch,) of hidden @ kernel + bias against labels,
    in kernel's dtype; see `head.bpmll_head_loss`."""
    with tf.name_scope(name or "bpmll_head_loss"):
        if isinstance(labels, tf.RaggedTensor):
            if not label_ids:
                raise ValueError("ragged labels are label ids: pass label_ids=True")
            labels = labels.to_tensor(default_value=-1)
        labels = tf.convert_to_tensor(labels)
        hidden = tf.convert_to_tensor(hidden)
        kernel = tf.convert_to_tensor(kernel)
        bias = None if bias is None else tf.convert_to_tensor(bias)
        label_count = check_head_arguments(labels, hidden, kernel, bias, label_ids)
        compute = kernel.dtype
        acc = tf.float64 if compute == tf.float64 else tf.float32
        width = chunk_width(chunk_size, hidden.shape[0], label_count)
        labels = tf.stop_gradient(labels)
        # Without a bias the head adds zeros, whose gradient is dropped.
        bias_or_zeros = tf.zeros([label_count], compute) if bias is None else tf.cast(bias, compute)
        loss = _fused_head(labels, label_ids, label_count, width, acc, tf.cast(hidden, compute), kernel, bias_or_zeros)
        return loss


def _row_statistics(chunk_labels, hidden, kernel, bias, label_count, width, acc):
    """The forward pass: per row log P, log N, the label counts, and whether
    a logit is NaN or a label bad; then the loss and the row classes the
    backward needs (docs/semantics.md, in `_tf_pure._bpmll_rows`' order)."""
    batch = tf.shape(hidden)[0]
    neg_inf = tf.fill([batch], tf.constant(-np.inf, acc))
    zeros = tf.zeros([batch], acc)
    no = tf.zeros([batch], tf.bool)

    def step(start, width, carry):
        log_p, log_n, pos_count, neg_count, nan_row = carry
        _, c = _chunk_logits(hidden, kernel, bias, start, width, acc)
        _, _, log_pos, log_neg, raw = chunk_labels.terms(start, width, c)
        nan_row = tf.logical_or(nan_row, tf.reduce_any(tf.math.is_nan(c), axis=1))
        if raw is not None:
            y = tf.cast(raw, acc)
            pos_count += tf.reduce_sum(y, axis=1)
            neg_count += tf.reduce_sum(1 - y, axis=1)
            nan_row = tf.logical_or(nan_row, tf.logical_not(_labels_valid(raw)))
        return (
            _logaddexp(log_p, _row_logsumexp(log_pos)),
            _logaddexp(log_n, _row_logsumexp(log_neg)),
            pos_count,
            neg_count,
            nan_row,
        )

    log_p, log_n, pos_count, neg_count, nan_row = _chunks(
        width, label_count, step, (neg_inf, neg_inf, zeros, zeros, no)
    )
    if chunk_labels.label_ids:
        pos_count, neg_count = chunk_labels.pos_count, chunk_labels.neg_count
        nan_row = tf.logical_or(nan_row, chunk_labels.bad_rows)
    has_pairs = tf.logical_and(pos_count > 0, neg_count > 0)
    one = tf.ones_like(pos_count)
    log_pairs = tf.math.log(tf.where(has_pairs, pos_count, one)) + tf.math.log(tf.where(has_pairs, neg_count, one))
    log_loss = log_p + log_n - log_pairs
    loss = _exp_extended(log_loss)
    keep = tf.logical_and(has_pairs, tf.logical_not(nan_row))
    # Rows whose gradient takes the extended-arithmetic form (infinite
    # logits, or a loss near or beyond the range), as in _tf_pure.
    log_max = float(np.log(acc.max)) - 1
    regular = tf.logical_and(tf.logical_and(tf.math.is_finite(log_p), tf.math.is_finite(log_n)), log_loss < log_max)
    special = tf.logical_and(keep, tf.logical_not(regular))
    nan = tf.constant(np.nan, acc)
    row_value = tf.where(nan_row, tf.fill(tf.shape(loss), nan), tf.zeros_like(loss))
    loss = tf.where(keep, loss, row_value)
    return loss, (log_p - log_pairs, log_n - log_pairs, keep, special, row_value)


def _chunk_dlogits(chunk_labels, statistics, start, width, c, upstream):
    """d(sum_i upstream_i loss_i) / d logits of one chunk, (batch, width) in
    the accumulation dtype: _tf_pure._bpmll_rows' gradient with the saved
    per-row statistics in place of whole rows."""
    log_p_per_pair, log_n_per_pair, keep, special, row_value = statistics
    positive, negative, log_pos, log_neg, _ = chunk_labels.terms(start, width, c)
    log_neg_side = log_neg + log_p_per_pair[:, None]
    log_pos_side = log_pos + log_n_per_pair[:, None]
    grad = tf.exp(log_neg_side) - tf.exp(log_pos_side)

    def extended():
        neg_inf = tf.constant(-np.inf, c.dtype)
        a = tf.where(negative, log_neg_side, neg_inf)
        b = tf.where(positive, log_pos_side, neg_inf)
        return tf.where(special[:, None], _exp_difference(a, b), grad)

    grad = tf.cond(tf.reduce_any(special), extended, lambda: grad)
    grad = tf.where(keep[:, None], grad, row_value[:, None])
    return upstream[:, None] * grad


def _fused_head(labels, label_ids, label_count, width, acc, hidden, kernel, bias):
    chunk_labels = _Labels(labels, label_ids, label_count, acc)
    compute = kernel.dtype

    @tf.custom_gradient
    def head(hidden, kernel, bias):
        loss, statistics = _row_statistics(chunk_labels, hidden, kernel, bias, label_count, width, acc)

        def grad(upstream):
            return _backward(chunk_labels, statistics, hidden, kernel, bias, tf.cast(upstream, acc), width)

        return tf.cast(loss, compute), grad

    return head(hidden, kernel, bias)


def _backward(chunk_labels, statistics, hidden, kernel, bias, upstream, width):
    """The backward pass: per chunk the logits again, their dlogits, and the
    chunk's share of the three gradients."""
    acc = upstream.dtype
    compute = kernel.dtype

    def chunk_gradients(start, width, transposed):
        kernel_chunk, c = _chunk_logits(hidden, kernel, bias, start, width, acc)
        dlogits = _chunk_dlogits(chunk_labels, statistics, start, width, c, upstream)
        dlogits_compute = tf.cast(dlogits, compute)
        dhidden = tf.cast(tf.matmul(dlogits_compute, kernel_chunk, transpose_b=True), acc)
        if transposed:  # (width, d), so that chunks stack along rows
            dkernel_chunk = tf.matmul(dlogits_compute, hidden, transpose_a=True)
        else:
            dkernel_chunk = tf.matmul(hidden, dlogits_compute, transpose_a=True)
        return dhidden, dkernel_chunk, tf.reduce_sum(dlogits, axis=0)

    dhidden = tf.zeros(tf.shape(hidden), acc)
    if _loader.in_xla_context():
        dhidden, dkernel, dbias = _gradients_in_place(chunk_gradients, dhidden, kernel, chunk_labels.label_count, width)
    else:
        dhidden, dkernel, dbias = _gradients_by_chunks(chunk_gradients, dhidden, kernel, chunk_labels.label_count, width)
    return tf.cast(dhidden, compute), dkernel, tf.cast(dbias, bias.dtype)


def _gradients_in_place(chunk_gradients, dhidden, kernel, label_count, width):
    """Under XLA: each chunk's columns written into the (d, labels) kernel
    gradient and the bias gradient, carried through the loop, by
    dynamic-update-slice, which XLA does in place (no assembly copy)."""
    acc = dhidden.dtype

    def step(start, width, carry):
        dhidden, dkernel, dbias = carry
        chunk_dhidden, dkernel_chunk, dbias_chunk = chunk_gradients(start, width, transposed=False)
        dkernel = xla.dynamic_update_slice(dkernel, dkernel_chunk, tf.stack([0, start]))
        dbias = xla.dynamic_update_slice(dbias, dbias_chunk, tf.reshape(start, [1]))
        return dhidden + chunk_dhidden, dkernel, dbias

    carry = (dhidden, tf.zeros(tf.shape(kernel), kernel.dtype), tf.zeros([label_count], acc))
    return _chunks(width, label_count, step, carry)


def _gradients_by_chunks(chunk_gradients, dhidden, kernel, label_count, width):
    """Outside XLA (no in-place update there): the kernel's and bias's
    columns collect in TensorArrays, one (width, d) / (width,) element per
    chunk, assembled once at the end (the assembly and the transpose cost
    transient copies of the kernel gradient)."""
    acc = dhidden.dtype
    compute = kernel.dtype
    whole = label_count // width
    kernel_rows = tf.TensorArray(compute, size=whole, element_shape=tf.TensorShape([width, kernel.shape[0]]))
    bias_rows = tf.TensorArray(acc, size=whole, element_shape=tf.TensorShape([width]))

    def step(i, dhidden, kernel_rows, bias_rows):
        chunk_dhidden, dkernel_rows, dbias = chunk_gradients(i * width, width, transposed=True)
        return i + 1, dhidden + chunk_dhidden, kernel_rows.write(i, dkernel_rows), bias_rows.write(i, dbias)

    _, dhidden, kernel_rows, bias_rows = tf.while_loop(
        lambda i, *_: i < whole, step, (tf.constant(0), dhidden, kernel_rows, bias_rows), parallel_iterations=1
    )
    dkernel_t = tf.reshape(kernel_rows.stack(), [whole * width, kernel.shape[0]])
    dbias = tf.reshape(bias_rows.stack(), [whole * width])
    tail = label_count - whole * width
    if tail:
        chunk_dhidden, tail_rows, tail_bias = chunk_gradients(whole * width, tail, transposed=True)
        dhidden += chunk_dhidden
        dkernel_t = tf.concat([dkernel_t, tail_rows], axis=0)
        dbias = tf.concat([dbias, tail_bias], axis=0)
    return dhidden, tf.transpose(dkernel_t), dbias


def bpmll_head_top_k(hidden, kernel, bias=None, *, k, chunk_size=None):
    """The k largest logits of hidden @ kernel + bias per row and their
    label ids, (batch, k) each (ids int32), best first, over label chunks:
    a top-k per chunk merged into the running one, never the whole logits
    nor a full sort."""
    hidden = tf.convert_to_tensor(hidden)
    kernel = tf.convert_to_tensor(kernel)
    label_count = kernel.shape[1]
    if not 1 <= k <= label_count:
        raise ValueError(f"k must be in [1, {label_count}] (the label count); got {k}")
    compute = kernel.dtype
    hidden = tf.cast(hidden, compute)
    bias = tf.zeros([label_count], compute) if bias is None else tf.cast(tf.convert_to_tensor(bias), compute)
    width = chunk_width(chunk_size, hidden.shape[0], label_count)
    batch = tf.shape(hidden)[0]

    def step(start, width, carry):
        scores, ids = carry
        logits = tf.matmul(hidden, _columns(kernel, start, width)) + tf.slice(bias, [start], [width])
        chunk_scores, chunk_ids = tf.math.top_k(logits, k=min(k, width))
        both_scores = tf.concat([scores, chunk_scores], axis=1)
        both_ids = tf.concat([ids, chunk_ids + start], axis=1)
        scores, best = tf.math.top_k(both_scores, k=k)
        return scores, tf.gather(both_ids, best, batch_dims=1)

    start_scores = tf.fill(tf.stack([batch, k]), tf.constant(-np.inf, compute))
    start_ids = tf.fill(tf.stack([batch, k]), -1)
    scores, ids = _chunks(width, label_count, step, (start_scores, start_ids))
    return scores, ids
