"""Per-step Pearson correlation and CCC losses for sequence labelling: the
functional forms, on any framework's arrays, and the Keras losses
`CorrelationLoss` and `CCCLoss`.

Importing this module imports no framework: the TF path lives in `_tf_ops`,
the JAX one in `_jax_ops`, the keras.ops forms in `_keras_ops`, the Keras
classes in `losses` (reached through this module's `CorrelationLoss` and
`CCCLoss`)."""

from . import _dispatch
from ._loader import ops, use_pure_tf  # noqa: F401  (the TF path looks them up here)
from ._validation import check_epsilon, check_float_dtype, dims_compatible, dtype_name, is_numeric, rank_of, shape_text, static_dims

__all__ = ["CCCLoss", "CorrelationLoss", "ccc_loss", "correlation_loss"]

LAYOUT = "(batch, steps) or (batch, steps, 1)"


@_dispatch.not_converted
def correlation_loss(y_true, y_pred, epsilon=1e-7, mask=None, name=None):
    """Per-step Pearson correlation loss, shape (batch, steps), in y_pred's dtype.

        loss_t = 1 - (x_t - mean x)(y_t - mean y) / (std x * std y + epsilon)

    with x = y_pred, y = y_true and population moments over the (valid) steps
    of each row, so that the mean over steps of 1 - loss_t is Pearson's r.
    Equal to the seed formula `reference.correlation_loss` wherever that is
    finite.

    Args:
      y_true: (batch, steps) or (batch, steps, 1); cast to y_pred's dtype.
      y_pred: (batch, steps) or (batch, steps, 1): float16, bfloat16,
        float32 or float64.
      epsilon: Python float >= 0 added to the denominator.
      mask: optional (batch, steps), bool or numeric, nonzero on valid steps.
        Moments use the valid steps only; masked steps get loss 0 and
        gradient 0.

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
    return _sequence_loss(y_true, y_pred, epsilon, mask, False, name)


@_dispatch.not_converted
def ccc_loss(y_true, y_pred, epsilon=1e-7, mask=None, name=None):
    """Per-step concordance correlation coefficient (CCC) loss, shape
    (batch, steps), in y_pred's dtype.

        loss_t = 1 - 2 (x_t - mean x)(y_t - mean y) / (var x + var y + (mean x - mean y)^2 + epsilon)

    so that the mean over steps of 1 - loss_t is Lin's CCC (AVEC baselines).
    Arguments and paths as `correlation_loss`. The denominator is at least
    epsilon, so every row has its exact gradient; a row with no valid step
    gives loss 0 and gradient 0. Pure-TF fallback:
    `reference.ccc_loss_pure_tf`.
    """
    return _sequence_loss(y_true, y_pred, epsilon, mask, True, name)


@_dispatch.not_converted
def _sequence_loss(y_true, y_pred, epsilon, mask, concordance, name):
    framework = _dispatch.choose(y_pred, y_true, mask)
    if framework == _dispatch.TENSORFLOW:
        return _dispatch.tf_module().sequence_loss(y_true, y_pred, epsilon, mask, concordance, name=name)
    return backend_loss(framework, y_true, y_pred, epsilon, mask, concordance)


def _batch_steps(name, t):
    """The static (batch, steps) of a (batch, steps[, 1]) input, checked."""
    dims = static_dims(t)
    if dims is None:
        return (None, None)
    if len(dims) not in (2, 3) or (len(dims) == 3 and dims[2] not in (None, 1)):
        raise ValueError(f"{name} must be {LAYOUT}; got shape {shape_text(t)}")
    return dims[:2]


@_dispatch.not_converted
def backend_loss(framework, y_true, y_pred, epsilon, mask, concordance):
    """Pearson or CCC off the TF path: the fused JAX ops or the keras.ops
    forms, after the TF path's checks (with the same messages)."""
    y_true, y_pred = _dispatch.as_arrays(framework, y_true, y_pred)
    check_float_dtype("y_pred", y_pred)
    if not is_numeric(dtype_name(y_true.dtype)):
        raise ValueError(f"y_true must be numeric; got dtype {dtype_name(y_true.dtype)}")
    true_steps = _batch_steps("y_true", y_true)
    pred_steps = _batch_steps("y_pred", y_pred)
    if not dims_compatible(true_steps, pred_steps):
        raise ValueError(
            f"y_true and y_pred must have the same (batch, steps); got y_true {shape_text(y_true)} and y_pred "
            f"{shape_text(y_pred)}"
        )
    batch_steps = tuple(a if a is not None else b for a, b in zip(true_steps, pred_steps))
    epsilon = check_epsilon(epsilon)
    if mask is not None:
        (mask,) = _dispatch.as_arrays(framework, mask)
        if not is_numeric(dtype_name(mask.dtype)):
            raise ValueError(f"mask must be bool or numeric (nonzero = valid step); got dtype {dtype_name(mask.dtype)}")
        if rank_of(mask) != 2 or not dims_compatible(static_dims(mask), batch_steps):
            raise ValueError(f"mask must have shape (batch, steps) = {batch_steps}; got shape {shape_text(mask)}")
    if framework == _dispatch.JAX and not use_pure_tf():
        fused = _dispatch.jax_fused()
        if fused is not None:
            return fused.correlation_loss(y_true, y_pred, epsilon=epsilon, mask=mask, concordance=concordance)
    return _dispatch.keras_forms_for(framework).correlation_loss(
        y_true, y_pred, epsilon=epsilon, mask=mask, concordance=concordance
    )


def __getattr__(name):
    if name in ("CorrelationLoss", "CCCLoss"):
        from . import losses

        return getattr(losses, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
