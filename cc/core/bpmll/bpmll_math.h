// The BP-MLL ranking loss, per row. Shared by the CPU kernels and the CUDA
// kernels; includes no TensorFlow header.
//
// For a row of logits c_j and labels y_j in [0, 1] (soft labels allowed):
//
//   E = (1 / (|Y| |Ybar|)) * sum_{k,l} y_k (1 - y_l) exp(c_l - c_k)
//     = P * N / (|Y| |Ybar|),   P = sum_k y_k e^{-c_k},  N = sum_l (1-y_l) e^{c_l},
//                              |Y| = sum_k y_k,         |Ybar| = sum_l (1 - y_l).
//
// Stability: P and N are kept in the log domain around their row maxima,
//   P = e^{pos_shift} * pos_sum,  pos_shift = max_{y_j>0} (-c_j),
//   N = e^{neg_shift} * neg_sum,  neg_shift = max_{y_j<1} c_j,
// so every summed term is exp(<= 0) and
//   log E = pos_shift + neg_shift + log pos_sum + log neg_sum - log|Y| - log|Ybar|.
// E overflows only when its true value exceeds the type's range.
//
// Gradient (y is a constant):
//   dE/dc_j = (|Y||Ybar|)^{-1} (-y_j e^{-c_j} N + (1-y_j) e^{c_j} P)
//           = E * ((1-y_j) e^{c_j - log N} - y_j e^{-c_j - log P}),
// evaluated as e^{(c_j - neg_shift) - log neg_sum} to keep the small parts.
// Each exponent is bounded above by -log(sum of weights' share), so the terms
// stay finite wherever E is.
//
// A row with |Y| = 0 or |Ybar| = 0 has no pairs: loss 0 and gradient 0
// (the pure-TF formula gives 0/0 = NaN there), whatever its logits, unless
// one of them is NaN.
//
// Non-finite logits (the rule every path follows; docs/semantics.md):
//  * A NaN logit makes its row's loss and every gradient element NaN, pairs
//    or not. It reaches the sums as a NaN term.
//  * Infinite logits: loss = P N / (|Y| |Ybar|) and
//      dE/dc_j = ((1 - y_j) e^{c_j} P - y_j e^{-c_j} N) / (|Y| |Ybar|)
//    evaluated in extended arithmetic (e^{+inf} = inf, e^{-inf} = 0,
//    0 * inf = inf - inf = NaN), a term of weight 0 being exactly 0. That is
//    the limit wherever one exists for 0/1 labels: a positive at +inf adds 0,
//    a positive at -inf makes the loss +inf (NaN if N = 0). An infinite logit
//    sets a shift to +-inf; the terms at that shift count as e^0, and the row
//    is "extended": its gradient takes BpmllExtendedGradient, since the
//    E * e^{...} form would multiply inf by 0 where the limit is finite.
#ifndef TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_MATH_H_
#define TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_MATH_H_

#include "math_common.h"

