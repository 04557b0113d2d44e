// The CPU kernel of FusedHeadChunk: checks the shapes, then the core's
// RunHeadChunkCpu on TF's intra-op pool. CPU only, as the head's column
// writes (head_gradient_columns_kernel.cc): on a GPU the head runs under XLA.
#include "bpmll_head_cpu.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tf_cpu_isa.h"
#include "tf_parallel_for.h"

namespace tf_fused_losses {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
using tensorflow::errors::InvalidArgument;

template <typename T>
class FusedHeadChunkOp : public OpKernel {
 public:
  explicit FusedHeadChunkOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    RequireUsableCpuIsa<Eigen::ThreadPoolDevice>(ctx);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& matmul = ctx->input(0);
    const Tensor& bias = ctx->input(1);
    const Tensor& factor = ctx->input(2);
    const Tensor& row_scale = ctx->input(3);
    const Tensor& ids = ctx->input(4);
    const Tensor& start = ctx->input(5);
    OP_REQUIRES(ctx, matmul.dims() == 2,
                InvalidArgument("FusedHeadChunk: matmul must be (rows, width), got ", matmul.shape().DebugString()));
    const int64_t rows = matmul.dim_size(0), width = matmul.dim_size(1);
    OP_REQUIRES(ctx, bias.shape() == TensorShape({width}) && factor.shape() == TensorShape({rows}) &&
                         row_scale.shape() == TensorShape({rows}) && ids.dims() == 2 && ids.dim_size(0) == rows &&
                         start.dims() == 0,
                InvalidArgument("FusedHeadChunk: for matmul ", matmul.shape().DebugString(),
                                " bias must be (width,), factor and row_scale (rows,), ids (rows, K) and start a "
                                "scalar; got ",
                                bias.shape().DebugString(), ", ", factor.shape().DebugString(), ", ",
                                row_scale.shape().DebugString(), ", ", ids.shape().DebugString(), " and ",
                                start.shape().DebugString()));
    Tensor *dlogits = nullptr, *term_sums = nullptr, *logit_sums = nullptr, *column_sums = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 0, matmul.shape(), &dlogits));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows}), &term_sums));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({rows}), &logit_sums));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({width}), &column_sums));
    const HeadChunkArgs<T> args{matmul.flat<T>().data(),    bias.flat<T>().data(),      factor.flat<T>().data(),
                                row_scale.flat<T>().data(), ids.flat<int32_t>().data(), ids.dim_size(1),
                                rows,                       width,                      start.scalar<int32_t>()(),
                                dlogits->flat<T>().data(),  term_sums->flat<T>().data(), logit_sums->flat<T>().data(),
                                column_sums->flat<T>().data()};
    RunHeadChunkCpu(args, TfParallelFor(ctx));
  }
};

#define TFL_REGISTER_HEAD_CHUNK(T)                                                                            \
  REGISTER_KERNEL_BUILDER(                                                                                    \
      Name("FusedHeadChunk").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T").HostMemory("start"), \
      FusedHeadChunkOp<T>);
TFL_REGISTER_HEAD_CHUNK(float)
TFL_REGISTER_HEAD_CHUNK(double)
#undef TFL_REGISTER_HEAD_CHUNK

}  // namespace tf_fused_losses
