"""Trace-time checks of the label-id BP-MLL arguments, one wording for the
TF and JAX bindings (_ids_tf, _ids_jax); framework-free, as _validation."""

from ._validation import check_float_dtype, check_rank, dims_compatible, dtype_name, shape_text, static_dims

ID_DTYPES = ("int32", "int64")


def check_padded_ids_arguments(label_ids, y_pred):
    """label_ids (batch, K) int32/int64 and y_pred (batch, labels) floating,
    with the same batch size where both are known."""
    check_float_dtype("y_pred", y_pred)
    got = dtype_name(label_ids.dtype)
    if got not in ID_DTYPES:
        raise ValueError(f"label_ids must be int32 or int64; got dtype {got}")
    check_rank("y_pred", y_pred, (2,), "(batch, labels)")
    check_rank("label_ids", label_ids, (2,), "(batch, ids)")
    ids_dims, pred_dims = static_dims(label_ids), static_dims(y_pred)
    if ids_dims is not None and pred_dims is not None and not dims_compatible(ids_dims[:1], pred_dims[:1]):
        raise ValueError(
            f"label_ids and y_pred must have the same batch size; got label_ids {shape_text(label_ids)} and "
            f"y_pred {shape_text(y_pred)}"
        )
