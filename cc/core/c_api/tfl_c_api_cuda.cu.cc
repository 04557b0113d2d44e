// The C entry points' CUDA half (tfl_c_api.h): the row kernels of cuda/
// launched as the XLA CUDA handlers launch them (gpu::LaunchOnCurrentDevice,
// row_launch_report.cuh), on the caller's stream with the caller's scratch,
// and no host synchronisation. Compiled by nvcc into the core
// (cuda/CMakeLists.txt).
#include <cuda_runtime_api.h>

#include "bpmll_grad_kernels.cuh"
#include "bpmll_ids_kernels.cuh"
#include "bpmll_kernels.cuh"
#include "correlation_kernels.cuh"
#include "device_types.cuh"
#include "row_launch_report.cuh"
#include "tfl_c_api.h"

namespace tf_fused_losses {
namespace c_api {
namespace {

template <typename T>
const CudaType<T>* In(const void* p) {
  return static_cast<const CudaType<T>*>(p);
}
template <typename T>
CudaType<T>* Out(void* p) {
  return static_cast<CudaType<T>*>(p);
}

template <class Op>
int Launch(const char* op_name, const Op& op, int64_t rows, int64_t length, void* stream, tfl_allocate_fn allocate,
           void* allocate_context) {
  const gpu::LaunchReport report = gpu::LaunchOnCurrentDevice(
      op_name, op, rows, length,
      [&](int64_t bytes) { return allocate == nullptr ? nullptr : allocate(allocate_context, bytes); },
      static_cast<cudaStream_t>(stream));
  switch (report.problem) {
    case gpu::LaunchProblem::kNone:
      return Succeed();
    case gpu::LaunchProblem::kNoScratch:
      return Fail(TFL_ERROR_RESOURCE_EXHAUSTED, report.message);
    default:
      return Fail(TFL_ERROR_CUDA, report.message);
  }
}

}  // namespace
}  // namespace c_api
}  // namespace tf_fused_losses

namespace tfl = ::tf_fused_losses;
namespace capi = ::tf_fused_losses::c_api;

extern "C" {

int tfl_bpmll_loss_cuda(const void* y_true, int label_dtype, const void* y_pred, int dtype, int64_t rows,
                        int64_t labels, void* loss, void* grad, void* stream, tfl_allocate_fn allocate,
                        void* allocate_context) {
  constexpr const char* kOp = "FusedBpmllLoss";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCall(kOp, rows, labels, {loss}, {y_true, y_pred, grad}); status != TFL_OK) {
      return status;
    }
    return capi::WithValueType(kOp, "y_pred", dtype, [&](auto logit) {
      using T = decltype(logit);
      return capi::WithLabelType(kOp, label_dtype, [&](auto label) {
        using TLabel = decltype(label);
        const auto op = tfl::gpu::MakeBpmllRowOp(capi::In<TLabel>(y_true), capi::In<T>(y_pred), capi::Out<T>(loss),
                                                 capi::Out<T>(grad));
        return capi::Launch(kOp, op, rows, labels, stream, allocate, allocate_context);
      });
    });
  });
}

