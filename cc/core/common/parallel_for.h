// The core's only view of a thread pool. Each frontend adapts its own: the
// TF OpKernels TensorFlow's intra-op pool, the XLA Host handlers the FFI
// thread pool. The core chooses how rows are cut and merged from the data
// shape alone, so its results do not depend on the pool's size.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_PARALLEL_FOR_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_PARALLEL_FOR_H_

#include <cstdint>
#include <functional>

namespace tf_fused_losses {

class ParallelFor {
 public:
  virtual ~ParallelFor() = default;
  // Threads that may run shards at once; a scheduling hint only.
  virtual int64_t NumThreads() const = 0;
  // Calls body(first, last) on disjoint ranges that cover [0, n), possibly
  // concurrently, and returns when every call has returned.
  // cycles_per_unit: rough cost of one unit, for sharding.
  virtual void Run(int64_t n, int64_t cycles_per_unit, const std::function<void(int64_t, int64_t)>& body) const = 0;
};

// Runs everything on the calling thread (tests, tools, tiny inputs).
class SerialFor final : public ParallelFor {
 public:
  int64_t NumThreads() const override { return 1; }
  void Run(int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& body) const override {
    if (n > 0) body(0, n);
  }
};

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_PARALLEL_FOR_H_
