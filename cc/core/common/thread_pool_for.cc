#include "thread_pool_for.h"

#include <unistd.h>

#include <deque>
#include <thread>
#include <vector>

namespace tf_fused_losses {
namespace {

// Workers that wait on one queue; grown to the largest count a call asks
// for, never shrunk (a training loop asks for the same count every step).
class WorkerPool {
 public:
  void Grow(int64_t workers) {
    std::lock_guard<std::mutex> lock(mu_);
    while (static_cast<int64_t>(threads_.size()) < workers) {
      threads_.emplace_back([this] { Work(); });
      // Never joined: the pool lives as long as the process (below).
      threads_.back().detach();
    }
  }

  void Schedule(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(task));
    }
    ready_.notify_one();
  }

 private:
  void Work() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mu_);
        ready_.wait(lock, [this] { return !queue_.empty(); });
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();
    }
  }

  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> threads_;
};

// The pool of this process. Leaked on purpose: destroying it at exit would
// race with workers still waiting on its queue. A child of fork() has none
// of its parent's workers and may inherit its mutex locked, so it starts a
// pool of its own (RunClaimedShards does not depend on workers starting,
// so a call in flight across the fork cannot hang either).
WorkerPool& ProcessPool() {
  static std::mutex mu;
  static WorkerPool* pool = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (pool == nullptr || owner != getpid()) {
    pool = new WorkerPool();
    owner = getpid();
  }
  return *pool;
}

}  // namespace

void ThreadPoolFor::Run(int64_t n, int64_t cycles_per_unit, const std::function<void(int64_t, int64_t)>& body) const {
  const int64_t shards = ShardCount(n, cycles_per_unit, threads_);
  const int64_t helpers = std::min(threads_, shards) - 1;
  if (helpers <= 0) {
    if (n > 0) body(0, n);
    return;
  }
  WorkerPool& pool = ProcessPool();
  pool.Grow(threads_ - 1);
  RunClaimedShards(n, shards, helpers, [&pool](std::function<void()> task) { pool.Schedule(std::move(task)); },
                   body);
}

}  // namespace tf_fused_losses
