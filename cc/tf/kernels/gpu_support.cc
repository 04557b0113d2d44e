#if GOOGLE_CUDA

#define EIGEN_USE_GPU

#include "gpu_support.h"

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_fused_losses {

GpuLaunchContext GetGpuLaunchContext(tensorflow::OpKernelContext* ctx) {
  const Eigen::GpuDevice& device = ctx->eigen_gpu_device();
  return GpuLaunchContext{device.stream(), device.getNumGpuMultiProcessors()};
}

GpuScratch::GpuScratch(tensorflow::OpKernelContext* ctx, int64_t bytes) {
  if (bytes <= 0) return;
  tensor_ = std::make_unique<tensorflow::Tensor>();
  const tensorflow::Status status =
      ctx->allocate_temp(tensorflow::DT_INT8, tensorflow::TensorShape({bytes}), tensor_.get());
  if (!status.ok()) {
    ctx->SetStatus(status);
    ok_ = false;
    return;
  }
  data_ = tensor_->data();
}

GpuScratch::~GpuScratch() = default;

void ReportGpuLaunch(tensorflow::OpKernelContext* ctx, cudaError_t status, const char* op_name) {
  if (status == cudaSuccess) return;
  ctx->SetStatus(tensorflow::errors::Internal(op_name, ": launching its CUDA kernels failed: ",
                                              cudaGetErrorName(status), " (", cudaGetErrorString(status),
                                              "). The library was built for the GPU architectures listed in "
                                              "tf_fused_losses.build_info()['cuda_archs']."));
}

}  // namespace tf_fused_losses

#endif  // GOOGLE_CUDA