// Sorts each row's ids into the caller's scratch, then runs the row kernels
// behind it on the same stream (as the XLA CUDA handler does).
int tfl_bpmll_ids_loss_cuda(const void* label_ids, int id_dtype, int64_t width, const void* y_pred, int dtype,
                            int64_t rows, int64_t labels, void* loss, void* grad, void* stream,
                            tfl_allocate_fn allocate, void* allocate_context) {
  constexpr const char* kOp = "FusedBpmllIdsLoss";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCall(kOp, rows, labels, {loss}, {y_pred, grad}); status != TFL_OK) return status;
    if (int status = capi::CheckCall(kOp, rows, width, {}, {label_ids}); status != TFL_OK) return status;
    return capi::WithValueType(kOp, "y_pred", dtype, [&](auto logit) {
      using T = decltype(logit);
      return capi::WithIdType(kOp, id_dtype, [&](auto id) {
        using TId = decltype(id);
        if (rows == 0) return capi::Succeed();
        const int64_t bytes = tfl::gpu::SortedIdsBytes<TId>(rows, width);
        void* memory = allocate == nullptr ? nullptr : allocate(allocate_context, bytes);
        if (memory == nullptr) {
          return capi::Fail(TFL_ERROR_RESOURCE_EXHAUSTED,
                            std::string(kOp) + ": could not allocate " + std::to_string(bytes) + " bytes of scratch");
        }
        const tfl::gpu::SortedIds<TId> sorted = tfl::gpu::SortedIdsIn<TId>(memory, rows, width);
        const cudaError_t status = tfl::gpu::LaunchSortRowIds(capi::In<TId>(label_ids), rows, width, labels, sorted,
                                                              static_cast<cudaStream_t>(stream));
        if (status != cudaSuccess) {
          return capi::Fail(TFL_ERROR_CUDA, std::string(kOp) + ": launching its id sort failed: " +
                                                cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
        }
        const auto op = tfl::gpu::MakeBpmllIdsRowOp(sorted, width, labels, capi::In<T>(y_pred), capi::Out<T>(loss),
                                                    capi::Out<T>(grad));
        return capi::Launch(kOp, op, rows, labels, stream, allocate, allocate_context);
      });
    });
  });
}

int tfl_bpmll_loss_grad_cuda(const void* grad_loss, const void* cached_grad, int dtype, int64_t rows, int64_t labels,
                             void* out, void* stream, tfl_allocate_fn allocate, void* allocate_context) {
  constexpr const char* kOp = "FusedBpmllLossGrad";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCall(kOp, rows, labels, {grad_loss}, {cached_grad, out}); status != TFL_OK) {
      return status;
    }
    return capi::WithValueType(kOp, "cached_grad", dtype, [&](auto logit) {
      using T = decltype(logit);
      const auto op = tfl::gpu::MakeScaleRowsOp(capi::In<T>(grad_loss), capi::In<T>(cached_grad), capi::Out<T>(out));
      return capi::Launch(kOp, op, rows, labels, stream, allocate, allocate_context);
    });
  });
}

int tfl_correlation_loss_cuda(const void* y_true, const void* y_pred, const uint8_t* mask, int dtype, int64_t rows,
                              int64_t steps, float epsilon, int concordance, void* loss, double* row_stats,
                              void* stream, tfl_allocate_fn allocate, void* allocate_context) {
  constexpr const char* kOp = "FusedCorrelationLoss";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCall(kOp, rows, steps, {row_stats}, {y_true, y_pred, loss}); status != TFL_OK) {
      return status;
    }
    return capi::WithValueType(kOp, "y_pred", dtype, [&](auto value) {
      using T = decltype(value);
      const auto op = tfl::gpu::MakeCorrelationForwardOp(capi::In<T>(y_true), capi::In<T>(y_pred),
                                                         reinterpret_cast<const bool*>(mask), epsilon,
                                                         concordance != 0, capi::Out<T>(loss), row_stats);
      return capi::Launch(kOp, op, rows, steps, stream, allocate, allocate_context);
    });
  });
}

int tfl_correlation_loss_grad_cuda(const void* grad_loss, const void* y_true, const void* y_pred, const uint8_t* mask,
                                   const double* row_stats, int dtype, int64_t rows, int64_t steps, float epsilon,
                                   int concordance, void* grad_y_true, void* grad_y_pred, void* stream,
                                   tfl_allocate_fn allocate, void* allocate_context) {
  constexpr const char* kOp = "FusedCorrelationLossGrad";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCall(kOp, rows, steps, {row_stats}, {grad_loss, y_true, y_pred, grad_y_pred});
        status != TFL_OK) {
      return status;
    }
    return capi::WithValueType(kOp, "y_pred", dtype, [&](auto value) {
      using T = decltype(value);
      const auto op = tfl::gpu::MakeCorrelationBackwardOp(
          capi::In<T>(grad_loss), capi::In<T>(y_true), capi::In<T>(y_pred), reinterpret_cast<const bool*>(mask),
          row_stats, epsilon, concordance != 0, grad_y_true == nullptr ? nullptr : capi::Out<T>(grad_y_true),
          capi::Out<T>(grad_y_pred));
      return capi::Launch(kOp, op, rows, steps, stream, allocate, allocate_context);
    });
  });
}

}  // extern "C"
