// The definitions of emu_ops.h's wrappers: the kernels of cuda/*.cuh, under
// nvcc (real CUDA, device pointers) or under cuda_emulation.h (host
// pointers). See emu_ops.h.
#ifndef TF_FUSED_LOSSES_TESTS_CUDA_EMU_EMU_OPS_IMPL_H_
#define TF_FUSED_LOSSES_TESTS_CUDA_EMU_EMU_OPS_IMPL_H_

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#else
#include "cuda_emulation.h"
#endif
// Kernel headers after the emulation.
#include "bpmll_grad_kernels.cuh"
#include "bpmll_kernels.cuh"
#include "correlation_kernels.cuh"
#include "emu_ops.h"

namespace tfl_emu {

// The device storage type of each dtype.
template <Type kType>
struct StorageOf;
template <>
struct StorageOf<Type::kHalf> {
  using type = __half;
};
template <>
struct StorageOf<Type::kBfloat16> {
  using type = __nv_bfloat16;
};
template <>
struct StorageOf<Type::kFloat> {
  using type = float;
};
template <>
struct StorageOf<Type::kDouble> {
  using type = double;
};
template <>
struct StorageOf<Type::kInt32> {
  using type = int32_t;
};
template <>
struct StorageOf<Type::kInt64> {
  using type = int64_t;
};
template <>
struct StorageOf<Type::kUint8> {
  using type = uint8_t;
};
template <>
struct StorageOf<Type::kBool> {
  using type = bool;
};

inline tf_fused_losses::gpu::RowLaunchOptions RowOptions(const Options& o) {
  tf_fused_losses::gpu::RowLaunchOptions options;
  options.multiprocessors = o.multiprocessors;
  options.piece_length = o.piece_length;
  options.max_grid = o.max_grid > 0 ? o.max_grid : tf_fused_losses::gpu::kMaxGrid;
  return options;
}

inline LaunchInfo InfoOf(const tf_fused_losses::gpu::RowLaunchPlan& plan) {
  return LaunchInfo{tf_fused_losses::gpu::RowShapeName(plan.shape), plan.grid, plan.pieces_per_row,
                    plan.piece_length};
}

inline PlanInfo PlanImpl(int64_t rows, int64_t row_length, int64_t partial_bytes, const Options& options) {
  const auto plan = tf_fused_losses::gpu::PlanRows(rows, row_length, partial_bytes, RowOptions(options));
  return PlanInfo{InfoOf(plan), plan.scratch_bytes};
}

#if defined(__CUDACC__)
// Device scratch for the pieces' partials: one buffer that grows as needed
// and is kept, so that timed launches do not pay for cudaMalloc (which also
// synchronises). Launches on the default stream are ordered, so reusing it
// from launch to launch is safe.
class Scratch {
 public:
  explicit Scratch(int64_t bytes) {
    static std::mutex mu;
    static void* buffer = nullptr;
    static int64_t capacity = 0;
    std::lock_guard<std::mutex> lock(mu);
    if (bytes > capacity) {
      if (buffer != nullptr) cudaFree(buffer);
      buffer = nullptr;
      capacity = 0;
      const cudaError_t err = cudaMalloc(&buffer, static_cast<size_t>(bytes));
      if (err != cudaSuccess) throw std::runtime_error(std::string("cudaMalloc(scratch): ") + cudaGetErrorString(err));
      capacity = bytes;
    }
    data = bytes > 0 ? buffer : nullptr;
  }
  void* data;
};
#else
// Emulated device scratch memory, aligned like TensorFlow's GPU allocations.
struct Scratch {
  explicit Scratch(int64_t bytes) : data(bytes > 0 ? std::aligned_alloc(256, (bytes + 255) / 256 * 256) : nullptr) {}
  ~Scratch() { std::free(data); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void* data;
};
#endif

template <class Op>
LaunchInfo RunRows(const Op& op, int64_t rows, int64_t row_length, const Options& options) {
  using namespace tf_fused_losses::gpu;
  RowLaunchPlan plan{};
  std::unique_ptr<Scratch> scratch;
  const cudaError_t err = PlanAndLaunchRows(
      op, rows, row_length, RowOptions(options),
      [&](int64_t bytes) {
        scratch = std::make_unique<Scratch>(bytes);
        return scratch->data;
      },
      nullptr, &plan);
  if (err != cudaSuccess) throw std::runtime_error(std::string("launch failed: ") + cudaGetErrorString(err));
  return InfoOf(plan);
}

template <Type kType, Type kLabel>
LaunchInfo BpmllAs(const void* y_true, const void* y_pred, void* loss, void* grad, int64_t rows, int64_t labels,
                   const Options& options) {
  using T = typename StorageOf<kType>::type;
  using TLabel = typename StorageOf<kLabel>::type;
  const auto op = tf_fused_losses::gpu::MakeBpmllRowOp(static_cast<const TLabel*>(y_true),
                                                       static_cast<const T*>(y_pred), static_cast<T*>(loss),
                                                       static_cast<T*>(grad));
  return RunRows(op, rows, labels, options);
}

template <Type kType>
LaunchInfo ScaleRowsAs(const void* scale, const void* in, void* out, int64_t rows, int64_t labels,
                       const Options& options) {
  using T = typename StorageOf<kType>::type;
  const auto op = tf_fused_losses::gpu::MakeScaleRowsOp(static_cast<const T*>(scale), static_cast<const T*>(in),
                                                        static_cast<T*>(out));
  return RunRows(op, rows, labels, options);
}

template <Type kType>
LaunchInfo CorrelationForwardAs(const void* y_true, const void* y_pred, const bool* mask, float epsilon,
                                bool concordance, void* loss, double* row_stats, int64_t rows, int64_t steps,
                                const Options& options) {
  using T = typename StorageOf<kType>::type;
  const auto op = tf_fused_losses::gpu::MakeCorrelationForwardOp(static_cast<const T*>(y_true),
                                                                 static_cast<const T*>(y_pred), mask, epsilon,
                                                                 concordance, static_cast<T*>(loss), row_stats);
  return RunRows(op, rows, steps, options);
}

template <Type kType>
LaunchInfo CorrelationBackwardAs(const void* grad_loss, const void* y_true, const void* y_pred, const bool* mask,
                                 const double* row_stats, float epsilon, bool concordance, void* grad_y_true,
                                 void* grad_y_pred, int64_t rows, int64_t steps, const Options& options) {
  using T = typename StorageOf<kType>::type;
  const auto op = tf_fused_losses::gpu::MakeCorrelationBackwardOp(
      static_cast<const T*>(grad_loss), static_cast<const T*>(y_true), static_cast<const T*>(y_pred), mask, row_stats,
      epsilon, concordance, static_cast<T*>(grad_y_true), static_cast<T*>(grad_y_pred));
  return RunRows(op, rows, steps, options);
}

}  // namespace tfl_emu

#endif  // TF_FUSED_LOSSES_TESTS_CUDA_EMU_EMU_OPS_IMPL_H_
