"""The fused linear BP-MLL head on TensorFlow: the loss of hidden @ kernel +
bias against labels, per row or reduced, with gradients for hidden, kernel
and bias, without ever holding the (batch, labels) logits or their gradient.

The labels are walked in chunks of `width` columns (a tf.while_loop, so a
traced function holds one copy of the step, and `parallel_iterations=1`, so
one chunk's scratch is alive at a time). BP-MLL factors per row,
loss = P N / (|Y| |Ybar|) with P = sum y e^{-c}, N = sum (1-y) e^{c}. Two
forms; which runs when:

* one pass (`_one_pass_head`): label ids with a reduction (reduction=
  "sum", "sum_over_batch_size", ...; BPMLLHead's training loss). The
  upstream gradient is one scalar times known row weights, so the forward
  computes all three gradients and the backward scales them (Liger-Kernel's
  fused linear cross-entropy, with BP-MLL's factored form): P first from
  the positives' gathered kernel columns, then one pass of chunks, each its
  logits (a GEMM), its negatives' dlogits at once and their share of the
  gradients (two GEMMs), accumulating N; then the positives' gradient
  through the gathered columns. The unfused step's three GEMMs. A chunk
  takes a fast form (one exp per logit, N from the dlogits' row sums) where
  every logit is finite and the row sums are in range, else the max-shifted
  log-sum-exp (see `_one_pass`). Outside XLA on a CPU the fast form is one
  kernel of the library per chunk (FusedHeadChunk: 3% faster a step than
  the framework's passes; under XLA those fuse and the step runs at its
  GEMMs' time).
* two passes (`_fused_head`): no reduction (a per-row loss whose upstream
  may be anything: H^T diag(g) dC cannot be rescaled afterwards), and dense
  labels with or without a reduction (the reduction is then applied to the
  rows). Dense labels' positives have no static shape (XLA cannot gather
  them) and soft labels weigh a column on both sides. Measured
  (bench/head_bench.py, 670,091 labels, docs/benchmarks.md): the one-pass
  form on ids taken from binary dense labels inside the step (tf.where,
  graph mode) took 7.4 s against 13.6 s for the two passes on the dense
  labels, so binary labels outside XLA are better passed as ids
  (label_ids=True, a RaggedTensor from tf.where); the head does not convert
  them itself (a run-time check of every label, a data-dependent branch
  between the forms, and no such path under XLA).
  The forward folds each chunk's logits (a GEMM) into log P, log N
  (log-sum-exp, max-shifted per chunk, combined across chunks in the log
  domain) and the label counts; the backward recomputes each chunk's
  logits (Cut Cross-Entropy's recompute), forms its dlogits in closed form
  from the saved per-row statistics, dhidden += dlogits kernel_chunk^T and
  dkernel_chunk = hidden^T dlogits (two GEMMs): four GEMMs per step.
Both: O(batch x chunk) scratch instead of the logits, their gradient and
the fused op's cached gradient.

With label ids the chunk's positive columns come from the ids (scattered
into the chunk), so the negatives' sum skips them exactly rather than
subtracting them from a total. The two-pass form takes each positive's
logit from the chunk GEMM; the one-pass form from a dot product with its
gathered column (which may round differently from the GEMM's, well within
float32 tolerance). The kernel's gradient is written in place: under XLA
by dynamic-update-slice into the loop's carry, outside XLA on a CPU by the
library's FusedHeadWriteColumns (TF's own ops would copy it); only where
neither serves (a GPU outside XLA, the pure path) do its chunks collect in a
TensorArray, assembled once (a transient copy of the kernel gradient).
The numerics and the NaN/inf rule are those of `_tf_pure._bpmll_rows`
(docs/semantics.md), except that bad labels give their row NaN rather than
raising, and so do bad ids inside XLA, where nothing can raise (outside it
they raise, naming the id: `_checked_ids`).
"""

import numpy as np
import tensorflow as tf

# XLA's dynamic-update-slice, which TensorFlow exposes only here (used under
# jit_compile alone, where the op compiles).
from tensorflow.compiler.tf2xla.python import xla

