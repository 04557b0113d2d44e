// Runs a row op (row_kernels.cuh) for an OpKernel: plan for this GPU, take
// scratch from TensorFlow's allocator, enqueue on the op's stream, report a
// failed launch through ctx. Only the .cu.cc launchers include this.
#ifndef TF_FUSED_LOSSES_CUDA_GPU_LAUNCH_H_
#define TF_FUSED_LOSSES_CUDA_GPU_LAUNCH_H_

#include <memory>

#include "gpu_support.h"
#include "row_kernels.cuh"

namespace tf_fused_losses {

template <class Op>
void LaunchRowOp(tensorflow::OpKernelContext* ctx, const Op& op, int64_t rows, int64_t row_length,
                 const char* op_name) {
  const GpuLaunchContext launch = GetGpuLaunchContext(ctx);
  gpu::RowLaunchOptions options;
  options.multiprocessors = launch.multiprocessors;
  std::unique_ptr<GpuScratch> scratch;  // held until the kernels are enqueued
  const cudaError_t status = gpu::PlanAndLaunchRows(
      op, rows, row_length, options,
      [&](int64_t bytes) -> void* {
        scratch = std::make_unique<GpuScratch>(ctx, bytes);
        return scratch->ok() ? scratch->data() : nullptr;
      },
      launch.stream);
  if (scratch != nullptr && !scratch->ok()) return;  // ctx holds the allocator's error
  ReportGpuLaunch(ctx, status, op_name);
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_GPU_LAUNCH_H_
