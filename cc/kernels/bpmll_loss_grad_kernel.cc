// Scales each row of the cached BP-MLL gradient by the upstream gradient of
// its loss. A kernel of its own, rather than a broadcasting Mul: it works in
// place on the cached buffer and is one vectorised pass over memory.
#include <algorithm>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tf_fused_losses {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

namespace {

template <typename T>
void ScaleRow(const T* in, T scale, int64_t n, T* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = in[i] * scale;
}

}  // namespace

template <typename T>
class FusedBpmllLossGradOp : public OpKernel {
 public:
  explicit FusedBpmllLossGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grad_loss = ctx->input(0);
    const Tensor& cached_grad = ctx->input(1);
    OP_REQUIRES(ctx, grad_loss.dims() == 1 && cached_grad.dims() == 2 && grad_loss.dim_size(0) == cached_grad.dim_size(0),
                tensorflow::errors::InvalidArgument("FusedBpmllLossGrad: grad_loss must be (batch,) and cached_grad "
                                                    "(batch, labels); got ",
                                                    grad_loss.shape().DebugString(), " and ",
                                                    cached_grad.shape().DebugString()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({1}, 0, cached_grad.shape(), &out));
    const int64_t rows = cached_grad.dim_size(0), labels = cached_grad.dim_size(1);
    if (rows == 0 || labels == 0) return;
    const T* scale = grad_loss.flat<T>().data();
    const T* in = cached_grad.flat<T>().data();
    T* result = out->flat<T>().data();
    // Work in blocks of a row or less, so that few long rows still spread
    // over all threads.
    const int64_t block = std::min<int64_t>(labels, 1 << 14);
    const int64_t blocks_per_row = (labels + block - 1) / block;
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    pool->ParallelFor(rows * blocks_per_row, block * 2, [&](int64_t first, int64_t last) {
      for (int64_t b = first; b < last; ++b) {
        const int64_t row = b / blocks_per_row, begin = (b % blocks_per_row) * block;
        const int64_t offset = row * labels + begin;
        ScaleRow(in + offset, scale[row], std::min(block, labels - begin), result + offset);
      }
    });
  }
};

#define TFL_REGISTER_BPMLL_GRAD_CPU(T) \
  REGISTER_KERNEL_BUILDER(             \
      Name("FusedBpmllLossGrad").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T"), FusedBpmllLossGradOp<T>);
TFL_REGISTER_BPMLL_GRAD_CPU(Eigen::half)
TFL_REGISTER_BPMLL_GRAD_CPU(Eigen::bfloat16)
TFL_REGISTER_BPMLL_GRAD_CPU(float)
TFL_REGISTER_BPMLL_GRAD_CPU(double)
#undef TFL_REGISTER_BPMLL_GRAD_CPU

#if GOOGLE_CUDA
}  // namespace tf_fused_losses

#include "bpmll_loss_grad_functor.h"

namespace tf_fused_losses {

// The GPU kernel: the same contract, computed by BpmllLossGradFunctor
// (cuda/bpmll_loss_grad_kernel.cu.cc) on the op's stream.
template <typename T>
class FusedBpmllLossGradGpuOp : public OpKernel {
 public:
  explicit FusedBpmllLossGradGpuOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grad_loss = ctx->input(0);
    const Tensor& cached_grad = ctx->input(1);
    OP_REQUIRES(ctx, grad_loss.dims() == 1 && cached_grad.dims() == 2 && grad_loss.dim_size(0) == cached_grad.dim_size(0),
                tensorflow::errors::InvalidArgument("FusedBpmllLossGrad: grad_loss must be (batch,) and cached_grad "
                                                    "(batch, labels); got ",
                                                    grad_loss.shape().DebugString(), " and ",
                                                    cached_grad.shape().DebugString()));
    Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({1}, 0, cached_grad.shape(), &out));
    const int64_t rows = cached_grad.dim_size(0), labels = cached_grad.dim_size(1);
    if (rows == 0 || labels == 0) return;
    BpmllLossGradArgs<T> args{grad_loss.flat<T>().data(), cached_grad.flat<T>().data(), rows, labels,
                              out->flat<T>().data()};
    BpmllLossGradFunctor<Eigen::GpuDevice, T>()(ctx, args);
  }
};

#define TFL_REGISTER_BPMLL_GRAD_GPU(T) \
  REGISTER_KERNEL_BUILDER(             \
      Name("FusedBpmllLossGrad").Device(tensorflow::DEVICE_GPU).TypeConstraint<T>("T"), FusedBpmllLossGradGpuOp<T>);
TFL_REGISTER_BPMLL_GRAD_GPU(Eigen::half)
TFL_REGISTER_BPMLL_GRAD_GPU(Eigen::bfloat16)
TFL_REGISTER_BPMLL_GRAD_GPU(float)
TFL_REGISTER_BPMLL_GRAD_GPU(double)
#undef TFL_REGISTER_BPMLL_GRAD_GPU
#endif  // GOOGLE_CUDA

}  // namespace tf_fused_losses
