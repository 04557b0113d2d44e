// The CPU OpKernel of FusedBpmllIdsLoss: the core's ids driver on TF's
// intra-op pool, as FusedBpmllLoss's kernel runs the dense one.
#include "bpmll_ids_cpu.h"
#include "cpu_half_types.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tf_parallel_for.h"

namespace tf_fused_losses {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

template <typename T, typename TId>
class FusedBpmllIdsLossCpuOp : public OpKernel {
 public:
  explicit FusedBpmllIdsLossCpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

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
    using Logit = typename ChunkTypeOf<T>::type;
    const BpmllIdsLossArgs<Logit, TId> args{label_ids.flat<TId>().data(),
                                            label_ids.dim_size(1),
                                            reinterpret_cast<const Logit*>(y_pred.flat<T>().data()),
                                            rows,
                                            labels,
                                            reinterpret_cast<Logit*>(loss->flat<T>().data()),
                                            reinterpret_cast<Logit*>(grad->flat<T>().data())};
    const BpmllBadLabelId bad = RunBpmllIdsLossCpu(args, TfParallelFor(ctx));
    OP_REQUIRES(ctx, bad.row < 0,
                tensorflow::errors::InvalidArgument("FusedBpmllIdsLoss: ", BpmllBadLabelIdMessage(bad, labels)));
  }
};

#define TFL_REGISTER_BPMLL_IDS(T, TId)                                                                  \
  REGISTER_KERNEL_BUILDER(                                                                              \
      Name("FusedBpmllIdsLoss").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T").TypeConstraint<TId>("Tid"), \
      FusedBpmllIdsLossCpuOp<T, TId>);
#define TFL_REGISTER_BPMLL_IDS_T(T) \
  TFL_REGISTER_BPMLL_IDS(T, tensorflow::int32) \
  TFL_REGISTER_BPMLL_IDS(T, int64_t)
TFL_REGISTER_BPMLL_IDS_T(Eigen::half)
TFL_REGISTER_BPMLL_IDS_T(Eigen::bfloat16)
TFL_REGISTER_BPMLL_IDS_T(float)
TFL_REGISTER_BPMLL_IDS_T(double)
#undef TFL_REGISTER_BPMLL_IDS_T
#undef TFL_REGISTER_BPMLL_IDS

}  // namespace tf_fused_losses
