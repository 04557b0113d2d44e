"""BP-MLL pairwise ranking loss (Zhang & Zhou 2006): fused op, gradient, Keras loss."""

import keras
import tensorflow as tf

from . import reference
from ._loader import ops, use_pure_tf
from ._validation import check_float_dtype, check_label_dtype, check_same_shape, check_rank


def bpmll_loss(y_true, y_pred, name=None):
    """Per-sample BP-MLL loss, shape (batch,), in y_pred's dtype.

    loss_i = mean over (positive k, negative l) pairs of exp(c_il - c_ik)
           = (sum_k y_ik e^{-c_ik}) (sum_l (1-y_il) e^{c_il}) / (|Y_i| |Ybar_i|)

    Args:
      y_true: (batch, labels) labels in [0, 1]: float (soft labels allowed),
        int32, int64, uint8 or bool. Read as-is, without a cast.
      y_pred: (batch, labels) logits: float16, bfloat16, float32 or float64.

    Rows with no positive or no negative label give loss 0 and gradient 0.
    The gradient with respect to y_true is None: labels are constants.
    Computed in one pass by the fused op, which XLA-compiled functions run as
    a custom call; with TF_FUSED_LOSSES_PY_OPS=1 by
    `reference.bpmll_loss_pure_tf`.
    """
    with tf.name_scope(name or "bpmll_loss"):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.convert_to_tensor(y_true)
        check_float_dtype("y_pred", y_pred)
        check_label_dtype("y_true", y_true)
        check_rank("y_pred", y_pred, (2,), "(batch, labels)")
        check_rank("y_true", y_true, (2,), "(batch, labels)")
        check_same_shape(y_true, y_pred)
        if use_pure_tf():
            return reference.bpmll_loss_pure_tf(y_true, y_pred)
        loss, _ = ops().fused_bpmll_loss(y_true=y_true, y_pred=y_pred)
        return loss


@tf.RegisterGradient("FusedBpmllLoss")
def _fused_bpmll_loss_grad(op, grad_loss, unused_grad_of_grad):
    # The op already wrote d loss_i / d y_pred; this scales its rows, in place
    # where TF allows. Second derivatives are not provided.
    return [None, ops().fused_bpmll_loss_grad(grad_loss=grad_loss, cached_grad=op.outputs[1])]


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class BPMLLLoss(keras.losses.Loss):
    """Keras loss for multi-label ranking (BP-MLL). Works with any reduction
    and with sample_weight of shape (batch,)."""

    def __init__(self, reduction="sum_over_batch_size", name="bpmll_loss", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        return bpmll_loss(y_true, y_pred)

    def get_config(self):
        return super().get_config()
