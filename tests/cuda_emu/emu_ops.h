// The op wrappers of the CUDA emulation tests and of the GPU check kit
// (tools/gpu_kit): each runs one op's kernels through the launchers' own
// planning and launch code (gpu::PlanRowsFor, gpu::LaunchRows). One set of
// wrappers, two builds:
//  * the emulation (tests/cuda_emu/build.py): g++ compiles them against
//    cuda_emulation.h, in one translation unit, and the pointers are host
//    memory;
//  * a real GPU (tools/gpu_kit/backends.py): nvcc compiles emu_ops_impl.h in
//    several parts (tools/gpu_kit/kit_part.cu, TFL_EMU_SEPARATE_PARTS) and
//    the pointers are device memory. The wrappers enqueue on the default
//    stream and do not synchronise; emu_module.cc does.
// Used by the pybind11 module (emu_module.cc) and the ThreadSanitizer driver
// (tsan_driver.cc). This part includes no CUDA header, so that a host
// compiler can build the module's own code against it.
#ifndef TF_FUSED_LOSSES_TESTS_CUDA_EMU_EMU_OPS_H_
#define TF_FUSED_LOSSES_TESTS_CUDA_EMU_EMU_OPS_H_

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

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

// gpu::RowLaunchOptions, without the CUDA headers. max_grid 0: no cap.
struct Options {
  int multiprocessors = 1;
  int64_t piece_length = 0;  // > 0: force pieces this long
  int64_t max_grid = 0;
};

inline Options MakeOptions(int multiprocessors, int64_t piece_length = 0, int64_t max_grid = 0) {
  Options o;
  o.multiprocessors = multiprocessors;
  o.piece_length = piece_length;
  o.max_grid = max_grid;
  return o;
}

struct LaunchInfo {
  std::string shape;
  int64_t grid;
  int64_t pieces_per_row;
  int64_t piece_length;
};

struct PlanInfo {
  LaunchInfo launch;
  int64_t scratch_bytes;
};

// One instantiation per storage type (pair); emu_ops_impl.h defines them.
// y_true (rows, labels) of kLabel, y_pred of kType; writes loss (rows) and
// grad (rows, labels) of kType.
template <Type kType, Type kLabel>
LaunchInfo BpmllAs(const void* y_true, const void* y_pred, void* loss, void* grad, int64_t rows, int64_t labels,
                   const Options& options);
// out (rows, labels) = scale (rows,) * in (rows, labels); out may be in.
template <Type kType>
LaunchInfo ScaleRowsAs(const void* scale, const void* in, void* out, int64_t rows, int64_t labels,
                       const Options& options);
// FusedCorrelationLoss: loss (rows, steps), row_stats (rows, 5) double.
template <Type kType>
LaunchInfo CorrelationForwardAs(const void* y_true, const void* y_pred, const bool* mask, float epsilon,
                                bool concordance, void* loss, double* row_stats, int64_t rows, int64_t steps,
                                const Options& options);
// FusedCorrelationLossGrad: gradients (rows, steps); grad_y_true may be null
// (compute_grad_y_true = false); grad_y_pred may be grad_loss.
template <Type kType>
LaunchInfo CorrelationBackwardAs(const void* grad_loss, const void* y_true, const void* y_pred, const bool* mask,
                                 const double* row_stats, float epsilon, bool concordance, void* grad_y_true,
                                 void* grad_y_pred, int64_t rows, int64_t steps, const Options& options);

#if defined(TFL_EMU_SEPARATE_PARTS)
// Defined by one part (tools/gpu_kit/kit_part.cu).
PlanInfo Plan(int64_t rows, int64_t row_length, int64_t partial_bytes, const Options& options);
#endif

}  // namespace tfl_emu

#if !defined(TFL_EMU_SEPARATE_PARTS)
// The emulation: every wrapper in this translation unit.
#include "emu_ops_impl.h"

namespace tfl_emu {
inline PlanInfo Plan(int64_t rows, int64_t row_length, int64_t partial_bytes, const Options& options) {
  return PlanImpl(rows, row_length, partial_bytes, options);
}
}  // namespace tfl_emu
#endif

namespace tfl_emu {

template <Type kType>
using TypeTag = std::integral_constant<Type, kType>;

// Calls f(TypeTag<t>{}) for a float type t.
template <class F>
auto WithFloatType(Type t, F&& f) {
  switch (t) {
    case Type::kHalf:
      return f(TypeTag<Type::kHalf>{});
    case Type::kBfloat16:
      return f(TypeTag<Type::kBfloat16>{});
    case Type::kFloat:
      return f(TypeTag<Type::kFloat>{});
    case Type::kDouble:
      return f(TypeTag<Type::kDouble>{});
    default:
      throw std::invalid_argument("expected a float type");
  }
}

// Likewise for any label type.
template <class F>
auto WithType(Type t, F&& f) {
  switch (t) {
    case Type::kInt32:
      return f(TypeTag<Type::kInt32>{});
    case Type::kInt64:
      return f(TypeTag<Type::kInt64>{});
    case Type::kUint8:
      return f(TypeTag<Type::kUint8>{});
    case Type::kBool:
      return f(TypeTag<Type::kBool>{});
    default:
      return WithFloatType(t, f);
  }
}

inline LaunchInfo Bpmll(Type type, Type label_type, const void* y_true, const void* y_pred, void* loss, void* grad,
                        int64_t rows, int64_t labels, const Options& options) {
  return WithFloatType(type, [&](auto t) {
    return WithType(label_type, [&](auto l) {
      return BpmllAs<decltype(t)::value, decltype(l)::value>(y_true, y_pred, loss, grad, rows, labels, options);
    });
  });
}

inline LaunchInfo ScaleRows(Type type, const void* scale, const void* in, void* out, int64_t rows, int64_t labels,
                            const Options& options) {
  return WithFloatType(
      type, [&](auto t) { return ScaleRowsAs<decltype(t)::value>(scale, in, out, rows, labels, options); });
}

inline LaunchInfo CorrelationForward(Type type, const void* y_true, const void* y_pred, const bool* mask,
                                     float epsilon, bool concordance, void* loss, double* row_stats, int64_t rows,
                                     int64_t steps, const Options& options) {
  return WithFloatType(type, [&](auto t) {
    return CorrelationForwardAs<decltype(t)::value>(y_true, y_pred, mask, epsilon, concordance, loss, row_stats, rows,
                                                    steps, options);
  });
}

inline LaunchInfo CorrelationBackward(Type type, const void* grad_loss, const void* y_true, const void* y_pred,
                                      const bool* mask, const double* row_stats, float epsilon, bool concordance,
                                      void* grad_y_true, void* grad_y_pred, int64_t rows, int64_t steps,
                                      const Options& options) {
  return WithFloatType(type, [&](auto t) {
    return CorrelationBackwardAs<decltype(t)::value>(grad_loss, y_true, y_pred, mask, row_stats, epsilon, concordance,
                                                     grad_y_true, grad_y_pred, rows, steps, options);
  });
}

}  // namespace tfl_emu

#endif  // TF_FUSED_LOSSES_TESTS_CUDA_EMU_EMU_OPS_H_
