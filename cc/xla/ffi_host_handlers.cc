// The Host FFI handlers: thin bindings of cc/core's CPU row drivers.
#include <algorithm>
#include <sstream>

#include "bpmll_cpu.h"
#include "bpmll_ids_cpu.h"
#include "correlation_cpu.h"
#include "correlation_math.h"
#include "cpu_isa.h"
#include "ffi_common.h"
#include "ffi_handlers.h"
#include "ffi_ids_common.h"
#include "parallel_for.h"
#include "thread_pool_for.h"

namespace tf_fused_losses {
namespace ffi_frontend {
namespace {

// ParallelFor on the FFI thread pool. Schedule() does not wait, and the pool
// may have a single thread that is busy running this very call: shards are
// therefore claimed by the calling thread and the tasks alike
// (RunClaimedShards, thread_pool_for.h).
class FfiParallelFor final : public ParallelFor {
 public:
  explicit FfiParallelFor(ffi::ThreadPool* pool) : pool_(pool) {}

  int64_t NumThreads() const override { return std::max<int64_t>(1, pool_->num_threads()); }

  void Run(int64_t n, int64_t cycles_per_unit, const std::function<void(int64_t, int64_t)>& body) const override {
    const int64_t threads = NumThreads();
    const int64_t shards = ShardCount(n, cycles_per_unit, threads);
    RunClaimedShards(n, shards, std::min(threads, shards) - 1,
                     [this](std::function<void()> task) { pool_->Schedule(std::move(task)); }, body);
  }

