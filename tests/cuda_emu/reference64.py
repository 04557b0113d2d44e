"""Float64 numpy references for the CUDA emulation tests.

Written from the definitions (cc/core/bpmll/bpmll_math.h and cc/core/correlation/correlation_math.h
state them), not from the kernels' code: no log-domain shifts, no parallel
merges, no per-row coefficient tables. The emulated kernels and the CPU ops
compile the same math headers, so comparing them with each other cannot see
an error in that shared code; these can. tests/test_cuda_emulation.py checks
the gradients here against central differences of the losses here.
"""

import numpy as np


def _f64(a):
    return np.asarray(a).astype(np.float64)


# --------------------------------------------------------------------------
# BP-MLL: E = P N / (|Y| |Ybar|), P = sum y e^{-c}, N = sum (1 - y) e^{c}
# --------------------------------------------------------------------------


def bpmll(y_true, y_pred):
    """(loss (rows,), d loss_i / d c_ij (rows, labels)) in float64.

    Rows without pairs (|Y| = 0 or |Ybar| = 0) give 0 and 0; a NaN logit
    or a label outside [0, 1] (NaN included) gives a NaN loss and NaN
    gradient for its row (the GPU's convention; the CPU op raises). A row
    with an infinite logit follows docs/semantics.md: P N / pairs and its
    derivative in IEEE extended arithmetic (_bpmll_extended_row)."""
    y, c = _f64(y_true), _f64(y_pred)
    rows = c.shape[0]
    loss = np.zeros(rows)
    grad = np.zeros(c.shape)
    for i in range(rows):
        yi, ci = y[i], c[i]
        if np.isnan(ci).any() or not np.all((yi >= 0) & (yi <= 1)):
            loss[i] = np.nan
            grad[i] = np.nan
            continue
        pairs = yi.sum() * (1 - yi).sum()
        if yi.sum() == 0 or (1 - yi).sum() == 0:
            continue
        if np.isinf(ci).any():
            loss[i], grad[i] = _bpmll_extended_row(yi, ci, pairs)
            continue
        # Any common shift cancels in P N; it only keeps exp() in range.
        s = np.median(ci) if ci.size else 0.0
        p = np.sum(yi * np.exp(-(ci - s)))
        n = np.sum((1 - yi) * np.exp(ci - s))
        loss[i] = p * n / pairs
        grad[i] = (-yi * np.exp(-(ci - s)) * n + (1 - yi) * np.exp(ci - s) * p) / pairs
    return loss, grad


def _bpmll_extended_row(y, c, pairs):
    """A row with pairs and an infinite logit (no NaN), straight from the
    definition in extended arithmetic: P = sum y e^{-c}, N = sum (1-y) e^{c},
    e^{+inf} = inf, e^{-inf} = 0, 0 * inf = inf - inf = NaN, and a term of
    weight 0 (y = 0 in P, y = 1 in N) exactly 0. Finite logits here must be
    moderate (no overflow of e^{|c|})."""
    with np.errstate(over="ignore", invalid="ignore"):
        e_pos, e_neg = np.exp(-c), np.exp(c)
        pos = np.where(y != 0, y * e_pos, 0.0)
        neg = np.where(y != 1, (1 - y) * e_neg, 0.0)
        p, n = pos.sum(), neg.sum()
        loss = p * n / pairs
        up = np.where(y != 1, (1 - y) * e_neg * p, 0.0)
        down = np.where(y != 0, y * e_pos * n, 0.0)
        return loss, (up - down) / pairs


# --------------------------------------------------------------------------
# Pearson / CCC per step: loss_t = 1 - k cx_t cy_t / D on valid steps
# --------------------------------------------------------------------------


def _centred(v, m):
    """Mean and centred values over the valid steps; a constant row gives
    its value and exact zeros (the mean is taken around the first valid
    value)."""
    valid = v[m]
    shift = valid[0]
    mean = shift + np.mean(valid - shift)
    if np.all(valid == shift):
        mean = shift
    return mean, np.where(m, v - mean, 0.0)


