"""Trace-time checks that name the argument, its shape or dtype, and what was
expected. Framework-free: they read `.dtype` and `.shape` of TF tensors,
numpy and JAX arrays and torch tensors alike, and say the same on each."""

import math
import numbers

import numpy as np

def not_converted(fn):
    """Marks fn as one of AutoGraph's own artifacts, so that a tf.function
    that calls it runs it as plain Python, unconverted (what
    tf.autograph.experimental.do_not_convert does, without importing TF).
    The checks and the dispatch branch on shapes and dtypes, never on a
    tensor's value, so this changes no graph; it keeps AutoGraph from
    rewriting their Python (`float(x)` into a cast, say)."""
    fn.autograph_info__ = None
    return fn


FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
LABEL_DTYPES = FLOAT_DTYPES + ("int32", "int64", "uint8", "bool")
INTEGER_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


def dtype_name(dtype):
    """"float32", "bfloat16", "bool", ... of a TF, numpy/JAX or torch dtype."""
    name = getattr(dtype, "name", None)
    if isinstance(name, str):
        return name
    return str(dtype).rpartition(".")[2]  # torch.float32 -> float32


def is_floating(name):
    return name in FLOAT_DTYPES


def is_numeric(name):
    """bool, integer or floating (what a mask or the correlation targets may be)."""
    return name == "bool" or name in INTEGER_DTYPES or name in FLOAT_DTYPES


def check_float_dtype(name, tensor):
    got = dtype_name(tensor.dtype)
    if got not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be one of {', '.join(FLOAT_DTYPES)}; got dtype {got}")


def check_label_dtype(name, tensor):
    got = dtype_name(tensor.dtype)
    if got not in LABEL_DTYPES:
        raise ValueError(f"{name} must be one of {', '.join(LABEL_DTYPES)}; got dtype {got}")


def rank_of(tensor):
    """The static rank, None where unknown (a TF tensor's unknown rank)."""
    shape = tensor.shape
    if hasattr(shape, "rank"):  # tf.TensorShape
        return shape.rank
    return len(shape)


def shape_text(tensor):
    """The shape as the messages show it: TF's TensorShape as TF prints it,
    other shapes as a tuple ((3, 4), not torch.Size([3, 4]))."""
    shape = tensor.shape
    return str(shape) if hasattr(shape, "rank") else str(tuple(shape))


def dims_compatible(a, b):
    """Static dimension tuples (None = unknown) that may be equal."""
    if a is None or b is None:
        return True
    return len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b))


def static_dims(tensor):
    """The static dimensions as a tuple (None where unknown), None for an
    unknown rank."""
    shape = tensor.shape
    if hasattr(shape, "rank"):
        return None if shape.rank is None else tuple(shape.as_list())
    return tuple(None if d is None else int(d) for d in shape)


def check_rank(name, tensor, ranks, layout):
    rank = rank_of(tensor)
    if rank is not None and rank not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{name} must be rank {expected} {layout}; got shape {shape_text(tensor)}")


def check_same_shape(y_true, y_pred):
    if not dims_compatible(static_dims(y_true), static_dims(y_pred)):
        raise ValueError(
            f"y_true and y_pred must have the same shape; got y_true {shape_text(y_true)} and y_pred {shape_text(y_pred)}"
        )


@not_converted
def check_epsilon(epsilon):
    """epsilon as a Python float, checked: a real scalar (a Python, numpy or
    0-d framework number; not bool, not an array), finite, >= 0, and at most
    the float32 maximum (the ops' and the FFI handlers' attribute is a
    float32). It is an attribute of the op, so it must be known when the
    call is traced: a traced value is refused."""
    if isinstance(epsilon, (bool, np.bool_)) or dtype_name(getattr(epsilon, "dtype", "float64")) == "bool":
        raise ValueError(f"epsilon must be a real scalar >= 0; got {epsilon!r}")
    if not isinstance(epsilon, numbers.Real):
        shape = getattr(epsilon, "shape", None)
        if shape is None or not hasattr(epsilon, "dtype"):
            raise ValueError(f"epsilon must be a real scalar >= 0; got {type(epsilon).__name__} {epsilon!r}")
        if tuple(shape) != ():
            raise ValueError(f"epsilon must be a scalar, not an array; got shape {shape_text(epsilon)}")
        if dtype_name(epsilon.dtype) not in FLOAT_DTYPES + INTEGER_DTYPES:
            raise ValueError(f"epsilon must be a real scalar >= 0; got dtype {dtype_name(epsilon.dtype)}")
        try:
            epsilon = float(epsilon)
        except Exception as e:  # a traced value (TF symbolic tensor, JAX tracer) has no float yet
            raise ValueError(
                f"epsilon must be known when the loss is traced (it is an attribute of the fused op); got a traced "
                f"{type(epsilon).__name__}. Pass a Python float."
            ) from e
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon!r}")
    if epsilon > FLOAT32_MAX:
        raise ValueError(f"epsilon must be at most {FLOAT32_MAX:.7g} (the float32 maximum); got {epsilon!r}")
    return epsilon


