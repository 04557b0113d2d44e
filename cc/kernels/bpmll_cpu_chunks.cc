// Compiled several times, with TFL_CPU_ISA naming the instruction set; see
// bpmll_cpu_chunks.h. Must not include TensorFlow or Eigen headers: their
// inline functions would be compiled for this file's instruction set and
// could be merged into code that runs on any CPU.
#include <limits>

#include "bpmll_cpu_chunks.h"

#ifndef TFL_CPU_ISA
#error "TFL_CPU_ISA must name the instruction-set namespace"
#endif

namespace tf_fused_losses {
namespace TFL_CPU_ISA {
namespace {

// Exact shifts: a max loop, then the sums. Needed for soft labels' second
// exp, and when the provisional shifts of ChunkStats were far off.
template <typename Acc>
void ShiftedSums(const Acc* logits, const Acc* labels, int64_t n, bool soft, Acc pos_shift, Acc neg_shift,
                 Acc* pos_sum_out, Acc* neg_sum_out) {
  Acc pos_sum = 0, neg_sum = 0;
  if (!soft) {
#pragma omp simd reduction(+ : pos_sum, neg_sum)
    for (int64_t i = 0; i < n; ++i) {
      Acc y = labels[i];
      Acc term = BpmllHardTerm(logits[i], y, pos_shift, neg_shift);
      pos_sum += y != Acc(0) ? term : Acc(0);
      neg_sum += y != Acc(0) ? Acc(0) : term;
    }
  } else {
#pragma omp simd reduction(+ : pos_sum, neg_sum)
    for (int64_t i = 0; i < n; ++i) {
      pos_sum += BpmllPositiveTerm(logits[i], labels[i], pos_shift);
      neg_sum += BpmllNegativeTerm(logits[i], labels[i], neg_shift);
    }
  }
  *pos_sum_out = pos_sum;
  *neg_sum_out = neg_sum;
}

// One loop for hard labels: the sums are taken around a guessed shift, the
// chunk's first logit, while the loop also finds the chunk's logit range.
// When that range is under 60 every term lies within e^{+-60} and no sum can
// leave the type's range, which is the common case; otherwise, or for soft
// labels, a second and third loop redo the sums around the exact maxima.
template <typename Acc>
BpmllStats<Acc> ChunkStats(const Acc* logits, const Acc* labels, int64_t n, BpmllChunkLabels<Acc>* labels_seen) {
  const Acc inf = std::numeric_limits<Acc>::infinity();
  const Acc guess = logits[0];
  Acc pos_sum = 0, neg_sum = 0, logit_min = inf, logit_max = -inf, pos_count = 0, not_hard = 0;
#pragma omp simd reduction(max : logit_max) reduction(min : logit_min) \
    reduction(+ : pos_sum, neg_sum, pos_count, not_hard)
  for (int64_t i = 0; i < n; ++i) {
    Acc c = logits[i], y = labels[i];
    logit_min = c < logit_min ? c : logit_min;
    logit_max = c > logit_max ? c : logit_max;
    Acc term = BpmllHardTerm(c, y, -guess, guess);
    pos_sum += y != Acc(0) ? term : Acc(0);
    neg_sum += y != Acc(0) ? Acc(0) : term;
    pos_count += y;
    // |y - y^2| is 0 exactly for y in {0, 1}: soft and out-of-range labels
    // both show here, and are told apart by a loop that only they pay for.
    Acc y_spread = y - y * y;
    not_hard += y_spread < Acc(0) ? -y_spread : y_spread;
  }
  labels_seen->min = Acc(0);
  labels_seen->max = Acc(1);
  labels_seen->soft = false;
  if (not_hard != Acc(0)) {
    Acc label_min = inf, label_max = -inf, soft_count = 0;
#pragma omp simd reduction(max : label_max) reduction(min : label_min) reduction(+ : soft_count)
    for (int64_t i = 0; i < n; ++i) {
      Acc y = labels[i];
      label_min = y < label_min ? y : label_min;
      label_max = y > label_max ? y : label_max;
      soft_count += (y != Acc(0) && y != Acc(1)) ? Acc(1) : Acc(0);
    }
    labels_seen->min = label_min;
    labels_seen->max = label_max;
    labels_seen->soft = soft_count != Acc(0);
  }
  const bool soft = labels_seen->soft;
  BpmllStats<Acc> stats;
  stats.pos_count = static_cast<double>(pos_count);
  stats.neg_count = static_cast<double>(n) - static_cast<double>(pos_count);
  stats.pos_shift = -guess;
  stats.neg_shift = guess;
  // NaN or infinite logits fail this test and take the exact path, which
  // keeps a NaN in the sums.
  if (soft || !(logit_max - logit_min <= Acc(60))) {
    Acc pos_shift = -inf, neg_shift = -inf;
#pragma omp simd reduction(max : pos_shift, neg_shift)
    for (int64_t i = 0; i < n; ++i) {
      Acc c = logits[i], y = labels[i];
      Acc pos_candidate = y != Acc(0) ? -c : -inf;
      Acc neg_candidate = y != Acc(1) ? c : -inf;
      pos_shift = pos_candidate > pos_shift ? pos_candidate : pos_shift;
      neg_shift = neg_candidate > neg_shift ? neg_candidate : neg_shift;
    }
    stats.pos_shift = pos_shift;
    stats.neg_shift = neg_shift;
    ShiftedSums(logits, labels, n, soft, pos_shift, neg_shift, &pos_sum, &neg_sum);
  }
  if (stats.pos_count == 0.0) stats.pos_shift = -inf;
  if (stats.neg_count == 0.0) stats.neg_shift = -inf;
  stats.pos_sum = pos_sum;
  stats.neg_sum = neg_sum;
  return stats;
}

template <typename Acc>
void ChunkGradient(const BpmllRowResult<Acc>& row_in, const Acc* logits, const Acc* labels, int64_t n, bool soft,
                   Acc* gradient_out) {
  const BpmllRowResult<Acc> row = row_in;  // a local copy: the stores below cannot alias it
  if (soft) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) gradient_out[i] = BpmllGradient(row, logits[i], labels[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) gradient_out[i] = BpmllHardGradient(row, logits[i], labels[i]);
  }
}

}  // namespace

#define TFL_STRINGIFY_INNER(x) #x
#define TFL_STRINGIFY(x) TFL_STRINGIFY_INNER(x)

template <typename Acc>
const BpmllChunkOps<Acc>& BpmllChunkOps() {
  static const tf_fused_losses::BpmllChunkOps<Acc> ops = {TFL_STRINGIFY(TFL_CPU_ISA), &ChunkStats<Acc>,
                                                          &ChunkGradient<Acc>};
  return ops;
}

template const tf_fused_losses::BpmllChunkOps<float>& BpmllChunkOps<float>();
template const tf_fused_losses::BpmllChunkOps<double>& BpmllChunkOps<double>();

}  // namespace TFL_CPU_ISA
}  // namespace tf_fused_losses