def correlation(y_true, y_pred, mask, concordance, epsilon=1e-7):
    """Per-step loss, row statistics (count, mean_x, mean_y, m2_x, m2_y) and
    a function g -> (d/dy_true, d/dy_pred) of sum_t g_t loss_t, in float64.
    x is y_pred, y is y_true. Degenerate rows follow correlation_math.h:
    no valid step: loss 0, gradient 0; Pearson with n < 2 or a constant
    side: loss 1 on valid steps, gradient 0. A NaN or +-inf in x or y at a
    valid step makes the row's loss and both gradients NaN on its valid
    steps (0 on masked ones) and its moments NaN (docs/semantics.md);
    masked steps may hold anything."""
    y, x = _f64(y_true), _f64(y_pred)
    valid = np.ones(x.shape, bool) if mask is None else np.asarray(mask, bool)
    rows, steps = x.shape
    loss = np.zeros(x.shape)
    stats = np.zeros((rows, 5))
    per_row = []
    for i in range(rows):
        m = valid[i]
        n = int(m.sum())
        stats[i, 0] = n
        if n == 0:
            per_row.append(None)
            continue
        if not (np.isfinite(x[i][m]).all() and np.isfinite(y[i][m]).all()):
            loss[i] = np.where(m, np.nan, 0.0)
            stats[i, 1:] = np.nan
            per_row.append(("nonfinite", m))
            continue
        mx, cx = _centred(x[i], m)
        my, cy = _centred(y[i], m)
        vx, vy = np.sum(cx * cx) / n, np.sum(cy * cy) / n
        stats[i, 1:] = mx, my, vx * n, vy * n
        if concordance:
            d = vx + vy + (mx - my) ** 2 + epsilon
            degenerate = d == 0
            k = 2.0
        else:
            d = np.sqrt(vx) * np.sqrt(vy) + epsilon
            degenerate = n < 2 or np.all(cx == 0) or np.all(cy == 0)
            k = 1.0
        loss[i] = np.where(m, 1.0 if degenerate else 1.0 - k * cx * cy / d, 0.0)
        per_row.append(None if degenerate else (m, n, mx, my, cx, cy, vx, vy, d))

    def gradients(upstream):
        g = _f64(upstream)
        grad_y, grad_x = np.zeros(x.shape), np.zeros(x.shape)
        for i, row in enumerate(per_row):
            if row is None:
                continue
            if isinstance(row[0], str):  # ("nonfinite", mask)
                grad_y[i] = grad_x[i] = np.where(row[1], np.nan, 0.0)
                continue
            m, n, mx, my, cx, cy, vx, vy, d = row
            w = np.where(m, g[i], 0.0)
            f = np.sum(w * cx * cy)
            # L = sum w - k f / D;  d cx_t / d x_s = m_s (delta_ts - 1/n)
            df_dx = np.where(m, w * cy - np.sum(w * cy) / n, 0.0)
            df_dy = np.where(m, w * cx - np.sum(w * cx) / n, 0.0)
            if concordance:
                dd_dx = np.where(m, 2 * cx / n + 2 * (mx - my) / n, 0.0)
                dd_dy = np.where(m, 2 * cy / n - 2 * (mx - my) / n, 0.0)
                k = 2.0
            else:
                sx, sy = np.sqrt(vx), np.sqrt(vy)
                dd_dx = np.where(m, sy * cx / (n * sx), 0.0)
                dd_dy = np.where(m, sx * cy / (n * sy), 0.0)
                k = 1.0
            grad_x[i] = -k * df_dx / d + k * f * dd_dx / d**2
            grad_y[i] = -k * df_dy / d + k * f * dd_dy / d**2
        return grad_y, grad_x

    return loss, stats, gradients


def correlation_loss_only(y_true, y_pred, mask, concordance, epsilon=1e-7):
    return correlation(y_true, y_pred, mask, concordance, epsilon)[0]