from . import _loader
from ._head_validation import (
    bad_id_message,
    check_concrete_ids,
    check_head_arguments,
    check_reduction,
    chunk_width,
    reduction_divisor,
)
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

    def _chunk_positions(self, start, width):
        """Each id's (row, column) in the chunk, (batch, ids, 2), and whether
        it is a counted id inside the chunk; the others point at column 0,
        where their update must change nothing."""
        local = self.ids - start
        in_chunk = tf.logical_and(self.valid_ids, tf.logical_and(local >= 0, local < width))
        rows = tf.broadcast_to(tf.range(tf.shape(self.ids)[0])[:, None], tf.shape(self.ids))
        return tf.stack([rows, tf.where(in_chunk, local, tf.zeros_like(local))], axis=-1), in_chunk

    def positives(self, start, width):
        """(batch, width) bool: the chunk's columns that are a row's positive label."""
        where, in_chunk = self._chunk_positions(start, width)
        # Out-of-chunk ids scatter a 0 to column 0, which adds nothing.
        hits = tf.scatter_nd(where, tf.cast(in_chunk, tf.int32), tf.stack([tf.shape(self.ids)[0], width]))
        return hits > 0

    def without_positives(self, start, width, terms):
        """terms (batch, width), >= 0, with the chunk's positive columns set
        to exactly 0 (a scatter of the ids alone, no pass over a mask): a
        scatter-min of 0 there and of +inf (no change) for other ids."""
        where, in_chunk = self._chunk_positions(start, width)
        updates = tf.where(in_chunk, tf.zeros([], terms.dtype), tf.constant(np.inf, terms.dtype))
        return tf.tensor_scatter_nd_min(terms, where, updates)

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
    with tf.name_scope(name or "bpmll_head_loss"):
        if isinstance(labels, (tf.RaggedTensor, tf.SparseTensor)):
            if not label_ids:
                raise ValueError(f"{type(labels).__name__} labels are label ids: pass label_ids=True")
            # Padded ids, as bpmll_loss_from_ids takes them: -1 where a row has no more.
            padding = tf.constant(-1, labels.dtype)
            labels = (labels.to_tensor(default_value=padding) if isinstance(labels, tf.RaggedTensor)
                      else tf.sparse.to_dense(tf.sparse.reorder(labels), default_value=padding))
        labels = tf.convert_to_tensor(labels)
        hidden = tf.convert_to_tensor(hidden)
        kernel = tf.convert_to_tensor(kernel)
        bias = None if bias is None else tf.convert_to_tensor(bias)
        sample_weight = None if sample_weight is None else tf.convert_to_tensor(sample_weight)
        label_count = check_head_arguments(labels, hidden, kernel, bias, label_ids)
        reduction = check_reduction(reduction, sample_weight, hidden.shape[0])
        compute = kernel.dtype
        acc = tf.float64 if compute == tf.float64 else tf.float32
        width = chunk_width(chunk_size, hidden.shape[0], label_count)
        labels = tf.stop_gradient(labels)
        if label_ids:
            labels = _checked_ids(labels, label_count)
        # Without a bias the head adds zeros, whose gradient is dropped.
        bias_or_zeros = tf.zeros([label_count], compute) if bias is None else tf.cast(bias, compute)
        chunk_labels = _Labels(labels, label_ids, label_count, acc)
        weights, divisor = _weights_and_divisor(reduction, sample_weight, tf.shape(hidden)[0], acc)
        hidden = tf.cast(hidden, compute)
        if reduction is not None and label_ids:
            return _one_pass_head(chunk_labels, weights, divisor, width, hidden, kernel, bias_or_zeros)
        rows = _fused_head(chunk_labels, width, hidden, kernel, bias_or_zeros)
        if weights is not None:
            weighted = tf.cast(rows, acc) * weights
        else:
            weighted = tf.cast(rows, acc)
        if reduction is None:
            return tf.cast(weighted, compute), rows
        return tf.cast(tf.math.divide_no_nan(tf.reduce_sum(weighted), divisor), compute), rows


