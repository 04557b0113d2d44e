// Per-ISA build: see cpu_isa_build.h.
#include "cpu_isa_build.h"  // first: checks TFL_CPU_ISA
#include "cpu_half_convert_inl.h"
#include "cpu_half_types.h"

namespace tf_fused_losses {
namespace TFL_CPU_ISA {

const tf_fused_losses::HalfConvertOps& HalfConvertOps() {
  static const tf_fused_losses::HalfConvertOps ops = {&WidenArray<float, Float16Bits>, &WidenArray<float, BFloat16Bits>,
                                                      &NarrowArray<Float16Bits, float>,
                                                      &NarrowArray<BFloat16Bits, float>};
  return ops;
}

}  // namespace TFL_CPU_ISA
}  // namespace tf_fused_losses
