// The BP-MLL kernels on the CPU, for any frontend: row drivers over the
// per-ISA chunk code (bpmll_cpu_chunks.h) on a ParallelFor. Element types are
// storage types: Float16Bits, BFloat16Bits, float, double; labels also
// int32_t, int64_t, uint8_t and bool.
#ifndef TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_CPU_H_
#define TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_CPU_H_

#include <cstdint>

#include "parallel_for.h"

namespace tf_fused_losses {

// Row-major (rows, labels) inputs; writes loss[rows] and grad[rows, labels].
template <typename T, typename TLabel>
struct BpmllLossArgs {
  const TLabel* y_true;
  const T* y_pred;
  int64_t rows;
  int64_t labels;
  T* loss;
  T* grad;
};

// The first label outside [0, 1] (NaN included), in row-major order; row < 0
// when there is none. Rows with bad labels are still written.
struct BpmllBadLabel {
  int64_t row = -1;
  int64_t column = -1;
  double value = 0;
};

template <typename T, typename TLabel>
BpmllBadLabel RunBpmllLossCpu(const BpmllLossArgs<T, TLabel>& args, const ParallelFor& pool);

// out[i, j] = cached_grad[i, j] * grad_loss[i]; out may be cached_grad.
template <typename T>
void RunBpmllLossGradCpu(const T* grad_loss, const T* cached_grad, int64_t rows, int64_t labels, T* out,
                         const ParallelFor& pool);

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_CPU_H_
