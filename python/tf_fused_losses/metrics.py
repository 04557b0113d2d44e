"""Multi-label ranking and extreme-classification (XMC) metrics as plain
functions, on every Keras backend (`keras.ops`, with the framework's own
batched searchsorted and bincount where it has one). The Keras metric
classes, which stream these over batches, are in `keras_metrics`.

Every function returns one value per row, shape (batch,); the batch's metric
is their mean (what `sklearn.metrics` returns). Definitions, how ties count
and the cost of each are in docs/metrics.md. In short:

  ranking_loss, one_error, coverage, average_precision
      the BP-MLL paper's ranking statistics with sklearn's tie conventions
      (a tie with a negative label counts against the positive one);
  hamming_loss
      the fraction of labels misclassified by `y_pred > threshold`;
  precision_at_k, ndcg_at_k, ps_precision_at_k
      the XMC metrics, ties averaged over the orders of the tied labels
      (sklearn's `ndcg_score`).

Labels come in one of two forms:
  * dense: y_true (batch, labels) in [0, 1]; a label is relevant where
    y_true >= 0.5 (soft and smoothed labels round to their class);
  * label ids: y_true (batch, K) int32/int64, each row's relevant label ids,
    -1 as padding anywhere in the row, a repeated id counted once
    (`label_ids=True`). Ids must lie in [0, labels); others are not checked.
y_pred: (batch, labels) scores (logits or probabilities; only their order
matters, and `hamming_loss`'s threshold), float16/bfloat16/float32/float64,
finite. Results are float64 for float64 scores, float32 otherwise.

No function sorts a row of `labels` scores. The XMC metrics take the row's
top k (`top_k`) and count the labels tied with the k-th: O(L) per row. The
ranking statistics sort each row's positives (|Y| of them), find for every
label how many positives score at most as high (a binary search among them),
and histogram those counts: O(L log |Y|) per row. Dense labels find the
positives with a `top_k` over the labels of width `max_positives`; its
default, the number of labels, is exact for any row but is a full sort of
the labels, so at large label counts pass `max_positives` (rows with more
positives give NaN) or use label ids.
"""

import functools
import math

import numpy as np

import keras
from keras import ops

from ._validation import not_converted

__all__ = [
    "average_precision",
    "coverage",
    "hamming_loss",
    "jain_propensities",
    "ndcg_at_k",
    "one_error",
    "precision_at_k",
    "ps_precision_at_k",
    "ranking_loss",
    "ranking_statistics",
]

RELEVANCE_THRESHOLD = 0.5  # dense y_true >= this is a relevant label
ID_DTYPES = ("int32", "int64")
INF = float("inf")


# --------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------


def _jit_on_jax(*static_argnames):
    """Runs the function under `jax.jit` on the JAX backend: one compiled
    program per shape instead of dozens of small ones compiled and run op by
    op. Other backends run it as it is (TF's ops are each large enough)."""

    def wrap(function):
        compiled = []

        @not_converted  # plain Python under tf.function: no tensor-dependent control flow
        @functools.wraps(function)
        def call(*args, **kwargs):
            if keras.backend.backend() != "jax":
                return function(*args, **kwargs)
            if not compiled:
                import jax

                compiled.append(jax.jit(function, static_argnames=static_argnames))
            return compiled[0](*args, **kwargs)

        return call

    return wrap


def _dtype(x):
    return keras.backend.standardize_dtype(x.dtype)


def _result_dtype(y_pred):
    return "float64" if _dtype(y_pred) == "float64" else "float32"


def _num_labels(y_pred):
    num_labels = y_pred.shape[-1]
    if num_labels is None:
        raise ValueError(f"y_pred needs a static number of labels (its last dimension); got shape {tuple(y_pred.shape)}")
    return int(num_labels)


def _check_k(k):
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer; got {k!r}")
    return int(k)


