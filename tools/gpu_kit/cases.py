"""The kit's cases and the one harness that runs them.

A backend is anything with the four calls of the harness module
(tests/cuda_emu/emu_module.cc): bpmll, scale_rows, correlation_forward and
correlation_backward, on numpy arrays. The same cases run on

  * the emulated module (g++ against tests/cuda_emu/cuda_emulation.h): CI
    (tests/test_cuda_emulation.py) and `tools/gpu_check.sh --emulate`;
  * the GPU module (nvcc): `tools/gpu_check.sh` on a GPU;
  * the XLA FFI handlers through jax.jit (gpu_kit.ffi_check), which plan
    their own launches (launch shapes are then not checked).

run_case() runs a case twice (the two runs must give equal bits), checks the
launch shape the planner chose, and compares every output with the float64
references of tests/cuda_emu/reference64.py (written from the definitions,
NaN/inf per docs/semantics.md). Inputs are rounded to their dtype first;
the references see the rounded values.
"""

import dataclasses
import itertools
import time
import traceback
import zlib

import numpy as np

from cuda_emu import reference64

from . import numerics as nx

WARP, BLOCK, PIECES = "rows_per_warp", "row_per_block", "pieces"
EPSILON = 1e-7
SENTINEL = -7777.0  # what output buffers hold before a run: an element left unwritten shows

# max row-scaled |result - float64 reference| per output dtype: the kernels'
# float32 (float64) accumulation against exact arithmetic on the same
# rounded inputs, plus one rounding of 16-bit outputs. The values of
# tests/test_cuda_emulation.py.
TOLERANCE = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-11}

OPS = ("bpmll_loss", "bpmll_loss_grad", "pearson_loss", "pearson_loss_grad", "ccc_loss", "ccc_loss_grad")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    op: str
    dtype: str
    shape: tuple
    launch: str  # the launch shape the planner must choose
    label_dtype: str = None  # bpmll_loss only
    options: tuple = ()  # (key, value) pairs: multiprocessors, piece_length, max_grid
    inputs: str = "random"
    mask: bool = False
    grad_y_true: bool = True  # *_loss_grad: compute_grad_y_true
    align: str = "aligned"  # aligned | offset (every array one element past) | mask_offset
    in_place: bool = False  # bpmll_loss_grad: out = in; *_loss_grad: grad_y_pred over grad_loss
    tags: frozenset = frozenset()  # sanitize: the compute-sanitizer set; ffi: the FFI set

    def opts(self):
        return dict(self.options)

    def summary(self):
        bits = [self.inputs]
        if self.mask:
            bits.append("mask")
        if self.op.endswith("_loss_grad") and self.op != "bpmll_loss_grad" and not self.grad_y_true:
            bits.append("no grad_y_true")
        if self.align != "aligned":
            bits.append(self.align)
        if self.in_place:
            bits.append("in place")
        bits += [f"{k}={v}" for k, v in self.options]
        return ", ".join(bits)


def vector_width(op, dtype, label_dtype=None):
    """Op::kVector of the op's kernel: 16 bytes of its widest array type."""
    widest = nx.ITEMSIZE[dtype]
    if op == "bpmll_loss":
        widest = max(widest, nx.ITEMSIZE[label_dtype])
    return 16 // widest


def launch_shapes(v):
    """(tag, shape, options, launch) for every launch shape, at lengths
    around the vector width v, a warp's sweep (32 v), the warp-row limit
    (1024) and a block's sweep (256 v)."""
    block_len = next(n for n in (k * 256 * v + 1 for k in itertools.count(1)) if n > 1025)
    return [
        ("warp", (5, 18), {}, WARP),
        ("warp_vector+1", (3, v + 1), {}, WARP),
        ("warp_sweep+1_9rows", (9, 32 * v + 1), {}, WARP),
        ("block_1025", (2, 1025), {}, BLOCK),
        ("block_sweep+1", (2, block_len), {}, BLOCK),
        ("pieces_forced", (2, 333), {"piece_length": 128}, PIECES),
        ("pieces_planned", (1, 40000), {"multiprocessors": 1}, PIECES),
    ]


# The launch shapes of launch_shapes() that the FFI handlers see as they
# are: forced pieces and capped grids are the harness's launch options, which
# the handlers, planning for the real device, do not take.
FFI_LAUNCH_TAGS = ("warp", "warp_vector+1", "warp_sweep+1_9rows", "block_1025", "block_sweep+1", "pieces_planned")

