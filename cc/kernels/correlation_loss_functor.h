// The functor split of tensorflow/custom-op for FusedCorrelationLoss and
// FusedCorrelationLossGrad: declared here, specialised for CPU in
// correlation_loss_kernel.cc / correlation_loss_grad_kernel.cc and for GPU
// in cuda/correlation_loss_kernel.cu.cc. The math is in correlation_math.h.
#ifndef TF_FUSED_LOSSES_CC_KERNELS_CORRELATION_LOSS_FUNCTOR_H_
#define TF_FUSED_LOSSES_CC_KERNELS_CORRELATION_LOSS_FUNCTOR_H_

#include <cstdint>

namespace tensorflow {
class OpKernelContext;
}

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

template <typename Device, typename T>
struct CorrelationLossFunctor {
  // Reports launch failures on GPU through ctx.
  void operator()(tensorflow::OpKernelContext* ctx, const CorrelationLossArgs<T>& args);
};

template <typename Device, typename T>
struct CorrelationLossGradFunctor {
  void operator()(tensorflow::OpKernelContext* ctx, const CorrelationLossGradArgs<T>& args);
};

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_KERNELS_CORRELATION_LOSS_FUNCTOR_H_
