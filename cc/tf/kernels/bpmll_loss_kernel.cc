#include "bpmll_cpu.h"
#include "bpmll_loss_functor.h"
#include "cpu_half_types.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tf_cpu_isa.h"
#include "tf_parallel_for.h"

namespace tf_fused_losses {

using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

template <typename T, typename TLabel>
struct BpmllLossFunctor<CPUDevice, T, TLabel> {
  void operator()(OpKernelContext* ctx, const BpmllLossArgs<T, TLabel>& args) {
    using Logit = typename ChunkTypeOf<T>::type;
    using Label = typename ChunkTypeOf<TLabel>::type;
    const BpmllLossArgs<Logit, Label> core{reinterpret_cast<const Label*>(args.y_true),
                                          reinterpret_cast<const Logit*>(args.y_pred), args.rows, args.labels,
                                          reinterpret_cast<Logit*>(args.loss), reinterpret_cast<Logit*>(args.grad)};
    const BpmllBadLabel bad = RunBpmllLossCpu(core, TfParallelFor(ctx));
    if (bad.row >= 0) {
      ctx->SetStatus(tensorflow::errors::InvalidArgument("FusedBpmllLoss: y_true must hold labels in [0, 1]; y_true[",
                                                         bad.row, ", ", bad.column, "] = ", bad.value));
    }
  }
};

template <typename Device, typename T, typename TLabel>
class FusedBpmllLossOp : public OpKernel {
 public:
  explicit FusedBpmllLossOp(OpKernelConstruction* ctx) : OpKernel(ctx) { RequireUsableCpuIsa<Device>(ctx); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& y_true = ctx->input(0);
    const Tensor& y_pred = ctx->input(1);
    OP_REQUIRES(ctx, y_pred.dims() == 2,
                tensorflow::errors::InvalidArgument("FusedBpmllLoss: y_pred must be rank 2 (batch, labels), got shape ",
                                                    y_pred.shape().DebugString()));
    OP_REQUIRES(ctx, y_true.shape() == y_pred.shape(),
                tensorflow::errors::InvalidArgument("FusedBpmllLoss: y_true and y_pred must have the same shape, got ",
                                                    y_true.shape().DebugString(), " and ",
                                                    y_pred.shape().DebugString()));
    const int64_t rows = y_pred.dim_size(0), labels = y_pred.dim_size(1);
    Tensor* loss = nullptr;
    Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, y_pred.shape(), &grad));
    if (rows == 0) return;
    BpmllLossArgs<T, TLabel> args{y_true.flat<TLabel>().data(), y_pred.flat<T>().data(), rows, labels,
                                  loss->flat<T>().data(), grad->flat<T>().data()};
    BpmllLossFunctor<Device, T, TLabel>()(ctx, args);
  }
};

#define TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, TLabel)                                          \
  REGISTER_KERNEL_BUILDER(                                                                             \
      Name("FusedBpmllLoss").Device(DEVICE_NAME).TypeConstraint<T>("T").TypeConstraint<TLabel>("Tlabel"), \
      FusedBpmllLossOp<DEVICE_TYPE, T, TLabel>);

#define TFL_REGISTER_BPMLL_LABELS(DEVICE_NAME, DEVICE_TYPE, T)       \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, Eigen::half)       \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, Eigen::bfloat16)   \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, float)             \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, double)            \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, tensorflow::int32) \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, int64_t)           \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, tensorflow::uint8) \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, bool)

#define TFL_REGISTER_BPMLL_CPU(T) TFL_REGISTER_BPMLL_LABELS(tensorflow::DEVICE_CPU, CPUDevice, T)
TFL_REGISTER_BPMLL_CPU(Eigen::half)
TFL_REGISTER_BPMLL_CPU(Eigen::bfloat16)
TFL_REGISTER_BPMLL_CPU(float)
TFL_REGISTER_BPMLL_CPU(double)
#undef TFL_REGISTER_BPMLL_CPU

#if GOOGLE_CUDA
#define TFL_REGISTER_BPMLL_GPU(T) TFL_REGISTER_BPMLL_LABELS(tensorflow::DEVICE_GPU, GPUDevice, T)
TFL_REGISTER_BPMLL_GPU(Eigen::half)
TFL_REGISTER_BPMLL_GPU(Eigen::bfloat16)
TFL_REGISTER_BPMLL_GPU(float)
TFL_REGISTER_BPMLL_GPU(double)
#undef TFL_REGISTER_BPMLL_GPU
#endif  // GOOGLE_CUDA

}  // namespace tf_fused_losses
