"""Checks of a path's outputs against the float64 numpy references
(numpy_reference.py), shared by the TF paths (tests/test_properties.py), the
JAX path (tests/test_jax_ops.py) and the keras.ops forms
(tests/test_keras_ops_path.py): the element classes, the dtype-aware error
bounds of BP-MLL and of Pearson/CCC, the edge-case tables and the drawn
examples. Each test file runs its own path and hands the results here as
arrays holding their values exactly in float64.

Framework-free: numpy only at import (it runs where TensorFlow is missing and
where JAX is); hypothesis is imported by the functions that draw examples.

Every element's class is stated by the reference: NaN where it is NaN, the
same infinity where it is infinite, exactly 0 (or 1) where that value is
structural (rows without pairs, masked steps, degenerate rows), and otherwise
within a dtype-aware error bound, where a value beyond the output type's
range must read as the infinity of its sign.
"""

from typing import NamedTuple

import numpy as np

from . import numpy_reference as npref

DTYPES = ["float16", "bfloat16", "float32", "float64"]
# Rounding unit of the accumulation type (float32 for the 16-bit types) and
# of the output type; the smallest normal and the largest finite number of
# the output type.
ACC_EPS = {"float16": 2.0**-24, "bfloat16": 2.0**-24, "float32": 2.0**-24, "float64": 2.0**-53}
OUT_EPS = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 2.0**-24, "float64": 2.0**-53}
TINY = {"float16": 2.0**-14, "bfloat16": 2.0**-126, "float32": 2.0**-126, "float64": 2.0**-1022}
LARGEST = {
    "float16": float(np.finfo(np.float16).max),
    "bfloat16": (2 - 2.0**-7) * 2.0**127,  # numpy has no bfloat16
    "float32": float(np.finfo(np.float32).max),
    "float64": float(np.finfo(np.float64).max),
}
INF, NAN = np.inf, np.nan


def assert_elements(got, want, tol, exact, dtype, what, largest=None):
    """Each element in the class its reference value states:
    NaN -> NaN; +-inf -> the same infinity; exact -> equal (0 or 1, bit for
    bit); otherwise finite and within tol of want, or the infinity of want's
    sign where want is within tol of the largest representable value or
    beyond it (a finite output cannot be within tol of such a want).
    largest: the output type's by default, or per element (an intermediate
    in the accumulation type may bound it)."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    tol = np.broadcast_to(np.asarray(tol, np.float64), want.shape)
    exact = np.broadcast_to(np.asarray(exact, bool), want.shape)
    largest = np.broadcast_to(LARGEST[dtype] if largest is None else np.asarray(largest, np.float64), want.shape)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    with np.errstate(invalid="ignore", over="ignore"):
        nan_want = np.isnan(want)
        inf_want = np.isinf(want)
        approx = ~nan_want & ~inf_want & ~exact
        close = np.isfinite(got) & (np.abs(got - want) <= tol)
        overflow = np.isinf(got) & (np.sign(got) == np.sign(want)) & (np.abs(want) + tol >= largest)
        ok = np.where(nan_want, np.isnan(got), False)
        ok |= inf_want & (got == want)
        ok |= exact & ~nan_want & ~inf_want & (got == want)
        ok |= approx & (close | overflow)
    if not ok.all():
        lines = [
            f"  {what}{tuple(int(k) for k in i)}: got {got[tuple(i)]!r}, want {want[tuple(i)]!r}"
            f" ({'exact' if exact[tuple(i)] else f'tol {tol[tuple(i)]:.3g}'})"
            for i in np.argwhere(~ok)[:10]
        ]
        raise AssertionError(f"{int((~ok).sum())} of {ok.size} elements of {what} wrong ({dtype}):\n" + "\n".join(lines))


def with_cases(table, after=None, **cases):
    """A copy of an edge-case table with `cases` added after the case named
    `after` (at the end without one); a case whose name the table holds
    replaces that case where it stands."""
    assert after is None or after in table, after
    added = {name: case for name, case in cases.items() if name not in table}
    out = {}
    for name, case in table.items():
        out[name] = cases.get(name, case)
        if name == after:
            out.update(added)
    if after is None:
        out.update(added)
    return out


# --------------------------------------------------------------------------
# Drawn examples (hypothesis)
# --------------------------------------------------------------------------


def lengths(max_short):
    """Short rows, and rows around the CPU kernels' chunk of 2048."""
    from hypothesis import strategies as st

    return st.one_of(st.integers(1, max_short), st.sampled_from([2047, 2048, 2049, 4097]))


