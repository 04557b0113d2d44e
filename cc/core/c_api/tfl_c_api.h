/* Plain C entry points of the core's kernels, for frameworks that call a
 * shared library without building against it (PyTorch through ctypes:
 * python/tf_fused_losses/_torch_ops.py), so that no framework header and no
 * framework version is baked into libtfl_core.so.
 *
 * Each function is a thin binding of the code the TF OpKernels and the XLA
 * FFI handlers run: on the CPU the row drivers (bpmll_cpu.h,
 * correlation_cpu.h) on a ThreadPoolFor of `threads` threads, whose results
 * do not depend on `threads`; on CUDA the row kernels through
 * gpu::PlanAndLaunchRows (cuda/row_kernels.cuh) on `stream`, enqueued
 * without host synchronisation. Arrays are dense and row-major; the caller
 * allocates every output.
 *
 * Each returns TFL_OK or an error code; tfl_last_error() then gives the
 * message on the calling thread. CPU entry points refuse to run while
 * TFL_CPU_ISA is set wrong (tfl_cpu_isa_error()). The CUDA entry points
 * exist only in CUDA builds (look the symbols up); their labels are not
 * checked (rows with a label outside [0, 1] get NaN, as in the TF and XLA
 * CUDA kernels).
 */
#ifndef TF_FUSED_LOSSES_CC_CORE_C_API_TFL_C_API_H_
#define TF_FUSED_LOSSES_CC_CORE_C_API_TFL_C_API_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported whatever -fvisibility the library is compiled with. */
#pragma GCC visibility push(default)

/* Raised whenever a signature below changes or an entry point is added;
 * callers check it. 2: tfl_bpmll_ids_loss_cpu/_cuda. */
#define TFL_C_API_VERSION 2

/* Element types. Values (y_pred, y_true of the correlation losses and every
 * output but row_stats): F16..F64. BP-MLL labels: any of them. */
typedef enum {
  TFL_DTYPE_F16 = 0,
  TFL_DTYPE_BF16 = 1,
  TFL_DTYPE_F32 = 2,
  TFL_DTYPE_F64 = 3,
  TFL_DTYPE_I32 = 4,
  TFL_DTYPE_I64 = 5,
  TFL_DTYPE_U8 = 6,
  TFL_DTYPE_BOOL = 7 /* one byte, 0 or 1 */
} TflDtype;

typedef enum {
  TFL_OK = 0,
  TFL_ERROR_INVALID_ARGUMENT = 1, /* a dtype code, shape or pointer */
  TFL_ERROR_BAD_LABEL = 2,        /* a BP-MLL label outside [0, 1]; the outputs are written */
  TFL_ERROR_CPU_ISA = 3,          /* TFL_CPU_ISA refused (tfl_cpu_isa_error()) */
  TFL_ERROR_RESOURCE_EXHAUSTED = 4, /* CUDA scratch could not be allocated */
  TFL_ERROR_CUDA = 5,             /* a CUDA launch failed */
  TFL_ERROR_INTERNAL = 6          /* anything else (an exception inside the core) */
} TflStatus;

/* The message of this thread's last failed call ("" if none). Valid until
 * this thread's next call. */
const char* tfl_last_error(void);
int tfl_c_api_version(void);

/* BP-MLL: y_true, y_pred (rows, labels) -> loss (rows,), grad (rows,
 * labels): the gradient of each row's loss, to be scaled by the backward.
 * loss and grad have y_pred's dtype. */
int tfl_bpmll_loss_cpu(const void* y_true, int label_dtype, const void* y_pred, int dtype, int64_t rows,
                       int64_t labels, void* loss, void* grad, int threads);
/* BP-MLL from label ids: label_ids (rows, width) of id_dtype (TFL_DTYPE_I32
 * or I64), each row's positive labels in any order, -1 as padding, a
 * repeated id counted once -> loss and grad as tfl_bpmll_loss_cpu's on the
 * equivalent 0/1 matrix, bit for bit. An id outside [0, labels) other than
 * -1: TFL_ERROR_BAD_LABEL naming it ("label_ids[3, 2] = 670091 is outside
 * [0, 670091)"), and nothing is written. The backward is
 * tfl_bpmll_loss_grad_cpu. */
int tfl_bpmll_ids_loss_cpu(const void* label_ids, int id_dtype, int64_t width, const void* y_pred, int dtype,
                           int64_t rows, int64_t labels, void* loss, void* grad, int threads);
/* out[i, j] = cached_grad[i, j] * grad_loss[i]; out may be cached_grad. */
int tfl_bpmll_loss_grad_cpu(const void* grad_loss, const void* cached_grad, int dtype, int64_t rows, int64_t labels,
                            void* out, int threads);

/* Pearson (concordance 0) or CCC (1): y_true, y_pred (rows, steps) of
 * `dtype`, mask (rows, steps) of bools or NULL -> loss (rows, steps) and
 * row_stats (rows, 5) float64 for the backward. */
int tfl_correlation_loss_cpu(const void* y_true, const void* y_pred, const uint8_t* mask, int dtype, int64_t rows,
                             int64_t steps, float epsilon, int concordance, void* loss, double* row_stats,
                             int threads);
/* grad_y_true NULL: not wanted (neither computed nor written). grad_y_pred
 * may be grad_loss itself. */
int tfl_correlation_loss_grad_cpu(const void* grad_loss, const void* y_true, const void* y_pred, const uint8_t* mask,
                                  const double* row_stats, int dtype, int64_t rows, int64_t steps, float epsilon,
                                  int concordance, void* grad_y_true, void* grad_y_pred, int threads);