def _checked_ids(ids, label_count):
    """ids, having raised on one that is neither a label nor -1, where
    anything can raise: eagerly a ValueError, in a graph an
    InvalidArgumentError when the step runs, each naming the first such id.
    Inside XLA nothing can raise: such an id makes its row NaN (`_Labels`)."""
    if tf.executing_eagerly():
        check_concrete_ids(ids.numpy(), label_count)
        return ids
    if _loader.in_xla_context():
        return ids
    bad = tf.logical_and(ids != -1, tf.logical_or(ids < 0, ids >= label_count))
    # The first bad id's position, or (0, 0) where there is none (not
    # reported; read from ids padded by a row and a column, so that it
    # exists for an empty batch too).
    first = tf.concat([tf.where(bad), tf.zeros([1, 2], tf.int64)], axis=0)[0]
    value = tf.gather_nd(tf.pad(ids, [[0, 1], [0, 1]]), first)
    wordings = [tf.strings.format(bad_id_message("{}", "{}", "{}", label_count, sign=sign), (first[0], first[1], value))
                for sign in (-1, 1)]
    message = tf.where(value < 0, wordings[0], wordings[1])
    with tf.control_dependencies([tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])]):
        return tf.identity(ids)


def _weights_and_divisor(reduction, sample_weight, batch, acc):
    """The row weights (batch,), or None for all 1, and what their weighted
    sum is divided by (None without a reduction; `reduction_divisor`)."""
    weights = None if sample_weight is None else tf.broadcast_to(tf.cast(sample_weight, acc), tf.reshape(batch, [1]))
    divisor = reduction_divisor(reduction, weights is not None)
    if divisor is None:
        return weights, None
    if divisor == "weight_sum":
        return weights, tf.reduce_sum(weights)
    return weights, tf.ones([], acc) if divisor == "one" else tf.cast(batch, acc)


def _pairs(pos_count, neg_count):
    """Per row: whether it has a (positive, negative) pair, and log |Y| |Ybar|
    (0 where it has none)."""
    has_pairs = tf.logical_and(pos_count > 0, neg_count > 0)
    one = tf.ones_like(pos_count)
    log_pairs = tf.math.log(tf.where(has_pairs, pos_count, one)) + tf.math.log(tf.where(has_pairs, neg_count, one))
    return has_pairs, log_pairs


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
    has_pairs, log_pairs = _pairs(pos_count, neg_count)
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


def _fused_head(chunk_labels, width, hidden, kernel, bias):
    """The per-row loss (batch,) in the compute dtype, two passes (a forward
    of the row statistics, the backward recomputing each chunk)."""
    acc = chunk_labels.acc
    compute = kernel.dtype

    @tf.custom_gradient
    def head(hidden, kernel, bias):
        loss, statistics = _row_statistics(chunk_labels, hidden, kernel, bias, chunk_labels.label_count, width, acc)

        def grad(upstream):
            return _backward(chunk_labels, statistics, hidden, kernel, bias, tf.cast(upstream, acc), width)

        return tf.cast(loss, compute), grad

    return head(hidden, kernel, bias)


def _one_pass_head(chunk_labels, weights, divisor, width, hidden, kernel, bias):
    """(loss, per-row loss) of a reduction over label ids, in the compute
    dtype: sum_i weights_i loss_i / divisor, whose upstream is one scalar
    times known row weights. So all three gradients are computed in the
    forward, in one pass over the label chunks (`_one_pass`), and the
    backward only scales them by the scalar upstream (as Liger-Kernel's
    fused linear cross-entropy does). The per-row loss carries no gradient."""
    acc = chunk_labels.acc
    compute = kernel.dtype
    batch = tf.shape(hidden)[0]
    if weights is None:
        weights = tf.ones(tf.reshape(batch, [1]), acc)

    @tf.custom_gradient
    def head(hidden, kernel, bias):
        row_scale = tf.math.divide_no_nan(weights, divisor)
        rows, gradients, any_nan = _one_pass(chunk_labels, row_scale, width, hidden, kernel, bias)
        loss = tf.math.divide_no_nan(tf.reduce_sum(weights * rows), divisor)

        def grad(upstream, upstream_rows):
            del upstream_rows  # the per-row loss is returned through stop_gradient
            return _scaled_gradients(gradients, any_nan, tf.cast(upstream, acc), hidden.dtype, bias.dtype)

        return (tf.cast(loss, compute), tf.cast(rows, compute)), grad

    loss, rows = head(hidden, kernel, bias)
    return loss, tf.stop_gradient(rows)