namespace tf_fused_losses {

// Running statistics of a row, or of a piece of a row. Pieces merge with
// BpmllMerge in any order.
template <typename Acc>
struct BpmllStats {
  Acc pos_shift;     // max over y_j > 0 of -c_j; -inf if none
  Acc pos_sum;       // sum y_j exp(-c_j - pos_shift)
  Acc neg_shift;     // max over y_j < 1 of c_j; -inf if none
  Acc neg_sum;       // sum (1 - y_j) exp(c_j - neg_shift)
  double pos_count;  // |Y|, in double so that counts stay exact past 2^24
  double neg_count;  // |Ybar|
};

template <typename Acc>
TFL_HD BpmllStats<Acc> BpmllEmptyStats() {
  return BpmllStats<Acc>{NegativeInfinity<Acc>(), Acc(0), NegativeInfinity<Acc>(), Acc(0), 0.0, 0.0};
}

// sum_a e^{shift_a} + sum_b e^{shift_b}, as (shift, sum). An empty side has
// shift -inf and sum 0 and must not turn the result into NaN.
template <typename Acc>
TFL_HD void BpmllMergeLogSum(Acc shift_a, Acc sum_a, Acc shift_b, Acc sum_b, Acc* shift, Acc* sum) {
  if (shift_a == NegativeInfinity<Acc>()) {
    *shift = shift_b;
    *sum = sum_b;
  } else if (shift_b == NegativeInfinity<Acc>()) {
    *shift = shift_a;
    *sum = sum_a;
  } else if (shift_a == shift_b) {  // also +inf on both sides, where e^(inf - inf) would be NaN
    *shift = shift_a;
    *sum = sum_a + sum_b;
  } else if (shift_a > shift_b) {
    *shift = shift_a;
    *sum = sum_a + sum_b * exp(shift_b - shift_a);
  } else if (shift_b > shift_a) {
    *shift = shift_b;
    *sum = sum_b + sum_a * exp(shift_a - shift_b);
  } else {  // a NaN shift: keep it, so that the row reads NaN
    *shift = shift_a + shift_b;
    *sum = sum_a + sum_b;
  }
}

template <typename Acc>
TFL_HD BpmllStats<Acc> BpmllMerge(const BpmllStats<Acc>& a, const BpmllStats<Acc>& b) {
  BpmllStats<Acc> out;
  BpmllMergeLogSum(a.pos_shift, a.pos_sum, b.pos_shift, b.pos_sum, &out.pos_shift, &out.pos_sum);
  BpmllMergeLogSum(a.neg_shift, a.neg_sum, b.neg_shift, b.neg_sum, &out.neg_shift, &out.neg_sum);
  out.pos_count = a.pos_count + b.pos_count;
  out.neg_count = a.neg_count + b.neg_count;
  return out;
}

// Adds one element online (one exp, rescaling when the shift moves). Used by
// the CUDA threads; the CPU uses a two-loop form over cache-resident chunks.
template <typename Acc>
TFL_HD void BpmllAccumulate(BpmllStats<Acc>* s, Acc c, Acc y) {
  Acc pos_weight = y;
  Acc neg_weight = Acc(1) - y;
  if (pos_weight != Acc(0)) {
    BpmllMergeLogSum(s->pos_shift, s->pos_sum, -c, pos_weight, &s->pos_shift, &s->pos_sum);
  }
  if (neg_weight != Acc(0)) {
    BpmllMergeLogSum(s->neg_shift, s->neg_sum, c, neg_weight, &s->neg_shift, &s->neg_sum);
  }
  s->pos_count += static_cast<double>(pos_weight);
  s->neg_count += static_cast<double>(neg_weight);
}

// What the gradient pass needs of a finished row. Shifts and log-sums stay
// apart: adding a log-sum to a large shift would round it away.
template <typename Acc>
struct BpmllRowResult {
  Acc loss;          // E
  Acc pos_shift;     // log P = pos_shift + pos_log_sum
  Acc pos_log_sum;
  Acc neg_shift;     // log N = neg_shift + neg_log_sum
  Acc neg_log_sum;
  Acc log_pairs;  // log(|Y| |Ybar|)
  bool has_pairs;
  bool extended;  // an infinite logit set a shift: BpmllExtendedGradient
};

template <typename Acc>
TFL_HD BpmllRowResult<Acc> BpmllFinish(const BpmllStats<Acc>& s) {
  BpmllRowResult<Acc> r;
  r.has_pairs = s.pos_count > 0.0 && s.neg_count > 0.0;
  r.pos_shift = s.pos_shift;
  r.neg_shift = s.neg_shift;
  r.pos_log_sum = log(s.pos_sum);
  r.neg_log_sum = log(s.neg_sum);
  r.extended = false;
  r.log_pairs = Acc(0);
  // Only a NaN logit makes a sum or a shift NaN (infinite ones meet the
  // shifts as e^0): the row's loss and every gradient element are NaN, which
  // E * e^{...} gives by itself (BpmllRowGradient).
  const bool nan_logit = !(s.pos_sum == s.pos_sum && s.neg_sum == s.neg_sum && s.pos_shift == s.pos_shift &&
                           s.neg_shift == s.neg_shift);
  if (nan_logit) {
    r.loss = NegativeInfinity<Acc>() - NegativeInfinity<Acc>();
    return r;
  }
  if (!r.has_pairs) {
    r.loss = Acc(0);
    return r;
  }
  r.extended = IsInfinite(s.pos_shift) || IsInfinite(s.neg_shift);
  // The shifts nearly cancel when all logits are large and of one sign; their
  // sum is exact then, and the product form keeps full precision. The log
  // form is only needed where e^{shift} alone would leave the range.
  Acc shift = s.pos_shift + s.neg_shift;
  double pairs = s.pos_count * s.neg_count;
  r.log_pairs = static_cast<Acc>(log(pairs));
  if (shift > Acc(-60) && shift < Acc(60)) {
    r.loss = static_cast<Acc>(exp(static_cast<double>(shift)) * s.pos_sum * s.neg_sum / pairs);
  } else {
    r.loss = exp(shift + r.pos_log_sum + r.neg_log_sum - r.log_pairs);
  }
  // A loss past the type's range: E * e^{...} would multiply inf by terms
  // that the direct form keeps finite. A loss above 2^24: a term e^{...}
  // below the smallest normal number flushes to 0, though E times it may be
  // well inside the range (float32: y = [1, 0, 0], c = [-40, 40, -49] has
  // gradient 6.2e-5 at the third label); the direct form computes each
  // element in one exponential, and what it can still lose is below
  // 2^24 times the smallest normal. Such losses come only from logits tens
  // apart on the wrong side, so the second exp per element costs nothing in
  // training.
  r.extended = r.extended || IsInfinite(r.loss) || r.loss > Acc(16777216);
  return r;
}

// Per-element terms, branch-free so that CPU loops over them vectorise.
// "Hard" forms assume y in {0, 1} and need one exp instead of two.

// y_j e^{-c_j - pos_shift}, 0 where y_j = 0 (e^{...} may overflow there).
// With log_sum = 0 these are the summed terms; with the row's log-sums they
// are the gradient's e^{-c_j}/P and e^{c_j}/N, up to the factor y or (1-y).
template <typename Acc>
TFL_HD Acc BpmllPositiveTerm(Acc c, Acc y, Acc pos_shift, Acc pos_log_sum = Acc(0)) {
  Acc term = y * VectorizableExp((-c - pos_shift) - pos_log_sum);
  return y == Acc(0) ? Acc(0) : term;
}

// (1 - y_j) e^{c_j - neg_shift}, 0 where y_j = 1.
template <typename Acc>
TFL_HD Acc BpmllNegativeTerm(Acc c, Acc y, Acc neg_shift, Acc neg_log_sum = Acc(0)) {
  Acc term = (Acc(1) - y) * VectorizableExp((c - neg_shift) - neg_log_sum);
  return y == Acc(1) ? Acc(0) : term;
}

// For y in {0, 1}: the one term that is not 0.
template <typename Acc>
TFL_HD Acc BpmllHardTerm(Acc c, Acc y, Acc pos_shift, Acc neg_shift, Acc pos_log_sum = Acc(0),
                         Acc neg_log_sum = Acc(0)) {
  return VectorizableExp(y != Acc(0) ? (-c - pos_shift) - pos_log_sum : (c - neg_shift) - neg_log_sum);
}

// dE/dc_j. The caller handles rows without pairs (gradient 0).
template <typename Acc>
TFL_HD Acc BpmllGradient(const BpmllRowResult<Acc>& r, Acc c, Acc y) {
  return r.loss * (BpmllNegativeTerm(c, y, r.neg_shift, r.neg_log_sum) -
                   BpmllPositiveTerm(c, y, r.pos_shift, r.pos_log_sum));
}

template <typename Acc>
TFL_HD Acc BpmllHardGradient(const BpmllRowResult<Acc>& r, Acc c, Acc y) {
  Acc t = r.loss * BpmllHardTerm(c, y, r.pos_shift, r.neg_shift, r.pos_log_sum, r.neg_log_sum);
  return y != Acc(0) ? -t : t;
}

// dE/dc_j by the direct form, for extended rows (see the top of this file):
//   e^a - e^b,  a = log(1 - y) + c + log P - log pairs,  b = log y - c + log N - log pairs,
// a side of weight 0 being exactly 0. Where both sides are finite but e^a or
// e^b alone would overflow (soft labels on a row whose loss overflows), the
// difference is taken as sign * e^(max + log(1 - e^-|a - b|)).
template <typename Acc>
TFL_HD Acc BpmllExtendedGradient(const BpmllRowResult<Acc>& r, Acc c, Acc y) {
  const Acc up = ((c + r.pos_shift) + r.pos_log_sum) - r.log_pairs;
  const Acc down = ((r.neg_shift - c) + r.neg_log_sum) - r.log_pairs;
  if (y == Acc(0)) return exp(up);
  if (y == Acc(1)) return -exp(down);
  const Acc a = up + log(Acc(1) - y);
  const Acc b = down + log(y);
  if (!(a == a && b == b)) return exp(a) - exp(b);  // NaN
  if (IsInfinite(a) || IsInfinite(b)) {
    // The infinite side decides, also where e^ of the finite one overflows
    // (+inf - e^800 is +inf, not inf - inf); +inf on both sides is NaN.
    if (a == b) return exp(a) - exp(b);
    return a > b ? (IsInfinite(a) ? a : exp(a)) : (IsInfinite(b) ? -b : -exp(b));
  }
  const Acc high = a > b ? a : b;
  const Acc gap = a > b ? b - a : a - b;  // <= 0
  return (a >= b ? Acc(1) : Acc(-1)) * exp(high + log(-expm1(gap)));
}

// dE/dc_j of any row, for callers that take one element at a time (CUDA).
template <typename Acc>
TFL_HD Acc BpmllRowGradient(const BpmllRowResult<Acc>& r, Acc c, Acc y) {
  if (!r.has_pairs) return r.loss * Acc(0);  // 0, or NaN after a NaN logit
  if (r.extended) return BpmllExtendedGradient(r, c, y);
  // Soft labels need both terms; on 0/1 labels the one-term form gives the
  // same value with one exp.
  return (y == Acc(0) || y == Acc(1)) ? BpmllHardGradient(r, c, y) : BpmllGradient(r, c, y);
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_MATH_H_
