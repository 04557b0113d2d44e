// Scales each row of the cached BP-MLL gradient by the upstream gradient of
// its loss. A kernel of its own, rather than a broadcasting Mul: it works in
// place on the cached buffer and is one vectorised pass over memory.
#include "bpmll_cpu.h"
#include "cpu_half_types.h"
#include "bpmll_loss_grad_functor.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tf_cpu_isa.h"
#include "tf_parallel_for.h"

namespace tf_fused_losses {

using CPUDevice = Eigen::ThreadPoolDevice;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;

template <typename T>
struct BpmllLossGradFunctor<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const BpmllLossGradArgs<T>& args) {
    using Logit = typename ChunkTypeOf<T>::type;
    RunBpmllLossGradCpu(reinterpret_cast<const Logit*>(args.grad_loss), reinterpret_cast<const Logit*>(args.cached_grad),
                        args.rows, args.labels, reinterpret_cast<Logit*>(args.out), TfParallelFor(ctx));
  }
};

template <typename Device, typename T>
class FusedBpmllLossGradOp : public OpKernel {
 public:
  explicit FusedBpmllLossGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) { RequireUsableCpuIsa<Device>(ctx); }

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
    BpmllLossGradFunctor<Device, T>()(ctx, args);
  }
};

#define TFL_REGISTER_BPMLL_GRAD(DEVICE_NAME, DEVICE_TYPE, T)                                             \
  REGISTER_KERNEL_BUILDER(Name("FusedBpmllLossGrad").Device(DEVICE_NAME).TypeConstraint<T>("T"), \
                          FusedBpmllLossGradOp<DEVICE_TYPE, T>);
#define TFL_REGISTER_BPMLL_GRAD_TYPES(DEVICE_NAME, DEVICE_TYPE)   \
  TFL_REGISTER_BPMLL_GRAD(DEVICE_NAME, DEVICE_TYPE, Eigen::half)     \
  TFL_REGISTER_BPMLL_GRAD(DEVICE_NAME, DEVICE_TYPE, Eigen::bfloat16) \
  TFL_REGISTER_BPMLL_GRAD(DEVICE_NAME, DEVICE_TYPE, float)           \
  TFL_REGISTER_BPMLL_GRAD(DEVICE_NAME, DEVICE_TYPE, double)

TFL_REGISTER_BPMLL_GRAD_TYPES(tensorflow::DEVICE_CPU, CPUDevice)
#if GOOGLE_CUDA
// The GPU functor is BpmllLossGradFunctor<GpuDevice, T> in cuda/bpmll_loss_grad_kernel.cu.cc.
TFL_REGISTER_BPMLL_GRAD_TYPES(tensorflow::DEVICE_GPU, Eigen::GpuDevice)
#endif  // GOOGLE_CUDA
#undef TFL_REGISTER_BPMLL_GRAD_TYPES
#undef TFL_REGISTER_BPMLL_GRAD

}  // namespace tf_fused_losses
