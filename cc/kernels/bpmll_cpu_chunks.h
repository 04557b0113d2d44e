// The CPU inner loops of the BP-MLL kernel, over one cache-resident chunk of
// a row held in the accumulation type. bpmll_cpu_chunks.cc is compiled once
// per x86-64 level (baseline, AVX2+FMA, AVX-512) and the best one this CPU
// runs is picked at load time; TensorFlow's own wheel assumes only AVX.
#ifndef TF_FUSED_LOSSES_CC_KERNELS_BPMLL_CPU_CHUNKS_H_
#define TF_FUSED_LOSSES_CC_KERNELS_BPMLL_CPU_CHUNKS_H_

#include <cstdint>

#include "bpmll_math.h"

namespace tf_fused_losses {

template <typename Acc>
struct BpmllChunkLabels {
  Acc min;
  Acc max;
  bool soft;  // some 0 < y < 1: the two-exp path is needed
};

template <typename Acc>
struct BpmllChunkOps {
  const char* isa;
  BpmllStats<Acc> (*stats)(const Acc* logits, const Acc* labels, int64_t n, BpmllChunkLabels<Acc>* labels_seen);
  void (*gradient)(const BpmllRowResult<Acc>& row, const Acc* logits, const Acc* labels, int64_t n, bool soft,
                   Acc* gradient_out);
};

template <typename Acc>
const BpmllChunkOps<Acc>& BpmllChunkOpsForThisCpu();

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_KERNELS_BPMLL_CPU_CHUNKS_H_
