// BpmllLossFunctor for the GPU; the kernels are in bpmll_kernels.cuh and
// row_kernels.cuh, the op and its registration in
// cc/tf/kernels/bpmll_loss_kernel.cc.
#include <cstdint>
#include <type_traits>

#include "bpmll_kernels.cuh"
#include "bpmll_loss_functor.h"
#include "tf_device_types.h"
#include "gpu_launch.h"

namespace tf_fused_losses {

// The primary template's member: the CPU has its own specialisation, so
// this definition serves GPUDevice only (instantiated below).
template <typename Device, typename T, typename TLabel>
void BpmllLossFunctor<Device, T, TLabel>::operator()(tensorflow::OpKernelContext* ctx,
                                                     const BpmllLossArgs<T, TLabel>& args) {
  static_assert(std::is_same<Device, GPUDevice>::value, "the CPU functor is in bpmll_loss_kernel.cc");
  const auto op = gpu::MakeBpmllRowOp(ToDevice(args.y_true), ToDevice(args.y_pred), ToDevice(args.loss),
                                      ToDevice(args.grad));
  LaunchRowOp(ctx, op, args.rows, args.labels, "FusedBpmllLoss");
}

#define TFL_INSTANTIATE_BPMLL(T)                                \
  template struct BpmllLossFunctor<GPUDevice, T, Eigen::half>;     \
  template struct BpmllLossFunctor<GPUDevice, T, Eigen::bfloat16>; \
  template struct BpmllLossFunctor<GPUDevice, T, float>;           \
  template struct BpmllLossFunctor<GPUDevice, T, double>;          \
  template struct BpmllLossFunctor<GPUDevice, T, int32_t>;         \
  template struct BpmllLossFunctor<GPUDevice, T, int64_t>;         \
  template struct BpmllLossFunctor<GPUDevice, T, uint8_t>;         \
  template struct BpmllLossFunctor<GPUDevice, T, bool>;

TFL_INSTANTIATE_BPMLL(Eigen::half)
TFL_INSTANTIATE_BPMLL(Eigen::bfloat16)
TFL_INSTANTIATE_BPMLL(float)
TFL_INSTANTIATE_BPMLL(double)
#undef TFL_INSTANTIATE_BPMLL

}  // namespace tf_fused_losses
