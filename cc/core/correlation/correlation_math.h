// The per-element Pearson and CCC losses, per row. Shared by the CPU kernels
// and the CUDA kernels; includes no TensorFlow header.
//
// For a row of predictions x_t, targets y_t and validity m_t in {0, 1}, with
// n = sum_t m_t valid steps and population moments over the valid steps
//   mx = sum m x / n,  cx_t = x_t - mx,  vx = sum m cx^2 / n   (likewise y),
// the loss of step t is
//   Pearson: loss_t = 1 - cx_t cy_t / D,    D = sqrt(vx) sqrt(vy) + eps
//   CCC:     loss_t = 1 - 2 cx_t cy_t / D,  D = vx + vy + (mx - my)^2 + eps
// on valid steps and 0 on masked ones, so that mean over valid t of
// (1 - loss_t) is Pearson's r (resp. Lin's CCC), up to eps. Both read
// loss_t = 1 - scale cx_t cy_t with scale = k / D, k = 1 or 2.
//
// Gradient. With an upstream gradient g_t per step (not assumed uniform),
// w_t = m_t g_t and
//   f = sum_t w_t cx_t cy_t,  Wx = sum_t w_t cx_t,  Wy = sum_t w_t cy_t,
// the row's contribution is L = sum_t w_t - k f / D. Because
//   d cx_t / d x_s = m_s (delta_ts - 1/n),  d vx / d x_s = 2 m_s cx_s / n,
//   d mx / d x_s = m_s / n,  d f / d x_s = m_s (w_s cy_s - Wy / n),
// one gets
//   Pearson: d D / d x_s = m_s (sy / sx) cx_s / n   (sx = sqrt(vx)), so
//     dL/dx_s = m_s [ -(w_s cy_s - Wy/n) / D + (f / sx) sy cx_s / (n D^2) ]
//   CCC: d D / d x_s = m_s (2 cx_s + 2 (mx - my)) / n, so
//     dL/dx_s = m_s [ -2 (w_s cy_s - Wy/n) / D + 2 f (2 cx_s + 2 (mx - my)) / (n D^2) ]
// and dL/dy_s by swapping x and y (mx - my changes sign). Every gradient is
//   m_s [ cross g_s c(other)_s + self c(own)_s + offset ]
// with per-row coefficients (CorrelationGradCoeffs). f / sx is bounded by
// sqrt(n) sum |w cy|, so it is formed before the multiplication by sy: the
// ratio sy / sx alone overflows for nearly constant x.
//
// Degenerate rows.
//   n = 0: loss 0 and gradient 0 on every (masked) step.
//   Pearson with n < 2, vx = 0 or vy = 0: loss exactly 1 on valid steps and
//     gradient 0. The eps-regularised formula is differentiable there, but
//     its derivative is of order 1/eps (D = eps while the numerator's
//     derivative is not 0): one such row would dominate a batch's update.
//     r itself is undefined there, and 0 is its limit along no direction
//     in particular, so no gradient is the honest choice.
//   CCC: D >= eps > 0, so the formula is used as is. A constant row has
//     cx = 0, loss exactly 1 and the gradient of the mean-gap term; when both
//     rows are constant and equal (or n = 1) cx = cy = f = 0 and the gradient
//     is 0. With eps = 0 and D = 0 the row is degenerate (loss 1, gradient 0).
// Exactness: the moments are computed so that a constant row gives mean
// equal to its value and variance exactly 0 (see CorrelationMerge), hence
// cx = 0 and loss exactly 1. NaN and infinite inputs at valid steps are not
// degenerate: the row's loss and gradients are NaN on its valid steps.
#ifndef TF_FUSED_LOSSES_CC_CORE_CORRELATION_CORRELATION_MATH_H_
#define TF_FUSED_LOSSES_CC_CORE_CORRELATION_CORRELATION_MATH_H_

#include "math_common.h"

