// The CPU inner loops of the BP-MLL kernels, over one cache-resident chunk of
// a row. bpmll_cpu_chunks.cc is compiled once per x86-64 level (baseline,
// AVX2+FMA, AVX-512) and the best one this CPU runs is picked at load time;
// TensorFlow's own wheel assumes only AVX. The chunk code also converts the
// 16-bit and integer inputs, so that the conversions vectorise too.
#ifndef TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_CPU_CHUNKS_H_
#define TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_CPU_CHUNKS_H_

#include <cstdint>

#include "bpmll_math.h"
#include "cpu_half_types.h"

namespace tf_fused_losses {

// The longest chunk the chunk functions accept.
constexpr int64_t kBpmllChunk = 2048;

struct BpmllChunkLabels {
  bool soft;     // some 0 < y < 1: the two-exp path is needed
  bool invalid;  // some y outside [0, 1], or NaN
  // Set when the stats call was given terms_out and stored the chunk's terms
  // there: e^{guess - c_j} for y_j = 1, e^{c_j - guess} for y_j = 0, all
  // within e^{+-60} (hard labels, logit range <= 60). The gradient pass can
  // then scale them (gradient_from_terms) instead of evaluating exp again.
  bool terms_stored;
  double guess;
};

template <typename Logit, typename Label>
struct BpmllChunkOps {
  using Acc = typename AccumulatorOf<Logit>::type;
  const char* isa;
  // terms_out: null, or room for n terms (see BpmllChunkLabels::terms_stored).
  BpmllStats<Acc> (*stats)(const Logit* logits, const Label* labels, int64_t n, BpmllChunkLabels* labels_seen,
                           Acc* terms_out);
  // stream: write gradient_out with streaming stores (kStreamStoreMinBytes).
  void (*gradient)(const BpmllRowResult<Acc>& row, const Logit* logits, const Label* labels, int64_t n, bool soft,
                   bool stream, Logit* gradient_out);
  // gradient_out[j] = -pos_factor * terms[j] where y_j = 1, neg_factor * terms[j] where y_j = 0.
  void (*gradient_from_terms)(const Acc* terms, const Label* labels, int64_t n, Acc pos_factor, Acc neg_factor,
                              bool stream, Logit* gradient_out);
};

template <typename Logit>
struct ScaleChunkOps {
  // out[i] = in[i] * scale; out may be in.
  void (*scale)(const Logit* in, const Logit* scale, int64_t n, Logit* out);
};

template <typename Logit, typename Label>
const BpmllChunkOps<Logit, Label>& BpmllChunkOpsForThisCpu();

template <typename Logit>
const ScaleChunkOps<Logit>& ScaleChunkOpsForThisCpu();

// Every (Logit, Label) pair the ops are registered for.
#define TFL_FOR_EACH_BPMLL_LABEL(M, Logit) \
  M(Logit, Float16Bits)                    \
  M(Logit, BFloat16Bits)                   \
  M(Logit, float)                          \
  M(Logit, double)                         \
  M(Logit, int32_t)                        \
  M(Logit, int64_t)                        \
  M(Logit, uint8_t)                        \
  M(Logit, bool)
#define TFL_FOR_EACH_BPMLL_PAIR(M)            \
  TFL_FOR_EACH_BPMLL_LABEL(M, Float16Bits)    \
  TFL_FOR_EACH_BPMLL_LABEL(M, BFloat16Bits)   \
  TFL_FOR_EACH_BPMLL_LABEL(M, float)          \
  TFL_FOR_EACH_BPMLL_LABEL(M, double)
#define TFL_FOR_EACH_LOGIT(M) \
  M(Float16Bits)              \
  M(BFloat16Bits)             \
  M(float)                    \
  M(double)

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_CPU_CHUNKS_H_
