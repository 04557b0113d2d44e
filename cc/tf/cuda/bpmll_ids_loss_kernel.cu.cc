// BpmllIdsLossFunctor for the GPU: sort each row's ids into scratch, then
// the row kernels of bpmll_ids_kernels.cuh; the op and its registration are
// in cc/tf/kernels/bpmll_ids_loss_kernel.cc.
#include <cstdint>
#include <type_traits>

#include "bpmll_ids_kernels.cuh"
#include "bpmll_loss_functor.h"
#include "gpu_launch.h"
#include "tf_device_types.h"

namespace tf_fused_losses {

// The primary template's member: the CPU has its own specialisation, so
// this definition serves GPUDevice only (instantiated below).
template <typename Device, typename T, typename TId>
void BpmllIdsLossFunctor<Device, T, TId>::operator()(tensorflow::OpKernelContext* ctx,
                                                     const BpmllIdsLossArgs<T, TId>& args) {
  static_assert(std::is_same<Device, GPUDevice>::value, "the CPU functor is in bpmll_ids_loss_kernel.cc");
  constexpr const char* kOp = "FusedBpmllIdsLoss";
  // Held until the row kernels are enqueued behind the sort on the stream.
  GpuScratch scratch(ctx, gpu::SortedIdsBytes<TId>(args.rows, args.width));
  if (!scratch.ok()) return;
  const gpu::SortedIds<TId> sorted = gpu::SortedIdsIn<TId>(scratch.data(), args.rows, args.width);
  const cudaError_t status = gpu::LaunchSortRowIds(args.label_ids, args.rows, args.width, args.labels, sorted,
                                                   GetGpuLaunchContext(ctx).stream);
  if (status != cudaSuccess) {
    ReportGpuLaunch(ctx, status, kOp);
    return;
  }
  const auto op = gpu::MakeBpmllIdsRowOp(sorted, args.width, args.labels, ToDevice(args.y_pred), ToDevice(args.loss),
                                         ToDevice(args.grad));
  LaunchRowOp(ctx, op, args.rows, args.labels, kOp);
}

#define TFL_INSTANTIATE_BPMLL_IDS(T)                          \
  template struct BpmllIdsLossFunctor<GPUDevice, T, int32_t>; \
  template struct BpmllIdsLossFunctor<GPUDevice, T, int64_t>;
TFL_INSTANTIATE_BPMLL_IDS(Eigen::half)
TFL_INSTANTIATE_BPMLL_IDS(Eigen::bfloat16)
TFL_INSTANTIATE_BPMLL_IDS(float)
TFL_INSTANTIATE_BPMLL_IDS(double)
#undef TFL_INSTANTIATE_BPMLL_IDS

}  // namespace tf_fused_losses
