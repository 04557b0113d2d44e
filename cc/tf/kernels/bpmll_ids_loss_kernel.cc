// The OpKernels of FusedBpmllIdsLoss: on CPU the core's ids driver on TF's
// intra-op pool, as FusedBpmllLoss's kernel runs the dense one; on GPU the
// launcher of cc/tf/cuda/bpmll_ids_loss_kernel.cu.cc.
#include "bpmll_ids_cpu.h"
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

template <typename T, typename TId>
struct BpmllIdsLossFunctor<CPUDevice, T, TId> {
  void operator()(OpKernelContext* ctx, const BpmllIdsLossArgs<T, TId>& args) {
    using Logit = typename ChunkTypeOf<T>::type;
    const BpmllIdsLossArgs<Logit, TId> core{args.label_ids,
                                            args.width,
                                            reinterpret_cast<const Logit*>(args.y_pred),
                                            args.rows,
                                            args.labels,
                                            reinterpret_cast<Logit*>(args.loss),
                                            reinterpret_cast<Logit*>(args.grad)};
    const BpmllBadLabelId bad = RunBpmllIdsLossCpu(core, TfParallelFor(ctx));
    if (bad.row >= 0) {
      ctx->SetStatus(tensorflow::errors::InvalidArgument("FusedBpmllIdsLoss: ", BpmllBadLabelIdMessage(bad, args.labels)));
    }
  }
};

template <typename Device, typename T, typename TId>
class FusedBpmllIdsLossOp : public OpKernel {
 public:
  explicit FusedBpmllIdsLossOp(OpKernelConstruction* ctx) : OpKernel(ctx) { RequireUsableCpuIsa<Device>(ctx); }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& label_ids = ctx->input(0);
    const Tensor& y_pred = ctx->input(1);
    OP_REQUIRES(ctx, label_ids.dims() == 2,
                tensorflow::errors::InvalidArgument("FusedBpmllIdsLoss: label_ids must be rank 2 (batch, ids), got shape ",
                                                    label_ids.shape().DebugString()));
    OP_REQUIRES(ctx, y_pred.dims() == 2,
                tensorflow::errors::InvalidArgument(
                    "FusedBpmllIdsLoss: y_pred must be rank 2 (batch, labels), got shape ", y_pred.shape().DebugString()));
    OP_REQUIRES(ctx, label_ids.dim_size(0) == y_pred.dim_size(0),
                tensorflow::errors::InvalidArgument(
                    "FusedBpmllIdsLoss: label_ids and y_pred must have the same batch size, got shapes ",
                    label_ids.shape().DebugString(), " and ", y_pred.shape().DebugString()));
    const int64_t rows = y_pred.dim_size(0), labels = y_pred.dim_size(1);
    Tensor* loss = nullptr;
    Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, y_pred.shape(), &grad));
    if (rows == 0) return;
    const BpmllIdsLossArgs<T, TId> args{label_ids.flat<TId>().data(), label_ids.dim_size(1), y_pred.flat<T>().data(),
                                        rows,                         labels,                loss->flat<T>().data(),
                                        grad->flat<T>().data()};
    BpmllIdsLossFunctor<Device, T, TId>()(ctx, args);
  }
};

#define TFL_REGISTER_BPMLL_IDS(DEVICE_NAME, DEVICE_TYPE, T, TId)                                            \
  REGISTER_KERNEL_BUILDER(                                                                                 \
      Name("FusedBpmllIdsLoss").Device(DEVICE_NAME).TypeConstraint<T>("T").TypeConstraint<TId>("Tid"),     \
      FusedBpmllIdsLossOp<DEVICE_TYPE, T, TId>);
#define TFL_REGISTER_BPMLL_IDS_TYPES(DEVICE_NAME, DEVICE_TYPE)                   \
  TFL_REGISTER_BPMLL_IDS(DEVICE_NAME, DEVICE_TYPE, Eigen::half, int32_t)         \
  TFL_REGISTER_BPMLL_IDS(DEVICE_NAME, DEVICE_TYPE, Eigen::half, int64_t)         \
  TFL_REGISTER_BPMLL_IDS(DEVICE_NAME, DEVICE_TYPE, Eigen::bfloat16, int32_t)     \
  TFL_REGISTER_BPMLL_IDS(DEVICE_NAME, DEVICE_TYPE, Eigen::bfloat16, int64_t)     \
  TFL_REGISTER_BPMLL_IDS(DEVICE_NAME, DEVICE_TYPE, float, int32_t)               \
  TFL_REGISTER_BPMLL_IDS(DEVICE_NAME, DEVICE_TYPE, float, int64_t)               \
  TFL_REGISTER_BPMLL_IDS(DEVICE_NAME, DEVICE_TYPE, double, int32_t)              \
  TFL_REGISTER_BPMLL_IDS(DEVICE_NAME, DEVICE_TYPE, double, int64_t)

TFL_REGISTER_BPMLL_IDS_TYPES(tensorflow::DEVICE_CPU, CPUDevice)
#if GOOGLE_CUDA
TFL_REGISTER_BPMLL_IDS_TYPES(tensorflow::DEVICE_GPU, GPUDevice)
#endif  // GOOGLE_CUDA
#undef TFL_REGISTER_BPMLL_IDS_TYPES
#undef TFL_REGISTER_BPMLL_IDS

}  // namespace tf_fused_losses
