// The XLA FFI handlers of the four fused ops, as C symbols: XLA custom-call
// targets that TensorFlow's XLA (tf_xla_lowerings.cc) registers and that any
// other XLA frontend can register too. They include no TensorFlow header.
//
// Custom-call targets and their operands (row-major):
//   tfl_bpmll_loss(y_true, y_pred) -> (loss, grad)
//   tfl_bpmll_loss_grad(grad_loss, cached_grad) -> grad_y_pred
//   tfl_bpmll_ids_loss(label_ids, y_pred) -> (loss, grad)   (FusedBpmllIdsLoss;
//       its gradient is tfl_bpmll_loss_grad's)
//   tfl_correlation_loss(y_true, y_pred, mask) -> (loss, row_stats)
//       attributes: concordance (bool), epsilon (f32)
//   tfl_correlation_loss_grad(grad_loss, y_true, y_pred, mask, row_stats) -> (grad_y_true, grad_y_pred)
//       attributes: concordance, epsilon, compute_grad_y_true (bool)
// with the shapes, dtypes and meaning of the TF ops of the same names
// (cc/tf/ops). A mask of shape (0,) means every step is valid.
#ifndef TF_FUSED_LOSSES_CC_XLA_FFI_HANDLERS_H_
#define TF_FUSED_LOSSES_CC_XLA_FFI_HANDLERS_H_

#include "xla/ffi/api/c_api.h"

#define TFL_FFI_TARGET_BPMLL_LOSS "tfl_bpmll_loss"
#define TFL_FFI_TARGET_BPMLL_LOSS_GRAD "tfl_bpmll_loss_grad"
#define TFL_FFI_TARGET_BPMLL_IDS_LOSS "tfl_bpmll_ids_loss"
#define TFL_FFI_TARGET_CORRELATION_LOSS "tfl_correlation_loss"
#define TFL_FFI_TARGET_CORRELATION_LOSS_GRAD "tfl_correlation_loss_grad"

extern "C" {
// Host: the CPU row drivers of cc/core on the FFI's intra-op thread pool.
XLA_FFI_Error* TflBpmllLossHost(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* TflBpmllLossGradHost(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* TflCorrelationLossHost(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* TflCorrelationLossGradHost(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* TflBpmllIdsLossHost(XLA_FFI_CallFrame* call_frame);
// CUDA: the row kernels of cuda/ on the FFI's stream (ffi_cuda_handlers.cu.cc;
// built where nvcc is).
XLA_FFI_Error* TflBpmllLossCuda(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* TflBpmllLossGradCuda(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* TflCorrelationLossCuda(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* TflCorrelationLossGradCuda(XLA_FFI_CallFrame* call_frame);
XLA_FFI_Error* TflBpmllIdsLossCuda(XLA_FFI_CallFrame* call_frame);
}

#endif  // TF_FUSED_LOSSES_CC_XLA_FFI_HANDLERS_H_
