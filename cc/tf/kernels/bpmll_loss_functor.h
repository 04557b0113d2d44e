// The functor split of tensorflow/custom-op: one declaration, specialised for
// CPU in bpmll_loss_kernel.cc (a call into cc/core) and for GPU in
// cc/tf/cuda/bpmll_loss_kernel.cu.cc. The arguments are the core's.
#ifndef TF_FUSED_LOSSES_CC_TF_KERNELS_BPMLL_LOSS_FUNCTOR_H_
#define TF_FUSED_LOSSES_CC_TF_KERNELS_BPMLL_LOSS_FUNCTOR_H_

#include <cstdint>

#include "bpmll_cpu.h"
#include "bpmll_ids_cpu.h"

namespace tensorflow {
class OpKernelContext;
}

namespace tf_fused_losses {

template <typename Device, typename T, typename TLabel>
struct BpmllLossFunctor {
  // Reports bad labels, and launch failures on GPU, through ctx.
  void operator()(tensorflow::OpKernelContext* ctx, const BpmllLossArgs<T, TLabel>& args);
};

// FusedBpmllIdsLoss's: CPU in bpmll_ids_loss_kernel.cc, GPU in
// cc/tf/cuda/bpmll_ids_loss_kernel.cu.cc.
template <typename Device, typename T, typename TId>
struct BpmllIdsLossFunctor {
  // Reports bad ids on CPU, and launch failures on GPU, through ctx.
  void operator()(tensorflow::OpKernelContext* ctx, const BpmllIdsLossArgs<T, TId>& args);
};

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_TF_KERNELS_BPMLL_LOSS_FUNCTOR_H_
