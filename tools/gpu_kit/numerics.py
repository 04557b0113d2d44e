"""Storage dtypes and comparisons, with numpy alone.

16-bit floats are held as numpy arrays of their storage: float16 as
numpy.float16, bfloat16 as its bit patterns in numpy.uint16 (no ml_dtypes
needed); the harness module reads both by item size with the dtype named
separately. Inputs are rounded to their dtype first and the references see
the rounded values, so rounding of inputs never counts as error.
"""

import numpy as np

FLOATS = ("float16", "bfloat16", "float32", "float64")
LABELS = FLOATS + ("int32", "int64", "uint8", "bool")

_STORAGE = {
    "float16": np.float16,
    "bfloat16": np.uint16,
    "float32": np.float32,
    "float64": np.float64,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "bool": np.bool_,
}

ITEMSIZE = {name: np.dtype(t).itemsize for name, t in _STORAGE.items()}


def storage_dtype(name):
    return np.dtype(_STORAGE[name])


def accumulation(name):
    """The kernels' accumulation type: float64 for float64, float32 otherwise."""
    return "float64" if name == "float64" else "float32"


def bfloat16_bits(values):
    """Round to nearest even from float32 (as __float2bfloat16_rn); NaN stays NaN (quiet)."""
    f = np.asarray(values, np.float32)
    u = f.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(f)
    quiet = ((u >> 16) | 0x40).astype(np.uint16)
    return np.where(nan, quiet, rounded).astype(np.uint16)


def to_storage(values, name):
    """float64 (or any) values as an array of `name`'s storage, rounded to nearest even."""
    a = np.asarray(values)
    if name == "bfloat16":
        return bfloat16_bits(a.astype(np.float32))
    if name == "bool":
        return a.astype(bool)
    return a.astype(_STORAGE[name])


def to_f64(stored, name):
    """The values an array of `name`'s storage holds, as float64."""
    a = np.asarray(stored)
    if name == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def round_like_kernel(values, name):
    """float64 values rounded to `name` once, the way the kernels store a
    result computed in their accumulation type: through float32 for the
    16-bit types (exact products there), directly otherwise."""
    if name in ("float16", "bfloat16"):
        return to_storage(np.asarray(values, np.float32), name)
    return to_storage(values, name)


def bits(a):
    """A byte view for bitwise equality (NaN payloads included)."""
    a = np.ascontiguousarray(a)
    return a.view(np.uint8)


def aligned(a, offset_elements=0, alignment=256):
    """A copy of `a` that starts `offset_elements` elements past an
    `alignment`-byte boundary (the module's GPU build keeps that offset in
    device memory)."""
    a = np.asarray(a)
    nbytes = a.size * a.itemsize
    offset = offset_elements * a.itemsize
    raw = np.empty(nbytes + alignment + offset + a.itemsize, np.uint8)
    start = (-raw.ctypes.data) % alignment + offset
    out = raw[start:start + nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def compare(actual, expected, tolerance, row_scaled=True):
    """(max_abs_err, max_rel_err, problems) of actual against expected (both
    float64-convertible, same shape).

    NaN must be where expected is NaN, and ±inf exactly where expected is ±inf
    (sign included). Elsewhere the error |actual - expected| is divided by the
    scale of its row (the largest finite |expected| of the row; rows are the
    first axis, and a 1-D array is one element per row): kernels that reduce
    in another order agree to a tolerance relative to the row's magnitude,
    and small gradient entries carry the row's absolute error. max_rel_err is
    that row-scaled error; it must be <= tolerance."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    problems = []
    if a.shape != e.shape:
        return float("inf"), float("inf"), [f"shape {a.shape} != expected {e.shape}"]
    if a.size == 0:
        return 0.0, 0.0, []
    if a.ndim == 1 or not row_scaled:
        a2, e2 = a.reshape(-1, 1), e.reshape(-1, 1)
    else:
        a2, e2 = a.reshape(a.shape[0], -1), e.reshape(e.shape[0], -1)
    nan_e, nan_a = np.isnan(e2), np.isnan(a2)
    if not np.array_equal(nan_e, nan_a):
        where = tuple(int(i) for i in np.argwhere(nan_e != nan_a)[0])
        problems.append(f"NaN mismatch at {where}: got {float(a2[where])!r}, expected {float(e2[where])!r}")
    inf_e = np.isinf(e2)
    if np.any(inf_e & (a2 != e2)):
        where = tuple(int(i) for i in np.argwhere(inf_e & (a2 != e2))[0])
        problems.append(f"inf mismatch at {where}: got {float(a2[where])!r}, expected {float(e2[where])!r}")
    finite = np.isfinite(e2)
    if not finite.any():
        return 0.0, 0.0, problems
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(finite, np.abs(a2 - e2), 0.0)
        diff = np.where(finite & ~np.isfinite(a2), np.inf, diff)
        scale = np.maximum(np.abs(np.where(finite, e2, 0.0)).max(axis=1, keepdims=True), 1e-30)
        rel = diff / scale
    max_abs, max_rel = float(diff.max()), float(rel.max())
    if not max_rel <= tolerance:
        worst = np.unravel_index(np.argmax(rel), rel.shape)
        problems.append(
            f"row-scaled error {max_rel:.3g} > {tolerance:g} at {tuple(int(i) for i in worst)}: "
            f"got {float(a2[worst])!r}, expected {float(e2[worst])!r}")
    return max_abs, max_rel, problems
