// Attribute and input checks shared by the FusedCorrelationLoss and
// FusedCorrelationLossGrad kernels, on every device.
#ifndef TF_FUSED_LOSSES_CC_TF_KERNELS_CORRELATION_KERNEL_COMMON_H_
#define TF_FUSED_LOSSES_CC_TF_KERNELS_CORRELATION_KERNEL_COMMON_H_

#include <cmath>
#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_fused_losses {

using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;

struct CorrelationAttrs {
  bool concordance = false;
  float epsilon = 0;
};

inline void ReadCorrelationAttrs(tensorflow::OpKernelConstruction* ctx, const char* op, CorrelationAttrs* attrs) {
  OP_REQUIRES_OK(ctx, ctx->GetAttr("concordance", &attrs->concordance));
  OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &attrs->epsilon));
  OP_REQUIRES(ctx, std::isfinite(attrs->epsilon) && attrs->epsilon >= 0,
              tensorflow::errors::InvalidArgument(op, ": epsilon must be finite and >= 0, got ", attrs->epsilon));
}

struct CorrelationShape {
  int64_t rows = 0;
  int64_t steps = 0;
  bool has_mask = false;
};

// y_true and y_pred: (batch, steps) or (batch, steps, 1), the same (batch,
// steps); mask: (batch, steps), or an empty vector for no mask.
inline tensorflow::Status ValidateCorrelationInputs(const char* op, const tensorflow::Tensor& y_true,
                                                    const tensorflow::Tensor& y_pred, const tensorflow::Tensor& mask,
                                                    CorrelationShape* shape) {
  for (const auto& [name, t] : {std::pair<const char*, const tensorflow::Tensor*>{"y_true", &y_true},
                                std::pair<const char*, const tensorflow::Tensor*>{"y_pred", &y_pred}}) {
    if (!(t->dims() == 2 || (t->dims() == 3 && t->dim_size(2) == 1))) {
      return tensorflow::errors::InvalidArgument(
          op, ": ", name, " must be (batch, steps) or (batch, steps, 1), got shape ", t->shape().DebugString());
    }
  }
  shape->rows = y_pred.dim_size(0);
  shape->steps = y_pred.dim_size(1);
  if (y_true.dim_size(0) != shape->rows || y_true.dim_size(1) != shape->steps) {
    return tensorflow::errors::InvalidArgument(op, ": y_true and y_pred must have the same (batch, steps), got shapes ",
                                               y_true.shape().DebugString(), " and ", y_pred.shape().DebugString());
  }
  shape->has_mask = !(mask.dims() == 1 && mask.dim_size(0) == 0);
  if (shape->has_mask &&
      !(mask.dims() == 2 && mask.dim_size(0) == shape->rows && mask.dim_size(1) == shape->steps)) {
    return tensorflow::errors::InvalidArgument(op, ": mask must have shape (batch, steps) = [", shape->rows, ",",
                                               shape->steps, "] (or be empty for no mask), got shape ",
                                               mask.shape().DebugString());
  }
  return tensorflow::Status();
}

}  // namespace tf_fused_losses

// Registers CLASS<DEVICE_TYPE, T> as the kernel of OP for the four float
// types T.
#define TFL_REGISTER_CORRELATION_KERNEL(DEVICE_NAME, DEVICE_TYPE, OP, CLASS, T) \
  REGISTER_KERNEL_BUILDER(Name(OP).Device(DEVICE_NAME).TypeConstraint<T>("T"), CLASS<DEVICE_TYPE, T>);
#define TFL_REGISTER_CORRELATION_KERNELS(DEVICE_NAME, DEVICE_TYPE, OP, CLASS)            \
  TFL_REGISTER_CORRELATION_KERNEL(DEVICE_NAME, DEVICE_TYPE, OP, CLASS, Eigen::half)     \
  TFL_REGISTER_CORRELATION_KERNEL(DEVICE_NAME, DEVICE_TYPE, OP, CLASS, Eigen::bfloat16) \
  TFL_REGISTER_CORRELATION_KERNEL(DEVICE_NAME, DEVICE_TYPE, OP, CLASS, float)           \
  TFL_REGISTER_CORRELATION_KERNEL(DEVICE_NAME, DEVICE_TYPE, OP, CLASS, double)

#endif  // TF_FUSED_LOSSES_CC_TF_KERNELS_CORRELATION_KERNEL_COMMON_H_
