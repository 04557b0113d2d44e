// The GPU side of FusedBpmllLossGrad (the CPU kernel in
// bpmll_loss_grad_kernel.cc computes directly): declared here, defined in
// cuda/bpmll_loss_grad_kernel.cu.cc.
#ifndef TF_FUSED_LOSSES_CC_TF_KERNELS_BPMLL_LOSS_GRAD_FUNCTOR_H_
#define TF_FUSED_LOSSES_CC_TF_KERNELS_BPMLL_LOSS_GRAD_FUNCTOR_H_

#include <cstdint>

namespace tensorflow {
class OpKernelContext;
}

namespace tf_fused_losses {

// out[i, j] = grad_loss[i] * cached_grad[i, j]; out may be cached_grad.
template <typename T>
struct BpmllLossGradArgs {
  const T* grad_loss;    // (rows,)
  const T* cached_grad;  // (rows, labels)
  int64_t rows;
  int64_t labels;
  T* out;  // (rows, labels)
};

template <typename Device, typename T>
struct BpmllLossGradFunctor {
  void operator()(tensorflow::OpKernelContext* ctx, const BpmllLossGradArgs<T>& args);
};

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_TF_KERNELS_BPMLL_LOSS_GRAD_FUNCTOR_H_
