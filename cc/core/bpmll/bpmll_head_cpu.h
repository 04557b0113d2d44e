// One label chunk of the fused linear BP-MLL head's one-pass form, its fast
// case (python/tf_fused_losses/_head_tf.py, _one_pass), in one pass over the
// chunk instead of the framework's several: per row i and chunk column j,
//   c = matmul[i, j] + bias[j]
//   t = e^{c + factor[i]}, 0 at the row's positive labels
//   dlogits[i, j] = row_scale[i] t
// with the row sums of t and of c (the caller's range and finiteness checks:
// where they fail it takes the exact, max-shifted form) and the column sums
// of dlogits (the bias gradient's chunk). Per-ISA rows
// (bpmll_head_cpu_chunks.cc). Outside XLA only: under XLA the framework's
// ops fuse into few passes and the step runs at its GEMMs' time already
// (docs/benchmarks.md).
#ifndef TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_HEAD_CPU_H_
#define TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_HEAD_CPU_H_

#include <cstdint>

#include "parallel_for.h"

namespace tf_fused_losses {

// Row-major (rows, width) matmul and dlogits; ids (rows, ids_width) are each
// row's counted positive labels as global label ids, -1 for none (the chunk
// covers ids [start, start + width)).
template <typename Acc>
struct HeadChunkArgs {
  const Acc* matmul;
  const Acc* bias;       // (width,)
  const Acc* factor;     // (rows,): log A - log pairs, finite
  const Acc* row_scale;  // (rows,)
  const int32_t* ids;
  int64_t ids_width;
  int64_t rows;
  int64_t width;
  int64_t start;
  Acc* dlogits;
  Acc* term_sums;    // (rows,)
  Acc* logit_sums;   // (rows,)
  Acc* column_sums;  // (width,)
};

// Acc: float or double.
template <typename Acc>
void RunHeadChunkCpu(const HeadChunkArgs<Acc>& args, const ParallelFor& pool);

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_HEAD_CPU_H_
