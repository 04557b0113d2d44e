"""Trace-time checks of the fused BP-MLL head's arguments and its default
chunk size, one wording for the TF and JAX heads (_head_tf, _head_jax);
framework-free, as _validation."""

import numpy as np

from ._validation import (
    check_float_dtype,
    is_numeric,
    check_label_dtype,
    check_rank,
    dims_compatible,
    dtype_name,
    shape_text,
    static_dims,
)

# float32 scratch a chunk may hold: the forward keeps about three
# (batch, chunk) arrays alive at once (the chunk's logits and its two sets of
# log-domain terms), the backward about as many (logits, dlogits, labels).
DEFAULT_SCRATCH_BYTES = 64 << 20
_LIVE_CHUNK_ARRAYS = 3
ID_DTYPES = ("int32", "int64")
# Keras' reduction names (keras.losses.Loss): "mean" is "sum_over_batch_size".
REDUCTIONS = (None, "none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight")


def check_head_arguments(labels, hidden, kernel, bias, label_ids):
    """hidden (batch, d) and kernel (d, labels) floating with a known label
    count, bias (labels,) floating or None, labels (batch, labels) of a
    label dtype or, with label_ids, (batch, K) int32/int64 ids. Returns the
    label count."""
    check_float_dtype("hidden", hidden)
    check_float_dtype("kernel", kernel)
    check_rank("hidden", hidden, (2,), "(batch, d)")
    check_rank("kernel", kernel, (2,), "(d, labels)")
    kernel_dims = static_dims(kernel)
    if kernel_dims is None or kernel_dims[1] is None:
        raise ValueError(f"kernel's label count must be known when the head is traced; got shape {shape_text(kernel)}")
    hidden_dims = static_dims(hidden)
    if hidden_dims is not None and not dims_compatible(hidden_dims[1:], kernel_dims[:1]):
        raise ValueError(
            f"hidden (batch, d) and kernel (d, labels) must agree on d; got hidden {shape_text(hidden)} and "
            f"kernel {shape_text(kernel)}"
        )
    if bias is not None:
        check_float_dtype("bias", bias)
        if not dims_compatible(static_dims(bias), kernel_dims[1:]):
            raise ValueError(f"bias must have shape ({kernel_dims[1]},); got {shape_text(bias)}")
    if label_ids:
        got = dtype_name(labels.dtype)
        if got not in ID_DTYPES:
            raise ValueError(f"label ids must be int32 or int64; got dtype {got}")
        check_rank("label ids", labels, (2,), "(batch, ids) padded with -1")
    else:
        check_label_dtype("labels", labels)
        check_rank("labels", labels, (2,), "(batch, labels)")
        label_dims = static_dims(labels)
        if label_dims is not None and not dims_compatible(label_dims[1:], kernel_dims[1:]):
            raise ValueError(
                f"labels (batch, labels) and kernel (d, labels) must agree on labels; got labels "
                f"{shape_text(labels)} and kernel {shape_text(kernel)}"
            )
    label_dims = static_dims(labels)
    if hidden_dims is not None and label_dims is not None and not dims_compatible(label_dims[:1], hidden_dims[:1]):
        raise ValueError(
            f"labels and hidden must have the same batch size; got labels {shape_text(labels)} and hidden "
            f"{shape_text(hidden)}"
        )
    return kernel_dims[1]


def bad_id_message(row, position, value, label_count, sign=None):
    """The ids op's wording (BpmllBadLabelIdMessage, cc/core/bpmll/
    bpmll_ids_cpu.cc) for an id that is neither a label nor the padding:
    one for a negative id, one for an id past the labels. sign (-1 or 1)
    picks the wording where value is a placeholder, not a number."""
    negative = value < 0 if sign is None else sign < 0
    if negative:
        return f"label_ids[{row}, {position}] = {value} is neither a label id in [0, {label_count}) nor the padding -1"
    return f"label_ids[{row}, {position}] = {value} is outside [0, {label_count})"


def check_concrete_ids(ids, label_count):
    """Raises ValueError naming the first id (row-major) of the (batch, K)
    numpy array that is neither in [0, label_count) nor -1."""
    bad = (ids != -1) & ((ids < 0) | (ids >= label_count))
    if bad.any():
        row, position = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(bad_id_message(row, position, int(ids[row, position]), label_count))


def chunk_width(chunk_size, batch, label_count):
    """The label chunk's width: chunk_size where given (a positive int),
    else what DEFAULT_SCRATCH_BYTES of float32 scratch allows at this batch
    (batch unknown when traced: taken as 1024), at least 128 and at most the
    label count."""
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")
        return min(chunk_size, label_count) if label_count else 1
    rows = batch if batch else 1024
    width = DEFAULT_SCRATCH_BYTES // (4 * rows * _LIVE_CHUNK_ARRAYS)
    return max(1, min(max(width, 128), label_count))


def check_reduction(reduction, sample_weight, batch):
    """The reduction as the heads branch on it: None (per row, "none"
    included), "sum", "sum_over_batch_size" ("mean" included) or
    "mean_with_sample_weight"; sample_weight None, a scalar or (batch,) of a
    numeric dtype."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}")
    if sample_weight is not None:
        got = dtype_name(sample_weight.dtype)
        if not is_numeric(got):
            raise ValueError(f"sample_weight must be numeric; got dtype {got}")
        check_rank("sample_weight", sample_weight, (0, 1), "() or (batch,)")
        dims = static_dims(sample_weight)
        if dims and not dims_compatible(dims, (batch,)):
            raise ValueError(f"sample_weight must have shape () or ({batch},); got {shape_text(sample_weight)}")
    if reduction == "none":
        return None
    return "sum_over_batch_size" if reduction == "mean" else reduction


def reduction_divisor(reduction, has_weights):
    """What a reduction divides the weighted sum of the per-row loss by, as
    keras.losses.Loss does (a division by 0 gives 0): None without a
    reduction, "one" for "sum", "weight_sum" for "mean_with_sample_weight"
    with weights, else "batch_size"."""
    if reduction is None:
        return None
    if reduction == "sum":
        return "one"
    return "weight_sum" if reduction == "mean_with_sample_weight" and has_weights else "batch_size"
