// The functor split of tensorflow/custom-op: one declaration, specialised for
// CPU in bpmll_loss_kernel.cc and for GPU in cuda/bpmll_loss_kernel.cu.cc.
#ifndef TF_FUSED_LOSSES_CC_TF_KERNELS_BPMLL_LOSS_FUNCTOR_H_
#define TF_FUSED_LOSSES_CC_TF_KERNELS_BPMLL_LOSS_FUNCTOR_H_

#include <cstdint>

namespace tensorflow {
class OpKernelContext;
}

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

template <typename Device, typename T, typename TLabel>
struct BpmllLossFunctor {
  // Reports bad labels, and launch failures on GPU, through ctx.
  void operator()(tensorflow::OpKernelContext* ctx, const BpmllLossArgs<T, TLabel>& args);
};

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_TF_KERNELS_BPMLL_LOSS_FUNCTOR_H_
