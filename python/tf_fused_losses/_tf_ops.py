"""The TensorFlow backend: the fused ops, the gradients registered for them,
and the pure-TF forms (`_tf_pure`) where the fused ops cannot run
(TF_FUSED_LOSSES_PY_OPS=1, or inside XLA where the frontend for this TF
minor has no lowerings: `_loader.use_pure_tf`).

Imported only when TensorFlow is used (a TF tensor reaches a loss, a Keras
loss runs on the tensorflow backend, or `load_ops()` is called); importing
it registers the ops' gradients, before any of the ops can run. The op
library is looked up through this module's `ops` at each call, so that
tests can record the op calls by replacing it here.
"""

import tensorflow as tf

from . import _ids_tf, _loader, _tf_pure
from ._loader import use_pure_tf
from ._sequence_rows import ArrayFunctions, to_rows
from ._validation import check_bpmll_arguments, check_padded_ids_arguments, check_sequence_arguments


def ops():
    """The loaded op library (loaded on first use)."""
    return _loader.ops()


def load_ops() -> None:
    """Loads the op library now and registers its ops with TensorFlow, and
    their gradients.

    The losses do this on their first call. Call it yourself before
    `tf.saved_model.load` of a SavedModel whose graphs hold the fused ops:
    TensorFlow needs the ops registered to load them (and their gradients to
    differentiate them). Raises RuntimeError, saying why, where the library
    cannot load (see PURE_TF_ENV)."""
    ops()


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def bpmll_loss(y_true, y_pred, name=None):
    """`tf_fused_losses.bpmll_loss` on TensorFlow; `name` names the scope."""
    with tf.name_scope(name or "bpmll_loss"):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.convert_to_tensor(y_true)
        check_bpmll_arguments(y_true, y_pred)
        if use_pure_tf():
            return _tf_pure.bpmll_loss_pure_tf(y_true, y_pred)
        loss, _ = ops().fused_bpmll_loss(y_true=y_true, y_pred=y_pred)
        return loss


@tf.RegisterGradient("FusedBpmllLoss")
def _fused_bpmll_loss_grad(op, grad_loss, unused_grad_of_grad):
    # The op already wrote d loss_i / d y_pred; this scales its rows, in place
    # where TF allows. Second derivatives are not provided.
    return [None, ops().fused_bpmll_loss_grad(grad_loss=grad_loss, cached_grad=op.outputs[1])]


def bpmll_loss_from_ids(label_ids, y_pred, name=None):
    """`tf_fused_losses.bpmll_loss_from_ids` on TensorFlow: label_ids a
    tf.RaggedTensor (batch, None), a tf.SparseTensor (batch, K) whose values
    are ids, or a padded (batch, K) tensor (-1 = padding), int32 or int64.
    Runs the fused ids op (`_ids_tf`); the pure path densifies the ids."""
    with tf.name_scope(name or "bpmll_loss_from_ids"):
        label_ids = padded_ids(label_ids)
        y_pred = tf.convert_to_tensor(y_pred)
        check_padded_ids_arguments(label_ids, y_pred)
        if use_pure_tf():
            return _tf_pure.bpmll_loss_pure_tf(_tf_pure.labels_from_padded_ids(label_ids, tf.shape(y_pred)[1]), y_pred)
        return _ids_tf.bpmll_loss_from_padded_ids(label_ids, y_pred)


def padded_ids(label_ids):
    """Ragged or sparse ids as a padded (batch, K) tensor, -1 as padding (K:
    the longest row); a padded tensor as it is. Not inside XLA, which
    compiles neither ragged nor sparse tensors: there the input pipeline
    pads (`tf.data`'s `.map(lambda x, y: (x, y.to_tensor(-1)))`)."""
    if isinstance(label_ids, (tf.RaggedTensor, tf.SparseTensor)) and _loader.in_xla_context():
        kind = type(label_ids).__name__
        raise ValueError(
            f"label_ids as a tf.{kind} cannot be padded inside XLA (jit_compile=True): XLA compiles no {kind}. "
            f"Pad the ids to a (batch, K) int tensor with -1 before the compiled step, e.g. in tf.data: "
            f"dataset.map(lambda x, ids: (x, ids.to_tensor(default_value=-1))) for ragged ids, or compile "
            f"without XLA (model.compile(..., jit_compile=False))."
        )
    if isinstance(label_ids, tf.RaggedTensor):
        if label_ids.ragged_rank != 1 or label_ids.shape.rank != 2:
            raise ValueError(f"label_ids as a tf.RaggedTensor must be (batch, None); got shape {label_ids.shape}")
        return label_ids.to_tensor(default_value=tf.constant(-1, label_ids.dtype))
    if isinstance(label_ids, tf.SparseTensor):
        if label_ids.shape.rank != 2:
            raise ValueError(f"label_ids as a tf.SparseTensor must be (batch, K); got shape {label_ids.shape}")
        return tf.sparse.to_dense(tf.sparse.reorder(label_ids), default_value=tf.constant(-1, label_ids.dtype))
    return tf.convert_to_tensor(label_ids)


