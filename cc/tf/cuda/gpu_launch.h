// Runs a row op (row_kernels.cuh) for an OpKernel: plan for this GPU, take
// scratch from TensorFlow's allocator, enqueue on the op's stream, report a
// failed launch through ctx. Only the .cu.cc launchers include this.
#ifndef TF_FUSED_LOSSES_CUDA_GPU_LAUNCH_H_
#define TF_FUSED_LOSSES_CUDA_GPU_LAUNCH_H_

#include "gpu_support.h"
#include "row_kernels.cuh"

namespace tf_fused_losses {

template <class Op>
void LaunchRowOp(tensorflow::OpKernelContext* ctx, const Op& op, int64_t rows, int64_t row_length,
                 const char* op_name) {
  const GpuLaunchContext launch = GetGpuLaunchContext(ctx);
  gpu::RowLaunchOptions options;
  options.multiprocessors = launch.multiprocessors;
  const gpu::RowLaunchPlan plan = gpu::PlanRowsFor<Op>(rows, row_length, options);
  GpuScratch scratch(ctx, plan.scratch_bytes);
  if (!scratch.ok()) return;
  ReportGpuLaunch(ctx, gpu::LaunchRows(op, plan, scratch.data(), launch.stream), op_name);
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_GPU_LAUNCH_H_