 private:
  ffi::ThreadPool* pool_;
};

// The CPU kernels do not run while TFL_CPU_ISA is set wrong (cpu_isa.h): a
// direct jax.ffi user hears of it too, not only those of the Python loaders.
ffi::Error CheckCpuIsa() {
  const char* error = tfl_cpu_isa_error();
  return error == nullptr ? ffi::Error::Success() : InvalidArgument(error);
}

ffi::Error BpmllLossImpl(ffi::ThreadPool pool, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred,
                         ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> grad) {
  constexpr const char* kOp = "FusedBpmllLoss";
  if (ffi::Error e = CheckCpuIsa(); e.failure()) return e;
  RowShape shape;
  if (ffi::Error e = BpmllShape(kOp, y_true, y_pred, &shape); e.failure()) return e;
  FfiParallelFor parallel(&pool);
  return WithLogitType(kOp, "y_pred", y_pred.element_type(), [&](auto logit) {
    using T = decltype(logit);
    return WithLabelType(kOp, y_true.element_type(), [&](auto label) {
      using TLabel = decltype(label);
      const BpmllLossArgs<T, TLabel> args{static_cast<const TLabel*>(y_true.untyped_data()),
                                         static_cast<const T*>(y_pred.untyped_data()), shape.rows, shape.length,
                                         static_cast<T*>(loss->untyped_data()), static_cast<T*>(grad->untyped_data())};
      const BpmllBadLabel bad = RunBpmllLossCpu(args, parallel);
      if (bad.row < 0) return ffi::Error::Success();
      std::ostringstream message;
      message << kOp << ": y_true must hold labels in [0, 1]; y_true[" << bad.row << ", " << bad.column
              << "] = " << bad.value;
      return InvalidArgument(message.str());
    });
  });
}

ffi::Error BpmllLossGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer grad_loss, ffi::AnyBuffer cached_grad,
                             ffi::Result<ffi::AnyBuffer> out) {
  constexpr const char* kOp = "FusedBpmllLossGrad";
  if (ffi::Error e = CheckCpuIsa(); e.failure()) return e;
  RowShape shape;
  if (ffi::Error e = BpmllGradShape(kOp, grad_loss, cached_grad, &shape); e.failure()) return e;
  FfiParallelFor parallel(&pool);
  return WithLogitType(kOp, "cached_grad", cached_grad.element_type(), [&](auto logit) {
    using T = decltype(logit);
    RunBpmllLossGradCpu(static_cast<const T*>(grad_loss.untyped_data()),
                        static_cast<const T*>(cached_grad.untyped_data()), shape.rows, shape.length,
                        static_cast<T*>(out->untyped_data()), parallel);
    return ffi::Error::Success();
  });
}

ffi::Error CorrelationLossImpl(ffi::ThreadPool pool, ffi::AnyBuffer y_true, ffi::AnyBuffer y_pred, ffi::AnyBuffer mask,
                               ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> row_stats,
                               bool concordance, float epsilon) {
  constexpr const char* kOp = "FusedCorrelationLoss";
  if (ffi::Error e = CheckCpuIsa(); e.failure()) return e;
  RowShape shape;
  bool has_mask = false;
  if (ffi::Error e = CorrelationShape(kOp, y_true, y_pred, mask, &shape, &has_mask); e.failure()) return e;
  FfiParallelFor parallel(&pool);
  return WithLogitType(kOp, "y_pred", y_pred.element_type(), [&](auto logit) {
    using T = decltype(logit);
    const CorrelationLossArgs<T> args{static_cast<const T*>(y_true.untyped_data()),
                                      static_cast<const T*>(y_pred.untyped_data()),
                                      has_mask ? static_cast<const bool*>(mask.untyped_data()) : nullptr,
                                      shape.rows,
                                      shape.length,
                                      epsilon,
                                      concordance,
                                      static_cast<T*>(loss->untyped_data()),
                                      static_cast<double*>(row_stats->untyped_data())};
    RunCorrelationLossCpu(args, parallel);
    return ffi::Error::Success();
  });
}

ffi::Error CorrelationLossGradImpl(ffi::ThreadPool pool, ffi::AnyBuffer grad_loss, ffi::AnyBuffer y_true,
                                   ffi::AnyBuffer y_pred, ffi::AnyBuffer mask, ffi::AnyBuffer row_stats,
                                   ffi::Result<ffi::AnyBuffer> grad_y_true, ffi::Result<ffi::AnyBuffer> grad_y_pred,
                                   bool concordance, float epsilon, bool compute_grad_y_true) {
  constexpr const char* kOp = "FusedCorrelationLossGrad";
  if (ffi::Error e = CheckCpuIsa(); e.failure()) return e;
  RowShape shape;
  bool has_mask = false;
  if (ffi::Error e = CorrelationGradShape(kOp, grad_loss, y_true, y_pred, mask, row_stats, &shape, &has_mask);
      e.failure()) {
    return e;
  }
  FfiParallelFor parallel(&pool);
  return WithLogitType(kOp, "y_pred", y_pred.element_type(), [&](auto logit) {
    using T = decltype(logit);
    const CorrelationLossGradArgs<T> args{
        static_cast<const T*>(grad_loss.untyped_data()),
        static_cast<const T*>(y_true.untyped_data()),
        static_cast<const T*>(y_pred.untyped_data()),
        has_mask ? static_cast<const bool*>(mask.untyped_data()) : nullptr,
        static_cast<const double*>(row_stats.untyped_data()),
        shape.rows,
        shape.length,
        epsilon,
        concordance,
        compute_grad_y_true ? static_cast<T*>(grad_y_true->untyped_data()) : nullptr,
        static_cast<T*>(grad_y_pred->untyped_data())};
    RunCorrelationLossGradCpu(args, parallel);
    return ffi::Error::Success();
  });
}

ffi::Error BpmllIdsLossImpl(ffi::ThreadPool pool, ffi::AnyBuffer label_ids, ffi::AnyBuffer y_pred,
                            ffi::Result<ffi::AnyBuffer> loss, ffi::Result<ffi::AnyBuffer> grad) {
  constexpr const char* kOp = "FusedBpmllIdsLoss";
  if (ffi::Error e = CheckCpuIsa(); e.failure()) return e;
  RowShape shape;
  int64_t width = 0;
  if (ffi::Error e = BpmllIdsShape(kOp, label_ids, y_pred, &shape, &width); e.failure()) return e;
  FfiParallelFor parallel(&pool);
  return WithLogitType(kOp, "y_pred", y_pred.element_type(), [&](auto logit) {
    using T = decltype(logit);
    return WithIdType(kOp, label_ids.element_type(), [&](auto id) {
      using TId = decltype(id);
      const BpmllIdsLossArgs<T, TId> args{static_cast<const TId*>(label_ids.untyped_data()),
                                          width,
                                          static_cast<const T*>(y_pred.untyped_data()),
                                          shape.rows,
                                          shape.length,
                                          static_cast<T*>(loss->untyped_data()),
                                          static_cast<T*>(grad->untyped_data())};
      const BpmllBadLabelId bad = RunBpmllIdsLossCpu(args, parallel);
      if (bad.row < 0) return ffi::Error::Success();
      return InvalidArgument(std::string(kOp) + ": " + BpmllBadLabelIdMessage(bad, shape.length));
    });
  });
}

}  // namespace
}  // namespace ffi_frontend
}  // namespace tf_fused_losses

namespace tfl_ffi = ::tf_fused_losses::ffi_frontend;

static auto HostBinding() { return xla::ffi::Ffi::Bind().Ctx<xla::ffi::ThreadPool>(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(TflBpmllLossHost, tfl_ffi::BpmllLossImpl,
                              tfl_ffi::BpmllLossSignature(HostBinding()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(TflBpmllLossGradHost, tfl_ffi::BpmllLossGradImpl,
                              tfl_ffi::BpmllLossGradSignature(HostBinding()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(TflCorrelationLossHost, tfl_ffi::CorrelationLossImpl,
                              tfl_ffi::CorrelationLossSignature(HostBinding()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(TflCorrelationLossGradHost, tfl_ffi::CorrelationLossGradImpl,
                              tfl_ffi::CorrelationLossGradSignature(HostBinding()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(TflBpmllIdsLossHost, tfl_ffi::BpmllIdsLossImpl,
                              tfl_ffi::BpmllLossSignature(HostBinding()));