namespace tf_fused_losses {

// The row statistics the forward op hands to the backward op, as float64:
// count, mean_x, mean_y, m2_x, m2_y. Converting the accumulation type to
// double and back is exact, so both ops see the same row.
constexpr int kCorrelationRowStats = 5;

template <typename Acc>
TFL_HD Acc CorrelationSqrt(Acc v) {
#if defined(__CUDA_ARCH__)
  return sqrt(v);
#else
  return std::sqrt(v);
#endif
}

// Moments of the valid steps of a row, or of a piece of a row. Pieces merge
// with CorrelationMerge in any order.
template <typename Acc>
struct CorrelationMoments {
  double count;  // valid steps; double so that counts stay exact past 2^24
  Acc mean_x;
  Acc mean_y;
  Acc m2_x;  // sum over valid steps of (x - mean_x)^2
  Acc m2_y;
};

template <typename Acc>
TFL_HD CorrelationMoments<Acc> CorrelationEmptyMoments() {
  return CorrelationMoments<Acc>{0.0, Acc(0), Acc(0), Acc(0), Acc(0)};
}

// Chan et al.'s parallel merge. When both sides have the same mean (a
// constant row), delta = 0 and the mean and m2 pass through exactly.
template <typename Acc>
TFL_HD CorrelationMoments<Acc> CorrelationMerge(const CorrelationMoments<Acc>& a, const CorrelationMoments<Acc>& b) {
  if (a.count == 0.0) return b;
  if (b.count == 0.0) return a;
  CorrelationMoments<Acc> out;
  out.count = a.count + b.count;
  const Acc b_share = static_cast<Acc>(b.count / out.count);
  const Acc pair_weight = static_cast<Acc>(a.count * b.count / out.count);
  const Acc delta_x = b.mean_x - a.mean_x;
  const Acc delta_y = b.mean_y - a.mean_y;
  out.mean_x = a.mean_x + delta_x * b_share;
  out.mean_y = a.mean_y + delta_y * b_share;
  out.m2_x = a.m2_x + b.m2_x + delta_x * delta_x * pair_weight;
  out.m2_y = a.m2_y + b.m2_y + delta_y * delta_y * pair_weight;
  return out;
}

// Welford's update by one valid step, for callers that see one element at a
// time (CUDA threads); the CPU uses a shifted two-loop form per chunk. A
// repeated value leaves the mean unchanged and m2 at 0.
template <typename Acc>
TFL_HD void CorrelationAccumulate(CorrelationMoments<Acc>* s, Acc x, Acc y) {
  s->count += 1.0;
  const Acc inv_count = Acc(1) / static_cast<Acc>(s->count);
  const Acc delta_x = x - s->mean_x;
  const Acc delta_y = y - s->mean_y;
  s->mean_x += delta_x * inv_count;
  s->mean_y += delta_y * inv_count;
  s->m2_x += delta_x * (x - s->mean_x);
  s->m2_y += delta_y * (y - s->mean_y);
}

template <typename Acc>
TFL_HD void CorrelationStoreMoments(const CorrelationMoments<Acc>& s, double* row_stats) {
  row_stats[0] = s.count;
  row_stats[1] = static_cast<double>(s.mean_x);
  row_stats[2] = static_cast<double>(s.mean_y);
  row_stats[3] = static_cast<double>(s.m2_x);
  row_stats[4] = static_cast<double>(s.m2_y);
}

template <typename Acc>
TFL_HD CorrelationMoments<Acc> CorrelationLoadMoments(const double* row_stats) {
  return CorrelationMoments<Acc>{row_stats[0], static_cast<Acc>(row_stats[1]), static_cast<Acc>(row_stats[2]),
                                 static_cast<Acc>(row_stats[3]), static_cast<Acc>(row_stats[4])};
}

// What the per-element loss and the gradient need of a finished row.
template <typename Acc>
struct CorrelationRow {
  Acc count;  // n
  Acc mean_x;
  Acc mean_y;
  Acc std_x;        // sqrt(vx)
  Acc std_y;        // sqrt(vy)
  Acc denominator;  // D
  Acc scale;        // k / D; 0 on degenerate rows, so that loss_t = 1
  bool concordance;
  bool has_gradient;  // false on degenerate rows: gradient 0
};

template <typename Acc>
TFL_HD CorrelationRow<Acc> CorrelationFinish(const CorrelationMoments<Acc>& s, Acc epsilon, bool concordance) {
  CorrelationRow<Acc> r;
  r.count = static_cast<Acc>(s.count);
  r.mean_x = s.mean_x;
  r.mean_y = s.mean_y;
  r.concordance = concordance;
  r.std_x = r.std_y = r.denominator = r.scale = Acc(0);
  r.has_gradient = false;
  if (s.count == 0.0) return r;
  const Acc var_x = s.m2_x / r.count;
  const Acc var_y = s.m2_y / r.count;
  r.std_x = CorrelationSqrt(var_x);
  r.std_y = CorrelationSqrt(var_y);
  if (concordance) {
    const Acc gap = s.mean_x - s.mean_y;
    r.denominator = var_x + var_y + gap * gap + epsilon;
    // Written as "not degenerate" so that NaN moments keep the gradient path
    // and propagate.
    r.has_gradient = !(r.denominator == Acc(0));
  } else {
    r.denominator = r.std_x * r.std_y + epsilon;
    r.has_gradient = !(s.count < 2.0 || var_x == Acc(0) || var_y == Acc(0) || r.denominator == Acc(0));
  }
  r.scale = r.has_gradient ? (concordance ? Acc(2) : Acc(1)) / r.denominator : Acc(0);
  // A NaN or infinite value at a valid step leaves the moments non-finite:
  // the row's loss and gradients are NaN on its valid steps (no limits are
  // taken; docs/semantics.md). x - x is 0 exactly for finite x only.
  const Acc finite_probe = (s.mean_x - s.mean_x) + (s.mean_y - s.mean_y) + (s.m2_x - s.m2_x) + (s.m2_y - s.m2_y);
  if (!(finite_probe == Acc(0))) {
    r.has_gradient = true;
    r.scale = r.denominator = finite_probe;  // NaN
  }
  return r;
}

// loss_t; branch-free so that CPU loops over it vectorise. A masked step may
// hold anything (NaN padding included): it is selected away, not multiplied.
template <typename Acc>
TFL_HD Acc CorrelationElementLoss(const CorrelationRow<Acc>& r, Acc x, Acc y, bool valid) {
  const Acc loss = Acc(1) - r.scale * (x - r.mean_x) * (y - r.mean_y);
  return valid ? loss : Acc(0);
}

// f, Wx, Wy of a row or a piece of a row; pieces add.
template <typename Acc>
struct CorrelationGradSums {
  Acc weighted_cross;  // f = sum w cx cy
  Acc weighted_x;      // Wx = sum w cx
  Acc weighted_y;      // Wy = sum w cy
};

template <typename Acc>
TFL_HD CorrelationGradSums<Acc> CorrelationEmptyGradSums() {
  return CorrelationGradSums<Acc>{Acc(0), Acc(0), Acc(0)};
}

template <typename Acc>
TFL_HD CorrelationGradSums<Acc> CorrelationAddGradSums(const CorrelationGradSums<Acc>& a,
                                                       const CorrelationGradSums<Acc>& b) {
  return CorrelationGradSums<Acc>{a.weighted_cross + b.weighted_cross, a.weighted_x + b.weighted_x,
                                  a.weighted_y + b.weighted_y};
}

// One step's terms of f, Wx, Wy.
template <typename Acc>
TFL_HD CorrelationGradSums<Acc> CorrelationGradTerms(const CorrelationRow<Acc>& r, Acc g, Acc x, Acc y, bool valid) {
  const Acc wx = g * (x - r.mean_x);
  const Acc wy = g * (y - r.mean_y);
  return CorrelationGradSums<Acc>{valid ? wx * (y - r.mean_y) : Acc(0), valid ? wx : Acc(0), valid ? wy : Acc(0)};
}

// dL/dx_s = m_s [cross g_s cy_s + self_x cx_s + offset_x], likewise for y.
template <typename Acc>
struct CorrelationGradCoeffs {
  Acc mean_x;
  Acc mean_y;
  Acc cross;
  Acc self_x;
  Acc self_y;
  Acc offset_x;
  Acc offset_y;
};

template <typename Acc>
TFL_HD CorrelationGradCoeffs<Acc> CorrelationFinishGradient(const CorrelationRow<Acc>& r,
                                                            const CorrelationGradSums<Acc>& sums) {
  CorrelationGradCoeffs<Acc> c;
  c.mean_x = r.mean_x;
  c.mean_y = r.mean_y;
  c.cross = c.self_x = c.self_y = c.offset_x = c.offset_y = Acc(0);
  if (!r.has_gradient) return c;
  const Acc inv_n = Acc(1) / r.count;
  // -cross = k / D, and D appears squared in the self terms.
  c.cross = -r.scale;
  c.offset_x = r.scale * sums.weighted_y * inv_n;
  c.offset_y = r.scale * sums.weighted_x * inv_n;
  const Acc f_over_n_d2 = sums.weighted_cross * inv_n / (r.denominator * r.denominator);
  if (r.concordance) {
    const Acc gap_term = Acc(4) * f_over_n_d2 * (r.mean_x - r.mean_y);
    c.self_x = c.self_y = Acc(4) * f_over_n_d2;
    c.offset_x += gap_term;
    c.offset_y -= gap_term;
  } else {
    const Acc d2n = r.denominator * r.denominator * r.count;
    c.self_x = (sums.weighted_cross / r.std_x) * r.std_y / d2n;
    c.self_y = (sums.weighted_cross / r.std_y) * r.std_x / d2n;
  }
  return c;
}

template <typename Acc>
TFL_HD Acc CorrelationGradientX(const CorrelationGradCoeffs<Acc>& c, Acc g, Acc x, Acc y, bool valid) {
  const Acc grad = c.cross * g * (y - c.mean_y) + c.self_x * (x - c.mean_x) + c.offset_x;
  return valid ? grad : Acc(0);
}

template <typename Acc>
TFL_HD Acc CorrelationGradientY(const CorrelationGradCoeffs<Acc>& c, Acc g, Acc x, Acc y, bool valid) {
  const Acc grad = c.cross * g * (x - c.mean_x) + c.self_y * (y - c.mean_y) + c.offset_y;
  return valid ? grad : Acc(0);
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_CORRELATION_CORRELATION_MATH_H_