def inject(rng, values, count, choices):
    """Puts one of `choices` at count random places."""
    for _ in range(count):
        if values.size:
            values.flat[rng.integers(values.size)] = rng.choice(choices)


def draw_bpmll_example(data):
    """Labels y (hard, soft or mixed, of a drawn density) and logits c as
    draw_bpmll_rows makes them; the upstream gradient of each row; the
    logits' dtype and the labels' dtype."""
    from hypothesis import strategies as st

    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    rows = data.draw(st.integers(0, 5), label="rows")
    labels = data.draw(lengths(70), label="labels")
    label_kind = data.draw(st.sampled_from(["hard", "soft", "mixed"]), label="label_kind")
    label_dtype = data.draw(
        st.sampled_from(
            ["same", "float32", "float64", "bool", "int32", "int64", "uint8"] if label_kind == "hard" else ["same", "float32"]
        ),
        label="label_dtype",
    )
    density = data.draw(st.floats(0, 1), label="density")

    def make_labels(rng, shape):
        hard = (rng.random(shape) < density).astype(np.float64)
        soft = np.clip(rng.random(shape) * 2 * density, 0, 1)
        return {"hard": hard, "soft": soft, "mixed": np.where(rng.random(shape) < 0.5, hard, soft)}[label_kind]

    y, c, upstream = draw_bpmll_rows(data, (rows, labels), make_labels)
    return y, c, upstream, dtype, dtype if label_dtype == "same" else label_dtype


def draw_bpmll_rows(data, shape, make_labels):
    """Labels make_labels(rng, shape) with rows without pairs mixed in, and
    logits at a drawn scale from 1e-3 to 1e4 and offset, with NaN, +-inf and
    huge finite logits (+-100, +-800); float64. Then the upstream gradient
    of each row."""
    from hypothesis import strategies as st

    log_scale = data.draw(st.floats(-3, 4), label="log10_scale")
    offset = data.draw(st.sampled_from([0.0, 1.0, -1.0]), label="offset_sign") * 10**log_scale
    specials = data.draw(st.sampled_from([0, 0, 1, 3]), label="non_finite_logits")
    huge = data.draw(st.sampled_from([0, 0, 1, 4]), label="huge_logits")
    no_pairs = data.draw(st.sampled_from([0, 0, 1, 2]), label="rows_without_pairs")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))

    rows = shape[0]
    y = make_labels(rng, shape)
    # CPU kernels run with denormals flushed to zero, so the terms of labels
    # near the accumulation type's underflow vanish (README: soft labels
    # below 1e-20 lose precision).
    y[y < 1e-20] = 0
    for _ in range(no_pairs if rows else 0):
        y[rng.integers(rows)] = rng.choice([0.0, 1.0])
    c = offset + 10**log_scale * rng.standard_normal(shape)
    inject(rng, c, huge, [100.0, -100.0, 800.0, -800.0])
    inject(rng, c, specials, [np.nan, np.inf, -np.inf])
    return y, c, rng.uniform(0.5, 1.5, size=rows)


def make_sequences(data, rng, shape):
    """Targets y and predictions x with their own scales, offsets and
    correlation; some rows constant."""
    from hypothesis import strategies as st

    log_scales = [data.draw(st.floats(-3, 4), label=f"log10_scale_{v}") for v in "yx"]
    offsets = [data.draw(st.floats(-10, 10), label=f"offset_{v}_in_scales") for v in "yx"]
    coupling = data.draw(st.floats(-1, 1), label="coupling")
    z = rng.standard_normal(shape)
    noise = rng.standard_normal(shape)
    y = (offsets[0] + z) * 10 ** log_scales[0]
    x = (offsets[1] + coupling * z + np.sqrt(1 - coupling**2) * noise) * 10 ** log_scales[1]
    for _ in range(data.draw(st.sampled_from([0, 0, 1, 2]), label="constant_rows")):
        if shape[0]:
            row = rng.integers(shape[0])
            target = y if rng.random() < 0.5 else x
            target[row] = target[row, 0]
    return y, x


