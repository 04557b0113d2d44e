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

template <typename Acc>
BpmllStats<Acc> ChunkStats(const Acc* logits, const Acc* labels, int64_t n, BpmllChunkLabels<Acc>* labels_seen) {
  const Acc inf = std::numeric_limits<Acc>::infinity();
  // Loop 1: the shifts, the label counts and the label range.
  Acc pos_shift = -inf, neg_shift = -inf, pos_count = 0, neg_count = 0;
  Acc label_min = inf, label_max = -inf, soft_count = 0;
#pragma omp simd reduction(max : pos_shift, neg_shift, label_max) reduction(min : label_min) \
    reduction(+ : pos_count, neg_count, soft_count)
  for (int64_t i = 0; i < n; ++i) {
    Acc c = logits[i], y = labels[i];
    Acc pos_candidate = y != Acc(0) ? -c : -inf;
    Acc neg_candidate = y != Acc(1) ? c : -inf;
    pos_shift = pos_candidate > pos_shift ? pos_candidate : pos_shift;
    neg_shift = neg_candidate > neg_shift ? neg_candidate : neg_shift;
    pos_count += y;
    neg_count += Acc(1) - y;
    label_min = y < label_min ? y : label_min;
    label_max = y > label_max ? y : label_max;
    soft_count += (y != Acc(0) && y != Acc(1)) ? Acc(1) : Acc(0);
  }
  // Loop 2: the shifted sums; the chunk is still in L1.
  Acc pos_sum = 0, neg_sum = 0;
  if (soft_count == Acc(0)) {
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
  // NaN logits may be dropped by the max reductions but not by the sums:
  // a row holding a NaN reads NaN.
  labels_seen->min = label_min;
  labels_seen->max = label_max;
  labels_seen->soft = soft_count != Acc(0);
  BpmllStats<Acc> stats;
  stats.pos_shift = pos_shift;
  stats.pos_sum = pos_sum;
  stats.neg_shift = neg_shift;
  stats.neg_sum = neg_sum;
  stats.pos_count = static_cast<double>(pos_count);
  stats.neg_count = static_cast<double>(neg_count);
  return stats;
}

template <typename Acc>
void ChunkGradient(const BpmllRowResult<Acc>& row, const Acc* logits, const Acc* labels, int64_t n, bool soft,
                   Acc* gradient_out) {
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
