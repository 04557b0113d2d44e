// A CPU emulation of the parts of CUDA that cuda/*.cuh use, so that g++
// compiles the very kernels nvcc compiles and the tests run them without a
// GPU. Include this before any cuda/*.cuh header.
//
// Model:
//  * A launch runs its blocks one after another. Each block's threads are
//    real concurrent std::threads (one per CUDA thread, reused from block to
//    block), so that races between threads of a block are real races, and
//    ThreadSanitizer sees them.
//  * __syncthreads() is a barrier of the block's threads. Threads that leave
//    the kernel wait at a separate end-of-block barrier, so a __syncthreads()
//    that only some threads reach deadlocks instead of silently matching the
//    exit of others; a barrier that waits longer than kBarrierTimeout aborts
//    the process naming it.
//  * Warp shuffles go through per-warp exchange buffers and a per-warp
//    barrier; every lane of the warp must take part (full mask only), as the
//    kernels are written to do.
//  * __shared__ variables are function-local statics: one copy per kernel
//    instantiation, which blocks use in turn (blocks never overlap, and the
//    end-of-block barrier orders one block's accesses before the next's).
//    Launches are serialised by a process-wide mutex for the same reason.
//  * threadIdx, blockIdx, blockDim and gridDim are thread_local.
//  * Vector loads and stores check their alignment (TFL_EMU_CHECK_ALIGNMENT)
//    and abort on a misaligned address, which a GPU would fault on.
//  * __half and __nv_bfloat16 are 16-bit bit patterns with round-to-nearest-
//    even conversions from float, as in cuda_fp16.h and cuda_bf16.h.
#ifndef TF_FUSED_LOSSES_TESTS_CUDA_EMU_CUDA_EMULATION_H_
#define TF_FUSED_LOSSES_TESTS_CUDA_EMU_CUDA_EMULATION_H_

#if defined(__CUDACC__)
#error "cuda_emulation.h is for host compilers; nvcc compiles cuda/*.cuh natively"
#endif

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#define TFL_CUDA_EMULATION 1

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

struct tfl_emu_stream;
using cudaStream_t = tfl_emu_stream*;
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9
};

namespace tfl_emu {

constexpr auto kBarrierTimeout = std::chrono::seconds(120);

// A reusable barrier for a fixed number of threads: arrivals count up, the
// last one bumps the generation and wakes the others through a futex on it
// (no mutex for the woken threads to queue on). Waits poll for a deadlock
// once a second.
class Barrier {
 public:
  Barrier(const char* name, unsigned count) : name_(name), count_(count) {}

  void Wait() {
    const uint32_t generation = generation_.load(std::memory_order_acquire);
    if (arrived_.fetch_add(1, std::memory_order_acq_rel) + 1 == count_) {
      arrived_.store(0, std::memory_order_relaxed);
      generation_.fetch_add(1, std::memory_order_acq_rel);
      Futex(FUTEX_WAKE_PRIVATE, INT_MAX, nullptr);
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() + kBarrierTimeout;
    while (generation_.load(std::memory_order_acquire) == generation) {
      const timespec poll = {1, 0};
      Futex(FUTEX_WAIT_PRIVATE, generation, &poll);
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr,
                     "cuda_emulation: %s waited %lld s with %u of %u threads arrived (block %u, thread %u): "
                     "a barrier that not every thread reaches?\n",
                     name_, static_cast<long long>(kBarrierTimeout.count()), arrived_.load(), count_, blockIdx.x,
                     threadIdx.x);
        std::abort();
      }
    }
  }

 private:
  long Futex(int operation, uint32_t value, const timespec* timeout) {
    static_assert(sizeof(generation_) == sizeof(uint32_t), "the futex word is the generation");
    return syscall(SYS_futex, reinterpret_cast<uint32_t*>(&generation_), operation, value, timeout, nullptr, 0);
  }

  const char* name_;
  const unsigned count_;
  std::atomic<uint32_t> arrived_{0};
  std::atomic<uint32_t> generation_{0};
};

// Shuffles alternate between two exchange buffers, so that one barrier per
// shuffle suffices: a lane can write buffer b again only after the next
// shuffle's barrier, which every lane reaches after reading buffer b.
struct Warp {
  Warp() : barrier("warp shuffle", warpSize) {}
  Barrier barrier;
  uint64_t exchange[2][warpSize] = {};
};

inline thread_local unsigned shuffle_parity = 0;

struct Block {
  explicit Block(unsigned threads)
      : sync_threads("__syncthreads", threads), block_end("end of block", threads), warps(threads / warpSize) {}
  Barrier sync_threads;
  Barrier block_end;
  std::vector<Warp> warps;
};

inline thread_local Block* current_block = nullptr;
inline thread_local cudaError_t last_error = cudaSuccess;

inline std::mutex& LaunchMutex() {
  static std::mutex mu;
  return mu;
}

