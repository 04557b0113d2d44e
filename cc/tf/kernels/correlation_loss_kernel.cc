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
struct CorrelationLossFunctor<CPUDevice, T> {
  void operator()(tensorflow::OpKernelContext* ctx, const CorrelationLossArgs<T>& args) {
    RunCorrelationLossCpu(RetypeCorrelationArgs<typename ChunkTypeOf<T>::type>(args), TfParallelFor(ctx));
  }
};

template <typename Device, typename T>
class FusedCorrelationLossOp : public tensorflow::OpKernel {
 public:
  explicit FusedCorrelationLossOp(tensorflow::OpKernelConstruction* ctx) : tensorflow::OpKernel(ctx) {
    RequireUsableCpuIsa<Device>(ctx);
    ReadCorrelationAttrs(ctx, kOp, &attrs_);
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& y_true = ctx->input(0);
    const tensorflow::Tensor& y_pred = ctx->input(1);
    const tensorflow::Tensor& mask = ctx->input(2);
    CorrelationShape shape;
    OP_REQUIRES_OK(ctx, ValidateCorrelationInputs(kOp, y_true, y_pred, mask, &shape));
    tensorflow::Tensor* loss = nullptr;
    tensorflow::Tensor* row_stats = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tensorflow::TensorShape({shape.rows, shape.steps}), &loss));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(1, tensorflow::TensorShape({shape.rows, kCorrelationRowStats}), &row_stats));
    if (shape.rows == 0) return;
    CorrelationLossArgs<T> args{y_true.flat<T>().data(),
                                y_pred.flat<T>().data(),
                                shape.has_mask ? mask.flat<bool>().data() : nullptr,
                                shape.rows,
                                shape.steps,
                                attrs_.epsilon,
                                attrs_.concordance,
                                loss->flat<T>().data(),
                                row_stats->flat<double>().data()};
    CorrelationLossFunctor<Device, T>()(ctx, args);
  }

 private:
  static constexpr const char* kOp = "FusedCorrelationLoss";
  CorrelationAttrs attrs_;
};

TFL_REGISTER_CORRELATION_KERNELS(tensorflow::DEVICE_CPU, CPUDevice, "FusedCorrelationLoss", FusedCorrelationLossOp)
#if GOOGLE_CUDA
TFL_REGISTER_CORRELATION_KERNELS(tensorflow::DEVICE_GPU, GPUDevice, "FusedCorrelationLoss", FusedCorrelationLossOp)
#endif  // GOOGLE_CUDA

}  // namespace tf_fused_losses
