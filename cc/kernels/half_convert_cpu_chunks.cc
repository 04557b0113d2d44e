// Per-ISA build: see cpu_isa_build.h.
#include "cpu_isa_build.h"  // first: checks TFL_CPU_ISA
#include "cpu_half_convert_inl.h"
#include "cpu_half_types.h"

namespace tf_fused_losses {
namespace TFL_CPU_ISA {
namespace {

template <typename Half>
void WidenToFloat(const Half* in, int64_t n, float* out) {
  WidenArray(in, n, out);
}

template <typename Half>
void NarrowFromFloat(const float* in, int64_t n, Half* out) {
  NarrowArray(in, n, out);
}

}  // namespace

const tf_fused_losses::HalfConvertOps& HalfConvertOps() {
  static const tf_fused_losses::HalfConvertOps ops = {&WidenToFloat<Float16Bits>, &WidenToFloat<BFloat16Bits>,
                                                      &NarrowFromFloat<Float16Bits>, &NarrowFromFloat<BFloat16Bits>};
  return ops;
}

}  // namespace TFL_CPU_ISA
}  // namespace tf_fused_losses