def _arguments(y_true, y_pred, label_ids):
    """y_true and y_pred as tensors of the Keras backend, checked. Ragged
    ids (tf.RaggedTensor, straight from tf.data, as BPMLLLoss(label_ids=True)
    takes them) are padded with -1."""
    y_pred = ops.convert_to_tensor(y_pred)
    if label_ids and type(y_true).__name__ == "RaggedTensor":
        y_true = y_true.to_tensor(default_value=-1)
    y_true = ops.convert_to_tensor(y_true)
    if _dtype(y_pred) not in ("float16", "bfloat16", "float32", "float64"):
        raise ValueError(f"y_pred must be float16, bfloat16, float32 or float64; got dtype {_dtype(y_pred)}")
    if len(y_pred.shape) != 2:
        raise ValueError(f"y_pred must be rank 2 (batch, labels); got shape {tuple(y_pred.shape)}")
    if len(y_true.shape) != 2:
        layout = "(batch, ids)" if label_ids else "(batch, labels)"
        raise ValueError(f"y_true must be rank 2 {layout}; got shape {tuple(y_true.shape)}")
    if label_ids:
        if _dtype(y_true) not in ID_DTYPES:
            raise ValueError(f"label ids (y_true with label_ids=True) must be int32 or int64; got dtype {_dtype(y_true)}")
    elif y_true.shape[-1] is not None and y_pred.shape[-1] is not None and y_true.shape[-1] != y_pred.shape[-1]:
        raise ValueError(
            f"dense y_true and y_pred must have the same shape; got y_true {tuple(y_true.shape)} and "
            f"y_pred {tuple(y_pred.shape)} (label ids need label_ids=True)"
        )
    _num_labels(y_pred)
    return y_true, y_pred


def _top_k(x, k):
    """(values, indices) of each row's k largest entries. On JAX behind an
    optimization barrier: where the same jitted program also reads x
    elementwise (the k-th score's tie count), XLA:CPU otherwise sorts whole
    rows instead of running its top-k (7 s against 0.23 s at 32 x 670,091)."""
    top = ops.top_k(x, k)
    if keras.backend.backend() == "jax":
        import jax

        top = jax.lax.optimization_barrier(tuple(top))
    return top


def _relevant(y_true):
    return ops.greater_equal(y_true, ops.cast(RELEVANCE_THRESHOLD, _dtype(y_true)))


def _sum_int(x):
    return ops.sum(ops.cast(x, "int32"), axis=-1)


def _unique_ids(label_ids):
    """(ids, valid): each row's ids sorted, with padding and repeats marked
    invalid and set to 0 (a safe index for gathers)."""
    ids = ops.sort(ops.cast(label_ids, "int32"), axis=-1)
    repeated = ops.concatenate([ops.zeros_like(ids[:, :1], dtype="bool"), ops.equal(ids[:, 1:], ids[:, :-1])], axis=-1)
    valid = ops.logical_and(ops.greater_equal(ids, 0), ops.logical_not(repeated))
    return ops.where(valid, ids, 0), valid


def _positive_slots(y_true, y_pred, label_ids, max_positives):
    """(ids (batch, K), valid (batch, K), overflow (batch,) or None): the
    positions of each row's relevant labels. Dense rows with more than K
    relevant labels are marked in `overflow`."""
    if label_ids:
        if y_true.shape[-1] is None:
            raise ValueError(f"label ids need a static width (batch, K); got shape {tuple(y_true.shape)}")
        ids, valid = _unique_ids(y_true)
        return ids, valid, None
    num_labels = _num_labels(y_pred)
    if max_positives is None:
        slots = num_labels
    else:
        if isinstance(max_positives, bool) or not isinstance(max_positives, (int, np.integer)) or max_positives < 1:
            raise ValueError(f"max_positives must be a positive integer or None; got {max_positives!r}")
        slots = min(int(max_positives), num_labels)
    relevant = ops.cast(_relevant(y_true), "float32")
    found, ids = _top_k(relevant, slots)
    valid = ops.greater(found, 0)
    overflow = None if slots == num_labels else ops.greater(ops.sum(relevant, axis=-1), float(slots))
    return ops.cast(ids, "int32"), valid, overflow


# --------------------------------------------------------------------------
# Batched searchsorted and histogram: the framework's own where it has one
# --------------------------------------------------------------------------


_compiled_searchsorted = {}  # (backend, side) -> compiled batched searchsorted


