"""The fused label-id BP-MLL op on TensorFlow (FusedBpmllIdsLoss) and its
registered gradient; the public API builds on `bpmll_loss_from_padded_ids`.

The op takes each row's positive labels as ids, padded with -1, and gives the
loss and y_pred gradient of FusedBpmllLoss on the equivalent 0/1 matrix, bit
for bit, without building it. Its second output is that gradient, which the
backward scales with the dense op's FusedBpmllLossGrad, as for FusedBpmllLoss.
Importing this module registers the gradient.
"""

import tensorflow as tf

from . import _loader
from ._validation import check_padded_ids_arguments


def bpmll_loss_from_padded_ids(label_ids, y_pred, name=None):
    """Per-row BP-MLL loss, shape (batch,), in y_pred's dtype, from label ids.

    label_ids: (batch, K) int32 or int64, each row's positive labels in any
    order, -1 as padding anywhere in the row; a repeated id counts once.
    y_pred: (batch, labels) logits, float16/bfloat16/float32/float64.
    Equals `bpmll_loss` on the 0/1 matrix with ones at the ids, bit for bit;
    differentiable in y_pred. An id outside [0, labels) other than -1 raises
    InvalidArgumentError naming it (label_ids[i, k]).
    """
    with tf.name_scope(name or "bpmll_loss_from_ids"):
        y_pred = tf.convert_to_tensor(y_pred)
        label_ids = tf.convert_to_tensor(label_ids)
        check_padded_ids_arguments(label_ids, y_pred)
        loss, _ = _loader.ops().fused_bpmll_ids_loss(label_ids=label_ids, y_pred=y_pred)
        return loss


@tf.RegisterGradient("FusedBpmllIdsLoss")
def _fused_bpmll_ids_loss_grad(op, grad_loss, unused_grad_of_grad):
    # The op wrote d loss_i / d y_pred as the dense op does: the dense
    # backward scales its rows. Ids get no gradient.
    return [None, _loader.ops().fused_bpmll_loss_grad(grad_loss=grad_loss, cached_grad=op.outputs[1])]
