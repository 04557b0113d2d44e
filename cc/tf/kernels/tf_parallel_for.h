// The core's ParallelFor on TensorFlow's intra-op thread pool.
#ifndef TF_FUSED_LOSSES_CC_TF_KERNELS_TF_PARALLEL_FOR_H_
#define TF_FUSED_LOSSES_CC_TF_KERNELS_TF_PARALLEL_FOR_H_

#include "parallel_for.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tf_fused_losses {

class TfParallelFor final : public ParallelFor {
 public:
  explicit TfParallelFor(tensorflow::OpKernelContext* ctx)
      : pool_(ctx->device()->tensorflow_cpu_worker_threads()->workers) {}
  int64_t NumThreads() const override { return pool_->NumThreads(); }
  void Run(int64_t n, int64_t cycles_per_unit, const std::function<void(int64_t, int64_t)>& body) const override {
    pool_->ParallelFor(n, cycles_per_unit, body);
  }

 private:
  tensorflow::thread::ThreadPool* pool_;
};

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_TF_KERNELS_TF_PARALLEL_FOR_H_