# --------------------------------------------------------------------------
# Correlation and CCC
# --------------------------------------------------------------------------


def correlation_loss(y_true, y_pred, *, epsilon, mask, concordance, corpus=False, name=None):
    """`tf_fused_losses.correlation_loss` (concordance False) or `ccc_loss`
    (True) on TensorFlow; `name` names the scope."""
    with tf.name_scope(name or ("ccc_loss" if concordance else "correlation_loss")):
        y_pred = tf.convert_to_tensor(y_pred)
        y_true = tf.convert_to_tensor(y_true)
        if mask is not None:
            mask = tf.convert_to_tensor(mask)
        epsilon, _ = check_sequence_arguments(y_true, y_pred, epsilon, mask, corpus)
        if y_true.dtype != y_pred.dtype:
            y_true = tf.cast(y_true, y_pred.dtype)
        if mask is not None and not mask.dtype.is_bool:
            mask = tf.not_equal(mask, tf.zeros([], mask.dtype))  # nonzero = valid
        if y_true.shape.rank is None or y_pred.shape.rank is None:
            # The layout is known only at run time: the op takes (batch,
            # steps[, 1]) as it comes and checks it then.
            if corpus:
                raise ValueError("corpus=True needs y_true and y_pred of known rank (the rows are laid out at trace time)")
            back = tf.identity
        else:
            (y_true, y_pred, mask), back = to_rows(_ARRAY_FUNCTIONS, y_true, y_pred, mask, corpus)
        if use_pure_tf():
            pure = _tf_pure.ccc_loss_pure_tf if concordance else _tf_pure.correlation_loss_pure_tf
            return back(pure(y_true, y_pred, epsilon=epsilon, mask=mask))
        if mask is None:
            mask = tf.zeros([0], tf.bool)  # the op's "every step is valid"
        loss, _ = ops().fused_correlation_loss(
            y_true=y_true, y_pred=y_pred, mask=mask, concordance=concordance, epsilon=epsilon
        )
        return back(loss)


def _dims(x):
    """Static dimensions where known, else the dynamic ones (tf.reshape
    takes a mix)."""
    dynamic = tf.shape(x)
    return [d if d is not None else dynamic[i] for i, d in enumerate(x.shape.as_list())]


_ARRAY_FUNCTIONS = ArrayFunctions(tf.transpose, tf.reshape, tf.broadcast_to, _dims)


@tf.RegisterGradient("FusedCorrelationLoss")
def _fused_correlation_loss_grad(op, grad_loss, unused_grad_row_stats):
    # row_stats is an internal output; second derivatives are not provided.
    y_true, y_pred, mask = op.inputs
    # A GradientTape says which inputs it needs no gradient for: in a training
    # step y_true is a constant, and its gradient would be a (batch, steps)
    # tensor computed and written for nothing. (tf.gradients sets no such
    # attribute: both are computed.)
    want_grad_y_true = 0 not in (getattr(op, "skip_input_indices", None) or ())
    grad_y_true, grad_y_pred = ops().fused_correlation_loss_grad(
        grad_loss=grad_loss,
        y_true=y_true,
        y_pred=y_pred,
        mask=mask,
        row_stats=op.outputs[1],
        concordance=op.get_attr("concordance"),
        epsilon=op.get_attr("epsilon"),
        compute_grad_y_true=want_grad_y_true,
    )
    return [grad_y_true if want_grad_y_true else None, grad_y_pred, None]


def sequence_sample_weight(sample_weight):
    """A Keras loss's sample_weight for (batch, steps) losses: (batch,)
    weighs every step of a row (Keras would only broadcast it against
    (batch, 1) losses)."""
    sample_weight = tf.convert_to_tensor(sample_weight)
    if sample_weight.shape.rank == 1:
        sample_weight = sample_weight[:, None]
    return sample_weight
