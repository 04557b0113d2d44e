// CorrelationLossFunctor for the GPU; the kernels are in
// correlation_kernels.cuh and row_kernels.cuh, the op and its registration
// in cc/tf/kernels/correlation_loss_kernel.cc.
#include <type_traits>

#include "correlation_kernels.cuh"
#include "correlation_loss_functor.h"
#include "gpu_launch.h"
#include "tf_device_types.h"

namespace tf_fused_losses {

// The primary template's member: the CPU has its own specialisation, so
// this definition serves GPUDevice only (instantiated below).
template <typename Device, typename T>
void CorrelationLossFunctor<Device, T>::operator()(tensorflow::OpKernelContext* ctx,
                                                   const CorrelationLossArgs<T>& args) {
  static_assert(std::is_same<Device, GPUDevice>::value, "the CPU functor is in correlation_loss_kernel.cc");
  const auto op = gpu::MakeCorrelationForwardOp(ToDevice(args.y_true), ToDevice(args.y_pred), args.mask, args.epsilon,
                                                args.concordance, ToDevice(args.loss), args.row_stats);
  LaunchRowOp(ctx, op, args.rows, args.steps, "FusedCorrelationLoss");
}

template struct CorrelationLossFunctor<GPUDevice, Eigen::half>;
template struct CorrelationLossFunctor<GPUDevice, Eigen::bfloat16>;
template struct CorrelationLossFunctor<GPUDevice, float>;
template struct CorrelationLossFunctor<GPUDevice, double>;

}  // namespace tf_fused_losses
