// Per-ISA build: see cpu_isa_build.h.
#include "cpu_isa_build.h"  // first: checks TFL_CPU_ISA
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "bpmll_cpu_chunks.h"
#include "cpu_half_convert_inl.h"
#include "cpu_stream_store.h"

namespace tf_fused_losses {
namespace TFL_CPU_ISA {
namespace {

// The chunk in the accumulation type: the input itself where it already is,
// else a converted copy in `buffer`.
template <typename Acc, typename T>
inline const Acc* AsAccumulator(const T* values, int64_t n, Acc* buffer) {
  if constexpr (std::is_same<T, Acc>::value) {
    return values;
  } else {
    WidenArray(values, n, buffer);
    return buffer;
  }
}


// Exact shifts: a max loop, then the sums. Needed for soft labels' second
// exp, and when the provisional shifts of ChunkStats were far off.
template <typename Acc>
void ShiftedSums(const Acc* logits, const Acc* labels, int64_t n, bool soft, bool infinite, Acc pos_shift,
                 Acc neg_shift, Acc* pos_sum_out, Acc* neg_sum_out) {
  Acc pos_sum = 0, neg_sum = 0;
  if (infinite) {
    // An infinite logit may have set a shift: the terms at the shift are e^0,
    // not e^(inf - inf) (bpmll_math.h, "Infinite logits").
    for (int64_t i = 0; i < n; ++i) {
      const Acc c = logits[i], y = labels[i];
      if (y != Acc(0)) pos_sum += y * (-c == pos_shift ? Acc(1) : VectorizableExp(-c - pos_shift));
      if (y != Acc(1)) neg_sum += (Acc(1) - y) * (c == neg_shift ? Acc(1) : VectorizableExp(c - neg_shift));
    }
  } else if (!soft) {
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
// kStoreTerms: also store each term in terms_out, for gradient_from_terms.
template <typename Acc, bool kStoreTerms>
BpmllStats<Acc> AccChunkStats(const Acc* logits, const Acc* labels, int64_t n, BpmllChunkLabels* labels_seen,
                              Acc* terms_out) {
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
    if constexpr (kStoreTerms) terms_out[i] = term;
    pos_sum += y != Acc(0) ? term : Acc(0);
    neg_sum += y != Acc(0) ? Acc(0) : term;
    pos_count += y;
    // |y - y^2| is 0 exactly for y in {0, 1}: soft and out-of-range labels
    // both show here, and are told apart by a loop that only they pay for.
    Acc y_spread = y - y * y;
    not_hard += y_spread < Acc(0) ? -y_spread : y_spread;
  }
  labels_seen->soft = false;
  labels_seen->invalid = false;
  labels_seen->terms_stored = false;
  labels_seen->guess = static_cast<double>(guess);
  if (not_hard != Acc(0)) {
    Acc soft_count = 0, invalid_count = 0;
#pragma omp simd reduction(+ : soft_count, invalid_count)
    for (int64_t i = 0; i < n; ++i) {
      Acc y = labels[i];
      soft_count += (y != Acc(0) && y != Acc(1)) ? Acc(1) : Acc(0);
      invalid_count += (y >= Acc(0) && y <= Acc(1)) ? Acc(0) : Acc(1);  // NaN counts
    }
    labels_seen->soft = soft_count != Acc(0);
    labels_seen->invalid = invalid_count != Acc(0);
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
    const bool infinite = std::isinf(logit_min) || std::isinf(logit_max);
    ShiftedSums(logits, labels, n, soft, infinite, pos_shift, neg_shift, &pos_sum, &neg_sum);
  } else {
    labels_seen->terms_stored = kStoreTerms;
  }
  if (stats.pos_count == 0.0) stats.pos_shift = -inf;
  if (stats.neg_count == 0.0) stats.neg_shift = -inf;
  stats.pos_sum = pos_sum;
  stats.neg_sum = neg_sum;
  return stats;
}

template <typename Acc>
void AccChunkGradient(const BpmllRowResult<Acc>& row_in, const Acc* logits, const Acc* labels, int64_t n, bool soft,
                      Acc* gradient_out) {
  const BpmllRowResult<Acc> row = row_in;  // a local copy: the stores below cannot alias it
  if (row.extended) {
    for (int64_t i = 0; i < n; ++i) gradient_out[i] = BpmllExtendedGradient(row, logits[i], labels[i]);
  } else if (soft) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) gradient_out[i] = BpmllGradient(row, logits[i], labels[i]);
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) gradient_out[i] = BpmllHardGradient(row, logits[i], labels[i]);
  }
}

template <typename Logit, typename Label>
BpmllStats<typename AccumulatorOf<Logit>::type> ChunkStats(const Logit* logits, const Label* labels, int64_t n,
                                                               BpmllChunkLabels* labels_seen,
                                                               typename AccumulatorOf<Logit>::type* terms_out) {
  using Acc = typename AccumulatorOf<Logit>::type;
  alignas(64) Acc logit_buffer[std::is_same<Logit, Acc>::value ? 1 : kBpmllChunk];
  alignas(64) Acc label_buffer[std::is_same<Label, Acc>::value ? 1 : kBpmllChunk];
  const Acc* acc_logits = AsAccumulator(logits, n, logit_buffer);
  const Acc* acc_labels = AsAccumulator(labels, n, label_buffer);
  return terms_out ? AccChunkStats<Acc, true>(acc_logits, acc_labels, n, labels_seen, terms_out)
                   : AccChunkStats<Acc, false>(acc_logits, acc_labels, n, labels_seen, nullptr);
}

template <typename Logit, typename Label>
void ChunkGradient(const BpmllRowResult<typename AccumulatorOf<Logit>::type>& row, const Logit* logits,
                   const Label* labels, int64_t n, bool soft, bool stream, Logit* gradient_out) {
  using Acc = typename AccumulatorOf<Logit>::type;
  constexpr bool kLogitsAreAcc = std::is_same<Logit, Acc>::value;
  alignas(64) Acc logit_buffer[kLogitsAreAcc ? 1 : kBpmllChunk];
  alignas(64) Acc label_buffer[std::is_same<Label, Acc>::value ? 1 : kBpmllChunk];
  alignas(64) Acc gradient_buffer[kLogitsAreAcc ? 1 : kBpmllChunk];
  StreamedChunkOutput<Logit, kBpmllChunk> out(gradient_out, stream);
  const Acc* acc_logits = AsAccumulator(logits, n, logit_buffer);
  const Acc* acc_labels = AsAccumulator(labels, n, label_buffer);
  if constexpr (kLogitsAreAcc) {
    AccChunkGradient(row, acc_logits, acc_labels, n, soft, out.data());
  } else {
    AccChunkGradient(row, acc_logits, acc_labels, n, soft, gradient_buffer);
    NarrowArray(gradient_buffer, n, out.data());
  }
  out.Finish(n);
}

template <typename Logit, typename Label>
void GradientFromTerms(const typename AccumulatorOf<Logit>::type* terms, const Label* labels, int64_t n,
                       typename AccumulatorOf<Logit>::type pos_factor, typename AccumulatorOf<Logit>::type neg_factor,
                       bool stream, Logit* gradient_out) {
  using Acc = typename AccumulatorOf<Logit>::type;
  alignas(64) Acc label_buffer[std::is_same<Label, Acc>::value ? 1 : kBpmllChunk];
  StreamedChunkOutput<Logit, kBpmllChunk> out(gradient_out, stream);
  const Acc* acc_labels = AsAccumulator(labels, n, label_buffer);
  Logit* target = out.data();
  const Acc negated_pos_factor = -pos_factor;
  if constexpr (std::is_same<Logit, Acc>::value) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) target[i] = (acc_labels[i] != Acc(0) ? negated_pos_factor : neg_factor) * terms[i];
  } else {
    alignas(64) Acc gradient_buffer[kBpmllChunk];
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      gradient_buffer[i] = (acc_labels[i] != Acc(0) ? negated_pos_factor : neg_factor) * terms[i];
    }
    NarrowArray(gradient_buffer, n, target);
  }
  out.Finish(n);
}

