#include <type_traits>

#include "correlation_kernel_common.h"
#include "correlation_loss_functor.h"
#include "correlation_math.h"
#include "cpu_half_types.h"
#include "tf_cpu_isa.h"
#include "tf_parallel_for.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_fused_losses {

template <typename T>
struct CorrelationLossGradFunctor<CPUDevice, T> {
  void operator()(tensorflow::OpKernelContext* ctx, const CorrelationLossGradArgs<T>& args) {
    RunCorrelationLossGradCpu(RetypeCorrelationArgs<typename ChunkTypeOf<T>::type>(args), TfParallelFor(ctx));
  }
};

template <typename Device, typename T>
class FusedCorrelationLossGradOp : public tensorflow::OpKernel {
 public:
  explicit FusedCorrelationLossGradOp(tensorflow::OpKernelConstruction* ctx) : tensorflow::OpKernel(ctx) {
    RequireUsableCpuIsa<Device>(ctx);
    ReadCorrelationAttrs(ctx, kOp, &attrs_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("compute_grad_y_true", &compute_grad_y_true_));
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& grad_loss = ctx->input(0);
    const tensorflow::Tensor& y_true = ctx->input(1);
    const tensorflow::Tensor& y_pred = ctx->input(2);
    const tensorflow::Tensor& mask = ctx->input(3);
    const tensorflow::Tensor& row_stats = ctx->input(4);
    CorrelationShape shape;
    OP_REQUIRES_OK(ctx, ValidateCorrelationInputs(kOp, y_true, y_pred, mask, &shape));
    OP_REQUIRES(ctx,
                grad_loss.dims() == 2 && grad_loss.dim_size(0) == shape.rows && grad_loss.dim_size(1) == shape.steps,
                tensorflow::errors::InvalidArgument(kOp, ": grad_loss must have shape (batch, steps) = [", shape.rows,
                                                    ",", shape.steps, "], got shape ",
                                                    grad_loss.shape().DebugString()));
    OP_REQUIRES(ctx,
                row_stats.dims() == 2 && row_stats.dim_size(0) == shape.rows &&
                    row_stats.dim_size(1) == kCorrelationRowStats,
                tensorflow::errors::InvalidArgument(kOp, ": row_stats must have shape (batch, ", kCorrelationRowStats,
                                                    ") = [", shape.rows, ",", kCorrelationRowStats, "], got shape ",
                                                    row_stats.shape().DebugString()));
    tensorflow::Tensor* grad_y_true = nullptr;
    tensorflow::Tensor* grad_y_pred = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, compute_grad_y_true_ ? y_true.shape() : tensorflow::TensorShape({0}),
                                             &grad_y_true));
    // grad_loss is usually a temporary that dies here: its buffer can take
    // grad_y_pred, which then lands in lines the first pass brought to cache.
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 1, y_pred.shape(), &grad_y_pred));
    if (shape.rows == 0 || shape.steps == 0) return;
    CorrelationLossGradArgs<T> args{grad_loss.flat<T>().data(),
                                    y_true.flat<T>().data(),
                                    y_pred.flat<T>().data(),
                                    shape.has_mask ? mask.flat<bool>().data() : nullptr,
                                    row_stats.flat<double>().data(),
                                    shape.rows,
                                    shape.steps,
                                    attrs_.epsilon,
                                    attrs_.concordance,
                                    compute_grad_y_true_ ? grad_y_true->flat<T>().data() : nullptr,
                                    grad_y_pred->flat<T>().data()};
    CorrelationLossGradFunctor<Device, T>()(ctx, args);
  }

 private:
  static constexpr const char* kOp = "FusedCorrelationLossGrad";
  CorrelationAttrs attrs_;
  bool compute_grad_y_true_ = true;
};

TFL_REGISTER_CORRELATION_KERNELS(tensorflow::DEVICE_CPU, CPUDevice, "FusedCorrelationLossGrad",
                                 FusedCorrelationLossGradOp)
#if GOOGLE_CUDA
TFL_REGISTER_CORRELATION_KERNELS(tensorflow::DEVICE_GPU, GPUDevice, "FusedCorrelationLossGrad",
                                 FusedCorrelationLossGradOp)
#endif  // GOOGLE_CUDA

}  // namespace tf_fused_losses
