"""Trace-time checks that name the argument, its shape or dtype, and what was expected."""

import tensorflow as tf

FLOAT_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)
LABEL_DTYPES = FLOAT_DTYPES + (tf.int32, tf.int64, tf.uint8, tf.bool)


def _names(dtypes):
    return ", ".join(d.name for d in dtypes)


def check_float_dtype(name, tensor):
    if tensor.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be one of {_names(FLOAT_DTYPES)}; got dtype {tensor.dtype.name}")


def check_label_dtype(name, tensor):
    if tensor.dtype not in LABEL_DTYPES:
        raise ValueError(f"{name} must be one of {_names(LABEL_DTYPES)}; got dtype {tensor.dtype.name}")


def check_rank(name, tensor, ranks, layout):
    rank = tensor.shape.rank
    if rank is not None and rank not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must be rank {expected} {layout}; got shape {tensor.shape}")


def check_same_shape(y_true, y_pred):
    if not y_true.shape.is_compatible_with(y_pred.shape):
        raise ValueError(f"y_true and y_pred must have the same shape; got y_true {y_true.shape} and y_pred {y_pred.shape}")