# The classes of (rows, row length) that every op's FFI cases must cover:
# each is a branch somewhere between the frontends and the kernels (an
# early return, a write of per-row outputs, a vector tail, a launch shape, a
# piece path).
SHAPE_CLASSES = ("batch 0", "length 0", "length 1", "odd length", "warp rows", "block boundary", "block rows",
                 "long rows")


def shape_class(shape):
    """The class of SHAPE_CLASSES a (rows, length) shape falls in."""
    rows, length = shape
    if rows == 0:
        return "batch 0"
    if length <= 1:
        return f"length {length}"
    if length == 1025:
        return "block boundary"
    if length > 16384:
        return "long rows"  # pieces on a GPU with few rows; the CPU's piece path past 8192
    if length > 1025:
        return "block rows"
    return "odd length" if length % 2 else "warp rows"


GRID_STRIDE = [
    ("grid1_warp", (20, 40), {"max_grid": 1}, WARP),
    ("grid2_block", (3, 1500), {"max_grid": 2}, BLOCK),
    ("grid3_pieces", (3, 300), {"piece_length": 64, "max_grid": 3}, PIECES),
]


def _case(op, dtype, tag, shape, options, launch, **kw):
    label = kw.get("label_dtype")
    parts = [op, dtype] + ([label] if label else []) + [tag]
    for key in ("inputs", "align"):
        if key in kw and kw[key] not in ("random", "aligned"):
            parts.append(kw[key])
    if kw.get("mask"):
        parts.append("mask")
    if kw.get("grad_y_true") is False:
        parts.append("no_grad_y_true")
    if kw.get("in_place"):
        parts.append("in_place")
    tags = frozenset(kw.pop("tags", ()))
    return Case(name="/".join(parts), op=op, dtype=dtype, shape=tuple(shape), launch=launch,
                options=tuple(sorted(options.items())), tags=tags, **kw)


