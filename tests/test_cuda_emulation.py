"""The CUDA kernels (cuda/*.cuh), compiled by the host compiler against
tests/cuda_emu/cuda_emulation.h and run through the launchers' own planning
and launch code, against the CPU ops on the same inputs and against float64
numpy references (tests/cuda_emu/reference64.py).

The CPU ops and the emulated kernels compile the same math headers (the
moments' merge, the finish of a row, the gradient coefficients), so the CPU
comparison alone cannot see an error there: every launch shape is also
compared with the references, which are written from the definitions.

Every launch shape is covered: a warp per row (rows shorter and longer than
a warp, lengths not a multiple of 32), a block per row, and pieces of rows
(forced with small pieces, or chosen by the planner for few long rows), plus
grid-stride loops (a grid capped below the work), misaligned arrays (the
scalar path), masks, and every dtype. Accumulation order differs from the
CPU kernels, so floats are compared within reduction-order tolerances;
structural results (zeros, exact ones, NaN rows) exactly.

The GPU check kit's cases (tools/gpu_kit/cases.py: every op, dtype, label
type and launch shape, edge lengths, misaligned arrays, B = 0, L = 1, rows
without pairs, NaN and +-inf rows, determinism) run here too, on this
emulation, through the harness tools/gpu_check.sh runs on a real GPU.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from cuda_emu import build as emu_build
from cuda_emu import reference64
from cuda_emu.compare import assert_rows_close
from tf_fused_losses import _loader

_TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools")
if _TOOLS not in sys.path:
    sys.path.insert(0, _TOOLS)

from gpu_kit import cases as kit_cases  # noqa: E402

FLOATS = ["float16", "bfloat16", "float32", "float64"]
LABELS = FLOATS + ["int32", "int64", "uint8", "bool"]
# max |emulated - CPU| / (scale of the row) per output dtype: float32 and
# float64 differ by accumulation order; 16-bit outputs by one rounding.
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-11}


# max |emulated - float64 reference| / (scale of the row): the kernels'
# float32 (float64) accumulation against exact arithmetic on the same
# (already rounded) inputs, plus one rounding of 16-bit outputs.
REFERENCE_TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-11}


def assert_close(actual, expected, dtype, name):
    assert_rows_close(actual, expected, TOLERANCE[dtype], name)


def assert_matches_reference(actual, expected, dtype, name):
    assert_rows_close(actual, expected, REFERENCE_TOLERANCE[dtype], name + " vs float64 reference")


WARP, BLOCK, PIECES = "rows_per_warp", "row_per_block", "pieces"
# (rows, length), launch options, the launch shape they must give.
# The emulation runs a block in ~0.1 s (256 threads meeting at barriers), so
# the cases keep the number of blocks small.
LAUNCHES = [
    ((5, 18), {}, WARP),
    ((3, 31), {}, WARP),
    ((9, 33), {}, WARP),  # more rows than the 8 warps of a block
    ((3, 1000), {}, WARP),
    ((2, 1025), {}, BLOCK),
    ((2, 3001), {}, BLOCK),
    ((2, 333), {"piece_length": 128}, PIECES),  # the last piece short
    ((1, 2100), {"piece_length": 1024}, PIECES),
    ((1, 40_000), {"multiprocessors": 1}, PIECES),  # the planner's own choice: one row cannot fill an SM
    ((20, 40), {"max_grid": 1}, WARP),  # one block walks every row
    ((3, 1500), {"max_grid": 2}, BLOCK),
    ((2, 300), {"piece_length": 64, "max_grid": 3}, PIECES),
]


@pytest.fixture(scope="session")
def emu():
    try:
        emu_build.compiler()
    except FileNotFoundError as e:
        pytest.skip(f"cannot build the CUDA emulation: {e}")
    return emu_build.load()


def np_dtype(name):
    return tf.as_dtype(name).as_numpy_dtype


def raw(a):
    """16-bit floats as their bits (the harness reads them as __half / __nv_bfloat16)."""
    return a.view(np.uint16) if a.dtype.itemsize == 2 and a.dtype.kind not in "iu" else a


def misaligned(a):
    """A copy of `a` that starts one element past an aligned address."""
    buffer = np.empty(a.size + 1, a.dtype)
    out = buffer[1:].reshape(a.shape)
    out[...] = a
    return out


def empty(shape, dtype, aligned=True):
    """An output buffer holding the kit's sentinel, so that an element the
    kernel leaves unwritten shows (zeros would pass for a loss of 0, a
    gradient of 0 or an empty row)."""
    out = np.full(shape, kit_cases.SENTINEL, dtype)
    return out if aligned else misaligned(out)


def empty_like(a):
    return empty(a.shape, a.dtype)


def f64(a):
    return np.asarray(a).astype(np.float64)


def on_cpu(fn, *args, **kwargs):
    with tf.device("/CPU:0"):
        out = fn(*args, **kwargs)
    return out.numpy() if isinstance(out, tf.Tensor) else [t.numpy() for t in out]


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def make_labels(rng, shape, kind):
    if kind == "dense":
        return (rng.random(shape) < 0.5).astype(np.float64)
    if kind == "sparse":
        y = (rng.random(shape) < 0.02).astype(np.float64)
        y[:, :1] = 1.0
        return y
    return rng.random(shape)  # soft


def bpmll_inputs(rng, shape, dtype, label_dtype, kind="dense"):
    c = rng.normal(scale=2.0, size=shape).astype(np_dtype(dtype))
    y = make_labels(rng, shape, kind if label_dtype in FLOATS else "dense").astype(np_dtype(label_dtype))
    return y, c


def cpu_bpmll(y, c):
    return on_cpu(_loader.ops().fused_bpmll_loss, y_true=y, y_pred=c)


def emu_bpmll(emu, y, c, aligned=True, **options):
    loss = empty(c.shape[0], c.dtype, aligned)
    grad = empty(c.shape, c.dtype, aligned)
    if not aligned:
        y, c = misaligned(y), misaligned(c)
    info = emu.bpmll(raw(y), y.dtype.name, raw(c), c.dtype.name, raw(loss), raw(grad), **options)
    return loss, grad, info


@pytest.mark.parametrize("shape, options, launch", LAUNCHES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["dense", "sparse", "soft"])
def test_bpmll_matches_cpu_op_and_reference(emu, rng, shape, options, launch, dtype, kind):
    y, c = bpmll_inputs(rng, shape, dtype, dtype, kind)
    loss, grad, info = emu_bpmll(emu, y, c, **options)
    assert info["shape"] == launch
    cpu_loss, cpu_grad = cpu_bpmll(y, c)
    assert_close(loss, cpu_loss, dtype, "loss")
    assert_close(grad, cpu_grad, dtype, "grad")
    assert_bpmll_matches_reference(y, c, loss, grad, dtype)


def assert_bpmll_matches_reference(y, c, loss, grad, dtype, rows=slice(None)):
    ref_loss, ref_grad = reference64.bpmll(y, c)
    assert np.isfinite(ref_loss[rows]).all()
    assert_matches_reference(loss[rows], ref_loss[rows], dtype, "loss")
    assert_matches_reference(grad[rows], ref_grad[rows], dtype, "grad")


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("label_dtype", LABELS)
@pytest.mark.parametrize("shape, options", [((3, 70), {}), ((2, 200), {"piece_length": 128})])
def test_bpmll_every_type_pair(emu, rng, dtype, label_dtype, shape, options):
    y, c = bpmll_inputs(rng, shape, dtype, label_dtype)
    loss, grad, _ = emu_bpmll(emu, y, c, **options)
    cpu_loss, cpu_grad = cpu_bpmll(y, c)
    assert loss.dtype == cpu_loss.dtype and grad.dtype == cpu_grad.dtype
    assert_close(loss, cpu_loss, dtype, "loss")
    assert_close(grad, cpu_grad, dtype, "grad")
    assert_bpmll_matches_reference(y, c, loss, grad, dtype)


@pytest.mark.parametrize("dtype, label_dtype", [("float32", "float32"), ("float16", "uint8"), ("float64", "bool")])
@pytest.mark.parametrize("shape, options", [((4, 77), {}), ((1, 2050), {}), ((1, 500), {"piece_length": 192})])
def test_bpmll_misaligned_arrays_take_the_scalar_path_to_the_same_bits(emu, rng, dtype, label_dtype, shape, options):
    y, c = bpmll_inputs(rng, shape, dtype, label_dtype)
    loss, grad, _ = emu_bpmll(emu, y, c, **options)
    loss_scalar, grad_scalar, _ = emu_bpmll(emu, y, c, aligned=False, **options)
    # The same slots go to the same threads; only the width of the accesses differs.
    np.testing.assert_array_equal(raw(loss_scalar), raw(loss))
    np.testing.assert_array_equal(raw(grad_scalar), raw(grad))
    assert_bpmll_matches_reference(y, c, loss, grad, dtype)


def test_bpmll_grid_stride_loops_give_the_same_bits(emu, rng):
    for shape, options in [((20, 40), {}), ((3, 1500), {}), ((2, 200), {"piece_length": 64})]:
        y, c = bpmll_inputs(rng, shape, "float32", "float32", "soft")
        loss, grad, info = emu_bpmll(emu, y, c, **options)
        loss_1, grad_1, info_1 = emu_bpmll(emu, y, c, max_grid=1, **options)
        assert info_1["grid"] == 1 < info["grid"]
        np.testing.assert_array_equal(loss_1, loss)
        np.testing.assert_array_equal(grad_1, grad)
        assert_bpmll_matches_reference(y, c, loss, grad, "float32")


def test_bpmll_pieces_agree_with_whole_rows(emu, rng):
    y, c = bpmll_inputs(rng, (1, 3000), "float64", "float64", "soft")
    whole_loss, whole_grad, info = emu_bpmll(emu, y, c)
    assert info["shape"] == BLOCK
    assert_bpmll_matches_reference(y, c, whole_loss, whole_grad, "float64")
    for piece_length in (320, 1024, 2048):
        loss, grad, info = emu_bpmll(emu, y, c, piece_length=piece_length)
        assert info["shape"] == PIECES and info["pieces_per_row"] == -(-3000 // piece_length)
        assert_close(loss, whole_loss, "float64", "loss")
        assert_close(grad, whole_grad, "float64", "grad")
        assert_bpmll_matches_reference(y, c, loss, grad, "float64")


@pytest.mark.parametrize("options", [{}, {"piece_length": 64}])
def test_bpmll_rows_without_pairs_nan_and_bad_labels(emu, options):
    c = np.linspace(-3, 3, 6 * 150).reshape(6, 150).astype(np.float32)
    y = (np.arange(150) % 3 == 0).astype(np.float32)[None].repeat(6, 0)
    y[0] = 0  # no positive
    y[1] = 1  # no negative
    c[2, 77] = np.nan  # NaN logit: the row reads NaN, as on the CPU
    y[3, 149] = 2.0  # a label outside [0, 1]: the CPU op raises; the GPU gives NaN
    y[4, 0] = np.nan if options else -0.5
    loss, grad, _ = emu_bpmll(emu, y, c, **options)
    assert loss[0] == 0 and loss[1] == 0 and not grad[:2].any()
    assert np.isnan(loss[2]) and np.isnan(grad[2]).any()
    assert np.isnan(loss[3:5]).all() and np.isnan(grad[3:5]).all()
    cpu_loss, cpu_grad = cpu_bpmll(y[[0, 1, 2, 5]], c[[0, 1, 2, 5]])
    np.testing.assert_array_equal(loss[:2], cpu_loss[:2])
    np.testing.assert_array_equal(np.isnan(grad[2]), np.isnan(cpu_grad[2]))
    assert_close(loss[5:], cpu_loss[3:], "float32", "loss")
    assert_close(grad[5:], cpu_grad[3:], "float32", "grad")
    assert_bpmll_matches_reference(y, c, loss, grad, "float32", rows=[0, 1, 5])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"y_true\[3, 149\] = 2"):
        cpu_bpmll(y, c)


def test_bpmll_empty_rows(emu):
    loss, grad, info = emu_bpmll(emu, np.zeros((3, 0), np.float32), np.zeros((3, 0), np.float32))
    assert info["shape"] == WARP and grad.shape == (3, 0)
    np.testing.assert_array_equal(loss, 0)


# --------------------------------------------------------------------------
# FusedBpmllLossGrad: row scaling, the same arithmetic as the CPU kernel
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape, options", [((5, 18), {}), ((2, 2000), {}), ((1, 1000), {"piece_length": 256})])
@pytest.mark.parametrize("in_place", [False, True])
def test_scale_rows_matches_cpu_op_bit_for_bit(emu, rng, dtype, shape, options, in_place):
    x = rng.normal(size=shape).astype(np_dtype(dtype))
    scale = rng.normal(size=shape[0]).astype(np_dtype(dtype))
    expected = on_cpu(_loader.ops().fused_bpmll_loss_grad, grad_loss=scale, cached_grad=x)
    out = x.copy() if in_place else empty_like(x)
    emu.scale_rows(raw(scale), raw(out if in_place else x), raw(out), dtype, **options)
    np.testing.assert_array_equal(raw(out), raw(expected))
    # One correctly rounded product: exact in float32 for 16-bit inputs.
    wide = np.float64 if dtype == "float64" else np.float32
    product = (x.astype(wide) * scale.astype(wide)[:, None]).astype(x.dtype)
    np.testing.assert_array_equal(raw(out), raw(product))


# --------------------------------------------------------------------------
# Correlation / CCC
# --------------------------------------------------------------------------


def correlation_inputs(rng, shape, dtype, mask_kind):
    y = rng.normal(loc=0.3, scale=1.5, size=shape)
    x = 0.6 * y + rng.normal(loc=-0.2, scale=0.8, size=shape)
    if mask_kind is None:
        mask = None
    else:
        mask = rng.random(shape) < 0.7
        # Two valid steps give r = +-1 whatever the values: Pearson's
        # gradient is then epsilon's part alone, ~1e-7 of its terms, and
        # float32 keeps none of it. Other rows get 3 valid steps at least.
        mask[(mask.sum(axis=1) < 3), :3] = True
        mask[0, :] = False  # no valid step: loss 0, gradient 0
        if shape[0] > 1:
            mask[1, :] = False
            mask[1, shape[1] // 2] = True  # one valid step
    if shape[0] > 2:
        x[2] = 0.25  # constant prediction
    return y.astype(np_dtype(dtype)), x.astype(np_dtype(dtype)), mask


def cpu_correlation(y, x, mask, concordance, epsilon=1e-7):
    op_mask = np.zeros([0], bool) if mask is None else mask
    return on_cpu(_loader.ops().fused_correlation_loss, y_true=y, y_pred=x, mask=op_mask, concordance=concordance,
                  epsilon=epsilon)


def cpu_correlation_grad(g, y, x, mask, row_stats, concordance, epsilon=1e-7):
    op_mask = np.zeros([0], bool) if mask is None else mask
    return on_cpu(_loader.ops().fused_correlation_loss_grad, grad_loss=g, y_true=y, y_pred=x, mask=op_mask,
                  row_stats=row_stats, concordance=concordance, epsilon=epsilon)


def emu_correlation(emu, y, x, mask, concordance, epsilon=1e-7, aligned=True, **options):
    loss = empty(x.shape, x.dtype, aligned)
    row_stats = empty((x.shape[0], 5), np.float64, aligned)
    if not aligned:
        y, x = misaligned(y), misaligned(x)
        mask = None if mask is None else misaligned(mask)
    info = emu.correlation_forward(raw(y), raw(x), mask, x.dtype.name, epsilon, concordance, raw(loss), row_stats,
                                   **options)
    return loss, row_stats, info


def emu_correlation_grad(emu, g, y, x, mask, row_stats, concordance, epsilon=1e-7, **options):
    grad_y, grad_x = empty_like(y), empty_like(x)
    info = emu.correlation_backward(raw(g), raw(y), raw(x), mask, row_stats, x.dtype.name, epsilon, concordance,
                                    raw(grad_y), raw(grad_x), **options)
    return grad_y, grad_x, info


def assert_row_stats_close(actual, expected, dtype, check=assert_close):
    np.testing.assert_array_equal(actual[:, 0], expected[:, 0])  # counts are exact
    check(actual[:, 1:3], expected[:, 1:3], dtype if dtype == "float64" else "float32", "means")
    for column in (3, 4):  # sums of squares: relative to each row's own value
        check(actual[:, column], expected[:, column], dtype if dtype == "float64" else "float32", "m2")


def assert_correlation_matches_reference(y, x, mask, concordance, loss, row_stats, dtype, g=None, grads=None):
    """Loss, row statistics and (given the upstream g) both gradients
    against the float64 reference."""
    ref_loss, ref_stats, ref_gradients = reference64.correlation(y, x, mask, concordance)
    assert_matches_reference(f64(loss) - 1, ref_loss - 1, dtype, "1 - loss")
    assert_row_stats_close(row_stats, ref_stats, dtype, check=assert_matches_reference)
    if grads is not None:
        ref_grad_y, ref_grad_x = ref_gradients(g)
        assert_matches_reference(grads[0], ref_grad_y, dtype, "grad y_true")
        assert_matches_reference(grads[1], ref_grad_x, dtype, "grad y_pred")


CORRELATION_LAUNCHES = [
    ((4, 3), {}, WARP),
    ((6, 45), {}, WARP),
    ((3, 1000), {}, WARP),
    ((3, 2049), {}, BLOCK),
    ((3, 300), {"piece_length": 128}, PIECES),
    ((1, 40_000), {"multiprocessors": 1}, PIECES),
    ((10, 100), {"max_grid": 1}, WARP),
]


@pytest.mark.parametrize("shape, options, launch", CORRELATION_LAUNCHES)
@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("mask_kind", [None, "random"])
def test_correlation_matches_cpu_ops_and_reference(emu, rng, shape, options, launch, concordance, mask_kind):
    dtype = "float32"
    y, x, mask = correlation_inputs(rng, shape, dtype, mask_kind)
    loss, row_stats, info = emu_correlation(emu, y, x, mask, concordance, **options)
    assert info["shape"] == launch
    cpu_loss, cpu_row_stats = cpu_correlation(y, x, mask, concordance)
    assert_close(loss - 1, cpu_loss - 1, dtype, "1 - loss")
    assert_row_stats_close(row_stats, cpu_row_stats, dtype)

    g = rng.normal(size=shape).astype(np.float32)
    # Both backward kernels from the same row statistics, then from their own.
    cpu_grad_y, cpu_grad_x = cpu_correlation_grad(g, y, x, mask, cpu_row_stats, concordance)
    grad_y, grad_x, info = emu_correlation_grad(emu, g, y, x, mask, cpu_row_stats, concordance, **options)
    assert info["shape"] == launch
    assert_close(grad_y, cpu_grad_y, dtype, "grad y_true")
    assert_close(grad_x, cpu_grad_x, dtype, "grad y_pred")
    grad_y, grad_x, _ = emu_correlation_grad(emu, g, y, x, mask, row_stats, concordance, **options)
    assert_close(grad_y, cpu_grad_y, dtype, "grad y_true")
    assert_close(grad_x, cpu_grad_x, dtype, "grad y_pred")
    assert_correlation_matches_reference(y, x, mask, concordance, loss, row_stats, dtype, g, (grad_y, grad_x))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("shape, options", [((4, 37), {}), ((3, 200), {"piece_length": 128})])
def test_correlation_every_dtype(emu, rng, dtype, concordance, shape, options):
    y, x, mask = correlation_inputs(rng, shape, dtype, "random")
    loss, row_stats, _ = emu_correlation(emu, y, x, mask, concordance, **options)
    cpu_loss, cpu_row_stats = cpu_correlation(y, x, mask, concordance)
    assert loss.dtype == cpu_loss.dtype
    assert_close(f64(loss) - 1, f64(cpu_loss) - 1, dtype, "1 - loss")
    assert_row_stats_close(row_stats, cpu_row_stats, dtype)
    g = rng.normal(size=shape).astype(np_dtype(dtype))
    cpu_grads = cpu_correlation_grad(g, y, x, mask, cpu_row_stats, concordance)
    grads = emu_correlation_grad(emu, g, y, x, mask, cpu_row_stats, concordance, **options)[:2]
    for name, actual, expected in zip(["grad y_true", "grad y_pred"], grads, cpu_grads):
        assert actual.dtype == expected.dtype
        assert_close(actual, expected, dtype, name)
    own_grads = emu_correlation_grad(emu, g, y, x, mask, row_stats, concordance, **options)[:2]
    assert_correlation_matches_reference(y, x, mask, concordance, loss, row_stats, dtype, g, own_grads)


@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("options", [{}, {"piece_length": 128}])
def test_correlation_degenerate_rows_are_exact(emu, concordance, options):
    # Pieces of 128 split each 200-step row in two.
    steps = 200
    y = np.tile(np.linspace(-1, 2, steps), (4, 1))
    x = y * 0.5 + np.cos(np.arange(steps))
    x[0] = 0.1  # constant prediction: zero variance, exactly
    y[1] = x[1] = 7.25  # both constant and equal
    mask = np.ones((4, steps), bool)
    mask[2] = False  # no valid step
    mask[3] = False
    mask[3, 5] = True  # one valid step
    loss, row_stats, _ = emu_correlation(emu, y, x, mask, concordance, **options)
    assert row_stats[0, 3] == 0.0 and row_stats[1, 3] == row_stats[1, 4] == 0.0
    assert row_stats[0, 1] == 0.1 and row_stats[1, 1] == row_stats[1, 2] == 7.25
    # cx = 0 on every step: 1 - scale * 0 (Pearson: a degenerate row, 1 as well)
    np.testing.assert_array_equal(loss[0], 1.0)
    np.testing.assert_array_equal(loss[1], 1.0)
    np.testing.assert_array_equal(loss[2], 0.0)
    np.testing.assert_array_equal(loss[3], np.where(mask[3], 1.0, 0.0))
    g = np.ones_like(x)
    # A degenerate row's gradient is 0 whatever flows into it: no valid step
    # (both kinds), and for Pearson a constant row or a single valid step.
    g[2] = np.inf
    if not concordance:
        g[0] = g[3] = np.nan
    grad_y, grad_x, _ = emu_correlation_grad(emu, g, y, x, mask, row_stats, concordance, **options)
    assert not grad_y[1:].any() and not grad_x[1:].any()
    # x constant: d/dy_true is 0 (cx = 0 everywhere); for CCC, d/dy_pred is
    # the mean gap's term, -2 (g cy - mean(g cy)) / D, not 0.
    assert not grad_y[0].any()
    if concordance:
        assert np.abs(grad_x[0]).min() > 0
    else:
        assert not grad_x[0].any()
    cpu_loss, cpu_row_stats = cpu_correlation(y, x, mask, concordance)
    np.testing.assert_array_equal(loss, cpu_loss)
    np.testing.assert_array_equal(row_stats[:, 0], cpu_row_stats[:, 0])
    cpu_grad_y, cpu_grad_x = cpu_correlation_grad(g, y, x, mask, cpu_row_stats, concordance)
    np.testing.assert_array_equal(grad_y, cpu_grad_y)
    np.testing.assert_array_equal(grad_x[1:], cpu_grad_x[1:])
    assert_close(grad_x[:1], cpu_grad_x[:1], "float64", "grad y_pred")
    # The float64 reference, with a finite upstream gradient where it is
    # not (g's inf and NaN must not matter in those rows; checked above).
    g_finite = np.where(np.isfinite(g), g, 1.0)
    assert_correlation_matches_reference(y, x, mask, concordance, loss, row_stats, "float64", g_finite,
                                         (grad_y, grad_x))


@pytest.mark.parametrize("shape, options", [((6, 45), {}), ((2, 2049), {}), ((2, 300), {"piece_length": 128})])
def test_correlation_backward_may_write_grad_y_pred_over_grad_loss(emu, rng, shape, options):
    # The op forwards grad_loss's buffer to grad_y_pred when it can.
    y, x, mask = correlation_inputs(rng, shape, "float32", "random")
    _, row_stats, _ = emu_correlation(emu, y, x, mask, False)
    g = rng.normal(size=shape).astype(np.float32)
    expected_y, expected_x, _ = emu_correlation_grad(emu, g, y, x, mask, row_stats, False, **options)
    shared, grad_y = g.copy(), empty_like(y)
    emu.correlation_backward(shared, y, x, mask, row_stats, "float32", 1e-7, False, grad_y, shared, **options)
    np.testing.assert_array_equal(shared, expected_x)
    np.testing.assert_array_equal(grad_y, expected_y)


@pytest.mark.parametrize("shape, options", [((6, 45), {}), ((2, 2049), {}), ((2, 300), {"piece_length": 128})])
@pytest.mark.parametrize("concordance", [False, True])
def test_correlation_backward_without_grad_y_true(emu, rng, shape, options, concordance):
    # compute_grad_y_true = false: the kernel gets no grad_y_true and must not
    # write one; grad_y_pred is unchanged.
    y, x, mask = correlation_inputs(rng, shape, "float32", "random")
    _, row_stats, _ = emu_correlation(emu, y, x, mask, concordance)
    g = rng.normal(size=shape).astype(np.float32)
    _, expected_x, _ = emu_correlation_grad(emu, g, y, x, mask, row_stats, concordance, **options)
    grad_x = empty_like(x)
    emu.correlation_backward(g, y, x, mask, row_stats, "float32", 1e-7, concordance, None, grad_x, **options)
    np.testing.assert_array_equal(grad_x, expected_x)


def test_correlation_misaligned_arrays_give_the_same_bits(emu, rng):
    y, x, mask = correlation_inputs(rng, (3, 500), "float32", "random")
    loss, row_stats, _ = emu_correlation(emu, y, x, mask, True)
    loss_scalar, row_stats_scalar, _ = emu_correlation(emu, y, x, mask, True, aligned=False)
    np.testing.assert_array_equal(loss_scalar, loss)
    np.testing.assert_array_equal(row_stats_scalar, row_stats)
    assert_correlation_matches_reference(y, x, mask, True, loss, row_stats, "float32")


# --------------------------------------------------------------------------
# The float64 references themselves, against central differences
# --------------------------------------------------------------------------


def central_differences(f, v, h=1e-6):
    out = np.zeros_like(v)
    for index in np.ndindex(v.shape):
        up, down = v.copy(), v.copy()
        up[index] += h
        down[index] -= h
        out[index] = (f(up) - f(down)) / (2 * h)
    return out


@pytest.mark.parametrize("kind", ["dense", "soft"])
def test_bpmll_reference_gradient_is_the_derivative_of_its_loss(rng, kind):
    y = make_labels(rng, (3, 9), kind)
    y[:, 0], y[:, 1] = 1.0, 0.0
    c = rng.normal(size=(3, 9))
    _, grad = reference64.bpmll(y, c)
    numeric = central_differences(lambda v: reference64.bpmll(y, v)[0].sum(), c)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    # and its loss is the pairwise mean of the definition
    pairs = [np.sum(np.outer(y[i], 1 - y[i]) * np.exp(c[i][None, :] - c[i][:, None])) / (y[i].sum() * (1 - y[i]).sum())
             for i in range(3)]
    np.testing.assert_allclose(reference64.bpmll(y, c)[0], pairs, rtol=1e-13)


@pytest.mark.parametrize("concordance", [False, True], ids=["pearson", "ccc"])
@pytest.mark.parametrize("masked", [False, True])
def test_correlation_reference_gradients_are_the_derivatives_of_its_loss(rng, concordance, masked):
    y = rng.normal(loc=0.3, scale=1.5, size=(3, 8))
    x = 0.6 * y + rng.normal(loc=-0.2, scale=0.8, size=(3, 8))
    mask = rng.random((3, 8)) < 0.7 if masked else None
    if masked:
        mask[:, :3] = True
    g = rng.normal(size=(3, 8))
    grad_y, grad_x = reference64.correlation(y, x, mask, concordance)[2](g)

    def total(y_, x_):
        return np.sum(g * reference64.correlation_loss_only(y_, x_, mask, concordance))

    np.testing.assert_allclose(grad_x, central_differences(lambda v: total(y, v), x), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(grad_y, central_differences(lambda v: total(v, x), y), rtol=1e-5, atol=1e-8)
    # and its loss is the textbook Pearson r / Lin's CCC per row
    loss = reference64.correlation_loss_only(y, x, mask, concordance)
    for i in range(3):
        v = np.ones(8, bool) if mask is None else mask[i]
        xi, yi = x[i, v], y[i, v]
        if concordance:
            r = 2 * np.mean((xi - xi.mean()) * (yi - yi.mean())) / (xi.var() + yi.var() + (xi.mean() - yi.mean()) ** 2
                                                                     + 1e-7)
        else:
            r = np.mean((xi - xi.mean()) * (yi - yi.mean())) / (xi.std() * yi.std() + 1e-7)
        np.testing.assert_allclose(np.mean(1 - loss[i, v]), r, rtol=1e-12)
        assert not loss[i, ~v].any()


# --------------------------------------------------------------------------
# Launch planning at real sizes (planning only; nothing runs)
# --------------------------------------------------------------------------


def test_plans_for_both_extremes(emu):
    short = emu.plan(rows=4096, row_length=18, partial_bytes=40, multiprocessors=132)
    assert short["shape"] == WARP and short["grid"] == 4096 // 8
    medium = emu.plan(rows=4096, row_length=4096, partial_bytes=40, multiprocessors=132)
    assert medium["shape"] == BLOCK and medium["grid"] == 4096
    huge = emu.plan(rows=4, row_length=2_000_000, partial_bytes=40, multiprocessors=132)
    assert huge["shape"] == PIECES
    # As many blocks as fill the GPU (8 per SM) while pieces stay long
    # enough (>= 16384) that merging a row's partials costs little next to
    # reading it: here the length limits it to 122 pieces a row.
    assert huge["piece_length"] >= 16384 and huge["pieces_per_row"] == 2_000_000 // 16384
    assert huge["grid"] == 4 * huge["pieces_per_row"] <= 8 * 132
    assert emu.plan(rows=2, row_length=2_000_000, partial_bytes=40, multiprocessors=16)["grid"] == 8 * 16
    assert huge["pieces_per_row"] * huge["piece_length"] >= 2_000_000 > (huge["pieces_per_row"] - 1) * huge["piece_length"]
    assert huge["scratch_bytes"] == 4 * huge["pieces_per_row"] * 40
    # Few rows that are long but not long enough to split: a block each.
    assert emu.plan(rows=4, row_length=20_000, partial_bytes=40, multiprocessors=132)["shape"] == BLOCK


# --------------------------------------------------------------------------
# ThreadSanitizer
# --------------------------------------------------------------------------


def run_under_tsan(program):
    try:
        path = emu_build.build_tsan(program)
    except RuntimeError as e:
        if "tsan" in str(e).lower() and "cannot find" in str(e).lower():
            pytest.skip(f"no ThreadSanitizer runtime for this compiler: {e}")
        raise
    env = {**os.environ, "TSAN_OPTIONS": "halt_on_error=1 exitcode=66"}
    return subprocess.run([path], capture_output=True, text=True, env=env, timeout=1800)


@pytest.mark.slow
def test_kernels_have_no_data_race_under_thread_sanitizer(emu):
    # The control proves that the emulation exposes races to TSan: it reads
    # a __shared__ value without the barrier after its write.
    control = run_under_tsan("tsan_control")
    assert control.returncode == 66 and "ThreadSanitizer: data race" in control.stderr, control.stderr[-3000:]
    driver = run_under_tsan("tsan_driver")
    assert driver.returncode == 0, driver.stdout + driver.stderr[-5000:]
    assert "passed: 0 failure(s)" in driver.stdout


# --------------------------------------------------------------------------
# The GPU check kit's cases (tools/gpu_kit/cases.py) on this emulation
# --------------------------------------------------------------------------
# tools/gpu_check.sh runs these very cases through this very harness module,
# built by nvcc, on a real GPU (and `--emulate` on this build): one set of
# cases, one harness. Each case runs twice (equal bits), checks the launch
# shape the planner chose and compares every output with the float64
# references, NaN and +-inf included (docs/semantics.md).

KIT_CASES = kit_cases.all_cases()


def test_gpu_kit_cases_cover_what_the_kit_promises():
    ops = {c.op for c in KIT_CASES}
    assert ops == set(kit_cases.OPS)
    assert {c.dtype for c in KIT_CASES} == {"float16", "bfloat16", "float32", "float64"}
    assert {c.label_dtype for c in KIT_CASES if c.op == "bpmll_loss"} == set(kit_cases.nx.LABELS)
    for op in ops:
        assert {c.launch for c in KIT_CASES if c.op == op} == {WARP, BLOCK, PIECES}, op
        assert {c.launch for c in kit_cases.select(KIT_CASES, tag="sanitize") if c.op == op} == {WARP, BLOCK, PIECES}
    assert len(KIT_CASES) >= 40


@pytest.mark.parametrize("case", KIT_CASES, ids=lambda c: c.name)
def test_gpu_kit_case(emu, case):
    result = kit_cases.run_case(emu, case)
    assert result["launch"] == case.launch
    assert result["deterministic"], "two runs gave different bits"
    assert result["passed"], "\n".join(result["problems"])
