// Element conversions between the 16-bit floats and float/double, for the
// per-ISA chunk code only (see cpu_stream_store.h for why the linkage is
// internal): written so that loops over them vectorise, with F16C doing the
// half conversions where the instruction set has it.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_HALF_CONVERT_INL_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_HALF_CONVERT_INL_H_

#include <cstdint>
#include <cstring>

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "cpu_half_types.h"

namespace tf_fused_losses {
namespace {

template <typename Acc, typename T>
inline Acc Widen(T v) {
  return static_cast<Acc>(v);
}
template <>
inline float Widen<float, Float16Bits>(Float16Bits v) {
  _Float16 h;
  std::memcpy(&h, &v.bits, sizeof(h));
  return static_cast<float>(h);
}
template <>
inline float Widen<float, BFloat16Bits>(BFloat16Bits v) {
  uint32_t bits = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
// Half and bfloat16 labels beside float64 logits.
template <>
inline double Widen<double, Float16Bits>(Float16Bits v) {
  return Widen<float>(v);
}
template <>
inline double Widen<double, BFloat16Bits>(BFloat16Bits v) {
  return Widen<float>(v);
}

template <typename T, typename Acc>
inline T Narrow(Acc v) {
  return static_cast<T>(v);
}
template <>
inline Float16Bits Narrow<Float16Bits, float>(float v) {
  _Float16 h = static_cast<_Float16>(v);  // round to nearest even, as Eigen::half
  Float16Bits out;
  std::memcpy(&out.bits, &h, sizeof(h));
  return out;
}
template <>
inline BFloat16Bits Narrow<BFloat16Bits, float>(float v) {
  // Round to nearest even, NaN kept quiet: Eigen::bfloat16's conversion.
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  BFloat16Bits out;
  out.bits = static_cast<uint16_t>(v != v ? 0x7fc0u : rounded);
  return out;
}

// Whole arrays. GCC 12 does not vectorise the _Float16 conversions above
// (one vcvtps2ph per element), so the half arrays use the F16C/AVX-512
// instructions directly where the build has them: the same rounding (to
// nearest even) and NaN handling, 8 or 16 elements at a time.
template <typename Acc, typename T>
inline void WidenArray(const T* in, int64_t n, Acc* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = Widen<Acc>(in[i]);
}
template <typename T, typename Acc>
inline void NarrowArray(const Acc* in, int64_t n, T* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = Narrow<T>(in[i]);
}

template <>
inline void WidenArray<float, Float16Bits>(const Float16Bits* in, int64_t n, float* out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + i))));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
  }
#endif
  for (; i < n; ++i) out[i] = Widen<float>(in[i]);
}

template <>
inline void NarrowArray<Float16Bits, float>(const float* in, int64_t n, Float16Bits* out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#endif
  for (; i < n; ++i) out[i] = Narrow<Float16Bits>(in[i]);
}

}  // namespace
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_HALF_CONVERT_INL_H_
