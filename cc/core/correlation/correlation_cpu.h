// The correlation/CCC kernels on the CPU, for any frontend: row drivers over
// the per-ISA chunk code (correlation_cpu_chunks.h) on a ParallelFor. The
// argument structs serve the GPU launchers too. The CPU entry points take
// storage types: Float16Bits, BFloat16Bits, float, double.
#ifndef TF_FUSED_LOSSES_CC_CORE_CORRELATION_CORRELATION_CPU_H_
#define TF_FUSED_LOSSES_CC_CORE_CORRELATION_CORRELATION_CPU_H_

#include <cstdint>

#include "parallel_for.h"

namespace tf_fused_losses {

// All arrays are row-major (rows, steps); x = y_pred, y = y_true.
template <typename T>
struct CorrelationLossArgs {
  const T* y_true;
  const T* y_pred;
  const bool* mask;  // nullptr: every step is valid
  int64_t rows;
  int64_t steps;
  float epsilon;
  bool concordance;  // false: Pearson, true: CCC
  T* loss;            // (rows, steps)
  double* row_stats;  // (rows, kCorrelationRowStats), see CorrelationStoreMoments
};

template <typename T>
struct CorrelationLossGradArgs {
  const T* grad_loss;  // upstream d/d loss, (rows, steps)
  const T* y_true;
  const T* y_pred;
  const bool* mask;          // nullptr: every step is valid
  const double* row_stats;   // the forward op's second output
  int64_t rows;
  int64_t steps;
  float epsilon;
  bool concordance;
  T* grad_y_true;  // (rows, steps), or nullptr: not wanted
  // May be grad_loss itself (the kernel forwards that buffer when it can):
  // read an element's grad_loss before writing its gradients, and not after.
  T* grad_y_pred;
};

template <typename T>
void RunCorrelationLossCpu(const CorrelationLossArgs<T>& args, const ParallelFor& pool);

template <typename T>
void RunCorrelationLossGradCpu(const CorrelationLossGradArgs<T>& args, const ParallelFor& pool);

// The same arguments with the element pointers of another type of the same
// bits (Eigen::half -> Float16Bits).
template <typename To, typename From>
CorrelationLossArgs<To> RetypeCorrelationArgs(const CorrelationLossArgs<From>& a) {
  return CorrelationLossArgs<To>{reinterpret_cast<const To*>(a.y_true), reinterpret_cast<const To*>(a.y_pred),
                                 a.mask, a.rows, a.steps, a.epsilon, a.concordance, reinterpret_cast<To*>(a.loss),
                                 a.row_stats};
}
template <typename To, typename From>
CorrelationLossGradArgs<To> RetypeCorrelationArgs(const CorrelationLossGradArgs<From>& a) {
  return CorrelationLossGradArgs<To>{reinterpret_cast<const To*>(a.grad_loss), reinterpret_cast<const To*>(a.y_true),
                                     reinterpret_cast<const To*>(a.y_pred), a.mask, a.row_stats, a.rows, a.steps,
                                     a.epsilon, a.concordance, reinterpret_cast<To*>(a.grad_y_true),
                                     reinterpret_cast<To*>(a.grad_y_pred)};
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_CORRELATION_CORRELATION_CPU_H_