def _row_searchsorted(sorted_rows, values, side):
    """For each row: how many of sorted_rows' entries are < (side="left")
    or <= (side="right") each of values' entries; int32, values' shape."""
    backend = keras.backend.backend()
    key = (backend, side)
    if backend == "tensorflow":
        if key not in _compiled_searchsorted:
            import tensorflow as tf

            # Compiled by XLA: TF's own kernel takes ~20 times as long on CPU
            # (measured at 32 x 670,091 against 16 positives per row).
            _compiled_searchsorted[key] = tf.function(
                lambda rows, v: tf.searchsorted(rows, v, side=side, out_type=tf.int32),
                jit_compile=True,
                reduce_retracing=True,
            )
        return _compiled_searchsorted[key](sorted_rows, values)
    if backend == "jax":
        if key not in _compiled_searchsorted:
            import jax
            import jax.numpy as jnp

            # "scan": log2(K) passes over the row; "compare_all" would hold (L, K)
            search = jax.vmap(lambda rows, v: jnp.searchsorted(rows, v, side=side, method="scan"))
            _compiled_searchsorted[key] = jax.jit(lambda rows, v: search(rows, v).astype(jnp.int32))
        return _compiled_searchsorted[key](sorted_rows, values)
    if backend == "torch":
        import torch

        return torch.searchsorted(sorted_rows.contiguous(), values.contiguous(), right=side == "right").to(torch.int32)
    # Other backends: one compare-and-count pass over the row per entry.
    compare = ops.less if side == "left" else ops.less_equal
    count = ops.zeros(ops.shape(values), dtype="int32")
    for slot in range(sorted_rows.shape[-1]):
        count = count + ops.cast(compare(sorted_rows[:, slot : slot + 1], values), "int32")
    return count


