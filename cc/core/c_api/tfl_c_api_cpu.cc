// The C entry points' CPU half and their error channel (tfl_c_api.h).
#include <limits>
#include <sstream>

#include "bpmll_cpu.h"
#include "bpmll_ids_cpu.h"
#include "correlation_cpu.h"
#include "cpu_isa.h"
#include "tfl_c_api.h"
#include "thread_pool_for.h"

namespace tf_fused_losses {
namespace c_api {
namespace {

// One per thread: a caller reads the message of its own failed call, never
// that of a call another thread made meanwhile.
thread_local std::string last_error;

// The CPU kernels do not run while TFL_CPU_ISA is set wrong (cpu_isa.h).
int CheckCpuIsa() {
  const char* error = tfl_cpu_isa_error();
  return error == nullptr ? TFL_OK : Fail(TFL_ERROR_CPU_ISA, error);
}

// The checks of a CPU entry point (CheckCall's, after TFL_CPU_ISA's).
int CheckCpuCall(const char* op, int64_t rows, int64_t length, std::initializer_list<const void*> per_row,
                 std::initializer_list<const void*> per_element) {
  if (int status = CheckCpuIsa(); status != TFL_OK) return status;
  return CheckCall(op, rows, length, per_row, per_element);
}

}  // namespace

int Fail(int code, const std::string& message) {
  last_error = message;
  return code;
}

int Succeed() {
  last_error.clear();
  return TFL_OK;
}

int CheckCall(const char* op, int64_t rows, int64_t length, std::initializer_list<const void*> per_row,
              std::initializer_list<const void*> per_element) {
  if (rows < 0 || length < 0 || (length > 0 && rows > std::numeric_limits<int64_t>::max() / length)) {
    return Fail(TFL_ERROR_INVALID_ARGUMENT, std::string(op) + ": the shape (" + std::to_string(rows) + ", " +
                                                std::to_string(length) + ") is negative or too large");
  }
  for (const void* p : per_row) {
    if (rows > 0 && p == nullptr) return Fail(TFL_ERROR_INVALID_ARGUMENT, std::string(op) + ": an output is NULL");
  }
  for (const void* p : per_element) {
    if (rows * length > 0 && p == nullptr) {
      return Fail(TFL_ERROR_INVALID_ARGUMENT, std::string(op) + ": an input or output is NULL");
    }
  }
  return TFL_OK;
}

}  // namespace c_api
}  // namespace tf_fused_losses

namespace tfl = ::tf_fused_losses;
namespace capi = ::tf_fused_losses::c_api;

extern "C" {

const char* tfl_last_error(void) { return capi::last_error.c_str(); }

int tfl_c_api_version(void) { return TFL_C_API_VERSION; }

int tfl_bpmll_loss_cpu(const void* y_true, int label_dtype, const void* y_pred, int dtype, int64_t rows,
                       int64_t labels, void* loss, void* grad, int threads) {
  constexpr const char* kOp = "FusedBpmllLoss";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCpuCall(kOp, rows, labels, {loss}, {y_true, y_pred, grad}); status != TFL_OK) {
      return status;
    }
    const tfl::ThreadPoolFor pool(threads);
    return capi::WithValueType(kOp, "y_pred", dtype, [&](auto logit) {
      using T = decltype(logit);
      return capi::WithLabelType(kOp, label_dtype, [&](auto label) {
        using TLabel = decltype(label);
        const tfl::BpmllLossArgs<T, TLabel> args{static_cast<const TLabel*>(y_true), static_cast<const T*>(y_pred),
                                                rows, labels, static_cast<T*>(loss), static_cast<T*>(grad)};
        const tfl::BpmllBadLabel bad = tfl::RunBpmllLossCpu(args, pool);
        if (bad.row < 0) return capi::Succeed();
        std::ostringstream message;
        message << kOp << ": y_true must hold labels in [0, 1]; y_true[" << bad.row << ", " << bad.column
                << "] = " << bad.value;
        return capi::Fail(TFL_ERROR_BAD_LABEL, message.str());
      });
    });
  });
}

