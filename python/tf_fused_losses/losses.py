"""The Keras losses: `BPMLLLoss`, `CorrelationLoss`, `CCCLoss`, on every
Keras backend.

`call` runs the path of the Keras backend (`keras.backend.backend()`): the
fused TF ops on tensorflow, the fused JAX custom calls on jax (the keras.ops
forms where they cannot load), the keras.ops forms elsewhere (torch, ...).
Importing this module imports Keras, and so its backend's framework, and no
other framework. Keras finds the classes under the registered names
"tf_fused_losses>BPMLLLoss", ... once this module is imported (importing
`tf_fused_losses` sees to that as soon as Keras is imported)."""

import threading

import keras

from . import _dispatch
from ._validation import check_epsilon

try:
    from keras.src.backend import get_keras_mask as _get_keras_mask
except ImportError:  # the attribute Keras 3 keeps the mask in

    def _get_keras_mask(x):
        return getattr(x, "_keras_mask", None)


__all__ = ["BPMLLLoss", "CCCLoss", "CorrelationLoss"]

# Saved .keras files name the classes by their registered names
# ("tf_fused_losses>BPMLLLoss"), which Keras looks up before the "module"
# field, so files saved when the classes said they lived in
# `tf_fused_losses.bpmll` / `.correlation` load the same.


def _framework():
    return _dispatch.backend_framework(keras.backend.backend())


def _backend(*arrays):
    """The backend module for the Keras backend's arrays (`_dispatch`)."""
    return _dispatch.backend_for(_framework(), arrays)


# The label ids of the call being computed on this thread, from the loss's
# __call__ to its call (see BPMLLLoss.__call__).
_call_ids = threading.local()


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class BPMLLLoss(keras.losses.Loss):
    """Keras loss for multi-label ranking (BP-MLL; see `bpmll_loss`). Works
    with any reduction and with sample_weight of shape (batch,).

    With label_ids=True, y_true holds each row's positive label ids instead
    of dense labels (see `bpmll_loss_from_ids`): a padded (batch, K) int
    array with -1 as padding on any backend, or a tf.RaggedTensor /
    tf.SparseTensor on TensorFlow, e.g. straight from a tf.data pipeline."""

    def __init__(self, reduction="sum_over_batch_size", name="bpmll_loss", dtype=None, label_ids=False):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if not isinstance(label_ids, bool):
            raise ValueError(f"label_ids must be True or False; got {label_ids!r}")
        self.label_ids = label_ids

    def __call__(self, y_true, y_pred, sample_weight=None):
        if not self.label_ids:
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        # Loss.__call__ converts y_true to the loss's float dtype, which would
        # turn ids into floats and a ragged or sparse tensor into an error:
        # the ids reach call() beside it instead, as they came.
        outer = getattr(_call_ids, "ids", None)
        _call_ids.ids = y_true
        try:
            return super().__call__(y_pred, y_pred, sample_weight=sample_weight)
        finally:
            _call_ids.ids = outer

    def call(self, y_true, y_pred):
        if self.label_ids:
            ids = _call_ids.ids
            return _backend(y_pred, ids).bpmll_loss_from_ids(ids, y_pred)
        return _backend(y_pred, y_true).bpmll_loss(y_true, y_pred)

    def get_config(self):
        return {**super().get_config(), "label_ids": self.label_ids}


# The Keras mask of the y_pred whose loss is being computed on this thread,
# from the loss's __call__ to its call (MirroredStrategy traces replicas in
# threads of their own, so this cannot live on the loss object).
_call_mask = threading.local()


class _SequenceCorrelationLoss(keras.losses.Loss):
    """Shared Keras plumbing: epsilon in the config, and the Keras mask of
    y_pred (e.g. from a Masking layer) passed to the loss."""

    _concordance = None

    def __init__(self, epsilon=1e-7, reduction="sum_over_batch_size", name=None, dtype=None, corpus=False):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.epsilon = check_epsilon(epsilon)
        if not isinstance(corpus, bool):
            raise ValueError(f"corpus must be True or False; got {corpus!r}")
        self.corpus = corpus

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Loss.__call__ converts y_pred before call(), which can drop the
        # mask (on JAX, Keras keeps masks by the array's id): read it first.
        # Keras still applies sample_weight, the mask and the reduction to
        # the per-step losses (masked steps are 0).
        outer_mask = getattr(_call_mask, "mask", None)
        _call_mask.mask = _get_keras_mask(y_pred)
        if sample_weight is not None:
            sample_weight = _per_step_weights(sample_weight)
        try:
            return super().__call__(y_true, y_pred, sample_weight=sample_weight)
        finally:
            _call_mask.mask = outer_mask

    def call(self, y_true, y_pred):
        mask = getattr(_call_mask, "mask", None)
        loss = _backend(y_pred, y_true, mask).correlation_loss(
            y_true, y_pred, epsilon=self.epsilon, mask=mask, concordance=self._concordance, corpus=self.corpus
        )
        if len(loss.shape) == 3:
            # (batch, steps, targets): the targets' mean per step, so that
            # Keras applies a (batch, steps) mask and sample weights as for
            # one target, and every target weighs the same in the scalar.
            loss = keras.ops.mean(loss, axis=-1)
        return loss

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon, "corpus": self.corpus}


def _per_step_weights(sample_weight):
    """(batch,) weights every step of a row; Keras would only broadcast them
    against (batch, 1) losses."""
    if _framework() == _dispatch.TENSORFLOW:
        return _backend().sequence_sample_weight(sample_weight)
    sample_weight = keras.ops.convert_to_tensor(sample_weight)
    if len(sample_weight.shape) == 1:
        sample_weight = keras.ops.expand_dims(sample_weight, -1)
    return sample_weight


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class CorrelationLoss(_SequenceCorrelationLoss):
    """Keras loss: per-step Pearson correlation loss (see `correlation_loss`)
    for (batch, steps) or (batch, steps, targets) targets. sample_weight may
    be (batch,) or (batch, steps); a Keras mask on y_pred restricts each
    row's moments to its valid steps; corpus=True correlates each target
    over the whole batch's valid steps (docs/reduction.md: how the per-step
    loss, the mask and the reduction make the scalar)."""

    _concordance = False

    def __init__(
        self, epsilon=1e-7, reduction="sum_over_batch_size", name="correlation_loss", dtype=None, corpus=False
    ):
        super().__init__(epsilon=epsilon, reduction=reduction, name=name, dtype=dtype, corpus=corpus)


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class CCCLoss(_SequenceCorrelationLoss):
    """Keras loss: per-step concordance correlation (CCC) loss (see
    `ccc_loss`); same conventions as `CorrelationLoss`."""

    _concordance = True

    def __init__(self, epsilon=1e-7, reduction="sum_over_batch_size", name="ccc_loss", dtype=None, corpus=False):
        super().__init__(epsilon=epsilon, reduction=reduction, name=name, dtype=dtype, corpus=corpus)
