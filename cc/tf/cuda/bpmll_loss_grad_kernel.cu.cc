// BpmllLossGradFunctor for the GPU; the kernel is in bpmll_grad_kernels.cuh
// and row_kernels.cuh, the op and its registration in
// cc/tf/kernels/bpmll_loss_grad_kernel.cc.
#include <type_traits>

#include "bpmll_grad_kernels.cuh"
#include "bpmll_loss_grad_functor.h"
#include "gpu_launch.h"
#include "tf_device_types.h"

namespace tf_fused_losses {

template <typename Device, typename T>
void BpmllLossGradFunctor<Device, T>::operator()(tensorflow::OpKernelContext* ctx, const BpmllLossGradArgs<T>& args) {
  static_assert(std::is_same<Device, GPUDevice>::value, "FusedBpmllLossGrad's CPU kernel does not use this functor");
  const auto op = gpu::MakeScaleRowsOp(ToDevice(args.grad_loss), ToDevice(args.cached_grad), ToDevice(args.out));
  LaunchRowOp(ctx, op, args.rows, args.labels, "FusedBpmllLossGrad");
}

template struct BpmllLossGradFunctor<GPUDevice, Eigen::half>;
template struct BpmllLossGradFunctor<GPUDevice, Eigen::bfloat16>;
template struct BpmllLossGradFunctor<GPUDevice, float>;
template struct BpmllLossGradFunctor<GPUDevice, double>;

}  // namespace tf_fused_losses
