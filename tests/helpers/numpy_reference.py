"""Float64 numpy references for the losses and their gradients, written from
the documented rules alone: no code shared with tf_fused_losses (which this
module must not import), so that every path of the package (the fused op,
the pure-TF fallback, both under XLA) is compared with the same yardstick.

BP-MLL, per row (labels y_j in [0, 1], logits c_j):
  P = sum_j y_j e^{-c_j}, N = sum_j (1 - y_j) e^{c_j}, pairs = |Y| |Ybar|
  1. a label outside [0, 1] or NaN: loss and whole gradient row NaN;
  2. else a NaN logit: loss and whole gradient row NaN;
  3. else no pairs (|Y| = 0 or |Ybar| = 0): loss 0, gradient exactly 0;
  4. else loss = P N / pairs,
     grad_j = ((1 - y_j) e^{c_j} P - y_j e^{-c_j} N) / pairs,
     in the log domain, and for infinite logits in IEEE extended arithmetic
     (e^{+inf} = inf, e^{-inf} = 0, 0 inf = NaN, inf - inf = NaN); a side of
     grad_j whose weight is 0 is exactly 0.
`bpmll_pairwise` is the seed's formula (a sum over all pairs of
exp(c_l - c_k)), for finite logits whose spread does not overflow float64.

Correlation (Pearson) and CCC, per row of predictions x, targets y and a
validity mask, with population moments over the valid steps (np.mean,
np.std); see `correlation`.
"""

import decimal

import numpy as np

# --------------------------------------------------------------------------
# BP-MLL
# --------------------------------------------------------------------------


def bpmll_pairwise(y, c):
    """The seed's pairwise BP-MLL loss and its gradient, float64, finite
    logits only. loss = sum_{k,l} y_k (1 - y_l) exp(c_l - c_k) / pairs;
    d/dc_j collects +exp(c_j - c_k) (j as the negative of a pair) and
    -exp(c_l - c_j) (j as the positive). Rows without pairs: 0 and 0."""
    y = np.asarray(y, np.float64)
    c = np.asarray(c, np.float64)
    assert np.all(np.isfinite(c)), "bpmll_pairwise takes finite logits"
    loss = np.zeros(y.shape[0])
    grad = np.zeros(y.shape)
    for i in range(y.shape[0]):
        pairs = y[i].sum() * (1 - y[i]).sum()
        if pairs == 0:
            continue
        # terms[k, l] = y_k (1 - y_l) exp(c_l - c_k)
        terms = y[i][:, None] * (1 - y[i])[None, :] * np.exp(c[i][None, :] - c[i][:, None])
        loss[i] = terms.sum() / pairs
        grad[i] = (terms.sum(axis=0) - terms.sum(axis=1)) / pairs
    return loss, grad


def _log_sum_exp(terms):
    """log sum e^terms of a 1-D array in extended arithmetic: -inf when empty
    or when every term is -inf, +inf when some term is +inf."""
    if terms.size == 0:
        return -np.inf
    top = terms.max()
    if np.isinf(top):
        return top
    return top + np.log(np.sum(np.exp(terms - top)))


class BpmllRule:
    """The rule's loss (rows,) and gradient (rows, labels), with the places
    where a 0 is structural (exact on every path: rows without pairs, a
    vanished side, e^{-inf}), as opposed to a float64 underflow; and
    grad_scale, |negative side| + |positive side| per element, the size
    against which a gradient's rounding error is measured."""

    def __init__(self, loss, grad, loss_exact_zero, grad_exact_zero, grad_scale):
        self.loss = loss
        self.grad = grad
        self.loss_exact_zero = loss_exact_zero
        self.grad_exact_zero = grad_exact_zero
        self.grad_scale = grad_scale


_DECIMAL = decimal.Context(prec=40, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])


def _overflows(exponent):
    """Finite exponents whose exponential overflows np.longdouble."""
    return np.isfinite(exponent) & (exponent > np.log(np.finfo(np.longdouble).max))


def _decimal_exp(exponent):
    """e^exponent as a Decimal, with e^{+inf} = Infinity, e^{-inf} = 0."""
    if np.isnan(exponent):
        return decimal.Decimal("NaN")
    if np.isinf(exponent):
        return decimal.Decimal("Infinity") if exponent > 0 else decimal.Decimal(0)
    with decimal.localcontext(_DECIMAL):
        return decimal.Decimal(np.format_float_positional(exponent, unique=True)).exp()


