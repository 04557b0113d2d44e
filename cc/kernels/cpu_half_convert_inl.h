// Element conversions between the 16-bit floats and float/double, for the
// per-ISA chunk code only (see cpu_stream_store.h for why the linkage is
// internal): written so that loops over them vectorise, with F16C doing the
// half conversions where the instruction set has it.
#ifndef TF_FUSED_LOSSES_CC_KERNELS_CPU_HALF_CONVERT_INL_H_
#define TF_FUSED_LOSSES_CC_KERNELS_CPU_HALF_CONVERT_INL_H_

#include <cstdint>
#include <cstring>

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

}  // namespace
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_KERNELS_CPU_HALF_CONVERT_INL_H_