def all_cases():
    """Every case, in a stable order."""
    cases = []
    add = cases.append
    # ---------------------------------------------------------------- BP-MLL
    op = "bpmll_loss"
    kinds = itertools.cycle(["dense", "sparse", "soft"])
    for dtype in nx.FLOATS:
        for tag, shape, options, launch in launch_shapes(vector_width(op, dtype, dtype)):
            tags = {"sanitize"} if dtype == "float32" and tag in ("warp", "block_1025", "pieces_forced") else set()
            if tag == "warp" or (dtype == "float32" and tag in FFI_LAUNCH_TAGS):
                tags.add("ffi")
            add(_case(op, dtype, tag, shape, options, launch, label_dtype=dtype, inputs=next(kinds), tags=tags))
    for label in nx.LABELS:
        if label == "float32":
            continue
        v = vector_width(op, "float32", label)
        add(_case(op, "float32", "warp_odd", (3, 70), {}, WARP, label_dtype=label, tags={"ffi"}))
        add(_case(op, "float32", "pieces_forced", (2, 200 + v + 1), {"piece_length": 128}, PIECES, label_dtype=label))
    for dtype, label in (("float16", "uint8"), ("bfloat16", "bool"), ("float64", "int64"), ("bfloat16", "int32")):
        add(_case(op, dtype, "block_1025", (2, 1025), {}, BLOCK, label_dtype=label, tags={"ffi"}))
    for tag, shape, options, launch in GRID_STRIDE:
        add(_case(op, "float32", tag, shape, options, launch, label_dtype="float32", inputs="soft",
                  tags={"sanitize"} if tag == "grid3_pieces" else ()))
    for dtype, label, tag, shape, options, launch in (
            ("float32", "float32", "warp", (4, 77), {}, WARP),
            ("float16", "uint8", "block", (1, 2050), {}, BLOCK),
            ("float64", "bool", "pieces_forced", (1, 500), {"piece_length": 192}, PIECES)):
        add(_case(op, dtype, tag, shape, options, launch, label_dtype=label, align="offset",
                  tags={"sanitize"} if dtype == "float16" else ()))
    add(_case(op, "float32", "batch0", (0, 50), {}, WARP, label_dtype="float32", tags={"ffi", "sanitize"}))
    add(_case(op, "float32", "labels1", (4, 1), {}, WARP, label_dtype="float32", tags={"ffi"}))
    add(_case(op, "float32", "labels0", (3, 0), {}, WARP, label_dtype="float32", tags={"ffi"}))
    for dtype, tag, shape, options, launch in (("float32", "warp", (6, 150), {}, WARP),
                                               ("float64", "pieces_forced", (6, 150), {"piece_length": 64}, PIECES),
                                               ("float16", "block", (6, 1100), {}, BLOCK)):
        add(_case(op, dtype, tag, shape, options, launch, label_dtype=dtype, inputs="no_pairs",
                  tags={"ffi"} if dtype == "float32" else ()))
        add(_case(op, dtype, tag, shape, options, launch, label_dtype=dtype, inputs="inf_rows",
                  tags={"ffi"} if dtype != "float16" else ()))
        add(_case(op, dtype, tag, shape, options, launch, label_dtype=dtype, inputs="nan_logits", tags={"ffi"}))
        if dtype != "float16":
            add(_case(op, dtype, tag, shape, options, launch, label_dtype=dtype, inputs="inf_soft",
                      tags={"ffi"} if dtype == "float32" else ()))
    for dtype, label, tag, shape, options, launch in (
            ("float32", "float32", "warp", (6, 150), {}, WARP),
            ("float32", "float32", "pieces_forced", (6, 150), {"piece_length": 64}, PIECES),
            ("float16", "uint8", "warp", (6, 150), {}, WARP),
            ("float64", "int32", "block", (6, 1100), {}, BLOCK)):
        # The GPU's convention (NaN rows); the CPU and its custom call raise.
        add(_case(op, dtype, tag, shape, options, launch, label_dtype=label, inputs="bad_labels"))
    add(_case(op, "float32", "docs_table_L2", (3, 2), {}, WARP, label_dtype="float32", inputs="docs_table",
              tags={"ffi"}))
    add(_case(op, "float64", "docs_table_L3", (1, 3), {}, WARP, label_dtype="bool", inputs="docs_table",
              tags={"ffi"}))
    # The planner's own pieces at the size where the FFI handlers (real SM
    # counts) split rows too.
    add(_case(op, "float32", "pieces_planned_4rows", (4, 70000), {"multiprocessors": 1}, PIECES,
              label_dtype="float32", tags={"ffi"}))

    # ------------------------------------------------------ BP-MLL gradient
    op = "bpmll_loss_grad"
    for dtype in nx.FLOATS:
        v = vector_width(op, dtype)
        for tag, shape, options, launch in (("warp", (5, 18), {}, WARP),
                                            ("warp_vector+1", (3, v + 1), {}, WARP),
                                            ("block", (2, 2000), {}, BLOCK),
                                            ("pieces_forced", (1, 1000), {"piece_length": 256}, PIECES)):
            tags = {"ffi"} if tag == "warp" or dtype == "float32" else set()
            if dtype == "float32" and tag != "warp_vector+1":
                tags.add("sanitize")
            add(_case(op, dtype, tag, shape, options, launch, tags=tags))
    for dtype in ("float32", "float16"):
        add(_case(op, dtype, "block", (2, 2000), {}, BLOCK, in_place=True, tags={"sanitize"} if dtype == "float32"
                  else ()))
        add(_case(op, dtype, "warp", (4, 77), {}, WARP, inputs="nonfinite", tags={"ffi"}))
    for dtype in ("float32", "bfloat16"):
        add(_case(op, dtype, "pieces_forced", (2, 500), {"piece_length": 128}, PIECES, align="offset"))
    add(_case(op, "float32", "batch0", (0, 7), {}, WARP, tags={"ffi"}))
    add(_case(op, "float64", "labels1", (5, 1), {}, WARP, tags={"ffi"}))
    add(_case(op, "float32", "labels0", (4, 0), {}, WARP, tags={"ffi"}))
    add(_case(op, "float32", "block_1025", (2, 1025), {}, BLOCK, tags={"ffi"}))
    add(_case(op, "float32", "pieces_planned", (1, 40000), {"multiprocessors": 1}, PIECES, tags={"ffi"}))
    add(_case(op, "float32", "grid1_warp", (20, 40), {"max_grid": 1}, WARP))

    # ------------------------------------------------- Pearson and CCC
    for kind in ("pearson", "ccc"):
        for direction in ("loss", "loss_grad"):
            op = f"{kind}_{direction}"
            grad = direction == "loss_grad"
            for tag, shape, options, launch in launch_shapes(vector_width(op, "float32")) + GRID_STRIDE:
                for mask in (False, True):
                    tags = set()
                    if mask and tag in ("warp", "block_1025", "pieces_forced"):
                        tags.add("sanitize")
                    if tag == "warp" or (not mask and tag in FFI_LAUNCH_TAGS):
                        tags.add("ffi")
                    add(_case(op, "float32", tag, shape, options, launch, mask=mask, tags=tags))
            for dtype in ("float16", "bfloat16", "float64"):
                for tag, shape, options, launch in (("warp_odd", (4, 37), {}, WARP),
                                                    ("block_1025", (3, 1025), {}, BLOCK),
                                                    ("pieces_forced", (3, 200), {"piece_length": 128}, PIECES)):
                    add(_case(op, dtype, tag, shape, options, launch, mask=True,
                              tags={"ffi"} if tag == "warp_odd" else ()))
            for tag, shape, options, launch in (("warp", (4, 200), {}, WARP),
                                                ("pieces_forced", (4, 200), {"piece_length": 128}, PIECES)):
                add(_case(op, "float64", tag, shape, options, launch, mask=True, inputs="degenerate",
                          tags={"ffi"} if tag == "warp" else ()))
                add(_case(op, "float32", tag, (6, 200), options, launch, mask=True, inputs="nonfinite",
                          tags={"ffi"} if tag == "warp" else ()))
            add(_case(op, "float32", "warp", (3, 500), {}, WARP, mask=True, align="offset"))
            add(_case(op, "float16", "pieces_forced", (2, 300), {"piece_length": 128}, PIECES, mask=True,
                      align="mask_offset", tags={"sanitize"} if grad else ()))
            add(_case(op, "float32", "batch0", (0, 9), {}, WARP, mask=True, tags={"ffi"}))
            add(_case(op, "float32", "steps1", (3, 1), {}, WARP, tags={"ffi"}))
            add(_case(op, "float32", "steps0", (3, 0), {}, WARP, mask=True, tags={"ffi"}))
            add(_case(op, "float32", "pieces_planned_3rows", (3, 50000), {"multiprocessors": 1}, PIECES, mask=True,
                      tags={"ffi"}))
            if grad:
                for tag, shape, options, launch in (("warp", (6, 45), {}, WARP),
                                                    ("block", (2, 2049), {}, BLOCK),
                                                    ("pieces_forced", (2, 300), {"piece_length": 128}, PIECES)):
                    add(_case(op, "float32", tag, shape, options, launch, mask=True, grad_y_true=False,
                              tags={"ffi", "sanitize"} if tag == "pieces_forced" else {"ffi"}))
                    add(_case(op, "float32", tag, shape, options, launch, mask=True, in_place=True))
                add(_case(op, "bfloat16", "warp", (4, 37), {}, WARP, grad_y_true=False, tags={"ffi"}))
    names = [c.name for c in cases]
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"duplicate case names: {sorted(duplicates)}"
    return cases