def make_mask(data, rng, shape):
    """None, a scattered mask or a padding mask."""
    from hypothesis import strategies as st

    kind = data.draw(st.sampled_from(["none", "scattered", "padding"]), label="mask")
    if kind == "none":
        return None
    if kind == "scattered":
        return rng.random(shape) < data.draw(st.floats(0, 1), label="valid_share")
    return np.arange(shape[1])[None, :] < rng.integers(0, shape[1] + 1, size=(shape[0], 1))


class CorrelationExample(NamedTuple):
    concordance: bool
    y: np.ndarray
    x: np.ndarray
    upstream: np.ndarray
    mask: object  # None or a bool array
    epsilon: float
    dtype: str
    rank_3: bool
    mask_dtype: str


def draw_correlation_example(data, mask_dtypes=None):
    """Pearson or CCC; targets and predictions with their own scales
    (make_sequences), a mask (make_mask) whose masked steps may hold NaN,
    NaN and +-inf mixed in; the upstream gradient of each step. mask_dtypes:
    where given, the dtype the path gets the mask in is drawn from it
    ("bool" without)."""
    from hypothesis import strategies as st

    concordance = data.draw(st.booleans(), label="concordance")
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = (data.draw(st.integers(0, 5), label="rows"), data.draw(lengths(60), label="steps"))
    rank_3 = data.draw(st.booleans(), label="rank_3")
    epsilon = data.draw(st.sampled_from([0.0, 1e-7, 1e-3, 1.0]), label="epsilon")
    mask_dtype = "bool" if mask_dtypes is None else data.draw(st.sampled_from(mask_dtypes), label="mask_dtype")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    y, x = make_sequences(data, rng, shape)
    mask = make_mask(data, rng, shape)
    if mask is not None and data.draw(st.booleans(), label="nan_padding"):
        x[~mask] = np.nan  # masked steps may hold anything
    specials = data.draw(st.sampled_from([0, 0, 1, 3]), label="non_finite_values")
    inject(rng, y, specials // 2, [np.nan, np.inf, -np.inf])
    inject(rng, x, specials - specials // 2, [np.nan, np.inf, -np.inf])
    upstream = rng.uniform(0.5, 1.5, size=shape)
    return CorrelationExample(concordance, y, x, upstream, mask, epsilon, dtype, rank_3, mask_dtype)


# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def bpmll_expected(y, c, cross_check=False):
    """The rule's loss and gradient in float64; where a row is finite, short
    and its spread fits float64, the seed's pairwise formula instead (with
    cross_check, asserted to agree with the rule there)."""
    rule = npref.bpmll_rule(y, c)
    loss, grad = rule.loss.copy(), rule.grad.copy()
    finite = np.all(np.isfinite(c), axis=1)
    if y.shape[1] <= 300 and np.any(finite):
        spread = np.ptp(np.where(np.isfinite(c), c, 0), axis=1) if c.size else np.zeros(len(c))
        rows = finite & (spread < 600)
        if np.any(rows):
            pair_loss, pair_grad = npref.bpmll_pairwise(y[rows], c[rows])
            if cross_check:
                np.testing.assert_allclose(rule.loss[rows], pair_loss, rtol=1e-9, atol=1e-300)
                scale = rule.grad_scale[rows] + 1e-300
                assert np.all(np.abs(rule.grad[rows] - pair_grad) <= 1e-9 * scale)
            loss[rows], grad[rows] = pair_loss, pair_grad
    return rule, loss, grad


def factor_underflow(got, want, want_loss, upstream, dtype):
    """The elements a row of loss at most 2^24 may flush to exactly 0: the
    fused core forms those gradients as loss * e^(...), and a factor below
    the accumulation type's smallest normal number flushes
    (docs/semantics.md). Rows of larger loss take the direct form and keep
    them (test_jax_ops.py's
    test_bpmll_gradient_stays_representable_under_a_huge_loss)."""
    floor = 2.0**-1000 if dtype == "float64" else 2.0**-100  # near the accumulation type's smallest normal
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        ratio = np.abs(want) / (upstream[:, None] * np.abs(want_loss)[:, None])
        small_loss = (np.abs(want_loss) <= 2.0**24)[:, None]
        return (got == 0) & np.isfinite(want) & (want != 0) & small_loss & (ratio < floor)


def check_bpmll(loss, grad, y_seen, c_seen, g_seen, dtype, *, pairwise=False, cross_check=False,
                cached_grad=False, factor_flush=False):
    """A path's loss (rows,) and gradient (rows, labels) of sum(g * loss),
    as float64 arrays, against the numpy references, element by element.
    y_seen, c_seen, g_seen: the labels, logits and upstream gradient as the
    path got them, in float64; dtype: the logits' (and outputs') dtype.
    pairwise: the seed's pairwise formula where it applies
      (bpmll_expected), with cross_check against the rule there; else the
      rule alone.
    cached_grad: the path caches the row's gradient in the output dtype
      before scaling it by g (the fused ops' second output), so g * grad may
      be finite where the cached gradient is already inf (README, Limits);
      else it is formed in the accumulation type.
    factor_flush: the fused core's documented flush of gradient elements
      (factor_underflow) is accepted; the rest is checked."""
    if pairwise:
        rule, want_loss, want_grad = bpmll_expected(y_seen, c_seen, cross_check)
    else:
        rule = npref.bpmll_rule(y_seen, c_seen)
        want_loss, want_grad = rule.loss, rule.grad
    loss_tol, grad_tol = bpmll_tolerances(y_seen, c_seen, g_seen, dtype, want_loss, want_grad, rule.grad_scale,
                                          cached_grad)
    with np.errstate(invalid="ignore", over="ignore"):
        want_grad = g_seen[:, None] * want_grad
    # The gradient of a row's loss is formed in the accumulation type (or
    # cached in the output type), then scaled by the upstream gradient g:
    # g * grad may be representable where grad is not.
    acc_largest = LARGEST["float64" if dtype == "float64" else "float32"]
    cached_largest = LARGEST[dtype] if cached_grad else acc_largest
    grad_largest = np.minimum(LARGEST[dtype], cached_largest * np.minimum(g_seen, 1))[:, None]
    got_grad = np.array(grad, np.float64)
    if factor_flush:
        known = factor_underflow(got_grad, want_grad, want_loss, g_seen, dtype)
        got_grad[known] = want_grad[known]
    assert_elements(loss, want_loss, loss_tol, rule.loss_exact_zero, dtype, "loss")
    assert_elements(got_grad, want_grad, grad_tol, rule.grad_exact_zero, dtype, "grad", grad_largest)


def _side_sums(weights, exponents, acc_eps):
    """One side of each row's factored sum, sum_j w_j e^{a_j} (P: w = y,
    a = -c; N: w = 1 - y, a = c), from the exact inputs in float64:
      size     the larger of |max_j a_j| (the shift the fused kernels take
               out of the sum) and |max_j (log w_j + a_j)| (the shift of
               the log-sum-exp forms); 0 for an empty side
      log_sum  log of the sum shifted by the latter (>= 0: its largest
               term is e^0)
      count    n, its number of terms
      weighted each term's own relative error (derived at
               bpmll_tolerances) weighted by its share of the sum, and
               capped at the whole term (a term that flushes loses itself,
               no more)
    over the terms of weight > 0 and finite exponent: a +inf exponent makes
    the row's loss infinite and a -inf one a term of exactly 0, whose
    elements the reference puts in a class of their own."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        on = (weights > 0) & np.isfinite(exponents)
        log_w = np.where(on, np.log(np.where(on, weights, 1)), 0)
        a = np.where(on, exponents, 0)
        log_terms = np.where(on, log_w + a, -np.inf)
        top = log_terms.max(axis=1, initial=-np.inf)
        some = np.isfinite(top)
        top = np.where(some, top, 0)
        shares = np.exp(log_terms - top[:, None])  # the terms over the largest: in [0, 1], 0 off the side
        total = np.where(some, shares.sum(axis=1), 1)
        largest_exponent = np.where(some, np.where(on, exponents, -np.inf).max(axis=1, initial=-np.inf), 0)
        size = np.maximum(np.abs(top), np.abs(largest_exponent))
        term_error = acc_eps * (72 + 3 * np.abs(log_w) + 2 * np.abs(a) + size[:, None])
        weighted = (shares * np.minimum(term_error, 1)).sum(axis=1) / total
        return size, np.log(total), on.sum(axis=1), weighted


def bpmll_tolerances(y, c, g, dtype, want_loss, want_grad, grad_scale, cached_grad=False):
    """check_bpmll's error bounds: (loss_tol (rows,), grad_tol (rows,
    labels)) for a path's loss and its gradient of sum(g * loss), given the
    exact inputs y, c, g in float64, the reference's loss and gradient (of
    the loss, before g) and grad_scale (npref.BpmllRule).

    Derivation. Every path takes the same steps in the accumulation type
    (rounding unit u: float32's for 16-bit inputs, else the input's): per
    row and side, a sum of positive terms w_j e^{a_j - s} shifted by its
    largest exponent s, P = e^{s_P} S_P and N = e^{s_N} S_N;
    log E = s_P + s_N + log S_P + log S_N - log pairs and E = e^{log E}
    (the kernels' product form for |s_P + s_N| < 60 rounds less); each
    gradient side w_j e^{+-c_j} (other side) / pairs, formed as one
    exponential of those parts or as E e^{(+-c_j - s) - log S}. To first
    order in u:
    - a term's exponent log w_j + a_j - s takes at most three roundings,
      each relative to a partial result below |log w_j| + |a_j| + |s|: an
      absolute error of u (3 |log w_j| + 2 |a_j| + |s|), which is the
      term's relative error. Exponentials and logarithms add a few ulp
      (the CPU kernels' polynomial exp is within 1.5 ulp): 8u; and the
      kernels' one-loop form for hard labels, which sums around a chunk's
      first logit when the chunk's logits lie within 60 of each other, up
      to 64u more;
    - S, a sum of n positive terms in any order (SIMD lanes, chunks,
      trees): relative error at most (n - 1) u, plus the terms' own errors
      weighted by their shares of S. A term far below the shift weighs
      e^{a_j - s}, nothing, however large its |c_j|: the old bound,
      64 u max|c| sqrt(L), grew with logits whose terms vanish (20% at
      L = 4097 with one logit at 800 in float32);
    - log S: absolute error S's relative error, plus u |log S|;
    - pairs = (sum y)(sum 1 - y): exact for 0/1 labels, else two sums of n
      terms: (2n + 1) u;
    - log E: its parts meet in four additions, each rounding relative to
      at most |s_P| + |s_N| + |log S_P| + |log S_N| + log pairs;
    - E: relative error log E's absolute error, plus an ulp.
    A gradient side has the same parts, and its own +-c_j and log w_j:
    4u (|c_j| + |log y_j| + |log(1 - y_j)|) more, each side against its own
    size, so that an entry is bounded against the sum of its two sides
    (grad_scale). The sums' (n - 1) u hold as they stand; the rest of the
    accumulation's bound is doubled for second-order terms. Then the output: one rounding of the loss; one of the gradient,
    two where the fused ops cache it in the output type before scaling it
    by g there (unless g is a power of two, a product that is exact). The
    float64 reference (long double, or the seed's pairwise sum where it
    applies: up to 300^2 terms of exponents spread up to 600) is within
    2^-53 (8 + 2 L + 2 spread) of its value.
    Float32 at L = 4097: about 5e-4 for 0/1 labels, 1e-3 for soft ones,
    nearly all of it the (n - 1) u of the sums."""
    u = ACC_EPS[dtype]
    out = OUT_EPS[dtype]
    labels = c.shape[1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        finite_c = np.where(np.isfinite(c), c, 0)
        size_p, log_sum_p, count_p, weighted_p = _side_sums(y, -c, u)
        size_n, log_sum_n, count_n, weighted_n = _side_sums(1 - y, c, u)
        soft = np.any((y != 0) & (y != 1), axis=1)
        pairs = np.maximum(y.sum(axis=1), 1) * np.maximum((1 - y).sum(axis=1), 1)
        pairs_error = np.where(soft, (2 * labels + 1) * u, 0)
        parts = size_p + size_n + log_sum_p + log_sum_n + np.abs(np.log(pairs))
        # The sums' (n - 1) u are rigorous as they stand; the rest is doubled.
        sums = u * (np.maximum(count_p - 1, 0) + np.maximum(count_n - 1, 0)) + pairs_error
        row_rtol = sums + 2 * (weighted_p + weighted_n + u * (log_sum_p + log_sum_n) + 4 * u * parts + 8 * u)
        spread = np.minimum(np.ptp(finite_c, axis=1) if labels else np.zeros(len(c)), 600)
        reference = 2.0**-53 * (8 + 2 * labels + 2 * spread)
        loss_acc = (row_rtol + reference) * np.abs(want_loss)
        loss_tol = loss_acc + out * (np.abs(want_loss) + loss_acc) + 4 * TINY[dtype]
        own = np.abs(finite_c) + np.abs(np.log(np.where(y > 0, y, 1))) + np.abs(np.log(np.where(y < 1, 1 - y, 1)))
        entry_rtol = row_rtol[:, None] + 2 * 4 * u * own + reference[:, None]
        scale = np.minimum(grad_scale, np.finfo(np.float64).max)
        grad_acc = g[:, None] * scale * entry_rtol
        exact_product = np.frexp(g)[0] == 0.5
        roundings = np.where(cached_grad & ~exact_product, 2, 1)[:, None]
        want = np.abs(g[:, None] * want_grad)
        grad_tol = grad_acc + roundings * out * (1 + out) * (want + grad_acc) + 4 * TINY[dtype]
    return loss_tol, grad_tol


def cpu_build_rtol(dtype, steps, condition=1.0):
    """How far the CPU builds (TFL_CPU_ISA baseline, avx2, avx512) may
    differ from each other, relative to an output's scale, for rows of
    `steps` elements in `dtype` (float32 accumulation for 16-bit types).

    They run the same code (tests/test_bpmll.py and test_correlation.py
    find them not bit-equal) and differ in two ways only: the order of the
    chunk loops' sums (SIMD lanes: 4 floats or 2 doubles a vector in the
    baseline build, 8/4 in AVX2, 16/8 in AVX-512) and FMA contraction (the
    exp polynomial's and the moments' multiply-adds). A sum's rounding error
    is a sum of up to `depth` roundings, depth = 2048 / lanes (a lane's
    share of a 2048-element chunk) + 4 (the lanes' reduction) + chunks (the
    merges), each at most u times the magnitude of the terms; as the
    roundings are independent, it stays within a few sqrt(depth) u of the
    sums' magnitude (Higham, Accuracy and Stability, 4.2; the worst case,
    depth u, is far from reached): 4 sqrt(depth) u for each build, twice
    that between two, times `condition`, the magnitude of the terms over
    the output's scale (1 for BP-MLL's sums of positive terms). FMA
    contraction and the exp's polynomial move each result by an ulp or two:
    8u more. Then a 16-bit output may round to the neighbouring value: one
    ulp of the output type."""
    acc = "float64" if dtype == "float64" else "float32"
    lanes = 2 if acc == "float64" else 4
    depth = min(steps, 2048) / lanes + 4 + -(-steps // 2048)
    rtol = (8 * np.sqrt(depth) * condition + 8) * ACC_EPS[dtype]
    return rtol + (2 * OUT_EPS[dtype] if dtype in ("float16", "bfloat16") else 0)


# (y, c, dtype): the cases of the rule, each through every path.
BPMLL_EDGE_CASES = {
    "no_pairs_huge_float32": ([[0, 0], [1, 1], [0, 0]], [[100, 0], [-100, 100], [-100, -100]], "float32"),
    "no_pairs_huge_float64": ([[0, 0], [1, 1]], [[800, -800], [-800, 800]], "float64"),
    "no_pairs_huge_bfloat16": ([[0, 0, 0], [1, 1, 1]], [[100, 0, -100], [-100, 100, 0]], "bfloat16"),
    "no_pairs_infinite": ([[0, 0, 0], [1, 1, 1]], [[INF, -INF, 0], [-INF, INF, 5]], "float32"),
    "nan_logit_row": ([[1, 0], [1, 0]], [[NAN, 0], [0, 0]], "float32"),
    "nan_logit_row_without_pairs": ([[0, 0], [1, 0]], [[NAN, 0], [0, 0]], "float32"),
    "nan_logit_float16": ([[1, 0, 0], [0, 1, 0]], [[0, NAN, 1], [1, 2, 3]], "float16"),
    "positive_at_plus_inf": ([[1, 0]], [[INF, 0]], "float32"),
    "positive_at_minus_inf": ([[1, 0]], [[-INF, 0]], "float32"),
    "both_at_plus_inf": ([[1, 0]], [[INF, INF]], "float32"),
    "negatives_at_both_infinities": ([[1, 0, 0]], [[0, INF, -INF]], "float32"),
    "negative_at_minus_inf_only": ([[1, 0], [1, 0]], [[0, -INF], [5, -INF]], "float64"),
    "positive_at_minus_inf_soft": ([[0.5, 1, 0, 0.25]], [[0, -INF, 3, 1]], "float32"),
    "soft_sides_both_infinite": ([[0.5, 0.25, 0.75, 0.5]], [[0, INF, -INF, 1]], "float32"),
    "log_domain_float32": ([[1, 0], [1, 0]], [[800, 800], [100, 90]], "float32"),
    "log_domain_float64": ([[1, 0, 0]], [[800, 800, -800]], "float64"),
    "soft_sides_overflow": ([[0.5, 1, 0]], [[0, -100, 100]], "float32"),
    "loss_overflows_but_some_gradients_do_not": ([[1, 1, 0], [1, 0, 1]], [[800, 0, 800], [100, 50, -100]], "float32"),
    "loss_overflows_float64": ([[1, 0, 1, 0]], [[2000, 2000, 0, 0]], "float64"),
    "overflow_float16": ([[1, 0], [1, 0]], [[-8, 8], [8, -8]], "float16"),
    "soft_label_in_an_overflowing_row_float64": ([[1, 0, 0.5]], [[-400.123, 400.456, 0.789]], "float64"),
    "infinite_side_against_an_overflowing_one": ([[0.5, 1, 0]], [[0, -800, INF]], "float64"),
    "huge_loss_small_gradient_float32": ([[1, 0, 0]], [[-40, 40, -49]], "float32"),
}


def bpmll_edge_case(case):
    """(y, c, upstream, dtype) of a BPMLL_EDGE_CASES entry: float64 arrays
    and the upstream gradient every path gets."""
    y, c, dtype = case
    y, c = np.array(y, np.float64), np.array(c, np.float64)
    return y, c, np.linspace(0.5, 1.5, len(y)), dtype


# --------------------------------------------------------------------------
# Pearson and CCC
# --------------------------------------------------------------------------


def check_correlation(loss, grad_y, grad_x, y_seen, x_seen, mask, epsilon, g_seen, concordance, dtype):
    """A path's per-step loss and gradients of sum(g * loss) with respect to
    y_true and y_pred, as float64 (rows, steps) arrays, against the numpy
    reference, element by element. y_seen, x_seen, g_seen: the targets,
    predictions and upstream gradient as the path got them, in float64;
    mask: None or (rows, steps), nonzero = valid step; epsilon as the path
    was given it (the ops round it to float32)."""
    shape = x_seen.shape
    # The ops' epsilon is a float attribute: float32 whatever the dtype.
    epsilon = float(np.float32(epsilon))
    valid_mask = None if mask is None else np.asarray(mask) != 0
    ref = npref.correlation(y_seen, x_seen, valid_mask, epsilon, g_seen, concordance)
    valid = np.ones(shape, bool) if valid_mask is None else valid_mask
    with np.errstate(invalid="ignore", over="ignore"):
        xv, yv = np.where(valid, x_seen, 0), np.where(valid, y_seen, 0)
        steps = np.maximum(valid.sum(axis=1), 1)
        mean_x, mean_y = xv.sum(axis=1) / steps, yv.sum(axis=1) / steps
        centred_x = np.where(valid, xv - mean_x[:, None], 0)
        centred_y = np.where(valid, yv - mean_y[:, None], 0)
        var_x, var_y = (centred_x**2).sum(axis=1) / steps, (centred_y**2).sum(axis=1) / steps
        spread = np.sqrt(var_x) + np.sqrt(var_y)
        # Rounding of the centred values is relative to each row's spread;
        # the CCC's mean gap is relative to the means. Then one output
        # rounding. (Rows holding NaN or inf are in the NaN class: their
        # bound is unused.)
        condition = 1 + (np.abs(mean_x) + np.abs(mean_y)) / np.where(spread > 0, spread, 1)
        rtol = (64 * ACC_EPS[dtype] * condition * np.sqrt(steps))[:, None]
        loss_tol = rtol * (1 + np.abs(1 - ref.loss)) + 2 * OUT_EPS[dtype] * np.abs(ref.loss)
        # Each gradient entry sums terms up to k |g| |c_other| / D and the
        # row's own entries; that sets the scale of its error.
        k = 2.0 if concordance else 1.0
        if concordance:
            denominator = var_x + var_y + (mean_x - mean_y) ** 2 + epsilon
        else:
            denominator = np.sqrt(var_x * var_y) + epsilon
        term = k * np.where(valid, np.abs(g_seen), 0).max(axis=1, initial=0) * np.maximum(
            np.abs(centred_x).max(axis=1, initial=0), np.abs(centred_y).max(axis=1, initial=0)
        )
        term = np.where(denominator > 0, term / np.where(denominator > 0, denominator, 1), 0)
        grad_peak = np.maximum(
            np.nan_to_num(np.abs(ref.grad_x), nan=0).max(axis=1, initial=0),
            np.nan_to_num(np.abs(ref.grad_y), nan=0).max(axis=1, initial=0),
        )
        scale = np.maximum(term, grad_peak)[:, None]
        grad_tols = [
            rtol * scale + 2 * OUT_EPS[dtype] * np.abs(np.nan_to_num(want)) + 4 * TINY[dtype]
            for want in (ref.grad_x, ref.grad_y)
        ]
    assert_elements(loss, ref.loss, loss_tol, ref.exact_loss, dtype, "loss")
    assert_elements(grad_x, ref.grad_x, grad_tols[0], ref.exact_grad, dtype, "grad_y_pred")
    assert_elements(grad_y, ref.grad_y, grad_tols[1], ref.exact_grad, dtype, "grad_y_true")


# A row of targets and one of predictions the cases start from.
CASE_Y = [0.5, -1.0, 2.0, 0.25, 1.5]
CASE_X = [0.2, -0.7, 1.1, 0.9, 0.4]
# (y, x, mask, epsilon, dtype): NaN and inf at valid and masked steps,
# degenerate rows, each through every path, Pearson and CCC.
CORRELATION_EDGE_CASES = {
    "nan_in_y_pred": ([CASE_Y, CASE_Y], [[0.2, NAN, 1.1, 0.9, 0.4], CASE_X], None, 1e-7, "float32"),
    "inf_in_y_pred": ([CASE_Y, CASE_Y], [CASE_X, [0.2, -0.7, INF, 0.9, 0.4]], None, 1e-7, "float32"),
    "minus_inf_in_y_true": ([[0.5, -1.0, 2.0, -INF, 1.5], CASE_Y], [CASE_X, CASE_X], None, 1e-7, "float64"),
    "nan_in_both_float16": (
        [[NAN, -1.0, 2.0, 0.25, 1.5], CASE_Y], [CASE_X, [0.2, -0.7, 1.1, 0.9, NAN]], None, 1e-3, "float16"
    ),
    "inf_bfloat16": ([CASE_Y, CASE_Y], [[INF, -0.7, 1.1, 0.9, 0.4], CASE_X], None, 1e-3, "bfloat16"),
    "masked_nan_and_inf_ignored": (
        [[0.5, -1.0, NAN, 0.25, 1.5], CASE_Y],
        [[0.2, -0.7, 1.1, INF, 0.4], [0.2, -0.7, 1.1, 0.9, -INF]],
        [[1, 1, 0, 0, 1], [1, 1, 1, 1, 0]],
        1e-7,
        "float32",
    ),
    "nan_at_valid_step_masked_row": (
        [CASE_Y, CASE_Y], [[NAN, -0.7, 1.1, 0.9, 0.4], CASE_X], [[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]], 1e-7, "float32"
    ),
    "constant_rows": ([[1.5] * 5, CASE_Y, [0.3] * 5], [CASE_X, [-2.0] * 5, [0.3] * 5], None, 1e-7, "float32"),
    "constant_equal_rows_epsilon_0": ([[0.3] * 5, CASE_Y], [[0.3] * 5, CASE_X], None, 0.0, "float64"),
    "one_and_no_valid_step": (
        [CASE_Y, CASE_Y, CASE_Y], [CASE_X, CASE_X, CASE_X], [[0, 0, 1, 0, 0], [0] * 5, [1] * 5], 1e-7, "float32"
    ),
}


def correlation_edge_case(case):
    """(y, x, upstream, mask, epsilon, dtype) of a CORRELATION_EDGE_CASES
    entry: float64 arrays, the upstream gradient every path gets, the mask
    as bool (or None)."""
    y, x, mask, epsilon, dtype = case
    y, x = np.array(y, np.float64), np.array(x, np.float64)
    mask = None if mask is None else np.array(mask, bool)
    return y, x, np.linspace(0.5, 1.5, x.size).reshape(x.shape), mask, epsilon, dtype
