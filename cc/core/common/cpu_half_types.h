// The 16-bit float types as the per-ISA chunk code sees them, and the array
// conversions between them and float that the chunk builds provide.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_HALF_TYPES_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_HALF_TYPES_H_

#include <cstdint>

namespace Eigen {
struct half;
struct bfloat16;
}  // namespace Eigen

namespace tf_fused_losses {

// The bit layouts of Eigen::half and Eigen::bfloat16: the chunk code must not
// include Eigen (see bpmll_cpu_chunks.cc).
struct Float16Bits {
  uint16_t bits;
};
struct BFloat16Bits {
  uint16_t bits;
};

// The chunk code's name for each TF element type: the same bits, without Eigen.
template <typename T>
struct ChunkTypeOf {
  using type = T;
};
template <>
struct ChunkTypeOf<Eigen::half> {
  using type = Float16Bits;
};
template <>
struct ChunkTypeOf<Eigen::bfloat16> {
  using type = BFloat16Bits;
};

// Array conversions for kernels whose own loops work in float: Eigen's
// element-wise conversions in a TF-compiled file are scalar (no F16C in TF's
// baseline), a multiple of the kernel's cost. Rounding: to nearest even, as
// Eigen's; NaN stays NaN.
struct HalfConvertOps {
  void (*widen_half)(const Float16Bits* in, int64_t n, float* out);
  void (*widen_bfloat16)(const BFloat16Bits* in, int64_t n, float* out);
  void (*narrow_half)(const float* in, int64_t n, Float16Bits* out);
  void (*narrow_bfloat16)(const float* in, int64_t n, BFloat16Bits* out);
};

const HalfConvertOps& HalfConvertOpsForThisCpu();

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_HALF_TYPES_H_
