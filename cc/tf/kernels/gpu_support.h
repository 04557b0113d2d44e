// The few TensorFlow services the CUDA launchers need, behind an interface
// that includes no TensorFlow header: cuda/*.cu.cc include this, and nvcc
// then compiles only our code and the CUDA headers. gpu_support.cc, built
// by the host compiler, implements it.
#ifndef TF_FUSED_LOSSES_CC_TF_KERNELS_GPU_SUPPORT_H_
#define TF_FUSED_LOSSES_CC_TF_KERNELS_GPU_SUPPORT_H_

#if GOOGLE_CUDA

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>

namespace tensorflow {
class OpKernelContext;
class Tensor;
}  // namespace tensorflow

namespace tf_fused_losses {

struct GpuLaunchContext {
  cudaStream_t stream;  // the op's compute stream
  int multiprocessors;
};

GpuLaunchContext GetGpuLaunchContext(tensorflow::OpKernelContext* ctx);

// Device memory from ctx->allocate_temp. It may be released when this object
// dies, right after the launches: TensorFlow's GPU allocator hands memory out
// again only to work queued after them on the same stream.
class GpuScratch {
 public:
  // On failure sets ctx's status; ok() is then false.
  GpuScratch(tensorflow::OpKernelContext* ctx, int64_t bytes);
  ~GpuScratch();
  GpuScratch(const GpuScratch&) = delete;
  GpuScratch& operator=(const GpuScratch&) = delete;

  bool ok() const { return ok_; }
  void* data() const { return data_; }

 private:
  std::unique_ptr<tensorflow::Tensor> tensor_;
  void* data_ = nullptr;
  bool ok_ = true;
};

// Sets an Internal error on ctx naming op_name when status is not
// cudaSuccess (a launch that failed: no kernel image for this GPU, bad
// configuration). Does not synchronise.
void ReportGpuLaunch(tensorflow::OpKernelContext* ctx, cudaError_t status, const char* op_name);

}  // namespace tf_fused_losses

#endif  // GOOGLE_CUDA
#endif  // TF_FUSED_LOSSES_CC_TF_KERNELS_GPU_SUPPORT_H_