def bpmll_rule(y, c):
    """The BP-MLL rule of this module's docstring, row by row.

    Evaluated in np.longdouble (x87 extended precision on x86-64: range to
    about 1e4932), so that e^{|c|} of float64 logits near 800 and the two
    sides of a soft label's gradient do not overflow before they are
    subtracted; results are rounded to float64 (inf beyond its range)."""
    assert np.finfo(np.longdouble).maxexp > 4096, "needs an extended-range long double"
    yl = np.asarray(y, np.float64).astype(np.longdouble)
    cl = np.asarray(c, np.float64).astype(np.longdouble)
    rows, labels = yl.shape
    loss = np.zeros(rows)
    grad = np.zeros((rows, labels))
    loss_exact_zero = np.zeros(rows, bool)
    grad_exact_zero = np.zeros((rows, labels), bool)
    grad_scale = np.zeros((rows, labels))
    with np.errstate(all="ignore"):
        for i in range(rows):
            yi, ci = yl[i], cl[i]
            if not np.all((yi >= 0) & (yi <= 1)) or np.any(np.isnan(ci)):
                loss[i] = np.nan
                grad[i] = np.nan
                grad_scale[i] = np.nan
                continue
            n_pos, n_neg = yi.sum(), (1 - yi).sum()
            if n_pos == 0 or n_neg == 0:
                loss_exact_zero[i] = True
                grad_exact_zero[i] = True
                continue
            pos, neg = yi > 0, yi < 1
            log_p = _log_sum_exp(np.log(yi[pos]) - ci[pos])
            log_n = _log_sum_exp(np.log(1 - yi[neg]) + ci[neg])
            log_pairs = np.log(n_pos) + np.log(n_neg)
            log_loss = log_p + log_n - log_pairs
            loss[i] = np.float64(np.exp(log_loss))
            loss_exact_zero[i] = log_loss == -np.inf
            # Each side of grad_j: exactly 0 where its weight is 0, else the
            # exponential of its log (e^{-inf} = 0, NaN stays NaN).
            neg_exponent = np.where(neg, np.log(np.where(neg, 1 - yi, 1)) + ci + (log_p - log_pairs), -np.inf)
            pos_exponent = np.where(pos, np.log(np.where(pos, yi, 1)) - ci + (log_n - log_pairs), -np.inf)
            neg_side = np.where(neg, np.exp(neg_exponent), 0)
            pos_side = np.where(pos, np.exp(pos_exponent), 0)
            grad[i] = (neg_side - pos_side).astype(np.float64)
            grad_exact_zero[i] = (neg_exponent == -np.inf) & (pos_exponent == -np.inf)
            grad_scale[i] = (np.abs(neg_side) + np.abs(pos_side)).astype(np.float64)
            # Logits beyond about 11000 overflow even the long double: those
            # elements in decimal arithmetic (exponent range 10^999999).
            for j in np.flatnonzero(_overflows(neg_exponent) | _overflows(pos_exponent)):
                neg_dec = _decimal_exp(neg_exponent[j]) if neg[j] else decimal.Decimal(0)
                pos_dec = _decimal_exp(pos_exponent[j]) if pos[j] else decimal.Decimal(0)
                with decimal.localcontext(_DECIMAL):
                    grad[i, j] = float(neg_dec - pos_dec)
                    grad_scale[i, j] = float(abs(neg_dec) + abs(pos_dec))
    return BpmllRule(loss, grad, loss_exact_zero, grad_exact_zero, grad_scale)


# --------------------------------------------------------------------------
# Correlation and CCC
# --------------------------------------------------------------------------


class CorrelationResult:
    """Per-step loss and gradients d(sum_t g_t loss_t)/dy, /dx (rows, steps),
    and `exact`, the elements whose value is structural and must come out
    bit-exact on every path: masked steps (0), degenerate rows (loss 1,
    gradient 0), the loss of a row with a constant x or y (1), NaN rows."""

    def __init__(self, loss, grad_y, grad_x, exact_loss, exact_grad):
        self.loss = loss
        self.grad_y = grad_y
        self.grad_x = grad_x
        self.exact_loss = exact_loss
        self.exact_grad = exact_grad


