// The CUDA FFI handlers: thin bindings of the row kernels of cuda/ on the
// stream XLA gives the call, with scratch from the FFI's allocator and no
// host synchronisation.
#include <cuda_runtime_api.h>

#include <string>
#include <type_traits>

#include "bpmll_grad_kernels.cuh"
#include "bpmll_ids_kernels.cuh"
#include "bpmll_kernels.cuh"
#include "correlation_kernels.cuh"
#include "correlation_math.h"
#include "device_types.cuh"
#include "ffi_common.h"
#include "ffi_handlers.h"
#include "ffi_ids_common.h"
#include "row_kernels.cuh"
#include "row_launch_report.cuh"

namespace tf_fused_losses {
namespace ffi_frontend {
namespace {

template <typename T>
const CudaType<T>* In(const ffi::AnyBuffer& b) {
  return static_cast<const CudaType<T>*>(b.untyped_data());
}
template <typename T>
CudaType<T>* Out(ffi::Result<ffi::AnyBuffer>& b) {
  return static_cast<CudaType<T>*>(b->untyped_data());
}

template <class Op>
ffi::Error LaunchRowOp(const Op& op, int64_t rows, int64_t row_length, cudaStream_t stream,
                       ffi::ScratchAllocator& scratch, const char* op_name) {
  const gpu::LaunchReport report = gpu::LaunchOnCurrentDevice(
      op_name, op, rows, row_length,
      [&](int64_t bytes) { return scratch.Allocate(static_cast<size_t>(bytes), 16).value_or(nullptr); }, stream);
  switch (report.problem) {
    case gpu::LaunchProblem::kNone:
      return ffi::Error::Success();
    case gpu::LaunchProblem::kNoScratch:
      return ffi::Error(ffi::ErrorCode::kResourceExhausted, report.message);
    default:
      return ffi::Error(ffi::ErrorCode::kInternal, report.message);
  }
}

ffi::Error BpmllLossImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer y_true,
                         ffi::AnyBuffer y_pred, ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> grad) {
  constexpr const char* kOp = "FusedBpmllLoss";
  RowShape shape;
  if (ffi::Error e = BpmllShape(kOp, y_true, y_pred, &shape); e.failure()) return e;
  return WithLogitType(kOp, "y_pred", y_pred.element_type(), [&](auto logit) {
    using T = decltype(logit);
    return WithLabelType(kOp, y_true.element_type(), [&](auto label) {
      using TLabel = decltype(label);
      const auto op = gpu::MakeBpmllRowOp(In<TLabel>(y_true), In<T>(y_pred), Out<T>(loss), Out<T>(grad));
      return LaunchRowOp(op, shape.rows, shape.length, stream, scratch, kOp);
    });
  });
}

ffi::Error BpmllLossGradImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer grad_loss,
                             ffi::AnyBuffer cached_grad, ffi::Result<ffi::AnyBuffer> out) {
  constexpr const char* kOp = "FusedBpmllLossGrad";
  RowShape shape;
  if (ffi::Error e = BpmllGradShape(kOp, grad_loss, cached_grad, &shape); e.failure()) return e;
  return WithLogitType(kOp, "cached_grad", cached_grad.element_type(), [&](auto logit) {
    using T = decltype(logit);
    const auto op = gpu::MakeScaleRowsOp(In<T>(grad_loss), In<T>(cached_grad), Out<T>(out));
    return LaunchRowOp(op, shape.rows, shape.length, stream, scratch, kOp);
  });
}

ffi::Error CorrelationLossImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer y_true,
                               ffi::AnyBuffer y_pred, ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> loss,
                               ffi::Result<ffi::AnyBuffer> row_stats, bool concordance, float epsilon) {
  constexpr const char* kOp = "FusedCorrelationLoss";
  RowShape shape;
  bool has_mask = false;
  if (ffi::Error e = CorrelationShape(kOp, y_true, y_pred, mask, &shape, &has_mask); e.failure()) return e;
  return WithLogitType(kOp, "y_pred", y_pred.element_type(), [&](auto logit) {
    using T = decltype(logit);
    const auto op = gpu::MakeCorrelationForwardOp(
        In<T>(y_true), In<T>(y_pred), has_mask ? static_cast<const bool*>(mask.untyped_data()) : nullptr, epsilon,
        concordance, Out<T>(loss), static_cast<double*>(row_stats->untyped_data()));
    return LaunchRowOp(op, shape.rows, shape.length, stream, scratch, kOp);
  });
}

