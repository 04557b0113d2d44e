// Per-ISA build: see cpu_isa_build.h.
#include "cpu_isa_build.h"  // first: checks TFL_CPU_ISA
#include "cpu_half_convert_inl.h"
#include "cpu_half_types.h"

namespace tf_fused_losses {
namespace TFL_CPU_ISA {
namespace {

template <typename Half>
void WidenArray(const Half* in, int64_t n, float* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = Widen<float>(in[i]);
}

template <typename Half>
void NarrowArray(const float* in, int64_t n, Half* out) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = Narrow<Half>(in[i]);
}

}  // namespace

const tf_fused_losses::HalfConvertOps& HalfConvertOps() {
  static const tf_fused_losses::HalfConvertOps ops = {&WidenArray<Float16Bits>, &WidenArray<BFloat16Bits>,
                                                      &NarrowArray<Float16Bits>, &NarrowArray<BFloat16Bits>};
  return ops;
}

}  // namespace TFL_CPU_ISA
}  // namespace tf_fused_losses
