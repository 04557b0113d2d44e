// A ParallelFor for callers that bring no thread pool of their own (the
// plain C entry points, cc/core/c_api/tfl_c_api.h, which PyTorch calls
// with torch.get_num_threads()): the calling thread plus up to threads - 1
// workers of one process-wide pool of std::threads.
//
// The drivers choose how rows are cut and merged from the shape alone, so
// the thread count changes only who runs a shard, never the bits.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_THREAD_POOL_FOR_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_THREAD_POOL_FOR_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "parallel_for.h"

namespace tf_fused_losses {

// How many shards a ParallelFor cuts [0, n) into: shards of at least ~100k
// cycles (smaller ones cost more to hand out than they save), up to 4 per
// thread for balance.
inline int64_t ShardCount(int64_t n, int64_t cycles_per_unit, int64_t threads) {
  constexpr int64_t kMinShardCycles = 100000;
  const int64_t by_cost = std::max<int64_t>(1, n * std::max<int64_t>(cycles_per_unit, 1) / kMinShardCycles);
  return std::max<int64_t>(1, std::min({n, 4 * std::max<int64_t>(threads, 1), by_cost}));
}

// Runs body over `shards` consecutive ranges of [0, n). The ranges are
// claimed from a counter by the calling thread and by `helpers` tasks given
// to schedule(std::function<void()>), which need not start promptly (or at
// all: a pool whose threads are busy, or gone after a fork). The caller
// therefore works too and waits only for ranges already being run; a task
// that starts after every range is claimed returns at once, touching
// nothing of this call but its own shared state.
template <class Schedule>
void RunClaimedShards(int64_t n, int64_t shards, int64_t helpers, Schedule&& schedule,
                      const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  if (shards <= 1 || helpers <= 0) {
    body(0, n);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable all_done;
  };
  auto state = std::make_shared<State>();
  const std::function<void(int64_t, int64_t)>* work = &body;
  auto claim = [state, work, n, shards]() {
    for (int64_t s = state->next.fetch_add(1); s < shards; s = state->next.fetch_add(1)) {
      (*work)(s * n / shards, (s + 1) * n / shards);
      if (state->done.fetch_add(1) + 1 == shards) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->all_done.notify_all();
      }
    }
  };
  for (int64_t t = 0; t < std::min(helpers, shards - 1); ++t) schedule(std::function<void()>(claim));
  claim();
  std::unique_lock<std::mutex> lock(state->mu);
  state->all_done.wait(lock, [&] { return state->done.load() == shards; });
}

class ThreadPoolFor final : public ParallelFor {
 public:
  // threads <= 1: everything on the calling thread.
  explicit ThreadPoolFor(int64_t threads) : threads_(std::max<int64_t>(1, threads)) {}

  int64_t NumThreads() const override { return threads_; }
  void Run(int64_t n, int64_t cycles_per_unit, const std::function<void(int64_t, int64_t)>& body) const override;

 private:
  int64_t threads_;
};

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_THREAD_POOL_FOR_H_