def select(cases, patterns=None, tag=None):
    """Cases whose name contains any of the patterns (all when None), with the tag."""
    out = [c for c in cases if tag is None or tag in c.tags]
    if patterns:
        out = [c for c in out if any(p in c.name for p in patterns)]
    return out


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def _rng(case):
    return np.random.default_rng(zlib.crc32(case.name.encode()))


def _labels(rng, shape, kind, label_dtype):
    if label_dtype not in nx.FLOATS and kind == "soft":
        kind = "dense"
    if kind == "sparse":
        y = (rng.random(shape) < 0.02).astype(np.float64)
        if shape[1] > 0:
            y[:, :1] = 1.0
        return y
    if kind == "soft":
        return rng.random(shape)
    return (rng.random(shape) < 0.5).astype(np.float64)


def bpmll_inputs(case):
    """(y_true, y_pred) as float64 values, before rounding to their dtypes."""
    rng = _rng(case)
    shape = case.shape
    c = rng.normal(scale=2.0, size=shape)
    kind = case.inputs
    y = _labels(rng, shape, kind if kind in ("dense", "sparse", "soft") else "dense", case.label_dtype)
    rows, length = shape
    if kind == "no_pairs":
        # Loss 0 and gradient exactly 0 whatever the logits (docs/semantics.md, 3).
        y[0::2] = 0.0
        y[1::2] = 1.0
        big = 800.0 if case.dtype == "float64" else (100.0 if case.dtype in ("float32", "bfloat16") else 11.0)
        c[0, :4] = [np.inf, -np.inf, big, -big]
        c[1, :4] = [-np.inf, np.inf, -big, big]
        c[2, :] = np.inf
        c[3, :] = -np.inf
    elif kind == "nan_logits":
        # A NaN logit makes its row's loss and every gradient element NaN,
        # pairs or not (docs/semantics.md, 2), infinite logits or not.
        c[1, length // 2] = np.nan
        y[2, 0], y[2, -1] = 1.0, 1.0
        c[2, 0], c[2, -1] = np.nan, -np.inf  # NaN and inf on the same side (positives)
        y[3, 0], y[3, -1] = 1.0, 0.0
        c[3, 0], c[3, -1] = np.nan, np.inf  # a NaN positive, a negative at +inf
        y[5, 0], y[5, -1] = 0.0, 1.0
        c[5, 0], c[5, -1] = np.nan, -np.inf  # a NaN negative, a positive at -inf
        y[4] = 0.0
        c[4, 7] = np.nan  # a NaN logit in a row without pairs: NaN too
    elif kind == "bad_labels":
        bad_values = {"uint8": 2, "int32": -1, "int64": 2, "bool": None}
        bad = bad_values.get(case.label_dtype, 1.5)
        y[1, length - 1] = bad
        y[3, 0] = 2.0 if case.label_dtype in nx.FLOATS else bad
        if case.label_dtype in nx.FLOATS:
            y[4, 5] = np.nan  # a NaN label is bad too
            y[5, 3] = -0.25
    elif kind == "inf_rows":
        # Rows with pairs and infinite logits, hard labels (docs/semantics.md, 4).
        y = (rng.random(shape) < 0.5).astype(np.float64)
        y[:, 0], y[:, 1], y[:, 2], y[:, 3] = 1.0, 0.0, 1.0, 0.0
        c = np.clip(c, -6, 6)
        c[0, 0] = np.inf  # a positive at +inf adds 0: finite row
        c[1, 0] = -np.inf  # a positive at -inf: P = inf, loss inf
        c[2, 1] = np.inf  # a negative at +inf: N = inf, loss inf
        c[3, 1] = -np.inf  # a negative at -inf adds 0: finite row
        c[4, 0], c[4, 1] = np.inf, np.inf  # positive and negative at +inf (other terms finite)
        c[5, 0], c[5, 1] = -np.inf, -np.inf  # at -inf both
    elif kind == "inf_soft":
        # Soft labels with infinite logits: extended arithmetic, NaN where
        # the two sides meet as inf - inf (docs/semantics.md, 4).
        y = rng.random(shape)
        y[:, :4] = [1.0, 0.0, 0.3, 0.7]
        c = np.clip(c, -5, 5)
        c[0, 2] = np.inf  # a soft label at +inf
        c[1, 2] = -np.inf  # at -inf
        c[2, 0] = np.inf  # a hard positive at +inf, soft ones elsewhere
        c[3, 1] = -np.inf  # a hard negative at -inf
        c[4, 3], c[4, 1] = np.inf, np.inf
        c[5, 0], c[5, 2] = -np.inf, -np.inf
    elif kind == "docs_table":
        # The table of docs/semantics.md, 4, as it stands.
        if length == 2:
            y = np.array([[1, 0], [1, 0], [1, 0]], np.float64)
            c = np.array([[np.inf, 0], [-np.inf, 0], [np.inf, np.inf]])
        else:
            y = np.array([[1, 0, 0]], np.float64)
            c = np.array([[0, np.inf, -np.inf]])
    return y, c


# The rows of docs/semantics.md's table: (loss, gradient), for docs_table cases.
DOCS_TABLE = {
    2: ([0.0, np.inf, np.nan], [[0.0, 0.0], [-np.inf, np.inf], [np.nan, np.nan]]),
    3: ([np.inf], [[-np.inf, np.inf, 0.0]]),
}


def scale_inputs(case):
    rng = _rng(case)
    x = rng.normal(size=case.shape)
    scale = rng.normal(size=case.shape[0])
    if case.inputs == "nonfinite" and x.size:
        x[0, :3] = [np.nan, np.inf, -np.inf]
        scale[1] = np.inf
        scale[2] = np.nan
        scale[3] = 0.0
        x[3, 5] = np.inf  # 0 * inf = NaN
    return scale, x


def correlation_inputs(case):
    """(y_true, y_pred, mask or None, upstream gradient) as float64."""
    rng = _rng(case)
    shape = case.shape
    rows, steps = shape
    y = rng.normal(loc=0.3, scale=1.5, size=shape)
    x = 0.6 * y + rng.normal(loc=-0.2, scale=0.8, size=shape)
    g = rng.normal(size=shape)
    mask = None
    if case.mask:
        mask = rng.random(shape) < 0.7
        # Two valid steps give r = +-1 whatever the values: Pearson's gradient
        # is then epsilon's part alone, which float32 does not keep. Other
        # rows get 3 valid steps at least.
        mask[(mask.sum(axis=1) < 3), :3] = True
        if rows > 0 and steps > 1:
            mask[0, :] = False  # no valid step: loss 0, gradient 0
        if rows > 1 and steps > 1:
            mask[1, :] = False
            mask[1, steps // 2] = True  # one valid step
    if rows > 2 and case.inputs == "random":
        x[2] = 0.25  # a constant prediction
    if case.inputs == "degenerate":
        y = np.tile(np.linspace(-1, 2, steps), (rows, 1))
        x = y * 0.5 + np.cos(np.arange(steps))
        x[0] = 0.1  # constant prediction: zero variance, exactly
        y[1] = x[1] = 7.25  # both constant and equal
        mask = np.ones(shape, bool)
        mask[2] = False  # no valid step
        mask[3] = False
        mask[3, 5] = True  # one valid step
        # A degenerate row's gradient is 0 whatever flows into it.
        g[2] = np.inf
        if case.op.startswith("pearson"):
            g[0] = np.nan
            g[3] = np.nan
    if case.inputs == "nonfinite":
        mask = np.ones(shape, bool) if mask is None else mask
        mask[:6] = True
        mask[3, 7] = mask[4, 9] = False
        x[0, 3] = np.nan  # at a valid step: the row's loss and gradients are NaN on its valid steps
        y[1, 4] = np.inf
        x[2, 5] = -np.inf
        x[3, 7] = np.nan  # at a masked step: no effect
        y[4, 9] = np.inf
        mask[0, 10:20] = False
    return y, x, mask, g


# --------------------------------------------------------------------------
# Running a case
# --------------------------------------------------------------------------


class Outcome:
    def __init__(self):
        self.max_abs = 0.0
        self.max_rel = 0.0
        self.problems = []

    def check(self, name, actual, expected, tolerance, row_scaled=True, skip=None):
        """Compares actual with expected (float64); `skip` marks entries not judged."""
        a = np.asarray(actual, np.float64)
        e = np.asarray(expected, np.float64)
        if skip is not None and a.shape == e.shape:
            a = np.where(skip, 0.0, a)
            e = np.where(skip, 0.0, e)
        max_abs, max_rel, problems = nx.compare(a, e, tolerance, row_scaled)
        self.max_abs = max(self.max_abs, max_abs)
        self.max_rel = max(self.max_rel, max_rel)
        self.problems += [f"{name}: {p}" for p in problems]

    def require(self, ok, message):
        if not ok:
            self.problems.append(message)


def _place(a, case, kind):
    offset = 1 if case.align == "offset" or (case.align == "mask_offset" and kind == "mask") else 0
    return nx.aligned(a, offset)


def _output(shape, dtype, case):
    return _place(nx.to_storage(np.full(shape, SENTINEL), dtype), case, "out")


def _run_bpmll(backend, case, stored):
    y, c = stored
    loss = _output(case.shape[:1], case.dtype, case)
    grad = _output(case.shape, case.dtype, case)
    info = backend.bpmll(_place(y, case, "in"), case.label_dtype, _place(c, case, "in"), case.dtype, loss, grad,
                         **case.opts())
    return {"loss": loss.copy(), "grad": grad.copy()}, info


def _run_scale(backend, case, stored):
    scale, x = stored
    x = _place(x, case, "in")
    out = x if case.in_place else _output(case.shape, case.dtype, case)
    info = backend.scale_rows(_place(scale, case, "in"), x, out, case.dtype, **case.opts())
    return {"out": out.copy()}, info


def _forward(backend, case, y, x, mask, concordance):
    loss = _output(case.shape, case.dtype, case)
    stats = _place(np.full((case.shape[0], 5), SENTINEL), case, "out")
    info = backend.correlation_forward(y, x, mask, case.dtype, EPSILON, concordance, loss, stats, **case.opts())
    return loss, stats, info


def _run_correlation(backend, case, stored):
    y, x, mask, g = stored
    concordance = case.op.startswith("ccc")
    y, x, g = (_place(a, case, "in") for a in (y, x, g))
    mask = None if mask is None else _place(mask, case, "mask")
    loss, stats, info = _forward(backend, case, y, x, mask, concordance)
    if not case.op.endswith("_grad"):
        return {"loss": loss.copy(), "row_stats": stats.copy()}, info
    outputs = {"row_stats": stats.copy()}
    grad_y = _output(case.shape, case.dtype, case) if case.grad_y_true else None
    if case.in_place:
        grad_x = _place(g, case, "in")  # a copy of g, written over
        upstream = grad_x
    else:
        grad_x = _output(case.shape, case.dtype, case)
        upstream = g
    info = backend.correlation_backward(upstream, y, x, mask, stats, case.dtype, EPSILON, concordance, grad_y, grad_x,
                                        **case.opts())
    outputs["grad_y_pred"] = grad_x.copy()
    if grad_y is not None:
        outputs["grad_y_true"] = grad_y.copy()
    else:
        # The same grad_y_pred as when y_true's gradient is wanted.
        other_y, other_x = _output(case.shape, case.dtype, case), _output(case.shape, case.dtype, case)
        backend.correlation_backward(g, y, x, mask, stats, case.dtype, EPSILON, concordance, other_y, other_x,
                                     **case.opts())
        outputs["grad_y_pred (with grad_y_true)"] = other_x.copy()
    return outputs, info


def prepare(case):
    """The case's inputs in storage form (what the kernels read) and their float64 values."""
    if case.op == "bpmll_loss":
        y, c = bpmll_inputs(case)
        stored = (nx.to_storage(y, case.label_dtype), nx.to_storage(c, case.dtype))
        return stored, (nx.to_f64(stored[0], case.label_dtype), nx.to_f64(stored[1], case.dtype))
    if case.op == "bpmll_loss_grad":
        scale, x = scale_inputs(case)
        stored = (nx.to_storage(scale, case.dtype), nx.to_storage(x, case.dtype))
        return stored, tuple(nx.to_f64(a, case.dtype) for a in stored)
    y, x, mask, g = correlation_inputs(case)
    stored = (nx.to_storage(y, case.dtype), nx.to_storage(x, case.dtype), mask, nx.to_storage(g, case.dtype))
    return stored, (nx.to_f64(stored[0], case.dtype), nx.to_f64(stored[1], case.dtype), mask,
                    nx.to_f64(stored[3], case.dtype))


def execute(backend, case, stored):
    if case.op == "bpmll_loss":
        return _run_bpmll(backend, case, stored)
    if case.op == "bpmll_loss_grad":
        return _run_scale(backend, case, stored)
    return _run_correlation(backend, case, stored)


def judge(case, values, outputs, out):
    """Checks outputs (storage arrays) against the references; records into out."""
    tol = TOLERANCE[case.dtype]
    f64 = lambda a: nx.to_f64(a, case.dtype)  # noqa: E731
    if case.op == "bpmll_loss":
        y, c = values
        with np.errstate(all="ignore"):
            ref_loss, ref_grad = reference64.bpmll(y, c)
        if case.inputs == "docs_table":
            doc_loss, doc_grad = DOCS_TABLE[case.shape[1]]
            out.check("reference vs docs/semantics.md loss", ref_loss, doc_loss, 0.0)
            out.check("reference vs docs/semantics.md grad", ref_grad, doc_grad, 0.0)
        out.check("loss", f64(outputs["loss"]), ref_loss, tol)
        out.check("grad", f64(outputs["grad"]), ref_grad, tol)
        if case.inputs == "no_pairs":
            out.require(not np.any(f64(outputs["grad"])), "grad: rows without pairs must have gradient exactly 0")
        return
    if case.op == "bpmll_loss_grad":
        scale, x = values
        wide = np.float64 if case.dtype == "float64" else np.float32
        with np.errstate(all="ignore"):
            product = x.astype(wide) * scale.astype(wide)[:, None]
            exact = nx.round_like_kernel(product, case.dtype)
            ref = x * scale[:, None]
        got = outputs["out"]
        nan_got, nan_want = np.isnan(f64(got)), np.isnan(f64(exact))
        same = np.array_equal(nan_got, nan_want) and np.array_equal(
            np.where(nan_want, 0, f64(got)), np.where(nan_want, 0, f64(exact)))
        out.require(same, "out: not the once-rounded product (bit for bit, NaN positions)")
        out.check("out vs float64 product", f64(got), ref, tol)
        return
    y, x, mask, g = values
    concordance = case.op.startswith("ccc")
    with np.errstate(all="ignore"):
        ref_loss, ref_stats, ref_gradients = reference64.correlation(y, x, mask, concordance, EPSILON)
    stats = outputs["row_stats"]
    out.require(np.array_equal(stats[:, 0], ref_stats[:, 0]), "row_stats: counts differ")
    nonfinite_rows = np.isnan(ref_stats[:, 1:2]) | np.zeros((1, 2), bool)
    acc_tol = TOLERANCE[nx.accumulation(case.dtype)]
    out.check("row_stats means", stats[:, 1:3], ref_stats[:, 1:3], acc_tol, skip=nonfinite_rows)
    for column in (3, 4):
        out.check("row_stats m2", stats[:, column], ref_stats[:, column], acc_tol, skip=nonfinite_rows[:, 0])
    if not case.op.endswith("_grad"):
        out.check("1 - loss", f64(outputs["loss"]) - 1, ref_loss - 1, tol)
        return
    with np.errstate(all="ignore"):
        ref_grad_y, ref_grad_x = ref_gradients(g)
    out.check("grad_y_pred", f64(outputs["grad_y_pred"]), ref_grad_x, tol)
    if "grad_y_true" in outputs:
        out.check("grad_y_true", f64(outputs["grad_y_true"]), ref_grad_y, tol)
    else:
        out.require(np.array_equal(nx.bits(outputs["grad_y_pred"]), nx.bits(outputs["grad_y_pred (with grad_y_true)"])),
                    "grad_y_pred differs from the run that also computes grad_y_true")


def failed_result(case, backend_name, problem):
    """The result of a case that could not run."""
    return {"name": case.name, "op": case.op, "dtype": case.dtype, "label_dtype": case.label_dtype,
            "shape": list(case.shape), "launch": None, "expected_launch": case.launch, "grid": None,
            "pieces_per_row": None, "inputs": case.summary(), "backend": backend_name, "max_abs_err": None,
            "max_rel_err": None, "tolerance": TOLERANCE[case.dtype], "deterministic": None, "passed": False,
            "problems": [problem], "seconds": 0.0}


def run_case(backend, case, inject_error=False):
    """Runs `case` on `backend` twice and judges it; a dict for gpu_check.json."""
    started = time.perf_counter()
    out = Outcome()
    info = {}
    deterministic = None
    try:
        stored, values = prepare(case)
        first, info = execute(backend, case, stored)
        second, _ = execute(backend, case, stored)
        deterministic = all(np.array_equal(nx.bits(first[k]), nx.bits(second[k])) for k in first)
        out.require(deterministic, "two runs gave different bits")
        if inject_error:
            key = next(k for k in first if first[k].size)
            flat = first[key].reshape(-1)
            finite = np.flatnonzero(np.isfinite(nx.to_f64(flat, case.dtype if key != "row_stats" else "float64")))
            if finite.size:
                flat[finite[0]] = nx.to_storage(np.array([1e3]), case.dtype if key != "row_stats" else "float64")[0]
        judge(case, values, first, out)
        if getattr(backend, "checks_launch", True):
            out.require(info.get("shape") == case.launch,
                        f"launch shape {info.get('shape')!r}, expected {case.launch!r}")
    except Exception as e:  # noqa: BLE001 - a case that raises fails, the run goes on
        out.problems.append(f"{type(e).__name__}: {e}")
        out.problems.append(traceback.format_exc(limit=3)[-1500:])
    return {
        "name": case.name,
        "op": case.op,
        "dtype": case.dtype,
        "label_dtype": case.label_dtype,
        "shape": list(case.shape),
        "launch": info.get("shape"),
        "expected_launch": case.launch if getattr(backend, "checks_launch", True) else None,
        "grid": info.get("grid"),
        "pieces_per_row": info.get("pieces_per_row"),
        "inputs": case.summary(),
        "backend": getattr(backend, "backend", "?"),
        "max_abs_err": out.max_abs,
        "max_rel_err": out.max_rel,
        "tolerance": TOLERANCE[case.dtype],
        "deterministic": deterministic,
        "passed": not out.problems,
        "problems": out.problems,
        "seconds": round(time.perf_counter() - started, 4),
    }