def _one_pass(chunk_labels, row_scale, width, hidden, kernel, bias):
    """The per-row loss (batch,), the gradients of sum_i row_scale_i loss_i
    (dhidden and dbias in the accumulation dtype, dkernel in the compute
    dtype) and whether a row is NaN, in one pass over the label chunks: the
    unfused step's three GEMMs.

    Per row, loss = A N / pairs with A = sum_pos e^{-c}, N = sum_neg e^{c};
    d/dc_l = e^{c_l} A / pairs on a negative, -e^{-c_k} N / pairs on a
    positive. So:
    1. A from the positives' logits, one dot product each with their
       gathered kernel columns (batch x ids x d work), in the log domain;
    2. per chunk: its logits (a GEMM), the negatives' dlogits at once
       (the positives' are exactly 0 here, by id), log N accumulated over
       the negatives, and the dlogits' share of the gradients (two GEMMs).
       Fast form: the terms e^{c + log A - log pairs} are the dlogits over
       row_scale and sum to N e^{log A - log pairs}, one exp per logit;
       where a logit is not finite or a row's sum is out of range, the
       chunk takes the max-shifted log-sum-exp and extended arithmetic;
    3. the positives' dlogits, now that N is known, through the same gathered
       columns: dhidden += dc W[:, k], and h_i dc_ik scatter-added into the
       kernel's columns (dc_ik into the bias's).
    A NaN row (a NaN logit, only known at the end, or a bad id) is NaN
    across its dhidden row, and makes every column of dkernel and dbias NaN
    as H^T dlogits does; that scaling is left to `_scaled_gradients`.
    """
    acc = chunk_labels.acc
    compute = kernel.dtype
    neg_inf = tf.constant(-np.inf, acc)
    ids, valid = chunk_labels.ids, chunk_labels.valid_ids
    has_pairs, log_pairs = _pairs(chunk_labels.pos_count, chunk_labels.neg_count)
    # Rows whose gradient is known to be 0 (no pairs) or NaN (a bad id, set
    # at the end) skip the chunks' arithmetic.
    counted = tf.logical_and(has_pairs, tf.logical_not(chunk_labels.bad_rows))
    positive_kernel = tf.gather(kernel, ids, axis=1)  # (d, batch, ids)
    positive_logits = tf.einsum("bd,dbk->bk", hidden, positive_kernel) + tf.gather(bias, ids)
    positive_logits = tf.cast(positive_logits, acc)
    log_a = _row_logsumexp(tf.where(valid, -positive_logits, neg_inf))
    log_negative_factor = (log_a - log_pairs)[:, None]
    zero = tf.zeros([], acc)

    # The fast form of a chunk (see chunk_gradients) for rows whose factor is
    # finite; other rows' terms are made 0 by a factor of -1e30 (finite, so
    # that no infinity meets exp).
    fast_rows = tf.logical_and(counted, tf.math.is_finite(log_negative_factor[:, 0]))
    fast_factor = tf.where(fast_rows, log_negative_factor[:, 0], tf.constant(-1e30, acc))[:, None]
    all_rows_fast = tf.reduce_all(tf.equal(fast_rows, counted))
    smallest_sum = tf.constant(2.0**-64 if acc == tf.float32 else 2.0**-900, acc)

    # Outside XLA, on a CPU, the fast form is the library's one-pass chunk
    # kernel (FusedHeadChunk) rather than several framework passes over the
    # chunk; in float32/float64, where the logits need no cast.
    chunk_kernel = compute == acc and _chunk_kernel_available()
    if chunk_kernel:
        counted_ids = tf.where(valid, ids, -1)

    def chunk_gradients(start, width, transposed, state):
        if chunk_kernel:
            return chunk_gradients_by_kernel(start, width, transposed, state)
        log_n, nan_row = state
        kernel_chunk, c = _chunk_logits(hidden, kernel, bias, start, width, acc)
        # Fast form: the negatives' terms e^{c + log A - log pairs} are the
        # dlogits over row_scale, and they sum to N e^{log A - log pairs};
        # one exp per logit and no mask pass. It holds where every logit is
        # finite (no NaN row to find, no infinity for exp) and each counted
        # row's sum is in a range where it keeps float32's relative
        # precision (each flushed or subnormal term errs by < 2^-126, the
        # sum is >= 2^-64) and does not overflow.
        terms = chunk_labels.without_positives(start, width, tf.exp(c + fast_factor))
        term_sums = tf.reduce_sum(terms, axis=1)

        def fast_form():
            return row_scale[:, None] * terms, fast_log_n(log_n, term_sums), nan_row

        dlogits, log_n, nan_row = tf.cond(
            takes_fast_form(term_sums, tf.reduce_sum(c, axis=1)),
            fast_form,
            lambda: exact_chunk(start, width, c, log_n, nan_row)[:3],
        )
        return _chunk_weight_gradients(dlogits, hidden, kernel_chunk, transposed) + ((log_n, nan_row),)

    def takes_fast_form(term_sums, logit_sums):
        """Whether a chunk may take the fast form (see chunk_gradients): every
        logit finite (their row sums are) and every counted row's sum of
        terms in range."""
        sums_in_range = tf.logical_and(term_sums >= smallest_sum, term_sums <= acc.max)
        return tf.logical_and(
            all_rows_fast,
            tf.reduce_all(
                tf.logical_and(tf.math.is_finite(logit_sums), tf.logical_or(sums_in_range, tf.logical_not(counted)))
            ),
        )

    def fast_log_n(log_n, term_sums):
        """log N with a fast chunk's terms added: they sum to N e^{factor}."""
        return _logaddexp(log_n, tf.math.log(term_sums) - fast_factor[:, 0])

    def exact_chunk(start, width, c, log_n, nan_row):
        """A chunk's (dlogits, log N, NaN rows, bias columns) by the
        log-sum-exp with each row's maximum shifted out, and the dlogits in
        extended arithmetic."""
        positive = chunk_labels.positives(start, width)
        exact_log_n = _logaddexp(log_n, _row_logsumexp(tf.where(positive, neg_inf, c)))
        exact_nan_row = tf.logical_or(nan_row, tf.reduce_any(tf.math.is_nan(c), axis=1))
        negative_counted = tf.logical_and(counted[:, None], tf.logical_not(positive))
        dlogits = row_scale[:, None] * tf.where(negative_counted, _exp_extended(c + log_negative_factor), zero)
        return dlogits, exact_log_n, exact_nan_row, tf.reduce_sum(dlogits, axis=0)

    def chunk_gradients_by_kernel(start, width, transposed, state):
        """chunk_gradients with the fast form's passes over the chunk in one
        kernel (the same arithmetic; exp may differ in the last bit)."""
        log_n, nan_row = state
        kernel_chunk = _columns(kernel, start, width)
        matmul = tf.matmul(hidden, kernel_chunk)
        bias_chunk = tf.slice(bias, [start], [width])
        terms, term_sums, logit_sums, column_sums = _loader.ops().fused_head_chunk(
            matmul=matmul, bias=bias_chunk, factor=fast_factor[:, 0], row_scale=row_scale, ids=counted_ids,
            start=start,
        )
        dlogits, log_n, nan_row, dbias = tf.cond(
            takes_fast_form(term_sums, logit_sums),
            lambda: (terms, fast_log_n(log_n, term_sums), nan_row, column_sums),
            lambda: exact_chunk(start, width, matmul + bias_chunk, log_n, nan_row),
        )
        dhidden, dkernel_chunk, _ = _chunk_weight_gradients(dlogits, hidden, kernel_chunk, transposed, dbias=dbias)
        return dhidden, dkernel_chunk, dbias, (log_n, nan_row)

    def positive_dlogits(log_n):
        """(batch, ids): -row_scale e^{-c_k + log N - log pairs} at the
        counted ids, exactly 0 at the others."""
        positive_side = _exp_extended(-positive_logits + (log_n - log_pairs)[:, None])
        return -row_scale[:, None] * tf.where(tf.logical_and(counted[:, None], valid), positive_side, zero)

    def positive_columns(state):
        """The positives' columns of the kernel gradient, h_i dc_ik, one per
        id (batch x ids, d); exactly 0 where the id is not counted (not
        0 x h_i, which an infinite h_i would make NaN)."""
        dpositive = tf.cast(positive_dlogits(state[0]), compute)
        columns = tf.where(valid[:, :, None], tf.einsum("bk,bd->bkd", dpositive, hidden), tf.zeros([], compute))
        return tf.reshape(ids, [-1]), tf.reshape(columns, tf.stack([-1, tf.shape(hidden)[1]]))

    batch = tf.shape(hidden)[0]
    start_state = (tf.fill([batch], neg_inf), tf.zeros([batch], tf.bool))
    dhidden, dkernel, dbias, (log_n, nan_row) = _gradient_loop(
        chunk_gradients, hidden, kernel, chunk_labels.label_count, width, start_state, positive_columns
    )
    nan_row = tf.logical_or(nan_row, chunk_labels.bad_rows)
    keep = tf.logical_and(has_pairs, tf.logical_not(nan_row))
    nan = tf.constant(np.nan, acc)
    rows = tf.where(keep, _exp_extended(log_a + log_n - log_pairs), tf.where(nan_row, nan, zero))
    dpositive = positive_dlogits(log_n)
    dhidden += tf.cast(tf.einsum("bk,dbk->bd", tf.cast(dpositive, compute), positive_kernel), acc)
    dbias = tf.tensor_scatter_nd_add(dbias, tf.reshape(ids, [-1, 1]), tf.reshape(dpositive, [-1]))
    dhidden = tf.where(nan_row[:, None], nan, dhidden)
    return rows, (dhidden, dkernel, dbias), tf.reduce_any(nan_row)


