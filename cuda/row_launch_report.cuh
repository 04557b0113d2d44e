// One row op launched on the current device through gpu::PlanAndLaunchRows,
// with what went wrong in words. Shared by the XLA CUDA handlers and the C
// entry points (cc/core/c_api), which turn the report into their own error
// types; the TF launchers take their device facts from TensorFlow instead.
#ifndef TF_FUSED_LOSSES_CUDA_ROW_LAUNCH_REPORT_CUH_
#define TF_FUSED_LOSSES_CUDA_ROW_LAUNCH_REPORT_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "row_kernels.cuh"

namespace tf_fused_losses {
namespace gpu {

// The current device's multiprocessors (1 where CUDA cannot say): the
// caller makes current the device its stream and arrays belong to.
inline int CurrentMultiprocessors() {
  int device = 0, count = 1;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    return 1;
  }
  return count;
}

enum class LaunchProblem { kNone, kNoScratch, kCuda };

struct LaunchReport {
  LaunchProblem problem;
  std::string message;  // empty for kNone
};

// allocate(bytes) -> device memory usable in stream order on `stream`, or
// nullptr (PlanAndLaunchRows).
template <class Op, class Allocate>
LaunchReport LaunchOnCurrentDevice(const char* op_name, const Op& op, int64_t rows, int64_t row_length,
                                   Allocate&& allocate, cudaStream_t stream) {
  RowLaunchOptions options;
  options.multiprocessors = CurrentMultiprocessors();
  RowLaunchPlan plan{};
  bool no_scratch = false;
  const cudaError_t status = PlanAndLaunchRows(
      op, rows, row_length, options,
      [&](int64_t bytes) -> void* {
        void* memory = allocate(bytes);
        no_scratch = memory == nullptr;
        return memory;
      },
      stream, &plan);
  if (status == cudaSuccess) return {LaunchProblem::kNone, std::string()};
  if (no_scratch) {
    return {LaunchProblem::kNoScratch,
            std::string(op_name) + ": could not allocate " + std::to_string(plan.scratch_bytes) + " bytes of scratch"};
  }
  return {LaunchProblem::kCuda, std::string(op_name) + ": launching its CUDA kernels failed: " +
                                    cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")"};
}

}  // namespace gpu
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_ROW_LAUNCH_REPORT_CUH_
