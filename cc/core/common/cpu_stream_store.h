// Non-temporal stores for the per-ISA chunk code (bpmll_cpu_chunks.cc,
// correlation_cpu_chunks.cc). Include only from those files: the helpers are
// compiled for the including file's instruction set, and their internal
// linkage keeps one build's copy from standing in for another's.
//
// Why: an ordinary store to a line that is not in cache first reads the line
// from memory ("read for ownership"), so writing an output larger than the
// last-level cache costs twice its size in memory traffic. A streaming store
// writes whole lines without reading them. Worth it only for outputs that the
// next op will not find in cache anyway: see kStreamStoreMinBytes.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_STREAM_STORE_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_STREAM_STORE_H_

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tf_fused_losses {

// Outputs at least this large are written with streaming stores: they cannot
// stay in a last-level cache of tens of MiB beside the inputs streaming
// through it, so the next op reads them from memory either way. Smaller ones
// are left in cache for it.
constexpr int64_t kStreamStoreMinBytes = int64_t{16} << 20;

namespace {

// Copies `bytes` bytes from `src` (cache-resident) to `dst` with streaming
// stores, plain copies for the unaligned head and the tail. The stores are
// weakly ordered: StreamStoreFence() must run before another thread may read
// `dst`.
inline void StreamStoreBytes(void* dst, const void* src, int64_t bytes) {
  char* out = static_cast<char*>(dst);
  const char* in = static_cast<const char*>(src);
#if defined(__AVX512F__)
  constexpr int64_t kWidth = 64;
#elif defined(__AVX__)
  constexpr int64_t kWidth = 32;
#elif defined(__SSE2__)
  constexpr int64_t kWidth = 16;
#else
  constexpr int64_t kWidth = 0;
#endif
  if constexpr (kWidth == 0) {
    std::memcpy(out, in, bytes);
    return;
  } else {
  if (bytes < 2 * kWidth) {
    std::memcpy(out, in, bytes);
    return;
  }
  const int64_t head = (kWidth - static_cast<int64_t>(reinterpret_cast<uintptr_t>(out) % kWidth)) % kWidth;
  std::memcpy(out, in, head);
  int64_t i = head;
  for (; i + kWidth <= bytes; i += kWidth) {
#if defined(__AVX512F__)
    _mm512_stream_si512(reinterpret_cast<__m512i*>(out + i), _mm512_loadu_si512(in + i));
#elif defined(__AVX__)
    _mm256_stream_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i)));
#elif defined(__SSE2__)
    _mm_stream_si128(reinterpret_cast<__m128i*>(out + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i)));
#endif
  }
  std::memcpy(out + i, in + i, bytes - i);
  }
}

inline void StreamStoreFence() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// Where a chunk's outputs are computed: dest itself, or, when streaming, an
// L1 buffer of up to kCapacity elements that Finish() streams to dest.
template <typename T, int64_t kCapacity>
class StreamedChunkOutput {
 public:
  StreamedChunkOutput(T* dest, bool stream) : dest_(dest), stream_(stream) {}
  T* data() { return stream_ ? staged_ : dest_; }
  // Once the first n elements of data() are written.
  void Finish(int64_t n) {
    if (stream_) {
      StreamStoreBytes(dest_, staged_, n * static_cast<int64_t>(sizeof(T)));
      StreamStoreFence();
    }
  }

 private:
  T* const dest_;
  const bool stream_;
  alignas(64) T staged_[kCapacity];
};

}  // namespace
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_STREAM_STORE_H_