def _scaled_gradients(gradients, any_nan, upstream, hidden_dtype, bias_dtype):
    """The one-pass gradients times the scalar upstream, in the arguments'
    dtypes. Any NaN row makes the kernel's and bias's gradients NaN
    throughout (as the unfused H^T dlogits); where the upstream is 1 and no
    row is NaN (Keras' added loss, no loss scaling) the weight gradients
    pass as they are, saving a pass over the kernel gradient."""
    dhidden, dkernel, dbias = gradients
    weight_scale = tf.where(any_nan, tf.constant(np.nan, upstream.dtype), upstream)
    dkernel, dbias = tf.cond(
        tf.equal(weight_scale, 1),
        lambda: (dkernel, dbias),
        lambda: (dkernel * tf.cast(weight_scale, dkernel.dtype), dbias * weight_scale),
    )
    return tf.cast(dhidden * upstream, hidden_dtype), dkernel, tf.cast(dbias, bias_dtype)


def _backward(chunk_labels, statistics, hidden, kernel, bias, upstream, width):
    """The backward pass: per chunk the logits again, their dlogits, and the
    chunk's share of the three gradients."""
    compute = kernel.dtype

    def chunk_gradients(start, width, transposed, state):
        kernel_chunk, c = _chunk_logits(hidden, kernel, bias, start, width, upstream.dtype)
        dlogits = _chunk_dlogits(chunk_labels, statistics, start, width, c, upstream)
        return _chunk_weight_gradients(dlogits, hidden, kernel_chunk, transposed) + (state,)

    dhidden, dkernel, dbias, _ = _gradient_loop(chunk_gradients, hidden, kernel, chunk_labels.label_count, width)
    return tf.cast(dhidden, compute), dkernel, tf.cast(dbias, bias.dtype)