template <typename T>
T Exchange(unsigned mask, T value, int source_lane, bool in_range) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "CUDA shuffles 32- and 64-bit values");
  if (mask != 0xffffffffu) {
    std::fprintf(stderr, "cuda_emulation: shuffles need the full warp mask, got %#x\n", mask);
    std::abort();
  }
  Warp& warp = current_block->warps[threadIdx.x / warpSize];
  const unsigned lane = threadIdx.x % warpSize;
  uint64_t* exchange = warp.exchange[shuffle_parity];
  shuffle_parity ^= 1u;
  std::memcpy(&exchange[lane], &value, sizeof(value));
  warp.barrier.Wait();
  T out = value;
  if (in_range) std::memcpy(&out, &exchange[source_lane], sizeof(out));
  return out;
}

// Runs kernel(args...) over a grid of `grid` blocks of `block` threads.
template <typename... Params, typename... Args>
void Launch(unsigned grid, unsigned block, void (*kernel)(Params...), const Args&... args) {
  if (grid == 0 || block == 0 || block > 1024 || block % warpSize != 0) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  std::lock_guard<std::mutex> serial(LaunchMutex());
  Block state(block);
  std::vector<std::thread> threads;
  threads.reserve(block);
  for (unsigned t = 0; t < block; ++t) {
    threads.emplace_back([&, t] {
      current_block = &state;
      threadIdx = dim3{t, 1, 1};
      blockDim = dim3{block, 1, 1};
      gridDim = dim3{grid, 1, 1};
      for (unsigned b = 0; b < grid; ++b) {
        blockIdx = dim3{b, 1, 1};
        shuffle_parity = 0;
        kernel(args...);
        state.block_end.Wait();
      }
      current_block = nullptr;
    });
  }
  for (auto& thread : threads) thread.join();
}

inline void CheckAlignment(const void* p, size_t alignment) {
  if (reinterpret_cast<uintptr_t>(p) % alignment != 0) {
    std::fprintf(stderr, "cuda_emulation: %zu-byte vector access at %p is misaligned\n", alignment, p);
    std::abort();
  }
}

}  // namespace tfl_emu

#define TFL_EMU_CHECK_ALIGNMENT(pointer, alignment) ::tfl_emu::CheckAlignment(pointer, alignment)

inline void __syncthreads() { tfl_emu::current_block->sync_threads.Wait(); }

template <typename T>
T __shfl_sync(unsigned mask, T value, int source_lane, int width = warpSize) {
  (void)width;
  return tfl_emu::Exchange(mask, value, source_lane % warpSize, true);
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
  (void)width;
  const unsigned lane = threadIdx.x % warpSize;
  return tfl_emu::Exchange(mask, value, static_cast<int>(lane + delta), lane + delta < warpSize);
}

inline cudaError_t cudaGetLastError() {
  cudaError_t e = tfl_emu::last_error;
  tfl_emu::last_error = cudaSuccess;
  return e;
}

inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorMemoryAllocation:
      return "out of memory";
    case cudaErrorInvalidConfiguration:
      return "invalid configuration argument";
    default:
      return "invalid argument";
  }
}

// 16-bit floating-point storage types.
struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

namespace tfl_emu {

inline uint32_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

inline float BitsFloat(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

}  // namespace tfl_emu

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exponent = (h.bits >> 10) & 0x1fu;
  const uint32_t mantissa = h.bits & 0x3ffu;
  if (exponent == 0x1f) return tfl_emu::BitsFloat(sign | 0x7f800000u | (mantissa << 13));
  if (exponent != 0) return tfl_emu::BitsFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
  // Subnormal: mantissa * 2^-24, exact in float.
  const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
  return sign ? -magnitude : magnitude;
}

inline __half __float2half_rn(float f) {
  const uint32_t u = tfl_emu::FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return __half{static_cast<uint16_t>(sign | 0x7e00u)};  // NaN
  if (magnitude >= 0x477ff000u) return __half{static_cast<uint16_t>(sign | 0x7c00u)};  // rounds to inf
  if (magnitude < 0x38800000u) {
    // Below 2^-14: a subnormal half, round to nearest even in units of 2^-24.
    const float scaled = tfl_emu::BitsFloat(magnitude) * 16777216.0f;  // exact: a power of two
    const float rounded = std::nearbyint(scaled);                        // default mode: ties to even
    return __half{static_cast<uint16_t>(sign | static_cast<uint16_t>(rounded))};
  }
  // Normal: rebias, then round the 13 dropped bits to nearest even.
  const uint32_t rebased = magnitude - (112u << 23);
  const uint32_t round = 0xfffu + ((rebased >> 13) & 1u);
  return __half{static_cast<uint16_t>(sign | ((rebased + round) >> 13))};
}

inline float __bfloat162float(__nv_bfloat16 b) { return tfl_emu::BitsFloat(static_cast<uint32_t>(b.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = tfl_emu::FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet NaN
  const uint32_t round = 0x7fffu + ((u >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>((u + round) >> 16)};
}

#endif  // TF_FUSED_LOSSES_TESTS_CUDA_EMU_CUDA_EMULATION_H_
