// Per-ISA build: see cpu_isa_build.h. The rows of one FusedHeadChunk
// (bpmll_head_cpu.h); bpmll_head_cpu.cc picks the build this CPU runs.
#include "cpu_isa_build.h"  // first: checks TFL_CPU_ISA
#include <cstdint>

#include "bpmll_head_cpu.h"
#include "math_common.h"

namespace tf_fused_losses {
namespace TFL_CPU_ISA {

template <typename Acc>
void HeadChunkRows(const HeadChunkArgs<Acc>& a, int64_t first, int64_t last, Acc* column_sums) {
  for (int64_t i = first; i < last; ++i) {
    const Acc* matmul = a.matmul + i * a.width;
    Acc* out = a.dlogits + i * a.width;
    const Acc factor = a.factor[i];
    Acc logit_sum = 0;
#pragma omp simd reduction(+ : logit_sum)
    for (int64_t j = 0; j < a.width; ++j) {
      const Acc c = matmul[j] + a.bias[j];
      logit_sum += c;
      out[j] = VectorizableExp(c + factor);
    }
    // The positives' terms are exactly 0 (skipped by id, not subtracted).
    const int32_t* ids = a.ids + i * a.ids_width;
    for (int64_t k = 0; k < a.ids_width; ++k) {
      const int64_t local = static_cast<int64_t>(ids[k]) - a.start;
      if (ids[k] >= 0 && local >= 0 && local < a.width) out[local] = Acc(0);
    }
    // Scaled in the same pass as the sums, while the row is in cache.
    const Acc scale = a.row_scale[i];
    Acc term_sum = 0;
#pragma omp simd reduction(+ : term_sum)
    for (int64_t j = 0; j < a.width; ++j) {
      const Acc t = out[j];
      term_sum += t;
      out[j] = scale * t;
      column_sums[j] += scale * t;
    }
    a.term_sums[i] = term_sum;
    a.logit_sums[i] = logit_sum;
  }
}

template void HeadChunkRows<float>(const HeadChunkArgs<float>&, int64_t, int64_t, float*);
template void HeadChunkRows<double>(const HeadChunkArgs<double>&, int64_t, int64_t, double*);

}  // namespace TFL_CPU_ISA
}  // namespace tf_fused_losses