def _chunk_weight_gradients(dlogits, hidden, kernel_chunk, transposed, dbias=None):
    """A chunk's share of the gradients from its dlogits (batch, width), in
    the accumulation dtype: dhidden (accumulation dtype), the kernel's
    columns (compute dtype; (width, d) if transposed, so that chunks stack
    along rows, else (d, width)) and the bias's (accumulation dtype). Two
    GEMMs in the compute dtype. dbias: the bias's columns where the caller
    has them already."""
    compute = kernel_chunk.dtype
    dlogits_compute = tf.cast(dlogits, compute)
    dhidden = tf.cast(tf.matmul(dlogits_compute, kernel_chunk, transpose_b=True), dlogits.dtype)
    if transposed:
        dkernel_chunk = tf.matmul(dlogits_compute, hidden, transpose_a=True)
    else:
        dkernel_chunk = tf.matmul(hidden, dlogits_compute, transpose_a=True)
    return dhidden, dkernel_chunk, tf.reduce_sum(dlogits, axis=0) if dbias is None else dbias


def _gradient_loop(chunk_gradients, hidden, kernel, label_count, width, state=(), added_columns=None):
    """(dhidden, dkernel, dbias, state) over all chunks, where
    chunk_gradients(start, width, transposed, state) gives a chunk's
    (dhidden, kernel columns, bias columns, state): dhidden summed (in the
    accumulation dtype, float32 or float64), the columns written into the
    (d, labels) kernel gradient and the bias gradient, and `state` (per-row
    tensors) carried from chunk to chunk. added_columns(state), if given,
    gives (ids (n,), columns (n, d)) added to the kernel gradient's columns
    at those ids after the loop, a repeated id adding each."""
    acc = tf.float64 if kernel.dtype == tf.float64 else tf.float32
    dhidden = tf.zeros(tf.shape(hidden), acc)
    if _loader.in_xla_context():
        return _gradients_in_place(chunk_gradients, dhidden, kernel, label_count, width, state, added_columns)
    if _column_writes_available():
        return _gradients_written_by_op(chunk_gradients, dhidden, kernel, label_count, width, state, added_columns)
    return _gradients_by_chunks(chunk_gradients, dhidden, kernel, label_count, width, state, added_columns)


