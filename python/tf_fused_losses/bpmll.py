"""BP-MLL pairwise ranking loss (Zhang & Zhou 2006): the functional form, on
any framework's arrays, and the Keras loss `BPMLLLoss`.

Importing this module imports no framework: the TF path lives in `_tf_ops`,
the JAX one in `_jax_ops`, the keras.ops forms in `_keras_ops`, the Keras
class in `losses` (reached through this module's `BPMLLLoss`)."""

from . import _dispatch
from ._loader import ops, use_pure_tf  # noqa: F401  (the TF path looks them up here)
from ._validation import check_float_dtype, check_label_dtype, check_rank, check_same_shape

__all__ = ["BPMLLLoss", "bpmll_loss"]


@_dispatch.not_converted
def bpmll_loss(y_true, y_pred, name=None):
    """Per-sample BP-MLL loss, shape (batch,), in y_pred's dtype.

    loss_i = mean over (positive k, negative l) pairs of exp(c_il - c_ik)
           = (sum_k y_ik e^{-c_ik}) (sum_l (1-y_il) e^{c_il}) / (|Y_i| |Ybar_i|)

    Args:
      y_true: (batch, labels) labels in [0, 1]: float (soft labels allowed),
        int32, int64, uint8 or bool. Read as-is, without a cast.
      y_pred: (batch, labels) logits: float16, bfloat16, float32 or float64.

    Rows with no positive or no negative label give loss 0 and gradient 0.
    The gradient with respect to y_true is None (zero): labels are constants.

    Runs on the arrays' framework: TensorFlow tensors by the fused op
    (XLA-compiled functions run it as a custom call; with
    TF_FUSED_LOSSES_PY_OPS=1 by `reference.bpmll_loss_pure_tf`), JAX arrays
    by the fused XLA custom call (the keras.ops form where it cannot load,
    or with TF_FUSED_LOSSES_PY_OPS=1), torch tensors and others by the
    keras.ops form; numpy arrays by the Keras backend's. `name` names the TF
    name scope.
    """
    framework = _dispatch.choose(y_pred, y_true)
    if framework == _dispatch.TENSORFLOW:
        return _dispatch.tf_module().bpmll_loss(y_true, y_pred, name=name)
    return backend_loss(framework, y_true, y_pred)


@_dispatch.not_converted
def backend_loss(framework, y_true, y_pred):
    """BP-MLL off the TF path: the fused JAX op or the keras.ops form."""
    y_true, y_pred = _dispatch.as_arrays(framework, y_true, y_pred)
    check_float_dtype("y_pred", y_pred)
    check_label_dtype("y_true", y_true)
    check_rank("y_pred", y_pred, (2,), "(batch, labels)")
    check_rank("y_true", y_true, (2,), "(batch, labels)")
    check_same_shape(y_true, y_pred)
    if framework == _dispatch.JAX and not use_pure_tf():
        fused = _dispatch.jax_fused()
        if fused is not None:
            return fused.bpmll_loss(y_true, y_pred)
    return _dispatch.keras_forms_for(framework).bpmll_loss(y_true, y_pred)


def __getattr__(name):
    if name == "BPMLLLoss":
        from .losses import BPMLLLoss

        return BPMLLLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
