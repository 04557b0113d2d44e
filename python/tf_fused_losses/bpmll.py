"""BP-MLL pairwise ranking loss (Zhang & Zhou 2006): the functional form, on
any framework's arrays. The Keras loss is `losses.BPMLLLoss`.

Importing this module imports no framework: `_dispatch` picks the backend
module (`_tf_ops`, `_jax_ops`, `_keras_ops`) from the arrays."""

from __future__ import annotations

from typing import Any

from . import _dispatch

__all__ = ["bpmll_loss", "bpmll_loss_from_ids"]


@_dispatch.not_converted
def bpmll_loss(y_true: Any, y_pred: Any, name: str | None = None) -> Any:
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
    return _dispatch.backend(y_pred, y_true).bpmll_loss(y_true, y_pred, name=name)


@_dispatch.not_converted
def bpmll_loss_from_ids(label_ids: Any, y_pred: Any, name: str | None = None) -> Any:
    """Per-sample BP-MLL loss from each row's positive label ids, shape
    (batch,), in y_pred's dtype: `bpmll_loss` of the 0/1 matrix with ones
    at the ids, without that matrix (extreme multi-label data: at 670,091
    labels a row's ids take bytes where its dense labels take megabytes).

    Args:
      label_ids: the positive labels of each row, as ids in [0, labels):
        a tf.RaggedTensor (batch, None) or a tf.SparseTensor (batch, K)
        whose values are the ids (TensorFlow), or on any framework a padded
        (batch, K) int32/int64 array with -1 as padding. A repeated id
        counts once; the order of a row's ids does not matter.
      y_pred: (batch, labels) logits: float16, bfloat16, float32 or float64.

    Equal to `bpmll_loss` on the dense labels bit for bit on the fused
    paths (TensorFlow, XLA, JAX), and within float rounding on the others.
    An id outside [0, labels) other than the padding raises an error
    naming it (`label_ids[3, 2] = 670091 is outside [0, 670091)`) on the
    CPU; a GPU, and the pure and keras.ops forms, give that row NaN.
    Rows with no positive or no negative label give loss 0 and gradient 0.
    """
    backend = _dispatch.backend(y_pred, label_ids, names=("y_pred", "label_ids"))
    return backend.bpmll_loss_from_ids(label_ids, y_pred, name=name)
