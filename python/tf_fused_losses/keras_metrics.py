"""Keras metrics for multi-label ranking and XMC, on every Keras backend:
the functions of `metrics` streamed over batches with Keras metric state.

Each metric keeps a weighted sum of per-row values and the sum of the
weights, so `result()` is the mean over every row seen since the last
`reset_state()` (what `sklearn.metrics` gives on all those rows at once);
`sample_weight`, shape (batch,), weights the rows. Normalised PSP@k keeps
the sum of the rows' best reachable values instead of the weights.

Registered with Keras as "tf_fused_losses>RankingLoss", ... once this
module is imported.
"""

import numpy as np

import keras
from keras import ops

from . import metrics

__all__ = [
    "AveragePrecision",
    "CorpusCCC",
    "Coverage",
    "HammingLoss",
    "NDCGAtK",
    "OneError",
    "PSPrecisionAtK",
    "PrecisionAtK",
    "RankingLoss",
]


class _RowMeanMetric(keras.metrics.Metric):
    """The (weighted) mean of a per-row metric over every row seen."""

    def __init__(self, name, dtype=None, label_ids=False):
        super().__init__(name=name, dtype=dtype)
        self.label_ids = bool(label_ids)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype=self.dtype, name="count")

    def _rows(self, y_true, y_pred):
        raise NotImplementedError

    def _row_weights(self, y_true, y_pred, rows):
        return ops.ones_like(rows)

    def update_state(self, y_true, y_pred, sample_weight=None):
        rows = ops.cast(self._rows(y_true, y_pred), self.dtype)
        weights = ops.cast(self._row_weights(y_true, y_pred, rows), self.dtype)
        if sample_weight is not None:
            sample_weight = ops.reshape(ops.cast(sample_weight, self.dtype), (-1,))
            rows = rows * sample_weight
            weights = weights * sample_weight
        self.total.assign_add(ops.sum(rows))
        self.count.assign_add(ops.sum(weights))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(ops.zeros((), dtype=self.dtype))
        self.count.assign(ops.zeros((), dtype=self.dtype))

    def get_config(self):
        return {**super().get_config(), "label_ids": self.label_ids}


class _RankingMetric(_RowMeanMetric):
    _statistic = None

    def __init__(self, label_ids=False, max_positives=None, name=None, dtype=None):
        super().__init__(name=name or self._default_name, dtype=dtype, label_ids=label_ids)
        self.max_positives = None if max_positives is None else int(max_positives)

    def _rows(self, y_true, y_pred):
        statistics = metrics.ranking_statistics(
            y_true, y_pred, label_ids=self.label_ids, max_positives=self.max_positives
        )
        return statistics[self._statistic]

    def get_config(self):
        return {**super().get_config(), "max_positives": self.max_positives}


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class RankingLoss(_RankingMetric):
    """Mean ranking loss (`metrics.ranking_loss`): misordered (relevant,
    irrelevant) pairs, ties counted as misordered. Lower is better."""

    _statistic = "ranking_loss"
    _default_name = "ranking_loss"


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class OneError(_RankingMetric):
    """Fraction of rows whose top-scored label is irrelevant
    (`metrics.one_error`). Lower is better."""

    _statistic = "one_error"
    _default_name = "one_error"


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class Coverage(_RankingMetric):
    """Mean number of labels scoring at least as high as the lowest relevant
    one (`metrics.coverage`, sklearn's coverage_error). Lower is better."""

    _statistic = "coverage"
    _default_name = "coverage"


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class AveragePrecision(_RankingMetric):
    """Mean label-ranking average precision (`metrics.average_precision`,
    sklearn's label_ranking_average_precision_score). Higher is better."""

    _statistic = "average_precision"
    _default_name = "average_precision"


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class HammingLoss(_RowMeanMetric):
    """Fraction of labels misclassified by `y_pred > threshold`
    (`metrics.hamming_loss`); threshold 0.0 suits logits, 0.5
    probabilities. Lower is better."""

    def __init__(self, threshold=0.0, label_ids=False, name="hamming_loss", dtype=None):
        super().__init__(name=name, dtype=dtype, label_ids=label_ids)
        self.threshold = float(threshold)

    def _rows(self, y_true, y_pred):
        return metrics.hamming_loss(y_true, y_pred, threshold=self.threshold, label_ids=self.label_ids)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}