# --------------------------------------------------------------------------
# The arguments of each loss, checked once for every backend
# --------------------------------------------------------------------------

BPMLL_LAYOUT = "(batch, labels)"
SEQUENCE_LAYOUT = "(batch, steps) or (batch, steps, targets)"


@not_converted
def check_bpmll_arguments(y_true, y_pred):
    """BP-MLL's y_true and y_pred (arrays of any framework, converted)."""
    check_float_dtype("y_pred", y_pred)
    check_label_dtype("y_true", y_true)
    check_rank("y_pred", y_pred, (2,), BPMLL_LAYOUT)
    check_rank("y_true", y_true, (2,), BPMLL_LAYOUT)
    check_same_shape(y_true, y_pred)


ID_DTYPES = ("int32", "int64")


@not_converted
def check_padded_ids_arguments(label_ids, y_pred):
    """Label-id BP-MLL's label_ids (batch, K) int32/int64 (-1 = padding) and
    y_pred (batch, labels) floating, with the same batch size where both
    are known. Id values are checked by the kernels (they raise naming the
    element)."""
    check_float_dtype("y_pred", y_pred)
    got = dtype_name(label_ids.dtype)
    if got not in ID_DTYPES:
        raise ValueError(f"label_ids must be int32 or int64; got dtype {got}")
    check_rank("y_pred", y_pred, (2,), BPMLL_LAYOUT)
    check_rank("label_ids", label_ids, (2,), "(batch, ids)")
    ids_dims, pred_dims = static_dims(label_ids), static_dims(y_pred)
    if ids_dims is not None and pred_dims is not None and not dims_compatible(ids_dims[:1], pred_dims[:1]):
        raise ValueError(
            f"label_ids and y_pred must have the same batch size; got label_ids {shape_text(label_ids)} and "
            f"y_pred {shape_text(y_pred)}"
        )


def sequence_dims(name, tensor):
    """The static (batch, steps, targets) of a (batch, steps[, targets])
    input, checked (targets 1 for rank 2; None where unknown)."""
    dims = static_dims(tensor)
    if dims is None:
        return (None, None, None)
    if len(dims) not in (2, 3):
        raise ValueError(f"{name} must be {SEQUENCE_LAYOUT}; got shape {shape_text(tensor)}")
    return (dims[0], dims[1], dims[2] if len(dims) == 3 else 1)


@not_converted
def check_sequence_arguments(y_true, y_pred, epsilon, mask, corpus=False):
    """The correlation losses' arguments (arrays converted, y_true not yet
    cast): returns (epsilon as a float, the static (batch, steps)). A
    (batch, steps) array and a (batch, steps, 1) one go together."""
    check_float_dtype("y_pred", y_pred)
    if not is_numeric(dtype_name(y_true.dtype)):
        raise ValueError(f"y_true must be numeric; got dtype {dtype_name(y_true.dtype)}")
    if not isinstance(corpus, (bool, np.bool_)):
        raise ValueError(f"corpus must be True or False; got {corpus!r}")
    true_dims = sequence_dims("y_true", y_true)
    pred_dims = sequence_dims("y_pred", y_pred)
    if not dims_compatible(true_dims, pred_dims):
        raise ValueError(
            f"y_true and y_pred must have the same (batch, steps) and targets; got y_true {shape_text(y_true)} and "
            f"y_pred {shape_text(y_pred)}"
        )
    batch_steps = tuple(a if a is not None else b for a, b in zip(true_dims[:2], pred_dims[:2]))
    epsilon = check_epsilon(epsilon)
    if mask is not None:
        check_mask(mask, batch_steps)
    return epsilon, batch_steps


def check_mask(mask, batch_steps):
    """A correlation mask: bool or numeric (nonzero = valid), (batch, steps)."""
    if not is_numeric(dtype_name(mask.dtype)):
        raise ValueError(f"mask must be bool or numeric (nonzero = valid step); got dtype {dtype_name(mask.dtype)}")
    rank = rank_of(mask)
    if rank is not None and (rank != 2 or not dims_compatible(static_dims(mask), tuple(batch_steps))):
        shown = "(" + ", ".join("None" if d is None else str(d) for d in batch_steps) + ")"
        raise ValueError(f"mask must have shape (batch, steps) = {shown}; got shape {shape_text(mask)}")