def _row_histogram(bins_of_entries, num_bins):
    """(batch, num_bins) int32: how many of each row's entries fall in each bin."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # The raw op: tf.math.bincount computes its size, which XLA cannot compile.
        return tf.raw_ops.DenseBincount(
            input=bins_of_entries, size=num_bins, weights=tf.zeros([0], tf.int32), binary_output=False
        )
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return jax.vmap(lambda row: jnp.bincount(row, length=num_bins))(bins_of_entries).astype(jnp.int32)
    if backend == "torch":
        import torch

        histogram = torch.zeros(
            (bins_of_entries.shape[0], num_bins), dtype=torch.int64, device=bins_of_entries.device
        )
        ones = torch.ones_like(bins_of_entries, dtype=torch.int64)
        return histogram.scatter_add_(1, bins_of_entries.to(torch.int64), ones).to(torch.int32)
    return ops.stack([_sum_int(ops.equal(bins_of_entries, b)) for b in range(num_bins)], axis=-1)


# --------------------------------------------------------------------------
# Ranking statistics (BP-MLL paper; sklearn's conventions)
# --------------------------------------------------------------------------


@_jit_on_jax("label_ids", "max_positives")
def ranking_statistics(y_true, y_pred, *, label_ids=False, max_positives=None):
    """The four ranking statistics per row, from one pass over the scores:
    a dict with "ranking_loss", "one_error", "coverage", "average_precision",
    each of shape (batch,). See the functions of those names."""
    y_true, y_pred = _arguments(y_true, y_pred, label_ids)
    result_dtype = _result_dtype(y_pred)
    num_labels = _num_labels(y_pred)
    ids, valid, overflow = _positive_slots(y_true, y_pred, label_ids, max_positives)
    slots = ids.shape[-1]

    # Each row's positive scores, ascending; the padding slots (+inf) last.
    positive_scores = ops.where(valid, ops.take_along_axis(y_pred, ids, axis=-1), INF)
    positive_scores = ops.cast(ops.sort(positive_scores, axis=-1), _dtype(y_pred))
    num_positives = _sum_int(valid)
    slot_valid = ops.less(ops.expand_dims(ops.arange(slots, dtype="int32"), 0), ops.expand_dims(num_positives, -1))

    # For each label, how many positives score at most as high as it (a
    # binary search among the |Y| sorted positive scores, never a sort of
    # the row); then the j-th smallest positive score is reached by exactly
    # the labels that more than j positives score at most as high as:
    # labels_at_or_above[j] = #{l : s_l >= p_(j)} = L - #{l : bin_l <= j}.
    bins = _row_searchsorted(positive_scores, y_pred, "right")
    histogram = _row_histogram(bins, slots + 1)
    labels_at_or_above = num_labels - ops.cumsum(histogram, axis=-1)[:, :slots]
    positives_below = _row_searchsorted(positive_scores, positive_scores, "left")
    positives_at_or_above = ops.expand_dims(num_positives, -1) - positives_below
    negatives_at_or_above = labels_at_or_above - positives_at_or_above

    zero = ops.zeros_like(labels_at_or_above)
    positives = ops.cast(num_positives, result_dtype)
    negatives = ops.cast(num_labels - num_positives, result_dtype)
    has_positive = ops.greater(num_positives, 0)
    has_pairs = ops.logical_and(has_positive, ops.less(num_positives, num_labels))

    # Ranking loss: misordered (positive, negative) pairs, a tie being one.
    misordered = ops.cast(ops.sum(ops.where(slot_valid, negatives_at_or_above, zero), axis=-1), result_dtype)
    pairs = ops.where(has_pairs, positives * negatives, 1.0)
    ranking_loss_rows = ops.where(has_pairs, misordered / pairs, 0.0)

    # Coverage: labels scoring at least as high as the lowest positive.
    coverage_rows = ops.cast(ops.where(has_positive, labels_at_or_above[:, 0], 0), result_dtype)

    # One-error: the highest positive is outranked or tied by a negative.
    highest = ops.expand_dims(ops.maximum(num_positives - 1, 0), -1)
    outranked = ops.take_along_axis(negatives_at_or_above, highest, axis=-1)[:, 0]
    one_error_rows = ops.cast(ops.logical_and(has_positive, ops.greater(outranked, 0)), result_dtype)

    # Average precision: mean over positives of the positives' share of the
    # labels scoring at least as high.
    precision = ops.cast(positives_at_or_above, result_dtype) / ops.cast(ops.maximum(labels_at_or_above, 1), result_dtype)
    precision_sum = ops.sum(ops.where(slot_valid, precision, ops.zeros_like(precision)), axis=-1)
    average_precision_rows = ops.where(has_pairs, precision_sum / ops.maximum(positives, 1.0), 1.0)

    statistics = {
        "ranking_loss": ranking_loss_rows,
        "one_error": one_error_rows,
        "coverage": coverage_rows,
        "average_precision": average_precision_rows,
    }
    if overflow is not None:  # the rows whose positives did not all fit
        statistics = {name: ops.where(overflow, float("nan"), rows) for name, rows in statistics.items()}
    return {name: ops.cast(rows, result_dtype) for name, rows in statistics.items()}


@not_converted
def ranking_loss(y_true, y_pred, *, label_ids=False, max_positives=None):
    """Per-row ranking loss: the fraction of (relevant, irrelevant) label
    pairs whose irrelevant label scores at least as high (a tie is a
    misordered pair); 0 for rows without such pairs. The batch mean is
    `sklearn.metrics.label_ranking_loss`."""
    return ranking_statistics(y_true, y_pred, label_ids=label_ids, max_positives=max_positives)["ranking_loss"]


@not_converted
def one_error(y_true, y_pred, *, label_ids=False, max_positives=None):
    """Per-row one-error: 1 where the top score is not a relevant label's,
    counting a tie at the top between a relevant and an irrelevant label as
    an error; 0 for rows without relevant labels (as the ranking losses)."""
    return ranking_statistics(y_true, y_pred, label_ids=label_ids, max_positives=max_positives)["one_error"]


@not_converted
def coverage(y_true, y_pred, *, label_ids=False, max_positives=None):
    """Per-row coverage: how many labels score at least as high as the
    lowest-scoring relevant label (sklearn's count; the BP-MLL paper's
    coverage is this minus 1); 0 for rows without relevant labels. The batch
    mean is `sklearn.metrics.coverage_error`."""
    return ranking_statistics(y_true, y_pred, label_ids=label_ids, max_positives=max_positives)["coverage"]


@not_converted
def average_precision(y_true, y_pred, *, label_ids=False, max_positives=None):
    """Per-row label-ranking average precision (BP-MLL paper): the mean, over
    relevant labels k, of (relevant labels scoring >= s_k) / (labels scoring
    >= s_k); 1 for rows with no relevant or no irrelevant label. The batch
    mean is `sklearn.metrics.label_ranking_average_precision_score`."""
    return ranking_statistics(y_true, y_pred, label_ids=label_ids, max_positives=max_positives)["average_precision"]


@_jit_on_jax("threshold", "label_ids")
def hamming_loss(y_true, y_pred, *, threshold=0.0, label_ids=False):
    """Per-row Hamming loss: the fraction of labels where the prediction
    `y_pred > threshold` differs from relevance. The default threshold 0.0
    suits logits (probability 0.5); pass 0.5 for probabilities. The batch
    mean is `sklearn.metrics.hamming_loss(y_true, y_pred > threshold)`."""
    y_true, y_pred = _arguments(y_true, y_pred, label_ids)
    result_dtype = _result_dtype(y_pred)
    num_labels = _num_labels(y_pred)
    predicted = ops.greater(y_pred, ops.cast(threshold, _dtype(y_pred)))
    if label_ids:
        ids, valid = _unique_ids(y_true)
        hits = _sum_int(ops.logical_and(valid, ops.take_along_axis(predicted, ids, axis=-1)))
        wrong = _sum_int(predicted) + _sum_int(valid) - 2 * hits
    else:
        wrong = _sum_int(ops.not_equal(_relevant(y_true), predicted))
    return ops.cast(wrong, result_dtype) / float(num_labels)


# --------------------------------------------------------------------------
# XMC metrics: top k, ties averaged
# --------------------------------------------------------------------------


def _top_k_mean_gains(y_true, y_pred, k, label_ids, label_weights=None):
    """(gains (batch, k'), num_relevant (batch,)) for k' = min(k, labels):
    the expected gain at each of the top k' positions when tied scores are
    ordered at random. A relevant label's gain is its weight (1 without
    `label_weights`), an irrelevant label's 0.

    Labels scoring above the k-th score all lie in the top k, so their tie
    groups are counted there; the group of the k-th score may reach beyond
    it and is counted over the whole row: O(L) per row, no sort."""
    result_dtype = _result_dtype(y_pred)
    num_labels = _num_labels(y_pred)
    top_scores, top_ids = _top_k(y_pred, min(k, num_labels))
    top_ids = ops.cast(top_ids, "int32")
    kth_score = top_scores[:, -1:]
    at_kth = ops.equal(y_pred, kth_score)
    if label_ids:
        ids, valid = _unique_ids(y_true)
        weights = ops.cast(valid, result_dtype)
        if label_weights is not None:
            weights = weights * ops.take(label_weights, ids)
        # The gain of each top label: the weight of the id equal to it, if any.
        matches = ops.logical_and(
            ops.expand_dims(valid, 1), ops.equal(ops.expand_dims(ids, 1), ops.expand_dims(top_ids, -1))
        )
        top_gains = ops.sum(ops.where(matches, ops.expand_dims(weights, 1), 0.0), axis=-1)
        id_at_kth = ops.equal(ops.take_along_axis(y_pred, ids, axis=-1), kth_score)
        kth_group_gain = ops.sum(ops.where(id_at_kth, weights, 0.0), axis=-1)
        num_relevant = _sum_int(valid)
    else:
        relevant = _relevant(y_true)
        gains = ops.cast(relevant, result_dtype)
        if label_weights is not None:
            gains = gains * ops.expand_dims(label_weights, 0)
        top_gains = ops.take_along_axis(gains, top_ids, axis=-1)
        kth_group_gain = ops.sum(ops.where(at_kth, gains, 0.0), axis=-1)
        num_relevant = _sum_int(relevant)
    kth_group_size = ops.cast(_sum_int(at_kth), result_dtype)

    # Groups above the k-th score: the mean gain over the top labels tied with each.
    tied = ops.cast(ops.equal(ops.expand_dims(top_scores, -1), ops.expand_dims(top_scores, 1)), result_dtype)
    group_gain = ops.sum(tied * ops.expand_dims(top_gains, 1), axis=-1)
    group_size = ops.sum(tied, axis=-1)
    gains = ops.where(
        ops.equal(top_scores, kth_score),
        ops.expand_dims(kth_group_gain / kth_group_size, -1),
        group_gain / group_size,
    )
    return gains, num_relevant


def _label_weights(values, result_dtype, num_labels, what):
    weights = ops.cast(ops.convert_to_tensor(values), result_dtype)
    if tuple(weights.shape) != (num_labels,):
        raise ValueError(f"{what} must have shape ({num_labels},), one per label; got {tuple(weights.shape)}")
    return weights


@_jit_on_jax("k", "label_ids")
def precision_at_k(y_true, y_pred, k=5, *, label_ids=False):
    """Per-row P@k: relevant labels among the k top-scoring ones, over k
    (rows with fewer than k relevant labels cannot reach 1). Labels tied at
    the k-th score share its places: each counts with the fraction of them
    that fits, the mean over the orders of the tied labels."""
    k = _check_k(k)
    y_true, y_pred = _arguments(y_true, y_pred, label_ids)
    gains, _ = _top_k_mean_gains(y_true, y_pred, k, label_ids)
    return ops.sum(gains, axis=-1) / float(k)


def _discounts(count, dtype):
    return ops.cast(1.0 / np.log2(np.arange(count) + 2.0), dtype)


@_jit_on_jax("k", "label_ids")
def ndcg_at_k(y_true, y_pred, k=5, *, label_ids=False):
    """Per-row nDCG@k with binary gains: sum over the top k places j
    (0-based) of relevance / log2(j + 2), over the same sum for the ideal
    order; 0 for rows without relevant labels. Ties are averaged over the
    orders of the tied labels. The batch mean is
    `sklearn.metrics.ndcg_score(y_true, y_pred, k=k)` (0/1 labels)."""
    k = _check_k(k)
    y_true, y_pred = _arguments(y_true, y_pred, label_ids)
    result_dtype = _result_dtype(y_pred)
    gains, num_relevant = _top_k_mean_gains(y_true, y_pred, k, label_ids)
    places = gains.shape[-1]
    discounts = _discounts(places, result_dtype)
    dcg = ops.sum(gains * ops.expand_dims(discounts, 0), axis=-1)
    ideal_places = ops.less(ops.expand_dims(ops.arange(places, dtype="int32"), 0), ops.expand_dims(num_relevant, -1))
    ideal_dcg = ops.sum(ops.where(ideal_places, ops.expand_dims(discounts, 0), 0.0), axis=-1)
    has_relevant = ops.greater(num_relevant, 0)
    return ops.where(has_relevant, dcg / ops.where(has_relevant, ideal_dcg, 1.0), 0.0)


def jain_propensities(label_counts, num_samples=None, a=0.55, b=1.5):
    """Jain et al. (2016) label propensities, a numpy float64 array:
    p_l = 1 / (1 + C (N_l + B)^-A), C = (log N - 1) (B + 1)^A, where N_l is
    how many training samples have label l and N how many samples there are
    (default: the largest N_l). A = 0.55, B = 1.5 are the paper's general
    defaults (Wikipedia-LSHTC: 0.5, 0.4; Amazon: 0.6, 2.6)."""
    counts = np.asarray(label_counts, dtype=np.float64)
    if counts.ndim != 1 or np.any(counts < 0):
        raise ValueError("label_counts must be a 1-D array of non-negative counts, one per label")
    n = float(np.max(counts)) if num_samples is None else float(num_samples)
    if not n > math.e:
        raise ValueError(f"num_samples must exceed e (log N - 1 > 0); got {n}")
    c = (math.log(n) - 1.0) * (b + 1.0) ** a
    return 1.0 / (1.0 + c * (counts + b) ** -a)


@_jit_on_jax("k", "label_ids", "best")
def ps_precision_at_k(y_true, y_pred, propensities, k=5, *, label_ids=False, best=False):
    """Per-row propensity-scored P@k (Jain et al. 2016): (1/k) times the sum
    of 1 / p_l over the relevant labels l among the k top-scoring ones, ties
    averaged as in `precision_at_k`. propensities: (labels,) p_l in (0, 1]
    (`jain_propensities`). With best=True, the largest value any scores could
    reach: the k largest 1 / p_l among the row's relevant labels, over k.
    Normalised PSP@k (the XMC repository's) is sum(PSP@k) / sum(best)."""
    k = _check_k(k)
    y_true, y_pred = _arguments(y_true, y_pred, label_ids)
    result_dtype = _result_dtype(y_pred)
    num_labels = _num_labels(y_pred)
    inverse = 1.0 / _label_weights(propensities, result_dtype, num_labels, "propensities")
    if not best:
        gains, _ = _top_k_mean_gains(y_true, y_pred, k, label_ids, inverse)
        return ops.sum(gains, axis=-1) / float(k)
    if label_ids:
        ids, valid = _unique_ids(y_true)
        candidates = ops.where(valid, ops.take(inverse, ids), 0.0)
    else:
        candidates = ops.where(_relevant(y_true), ops.expand_dims(inverse, 0), 0.0)
    top, _ = _top_k(candidates, min(k, candidates.shape[-1]))
    return ops.sum(top, axis=-1) / float(k)