class _TopKMetric(_RowMeanMetric):
    def __init__(self, k=5, label_ids=False, name=None, dtype=None):
        k = metrics._check_k(k)
        super().__init__(name=name or f"{self._default_name}_{k}", dtype=dtype, label_ids=label_ids)
        self.k = k

    def get_config(self):
        return {**super().get_config(), "k": self.k}


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class PrecisionAtK(_TopKMetric):
    """Mean P@k (`metrics.precision_at_k`), ties at the k-th score averaged.
    Higher is better."""

    _default_name = "precision_at"

    def _rows(self, y_true, y_pred):
        return metrics.precision_at_k(y_true, y_pred, self.k, label_ids=self.label_ids)


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class NDCGAtK(_TopKMetric):
    """Mean nDCG@k with binary gains (`metrics.ndcg_at_k`, sklearn's
    ndcg_score), ties averaged. Higher is better."""

    _default_name = "ndcg_at"

    def _rows(self, y_true, y_pred):
        return metrics.ndcg_at_k(y_true, y_pred, self.k, label_ids=self.label_ids)


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class PSPrecisionAtK(_TopKMetric):
    """Propensity-scored P@k (Jain et al. 2016; `metrics.ps_precision_at_k`).

    Give either `propensities` (one p_l in (0, 1] per label) or
    `label_counts` (N_l, training samples with label l) and `num_samples`
    (N), from which `metrics.jain_propensities` computes them with `a`, `b`.
    normalize=True divides by the best value reachable on the same rows
    (the XMC repository's PSP@k, in [0, 1]); otherwise the mean of the rows'
    PSP@k. The propensities are kept in the config (one float per label)."""

    _default_name = "psprecision_at"

    def __init__(
        self,
        k=5,
        propensities=None,
        label_counts=None,
        num_samples=None,
        a=0.55,
        b=1.5,
        normalize=False,
        label_ids=False,
        name=None,
        dtype=None,
    ):
        super().__init__(k=k, label_ids=label_ids, name=name, dtype=dtype)
        if (propensities is None) == (label_counts is None):
            raise ValueError("PSPrecisionAtK needs either propensities or label_counts (with num_samples)")
        if propensities is None:
            propensities = metrics.jain_propensities(label_counts, num_samples, a=a, b=b)
        propensities = np.asarray(propensities, dtype=np.float64)
        if propensities.ndim != 1 or not np.all((propensities > 0) & (propensities <= 1)):
            raise ValueError("propensities must be a 1-D array of values in (0, 1], one per label")
        self.propensities = propensities
        self.normalize = bool(normalize)

    def _rows(self, y_true, y_pred):
        return metrics.ps_precision_at_k(y_true, y_pred, self.propensities, self.k, label_ids=self.label_ids)

    def _row_weights(self, y_true, y_pred, rows):
        if not self.normalize:
            return ops.ones_like(rows)
        return metrics.ps_precision_at_k(
            y_true, y_pred, self.propensities, self.k, label_ids=self.label_ids, best=True
        )

    def get_config(self):
        return {
            **super().get_config(),
            "propensities": self.propensities.tolist(),
            "normalize": self.normalize,
        }


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class CorpusCCC(keras.metrics.Metric):
    """Lin's concordance correlation coefficient over every valid step of
    every sequence seen since the last reset, as AVEC scores it (not a mean
    of per-sequence values); with several targets ((batch, steps, targets)
    inputs), the mean of the targets' coefficients.

    sample_weight, (batch,) or (batch, steps), marks valid steps (nonzero;
    e.g. a padding mask); it does not weigh them. Each batch's moments are
    centred on the batch's own means and merged into the running ones by
    Chan et al.'s pairwise update, so that long corpora with large means
    keep their digits (raw sums of squares would cancel)."""

    def __init__(self, targets=1, name="corpus_ccc", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if isinstance(targets, bool) or not isinstance(targets, int) or targets < 1:
            raise ValueError(f"targets must be an int >= 1; got {targets!r}")
        self.targets = targets
        names = ("count", "mean_true", "mean_pred", "m2_true", "m2_pred", "co_moment")
        self._moments = [
            self.add_variable(shape=(targets,), initializer="zeros", dtype=self.dtype, name=n) for n in names
        ]

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), self.dtype)
        y_true = ops.cast(ops.convert_to_tensor(y_true), self.dtype)
        if len(y_pred.shape) == 2:
            y_pred, y_true = ops.expand_dims(y_pred, -1), ops.expand_dims(y_true, -1)
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != self.targets:
            raise ValueError(f"CorpusCCC(targets={self.targets}) got y_pred of shape {tuple(y_pred.shape)}")
        valid = ops.ones_like(y_pred[..., 0])
        if sample_weight is not None:
            weight = ops.convert_to_tensor(sample_weight)
            if len(weight.shape) == 1:
                weight = ops.expand_dims(weight, -1)
            valid = ops.cast(ops.not_equal(weight, 0), self.dtype) * valid
        valid = ops.expand_dims(valid, -1)  # (batch, steps, 1): every target
        count = ops.sum(valid * ops.ones_like(y_pred), axis=(0, 1))
        mean_true = ops.divide_no_nan(ops.sum(valid * y_true, axis=(0, 1)), count)
        mean_pred = ops.divide_no_nan(ops.sum(valid * y_pred, axis=(0, 1)), count)
        centred_true = valid * (y_true - mean_true)
        centred_pred = valid * (y_pred - mean_pred)
        batch = (
            count,
            mean_true,
            mean_pred,
            ops.sum(centred_true * centred_true, axis=(0, 1)),
            ops.sum(centred_pred * centred_pred, axis=(0, 1)),
            ops.sum(centred_true * centred_pred, axis=(0, 1)),
        )
        n_a, mt_a, mp_a, m2t_a, m2p_a, c_a = (ops.convert_to_tensor(v) for v in self._moments)
        n_b, mt_b, mp_b, m2t_b, m2p_b, c_b = batch
        n = n_a + n_b
        share = ops.divide_no_nan(n_b, n)
        cross = ops.divide_no_nan(n_a * n_b, n)
        d_true, d_pred = mt_b - mt_a, mp_b - mp_a
        merged = (
            n,
            mt_a + d_true * share,
            mp_a + d_pred * share,
            m2t_a + m2t_b + d_true * d_true * cross,
            m2p_a + m2p_b + d_pred * d_pred * cross,
            c_a + c_b + d_true * d_pred * cross,
        )
        for variable, value in zip(self._moments, merged):
            variable.assign(value)

    def result_per_target(self):
        """The corpus CCC of each target, shape (targets,)."""
        n, mean_true, mean_pred, m2_true, m2_pred, co_moment = (ops.convert_to_tensor(v) for v in self._moments)
        gap = mean_true - mean_pred
        return ops.divide_no_nan(2 * co_moment, m2_true + m2_pred + n * gap * gap)

    def result(self):
        return ops.mean(self.result_per_target())

    def reset_state(self):
        for variable in self._moments:
            variable.assign(ops.zeros((self.targets,), self.dtype))

    def get_config(self):
        return {**super().get_config(), "targets": self.targets}