def _library_serves_the_cpu():
    """Whether the op library's head ops (CPU kernels only) serve this
    process: the library loads (not the pure path) and no GPU is visible
    (placed on a CPU, a GPU's chunks would cross to the host each time)."""
    return not _loader.use_pure_tf() and not tf.config.list_logical_devices("GPU")


def _column_writes_available():
    """Whether the kernel gradient outside XLA is written in place by the
    library's column writes (else collected in a TensorArray)."""
    return _library_serves_the_cpu()


def _gradients_in_place(chunk_gradients, dhidden, kernel, label_count, width, state, added_columns):
    """Under XLA: each chunk's columns written into the (d, labels) kernel
    gradient and the bias gradient, carried through the loop, by
    dynamic-update-slice, which XLA does in place (no assembly copy). The
    added columns go in by a scatter of single elements ((row, id) pairs:
    TF scatters along leading dimensions only), in place too."""
    acc = dhidden.dtype

    def step(start, width, carry):
        dhidden, dkernel, dbias, state = carry
        chunk_dhidden, dkernel_chunk, dbias_chunk, state = chunk_gradients(start, width, False, state)
        dkernel = xla.dynamic_update_slice(dkernel, dkernel_chunk, tf.stack([0, start]))
        dbias = xla.dynamic_update_slice(dbias, dbias_chunk, tf.reshape(start, [1]))
        return dhidden + chunk_dhidden, dkernel, dbias, state

    carry = (dhidden, tf.zeros(tf.shape(kernel), kernel.dtype), tf.zeros([label_count], acc), state)
    dhidden, dkernel, dbias, state = _chunks(width, label_count, step, carry)
    if added_columns is not None:
        ids, columns = added_columns(state)
        d = tf.shape(dkernel)[0]
        rows = tf.broadcast_to(tf.range(d)[:, None], tf.stack([d, tf.size(ids)]))
        where = tf.stack([rows, tf.broadcast_to(ids[None], tf.shape(rows))], axis=-1)
        dkernel = tf.tensor_scatter_nd_add(dkernel, where, tf.transpose(columns))
    return dhidden, dkernel, dbias, state


def _chunk_kernel_available():
    """Whether the one-pass form's fast chunks take the library's
    FusedHeadChunk: outside XLA (inside, XLA fuses the framework's ops as
    well: docs/benchmarks.md), where the library serves a CPU."""
    return not _loader.in_xla_context() and _library_serves_the_cpu()