/* CUDA (CUDA builds only): the same arguments as device pointers, enqueued
 * on `stream` (a cudaStream_t; NULL: the legacy default stream) of the
 * current device. Scratch (long rows; the ids' sorted copy):
 * allocate(context, bytes) is then called, at most twice per call and before
 * anything that uses it is enqueued, and must return that much device memory
 * usable in stream order on `stream` (or NULL: TFL_ERROR_RESOURCE_EXHAUSTED);
 * the caller frees it after the call. The ids are not checked on CUDA: a
 * row with a bad id gets NaN, as in the XLA CUDA handler. */
typedef void* (*tfl_allocate_fn)(void* context, int64_t bytes);

int tfl_bpmll_loss_cuda(const void* y_true, int label_dtype, const void* y_pred, int dtype, int64_t rows,
                        int64_t labels, void* loss, void* grad, void* stream, tfl_allocate_fn allocate,
                        void* allocate_context);
int tfl_bpmll_ids_loss_cuda(const void* label_ids, int id_dtype, int64_t width, const void* y_pred, int dtype,
                            int64_t rows, int64_t labels, void* loss, void* grad, void* stream,
                            tfl_allocate_fn allocate, void* allocate_context);
int tfl_bpmll_loss_grad_cuda(const void* grad_loss, const void* cached_grad, int dtype, int64_t rows, int64_t labels,
                             void* out, void* stream, tfl_allocate_fn allocate, void* allocate_context);
int tfl_correlation_loss_cuda(const void* y_true, const void* y_pred, const uint8_t* mask, int dtype, int64_t rows,
                              int64_t steps, float epsilon, int concordance, void* loss, double* row_stats,
                              void* stream, tfl_allocate_fn allocate, void* allocate_context);
int tfl_correlation_loss_grad_cuda(const void* grad_loss, const void* y_true, const void* y_pred, const uint8_t* mask,
                                   const double* row_stats, int dtype, int64_t rows, int64_t steps, float epsilon,
                                   int concordance, void* grad_y_true, void* grad_y_pred, void* stream,
                                   tfl_allocate_fn allocate, void* allocate_context);

#pragma GCC visibility pop

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
// The C++ side shared by the CPU and CUDA files: the error channel and the
// dtype dispatch, so that both report in one way.
#include <exception>
#include <initializer_list>
#include <string>

#include "cpu_half_types.h"

namespace tf_fused_losses {
namespace c_api {

// Records `message` as this thread's last error and returns `code`.
int Fail(int code, const std::string& message);
// Clears this thread's last error and returns TFL_OK.
int Succeed();

// The checks every entry point makes before it touches data: extents >= 0
// whose product fits int64; the arrays of one entry per row (`per_row`:
// BP-MLL's loss, row_stats) not NULL where there are rows, those of one
// entry per element (`per_element`) not NULL where there are elements.
int CheckCall(const char* op, int64_t rows, int64_t length, std::initializer_list<const void*> per_row,
              std::initializer_list<const void*> per_element);

// Calls f(T{}) with T the storage type of a value dtype code.
template <typename F>
int WithValueType(const char* op, const char* name, int dtype, F&& f) {
  switch (dtype) {
    case TFL_DTYPE_F16:
      return f(Float16Bits{});
    case TFL_DTYPE_BF16:
      return f(BFloat16Bits{});
    case TFL_DTYPE_F32:
      return f(float{});
    case TFL_DTYPE_F64:
      return f(double{});
    default:
      return Fail(TFL_ERROR_INVALID_ARGUMENT, std::string(op) + ": " + name +
                                                  " must be float16, bfloat16, float32 or float64 (dtype code " +
                                                  std::to_string(dtype) + ")");
  }
}

// Calls f(TLabel{}) with TLabel the storage type of a BP-MLL label dtype code.
template <typename F>
int WithLabelType(const char* op, int dtype, F&& f) {
  switch (dtype) {
    case TFL_DTYPE_I32:
      return f(int32_t{});
    case TFL_DTYPE_I64:
      return f(int64_t{});
    case TFL_DTYPE_U8:
      return f(uint8_t{});
    case TFL_DTYPE_BOOL:
      return f(bool{});
    default:
      return WithValueType(op, "y_true", dtype, f);
  }
}

// Calls f(TId{}) with TId the storage type of a label id dtype code.
template <typename F>
int WithIdType(const char* op, int dtype, F&& f) {
  switch (dtype) {
    case TFL_DTYPE_I32:
      return f(int32_t{});
    case TFL_DTYPE_I64:
      return f(int64_t{});
    default:
      return Fail(TFL_ERROR_INVALID_ARGUMENT,
                  std::string(op) + ": label_ids must be int32 or int64 (dtype code " + std::to_string(dtype) + ")");
  }
}

// Runs f() and turns an escaping exception into TFL_ERROR_INTERNAL: no C++
// exception may cross the C boundary.
template <typename F>
int Guarded(const char* op, F&& f) {
  try {
    return f();
  } catch (const std::exception& e) {
    return Fail(TFL_ERROR_INTERNAL, std::string(op) + ": " + e.what());
  } catch (...) {
    return Fail(TFL_ERROR_INTERNAL, std::string(op) + ": unknown error");
  }
}

}  // namespace c_api
}  // namespace tf_fused_losses
#endif  // __cplusplus

#endif  // TF_FUSED_LOSSES_CC_CORE_C_API_TFL_C_API_H_