def _centre(v):
    """Mean, centred values and population std of a 1-D array; a constant
    array is centred exactly (np.mean of n copies of v need not be v)."""
    if v.max() == v.min():
        return v[0], np.zeros_like(v), 0.0
    mean = np.mean(v)
    return mean, v - mean, np.std(v)


def correlation(y, x, mask, epsilon, upstream, concordance):
    """Per-step Pearson (concordance=False) or CCC loss of predictions x and
    targets y, (rows, steps) float64, and the gradients of sum_t g_t loss_t.

    Over a row's n valid steps, mx = mean x, cx_t = x_t - mx, sx = std x
    (population), likewise for y, and
      Pearson: loss_t = 1 - cx_t cy_t / D,   D = sx sy + eps
      CCC:     loss_t = 1 - 2 cx_t cy_t / D, D = sx^2 + sy^2 + (mx - my)^2 + eps
    on valid steps, 0 on masked steps whatever they hold. With w_t = g_t on
    valid steps, f = sum w cx cy, Wx = sum w cx, Wy = sum w cy, and
    d cx_t/dx_s = delta_ts - 1/n, the row's L = sum_t w_t loss_t has
      dL/dx_s = -k (w_s cy_s - Wy/n) / D + k f (dD/dx_s) / D^2,
      Pearson (k = 1): dD/dx_s = sy cx_s / (n sx)
      CCC (k = 2):     dD/dx_s = (2 cx_s + 2 (mx - my)) / n
    and dL/dy_s alike with x and y swapped. Conventions: a row with no valid
    step gives 0 everywhere; a NaN or inf at a valid step makes the row's
    loss and gradients NaN on its valid steps; Pearson rows with n < 2 or a
    constant x or y (and CCC rows with D = 0) give loss 1 and gradient 0.
    """
    y = np.asarray(y, np.float64)
    x = np.asarray(x, np.float64)
    valid = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
    g = np.asarray(upstream, np.float64)
    loss = np.zeros(x.shape)
    grad_y = np.zeros(x.shape)
    grad_x = np.zeros(x.shape)
    exact_loss = ~valid
    exact_grad = ~valid
    k = 2.0 if concordance else 1.0
    for i in range(x.shape[0]):
        v = valid[i]
        n = int(v.sum())
        if n == 0:
            continue
        xv, yv, w = x[i, v], y[i, v], g[i, v]
        if not (np.all(np.isfinite(xv)) and np.all(np.isfinite(yv))):
            loss[i, v] = grad_x[i, v] = grad_y[i, v] = np.nan
            exact_loss[i, v] = exact_grad[i, v] = True
            continue
        mx, cx, sx = _centre(xv)
        my, cy, sy = _centre(yv)
        if concordance:
            gap = mx - my
            d = sx**2 + sy**2 + gap**2 + epsilon
            degenerate = d == 0
        else:
            d = sx * sy + epsilon
            degenerate = n < 2 or sx == 0 or sy == 0 or d == 0
        if degenerate:
            loss[i, v] = 1.0
            exact_loss[i, v] = exact_grad[i, v] = True
            continue
        loss[i, v] = 1 - k * cx * cy / d
        if sx == 0 or sy == 0:
            exact_loss[i, v] = True  # cx cy = 0: loss exactly 1
        f, wx, wy = np.sum(w * cx * cy), np.sum(w * cx), np.sum(w * cy)
        if concordance:
            dd_dx = (2 * cx + 2 * gap) / n
            dd_dy = (2 * cy - 2 * gap) / n
        else:
            dd_dx = sy * cx / (n * sx)
            dd_dy = sx * cy / (n * sy)
        grad_x[i, v] = -k * (w * cy - wy / n) / d + k * f * dd_dx / d**2
        grad_y[i, v] = -k * (w * cx - wx / n) / d + k * f * dd_dy / d**2
        if sx == 0 and sy == 0:
            exact_grad[i, v] = True  # cx = cy = 0: every term is exactly 0
    return CorrelationResult(loss, grad_y, grad_x, exact_loss, exact_grad)


def correlation_total(y, x, mask, epsilon, upstream, concordance):
    """sum_t g_t loss_t of `correlation`: for finite-difference checks."""
    return float(np.sum(upstream * correlation(y, x, mask, epsilon, upstream, concordance).loss))
