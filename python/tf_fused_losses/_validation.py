"""Trace-time checks that name the argument, its shape or dtype, and what was
expected. Framework-free: they read `.dtype` and `.shape` of TF tensors,
numpy and JAX arrays and torch tensors alike, and say the same on each."""

import math

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


def check_epsilon(epsilon):
    """epsilon as a float, checked: a Python number, finite, >= 0, and at
    most the float32 maximum (the ops' and the FFI handlers' attribute is a
    float32)."""
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)):
        raise ValueError(f"epsilon must be a Python float >= 0; got {epsilon!r}")
    epsilon = float(epsilon)
    if not (math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0; got {epsilon!r}")
    if epsilon > FLOAT32_MAX:
        raise ValueError(f"epsilon must be at most {FLOAT32_MAX:.7g} (the float32 maximum); got {epsilon!r}")
    return epsilon
