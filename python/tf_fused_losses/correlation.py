"""Per-step Pearson correlation and CCC losses for sequence labelling: the
functional forms, on any framework's arrays. The Keras losses are
`losses.CorrelationLoss` and `losses.CCCLoss`.

Importing this module imports no framework: `_dispatch` picks the backend
module (`_tf_ops`, `_jax_ops`, `_keras_ops`) from the arrays."""

from __future__ import annotations

from typing import Any

from . import _dispatch

__all__ = ["ccc_loss", "correlation_loss"]


@_dispatch.not_converted
def correlation_loss(
    y_true: Any,
    y_pred: Any,
    epsilon: float = 1e-7,
    mask: Any = None,
    name: str | None = None,
    *,
    corpus: bool = False,
) -> Any:
    """Per-step Pearson correlation loss, shape (batch, steps) (or (batch,
    steps, targets)), in y_pred's dtype.

        loss_t = 1 - (x_t - mean x)(y_t - mean y) / (std x * std y + epsilon)

    with x = y_pred, y = y_true and population moments over the (valid) steps
    of each row, so that the mean over steps of 1 - loss_t is Pearson's r.
    Equal to the seed formula `reference.correlation_loss` wherever that is
    finite.

    Args:
      y_true: (batch, steps) or (batch, steps, targets); cast to y_pred's
        dtype.
      y_pred: (batch, steps) or (batch, steps, targets): float16, bfloat16,
        float32 or float64. Each target (arousal and valence, say) is
        correlated on its own; (batch, steps, 1) gives a (batch, steps) loss.
      epsilon: a real scalar >= 0 (Python, numpy or 0-d array; known at
        trace time) added to the denominator.
      mask: optional (batch, steps), bool or numeric, nonzero on valid steps
        (of every target). Moments use the valid steps only; masked steps
        get loss 0 and gradient 0.
      corpus: False: one correlation per sequence (row) and target. True:
        one per target over all valid steps of all rows, as AVEC scores CCC
        over the concatenated corpus; the mean of 1 - loss over the valid
        steps is then the corpus coefficient.

    Rows with fewer than 2 valid steps or a constant y_true or y_pred get
    loss 1 on their valid steps and gradient 0 (r is undefined there; the
    epsilon-regularised formula's gradient would be of order 1/epsilon).
    Gradients flow to both y_true and y_pred.

    Runs on the arrays' framework: TensorFlow tensors by a fused op (moments
    and loss in one kernel, both gradients in another; XLA-compiled
    functions run them as custom calls; with TF_FUSED_LOSSES_PY_OPS=1 by
    `reference.correlation_loss_pure_tf`), JAX arrays by the fused XLA custom
    calls (the keras.ops form where they cannot load, or with
    TF_FUSED_LOSSES_PY_OPS=1), torch tensors and others by the keras.ops
    form; numpy arrays by the Keras backend's. `name` names the TF name
    scope.
    """
    return _sequence_loss(y_true, y_pred, epsilon, mask, False, corpus, name)


@_dispatch.not_converted
def ccc_loss(
    y_true: Any,
    y_pred: Any,
    epsilon: float = 1e-7,
    mask: Any = None,
    name: str | None = None,
    *,
    corpus: bool = False,
) -> Any:
    """Per-step concordance correlation coefficient (CCC) loss, shape
    (batch, steps) (or (batch, steps, targets)), in y_pred's dtype.

        loss_t = 1 - 2 (x_t - mean x)(y_t - mean y) / (var x + var y + (mean x - mean y)^2 + epsilon)

    so that the mean over steps of 1 - loss_t is Lin's CCC (AVEC baselines).
    Arguments and paths as `correlation_loss`. The denominator is at least
    epsilon, so every row has its exact gradient; a row with no valid step
    gives loss 0 and gradient 0. Pure-TF fallback:
    `reference.ccc_loss_pure_tf`.
    """
    return _sequence_loss(y_true, y_pred, epsilon, mask, True, corpus, name)


@_dispatch.not_converted
def _sequence_loss(y_true, y_pred, epsilon, mask, concordance, corpus, name):
    backend = _dispatch.backend(y_pred, y_true, mask)
    return backend.correlation_loss(
        y_true, y_pred, epsilon=epsilon, mask=mask, concordance=concordance, corpus=corpus, name=name
    )