def _gradients_written_by_op(chunk_gradients, dhidden, kernel, label_count, width, state, added_columns):
    """Outside XLA, on a CPU: as `_gradients_in_place`, with the library's
    FusedHeadWriteColumns and FusedHeadAddColumns in place of XLA's
    dynamic-update-slice and scatter. They write into the buffer they are
    given, which must be this loop's own: it comes from Empty (never folded
    or shared) and passes through nothing else. Every column is written by
    one chunk, so it starts uninitialised. TF's TensorScatterUpdate would
    copy the whole buffer every chunk here (a while loop never forwards its
    carry), and a TensorArray costs a transient kernel-sized copy; with
    these the step's extra memory is the chunk scratch (docs/benchmarks.md)."""
    acc = dhidden.dtype
    library = _loader.ops()

    def step(start, width, carry):
        dhidden, dkernel, dbias, state = carry
        chunk_dhidden, dkernel_chunk, dbias_chunk, state = chunk_gradients(start, width, False, state)
        dkernel = library.fused_head_write_columns(matrix=dkernel, columns=dkernel_chunk, start=start)
        dbias = library.fused_head_write_columns(matrix=dbias, columns=dbias_chunk[None], start=start)
        return dhidden + chunk_dhidden, dkernel, dbias, state

    shape = tf.shape(kernel)
    carry = (
        dhidden,
        tf.raw_ops.Empty(shape=shape, dtype=kernel.dtype, init=False),
        tf.raw_ops.Empty(shape=tf.stack([1, shape[1]]), dtype=acc, init=False),
        state,
    )
    dhidden, dkernel, dbias, state = _chunks(width, label_count, step, carry)
    if added_columns is not None and label_count:
        ids, columns = added_columns(state)
        dkernel = library.fused_head_add_columns(matrix=dkernel, ids=ids, columns=columns)
    return dhidden, tf.ensure_shape(dkernel, kernel.shape), tf.reshape(dbias, [label_count]), state


def _gradients_by_chunks(chunk_gradients, dhidden, kernel, label_count, width, state, added_columns):
    """Outside XLA where the library's column writes do not serve (a GPU,
    the pure path): the kernel's and bias's
    columns collect in TensorArrays, one (width, d) / (width,) element per
    chunk, assembled once at the end (the assembly and the transpose cost
    transient copies of the kernel gradient); the added columns are
    scattered into the assembled (labels, d) rows before the transpose."""
    acc = dhidden.dtype
    compute = kernel.dtype
    whole = label_count // width
    kernel_rows = tf.TensorArray(compute, size=whole, element_shape=tf.TensorShape([width, kernel.shape[0]]))
    bias_rows = tf.TensorArray(acc, size=whole, element_shape=tf.TensorShape([width]))

    def step(i, dhidden, kernel_rows, bias_rows, state):
        chunk_dhidden, dkernel_rows, dbias, state = chunk_gradients(i * width, width, True, state)
        return i + 1, dhidden + chunk_dhidden, kernel_rows.write(i, dkernel_rows), bias_rows.write(i, dbias), state

    _, dhidden, kernel_rows, bias_rows, state = tf.while_loop(
        lambda i, *_: i < whole,
        step,
        (tf.constant(0), dhidden, kernel_rows, bias_rows, state),
        parallel_iterations=1,
    )
    dkernel_t = tf.reshape(kernel_rows.stack(), [whole * width, kernel.shape[0]])
    dbias = tf.reshape(bias_rows.stack(), [whole * width])
    tail = label_count - whole * width
    if tail:
        chunk_dhidden, tail_rows, tail_bias, state = chunk_gradients(whole * width, tail, True, state)
        dhidden += chunk_dhidden
        dkernel_t = tf.concat([dkernel_t, tail_rows], axis=0)
        dbias = tf.concat([dbias, tail_bias], axis=0)
    if added_columns is not None:
        ids, columns = added_columns(state)
        dkernel_t = tf.tensor_scatter_nd_add(dkernel_t, ids[:, None], columns)
    return dhidden, tf.transpose(dkernel_t), dbias, state


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