ffi::Error CorrelationLossGradImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer grad_loss,
                                   ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred, ffi::AnyBuffer mask,
                                   ffi::AnyBuffer row_stats, ffi::Result<ffi::AnyBuffer> grad_y_true,
                                   ffi::Result<ffi::AnyBuffer> grad_y_pred, bool concordance, float epsilon,
                                   bool compute_grad_y_true) {
  constexpr const char* kOp = "FusedCorrelationLossGrad";
  RowShape shape;
  bool has_mask = false;
  if (ffi::Error e = CorrelationGradShape(kOp, grad_loss, y_true, y_pred, mask, row_stats, &shape, &has_mask);
      e.failure()) {
    return e;
  }
  return WithLogitType(kOp, "y_pred", y_pred.element_type(), [&](auto logit) {
    using T = decltype(logit);
    const auto op = gpu::MakeCorrelationBackwardOp(
        In<T>(grad_loss), In<T>(y_true), In<T>(y_pred),
        has_mask ? static_cast<const bool*>(mask.untyped_data()) : nullptr,
        static_cast<const double*>(row_stats.untyped_data()), epsilon, concordance,
        compute_grad_y_true ? Out<T>(grad_y_true) : nullptr, Out<T>(grad_y_pred));
    return LaunchRowOp(op, shape.rows, shape.length, stream, scratch, kOp);
  });
}

// Sorts each row's ids into scratch, then runs the row kernels behind it
// on the same stream.
ffi::Error BpmllIdsLossImpl(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer label_ids,
                            ffi::AnyBuffer y_pred, ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> grad) {
  constexpr const char* kOp = "FusedBpmllIdsLoss";
  RowShape shape;
  int64_t width = 0;
  if (ffi::Error e = BpmllIdsShape(kOp, label_ids, y_pred, &shape, &width); e.failure()) return e;
  return WithLogitType(kOp, "y_pred", y_pred.element_type(), [&](auto logit) {
    using T = decltype(logit);
    return WithIdType(kOp, label_ids.element_type(), [&](auto id) {
      using TId = decltype(id);
      if (shape.rows == 0) return ffi::Error::Success();
      const int64_t bytes = gpu::SortedIdsBytes<TId>(shape.rows, width);
      void* memory = scratch.Allocate(static_cast<size_t>(bytes), 16).value_or(nullptr);
      if (memory == nullptr) {
        return ffi::Error(ffi::ErrorCode::kResourceExhausted,
                          std::string(kOp) + ": could not allocate " + std::to_string(bytes) + " bytes of scratch");
      }
      const gpu::SortedIds<TId> sorted = gpu::SortedIdsIn<TId>(memory, shape.rows, width);
      const cudaError_t status = gpu::LaunchSortRowIds(In<TId>(label_ids), shape.rows, width, shape.length, sorted, stream);
      if (status != cudaSuccess) {
        return ffi::Error(ffi::ErrorCode::kInternal, std::string(kOp) + ": launching its id sort failed: " +
                                                         cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
      }
      const auto op = gpu::MakeBpmllIdsRowOp(sorted, width, shape.length, In<T>(y_pred), Out<T>(loss), Out<T>(grad));
      return LaunchRowOp(op, shape.rows, shape.length, stream, scratch, kOp);
    });
  });
}

}  // namespace
}  // namespace ffi_frontend
}  // namespace tf_fused_losses

namespace tfl_ffi = ::tf_fused_losses::ffi_frontend;
using CudaStream = xla::ffi::PlatformStream<cudaStream_t>;

static auto CudaBinding() { return xla::ffi::Ffi::Bind().Ctx<CudaStream>().Ctx<xla::ffi::ScratchAllocator>(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(TflBpmllLossCuda, tfl_ffi::BpmllLossImpl,
                              tfl_ffi::BpmllLossSignature(CudaBinding()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(TflBpmllLossGradCuda, tfl_ffi::BpmllLossGradImpl,
                              tfl_ffi::BpmllLossGradSignature(CudaBinding()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(TflCorrelationLossCuda, tfl_ffi::CorrelationLossImpl,
                              tfl_ffi::CorrelationLossSignature(CudaBinding()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(TflCorrelationLossGradCuda, tfl_ffi::CorrelationLossGradImpl,
                              tfl_ffi::CorrelationLossGradSignature(CudaBinding()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(TflBpmllIdsLossCuda, tfl_ffi::BpmllIdsLossImpl,
                              tfl_ffi::BpmllLossSignature(CudaBinding()));
