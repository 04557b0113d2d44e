// Runs the ops' CUDA kernels under the emulation, on host arrays, through
// the launchers' own planning and launch code (gpu::PlanRows, LaunchRows).
// Used by the pybind11 module (emu_module.cc) and the ThreadSanitizer
// driver (tsan_driver.cc).
#ifndef TF_FUSED_LOSSES_TESTS_CUDA_EMU_EMU_OPS_H_
#define TF_FUSED_LOSSES_TESTS_CUDA_EMU_EMU_OPS_H_

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include "cuda_emulation.h"
// Kernel headers after the emulation.
#include "bpmll_grad_kernels.cuh"
#include "bpmll_kernels.cuh"
#include "correlation_kernels.cuh"

namespace tfl_emu {

enum class Type { kHalf, kBfloat16, kFloat, kDouble, kInt32, kInt64, kUint8, kBool };

inline Type ParseType(const std::string& name) {
  if (name == "float16") return Type::kHalf;
  if (name == "bfloat16") return Type::kBfloat16;
  if (name == "float32") return Type::kFloat;
  if (name == "float64") return Type::kDouble;
  if (name == "int32") return Type::kInt32;
  if (name == "int64") return Type::kInt64;
  if (name == "uint8") return Type::kUint8;
  if (name == "bool") return Type::kBool;
  throw std::invalid_argument("unknown dtype " + name);
}

inline size_t SizeOf(Type t) {
  switch (t) {
    case Type::kHalf:
    case Type::kBfloat16:
      return 2;
    case Type::kFloat:
    case Type::kInt32:
      return 4;
    case Type::kDouble:
    case Type::kInt64:
      return 8;
    case Type::kUint8:
    case Type::kBool:
      return 1;
  }
  return 0;
}

// Calls f(T{}) with the device storage type for a float type t.
template <class F>
auto WithFloatType(Type t, F&& f) {
  switch (t) {
    case Type::kHalf:
      return f(__half{});
    case Type::kBfloat16:
      return f(__nv_bfloat16{});
    case Type::kFloat:
      return f(float{});
    case Type::kDouble:
      return f(double{});
    default:
      throw std::invalid_argument("expected a float type");
  }
}

// Likewise for any label type.
template <class F>
auto WithType(Type t, F&& f) {
  switch (t) {
    case Type::kHalf:
    case Type::kBfloat16:
    case Type::kFloat:
    case Type::kDouble:
      return WithFloatType(t, f);
    case Type::kInt32:
      return f(int32_t{});
    case Type::kInt64:
      return f(int64_t{});
    case Type::kUint8:
      return f(uint8_t{});
    case Type::kBool:
      return f(bool{});
  }
  throw std::invalid_argument("bad type");
}

struct LaunchInfo {
  std::string shape;
  int64_t grid;
  int64_t pieces_per_row;
  int64_t piece_length;
};

// Emulated device scratch memory, aligned like TensorFlow's GPU allocations.
struct Scratch {
  explicit Scratch(int64_t bytes) : data(bytes > 0 ? std::aligned_alloc(256, (bytes + 255) / 256 * 256) : nullptr) {}
  ~Scratch() { std::free(data); }
  void* data;
};

template <class Op>
LaunchInfo RunRows(const Op& op, int64_t rows, int64_t row_length, const tf_fused_losses::gpu::RowLaunchOptions& options) {
  using namespace tf_fused_losses::gpu;
  const RowLaunchPlan plan = PlanRowsFor<Op>(rows, row_length, options);
  Scratch scratch(plan.scratch_bytes);
  const cudaError_t err = LaunchRows(op, plan, scratch.data, nullptr);
  if (err != cudaSuccess) throw std::runtime_error(std::string("launch failed: ") + cudaGetErrorString(err));
  return LaunchInfo{RowShapeName(plan.shape), plan.grid, plan.pieces_per_row, plan.piece_length};
}

// y_true (rows, labels) of label_type, y_pred of type; writes loss (rows)
// and grad (rows, labels) of type.
inline LaunchInfo Bpmll(Type type, Type label_type, const void* y_true, const void* y_pred, void* loss, void* grad,
                        int64_t rows, int64_t labels, const tf_fused_losses::gpu::RowLaunchOptions& options) {
  return WithFloatType(type, [&](auto t) {
    using T = decltype(t);
    return WithType(label_type, [&](auto l) {
      using TLabel = decltype(l);
      const auto op = tf_fused_losses::gpu::MakeBpmllRowOp(static_cast<const TLabel*>(y_true),
                                                           static_cast<const T*>(y_pred), static_cast<T*>(loss),
                                                           static_cast<T*>(grad));
      return RunRows(op, rows, labels, options);
    });
  });
}

// out (rows, labels) = scale (rows,) * in (rows, labels), all of type; out may be in.
inline LaunchInfo ScaleRows(Type type, const void* scale, const void* in, void* out, int64_t rows, int64_t labels,
                            const tf_fused_losses::gpu::RowLaunchOptions& options) {
  return WithFloatType(type, [&](auto t) {
    using T = decltype(t);
    const auto op = tf_fused_losses::gpu::MakeScaleRowsOp(static_cast<const T*>(scale), static_cast<const T*>(in),
                                                          static_cast<T*>(out));
    return RunRows(op, rows, labels, options);
  });
}

// FusedCorrelationLoss: loss (rows, steps) of type, row_stats (rows, 5) double.
inline LaunchInfo CorrelationForward(Type type, const void* y_true, const void* y_pred, const bool* mask,
                                     float epsilon, bool concordance, void* loss, double* row_stats, int64_t rows,
                                     int64_t steps, const tf_fused_losses::gpu::RowLaunchOptions& options) {
  return WithFloatType(type, [&](auto t) {
    using T = decltype(t);
    const auto op = tf_fused_losses::gpu::MakeCorrelationForwardOp(
        static_cast<const T*>(y_true), static_cast<const T*>(y_pred), mask, epsilon, concordance,
        static_cast<T*>(loss), row_stats);
    return RunRows(op, rows, steps, options);
  });
}

// FusedCorrelationLossGrad: gradients (rows, steps) of type.
inline LaunchInfo CorrelationBackward(Type type, const void* grad_loss, const void* y_true, const void* y_pred,
                                      const bool* mask, const double* row_stats, float epsilon, bool concordance,
                                      void* grad_y_true, void* grad_y_pred, int64_t rows, int64_t steps,
                                      const tf_fused_losses::gpu::RowLaunchOptions& options) {
  return WithFloatType(type, [&](auto t) {
    using T = decltype(t);
    const auto op = tf_fused_losses::gpu::MakeCorrelationBackwardOp(
        static_cast<const T*>(grad_loss), static_cast<const T*>(y_true), static_cast<const T*>(y_pred), mask,
        row_stats, epsilon, concordance, static_cast<T*>(grad_y_true), static_cast<T*>(grad_y_pred));
    return RunRows(op, rows, steps, options);
  });
}

}  // namespace tfl_emu

#endif  // TF_FUSED_LOSSES_TESTS_CUDA_EMU_EMU_OPS_H_