template <typename Logit>
void ScaleChunk(const Logit* in, const Logit* scale, int64_t n, Logit* out) {
  using Acc = typename AccumulatorOf<Logit>::type;
  const Acc factor = Widen<Acc>(*scale);
  if constexpr (std::is_same<Logit, Acc>::value) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = in[i] * factor;
  } else {
    // Through the array conversions, a cache-resident block at a time.
    alignas(64) Acc buffer[kBpmllChunk];
    for (int64_t start = 0; start < n; start += kBpmllChunk) {
      const int64_t count = n - start < kBpmllChunk ? n - start : kBpmllChunk;
      WidenArray(in + start, count, buffer);
#pragma omp simd
      for (int64_t i = 0; i < count; ++i) buffer[i] *= factor;
      NarrowArray(buffer, count, out + start);
    }
  }
}

}  // namespace

#define TFL_STRINGIFY_INNER(x) #x
#define TFL_STRINGIFY(x) TFL_STRINGIFY_INNER(x)

template <typename Logit, typename Label>
const tf_fused_losses::BpmllChunkOps<Logit, Label>& BpmllChunkOps() {
  static const tf_fused_losses::BpmllChunkOps<Logit, Label> ops = {
      TFL_STRINGIFY(TFL_CPU_ISA), &ChunkStats<Logit, Label>, &ChunkGradient<Logit, Label>,
      &GradientFromTerms<Logit, Label>};
  return ops;
}

template <typename Logit>
const tf_fused_losses::ScaleChunkOps<Logit>& ScaleChunkOps() {
  static const tf_fused_losses::ScaleChunkOps<Logit> ops = {&ScaleChunk<Logit>};
  return ops;
}

#define TFL_INSTANTIATE_PAIR(Logit, Label) \
  template const tf_fused_losses::BpmllChunkOps<Logit, Label>& BpmllChunkOps<Logit, Label>();
TFL_FOR_EACH_BPMLL_PAIR(TFL_INSTANTIATE_PAIR)
#undef TFL_INSTANTIATE_PAIR
#define TFL_INSTANTIATE_LOGIT(Logit) template const tf_fused_losses::ScaleChunkOps<Logit>& ScaleChunkOps<Logit>();
TFL_FOR_EACH_LOGIT(TFL_INSTANTIATE_LOGIT)
#undef TFL_INSTANTIATE_LOGIT

}  // namespace TFL_CPU_ISA
}  // namespace tf_fused_losses
