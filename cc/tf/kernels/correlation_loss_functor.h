// The functor split of tensorflow/custom-op for FusedCorrelationLoss and
// FusedCorrelationLossGrad: declared here, specialised for CPU in
// correlation_loss_kernel.cc / correlation_loss_grad_kernel.cc and for GPU
// in cuda/correlation_loss_kernel.cu.cc. The math is in correlation_math.h.
#ifndef TF_FUSED_LOSSES_CC_TF_KERNELS_CORRELATION_LOSS_FUNCTOR_H_
#define TF_FUSED_LOSSES_CC_TF_KERNELS_CORRELATION_LOSS_FUNCTOR_H_

#include <cstdint>

#include "correlation_cpu.h"

namespace tensorflow {
class OpKernelContext;
}

namespace tf_fused_losses {

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

#endif  // TF_FUSED_LOSSES_CC_TF_KERNELS_CORRELATION_LOSS_FUNCTOR_H_
