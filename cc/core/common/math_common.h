// Shared by the CPU kernels (g++) and the CUDA kernels (nvcc): no TensorFlow
// header may be included here, so that the CUDA emulation harness in tests/
// can compile the same math.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_MATH_COMMON_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_MATH_COMMON_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// On the host these functions are static: the CPU chunk loops are compiled
// once per instruction set (bpmll_cpu_chunks.cc), and internal linkage keeps
// the linker from merging an AVX-512 copy into the baseline code.
#if defined(__CUDACC__)
#define TFL_HD __host__ __device__ __forceinline__
#else
#define TFL_HD static inline __attribute__((always_inline))
#endif

namespace tf_fused_losses {

// Accumulation type: float for the 16-bit types and float, double for double.
template <typename T>
struct AccumulatorOf {
  using type = float;
};
template <>
struct AccumulatorOf<double> {
  using type = double;
};

template <typename Acc>
TFL_HD bool IsInfinite(Acc v) {
  return v == std::numeric_limits<Acc>::infinity() || v == -std::numeric_limits<Acc>::infinity();
}

template <typename Acc>
TFL_HD Acc NegativeInfinity() {
  return -std::numeric_limits<Acc>::infinity();
}

// exp() for the hot loops. On the host std::expf is a library call that
// blocks auto-vectorisation, so float uses a branch-free Cody-Waite reduction
// with a degree-6 polynomial (max rel. error ~1.5 ulp). 2^n is applied by
// adding n to the polynomial's exponent bits, which stays a normal float over
// the whole clamped range. Results below e^-86.5 flush to 0, above FLT_MAX
// give +inf, NaN stays NaN. Device code uses the hardware-backed expf.
TFL_HD float VectorizableExp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float kLog2e = 1.44269504088896341f;
  const float kLn2Hi = 0.693359375f;
  const float kLn2Lo = -2.12194440e-4f;
  const float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float kLowest = -86.5f, kHighest = 88.7228394f;
  // Selects written so that a NaN x flows through the arithmetic.
  float clamped = x < kLowest ? kLowest : x;
  clamped = clamped > kHighest ? kHighest : clamped;
  float n = (clamped * kLog2e + kRoundMagic) - kRoundMagic;
  float r = clamped - n * kLn2Hi - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // A NaN x has made p NaN already; converting a NaN n to int is undefined,
  // and 0 leaves p's NaN bits as they are.
  const float n_or_zero = n == n ? n : 0.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(n_or_zero) * (1 << 23);
  float result;
  std::memcpy(&result, &bits, sizeof(result));
  result = x < kLowest ? 0.0f : result;
  return x > kHighest ? std::numeric_limits<float>::infinity() : result;
#endif
}

TFL_HD double VectorizableExp(double x) { return std::exp(x); }

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_MATH_COMMON_H_