int tfl_bpmll_ids_loss_cpu(const void* label_ids, int id_dtype, int64_t width, const void* y_pred, int dtype,
                           int64_t rows, int64_t labels, void* loss, void* grad, int threads) {
  constexpr const char* kOp = "FusedBpmllIdsLoss";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCpuCall(kOp, rows, labels, {loss}, {y_pred, grad}); status != TFL_OK) return status;
    if (int status = capi::CheckCall(kOp, rows, width, {}, {label_ids}); status != TFL_OK) return status;
    const tfl::ThreadPoolFor pool(threads);
    return capi::WithValueType(kOp, "y_pred", dtype, [&](auto logit) {
      using T = decltype(logit);
      return capi::WithIdType(kOp, id_dtype, [&](auto id) {
        using TId = decltype(id);
        const tfl::BpmllIdsLossArgs<T, TId> args{static_cast<const TId*>(label_ids), width,
                                                 static_cast<const T*>(y_pred),     rows,
                                                 labels,                            static_cast<T*>(loss),
                                                 static_cast<T*>(grad)};
        const tfl::BpmllBadLabelId bad = tfl::RunBpmllIdsLossCpu(args, pool);
        if (bad.row < 0) return capi::Succeed();
        return capi::Fail(TFL_ERROR_BAD_LABEL, std::string(kOp) + ": " + tfl::BpmllBadLabelIdMessage(bad, labels));
      });
    });
  });
}

int tfl_bpmll_loss_grad_cpu(const void* grad_loss, const void* cached_grad, int dtype, int64_t rows, int64_t labels,
                            void* out, int threads) {
  constexpr const char* kOp = "FusedBpmllLossGrad";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCpuCall(kOp, rows, labels, {grad_loss}, {cached_grad, out}); status != TFL_OK) {
      return status;
    }
    const tfl::ThreadPoolFor pool(threads);
    return capi::WithValueType(kOp, "cached_grad", dtype, [&](auto logit) {
      using T = decltype(logit);
      tfl::RunBpmllLossGradCpu(static_cast<const T*>(grad_loss), static_cast<const T*>(cached_grad), rows, labels,
                               static_cast<T*>(out), pool);
      return capi::Succeed();
    });
  });
}

int tfl_correlation_loss_cpu(const void* y_true, const void* y_pred, const uint8_t* mask, int dtype, int64_t rows,
                             int64_t steps, float epsilon, int concordance, void* loss, double* row_stats,
                             int threads) {
  constexpr const char* kOp = "FusedCorrelationLoss";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCpuCall(kOp, rows, steps, {row_stats}, {y_true, y_pred, loss}); status != TFL_OK) {
      return status;
    }
    const tfl::ThreadPoolFor pool(threads);
    return capi::WithValueType(kOp, "y_pred", dtype, [&](auto value) {
      using T = decltype(value);
      const tfl::CorrelationLossArgs<T> args{static_cast<const T*>(y_true),
                                             static_cast<const T*>(y_pred),
                                             reinterpret_cast<const bool*>(mask),
                                             rows,
                                             steps,
                                             epsilon,
                                             concordance != 0,
                                             static_cast<T*>(loss),
                                             row_stats};
      tfl::RunCorrelationLossCpu(args, pool);
      return capi::Succeed();
    });
  });
}

int tfl_correlation_loss_grad_cpu(const void* grad_loss, const void* y_true, const void* y_pred, const uint8_t* mask,
                                  const double* row_stats, int dtype, int64_t rows, int64_t steps, float epsilon,
                                  int concordance, void* grad_y_true, void* grad_y_pred, int threads) {
  constexpr const char* kOp = "FusedCorrelationLossGrad";
  return capi::Guarded(kOp, [&] {
    if (int status = capi::CheckCpuCall(kOp, rows, steps, {row_stats}, {grad_loss, y_true, y_pred, grad_y_pred});
        status != TFL_OK) {
      return status;
    }
    const tfl::ThreadPoolFor pool(threads);
    return capi::WithValueType(kOp, "y_pred", dtype, [&](auto value) {
      using T = decltype(value);
      const tfl::CorrelationLossGradArgs<T> args{static_cast<const T*>(grad_loss),
                                                 static_cast<const T*>(y_true),
                                                 static_cast<const T*>(y_pred),
                                                 reinterpret_cast<const bool*>(mask),
                                                 row_stats,
                                                 rows,
                                                 steps,
                                                 epsilon,
                                                 concordance != 0,
                                                 static_cast<T*>(grad_y_true),
                                                 static_cast<T*>(grad_y_pred)};
      tfl::RunCorrelationLossGradCpu(args, pool);
      return capi::Succeed();
    });
  });
}

}  // extern "C"
