// The CPU inner loops of the correlation/CCC kernels, over one chunk of a row
// held in the accumulation type. correlation_cpu_chunks.cc is compiled once
// per x86-64 level, like bpmll_cpu_chunks.cc, and the best one this CPU runs
// is picked at load time (correlation_cpu_dispatch.cc).
//
// valid is the row's bool mask at the chunk, read as bytes (nonzero = valid
// step; GCC vectorises no loads of bool), or nullptr when every step is
// valid.
#ifndef TF_FUSED_LOSSES_CC_CORE_CORRELATION_CORRELATION_CPU_CHUNKS_H_
#define TF_FUSED_LOSSES_CC_CORE_CORRELATION_CORRELATION_CPU_CHUNKS_H_

#include <cstdint>

#include "correlation_math.h"

namespace tf_fused_losses {

// The longest chunk the chunk functions accept.
constexpr int64_t kCorrelationChunk = 2048;

template <typename Acc>
struct CorrelationChunkOps {
  const char* isa;
  // Moments of the chunk's valid steps. The chunk should fit in L1: it is
  // read twice (mean, then centred sums).
  CorrelationMoments<Acc> (*moments)(const Acc* x, const Acc* y, const uint8_t* valid, int64_t n);
  // stream: write the outputs with streaming stores (cpu_stream_store.h),
  // for outputs too large to stay in cache for the next op.
  void (*loss)(const CorrelationRow<Acc>& row, const Acc* x, const Acc* y, const uint8_t* valid, int64_t n,
               bool stream, Acc* loss_out);
  CorrelationGradSums<Acc> (*grad_sums)(const CorrelationRow<Acc>& row, const Acc* grad_loss, const Acc* x,
                                        const Acc* y, const uint8_t* valid, int64_t n);
  // grad_x_out may equal grad_loss (then it is not streamed); grad_y_out
  // may be nullptr (y_true's gradient not wanted).
  void (*gradient)(const CorrelationGradCoeffs<Acc>& coeffs, const Acc* grad_loss, const Acc* x, const Acc* y,
                   const uint8_t* valid, int64_t n, bool stream, Acc* grad_x_out, Acc* grad_y_out);
};

template <typename Acc>
const CorrelationChunkOps<Acc>& CorrelationChunkOpsForThisCpu();

// The chunk ops' view of a bool mask from element at on; null stays null.
inline const uint8_t* MaskBytesAt(const bool* mask, int64_t at) {
  return mask ? reinterpret_cast<const uint8_t*>(mask + at) : nullptr;
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_CORRELATION_CORRELATION_CPU_CHUNKS_H_
