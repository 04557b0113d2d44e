// Picks the best build of half_convert_cpu_chunks.cc that this CPU can run.
#include "cpu_half_types.h"
#include "cpu_isa.h"

namespace tf_fused_losses {

namespace isa_baseline {
const tf_fused_losses::HalfConvertOps& HalfConvertOps();
}
#if defined(__x86_64__)
namespace isa_avx2 {
const tf_fused_losses::HalfConvertOps& HalfConvertOps();
}
namespace isa_avx512 {
const tf_fused_losses::HalfConvertOps& HalfConvertOps();
}
#endif

const HalfConvertOps& HalfConvertOpsForThisCpu() {
  switch (BestCpuIsa()) {
#if defined(__x86_64__)
    case CpuIsa::kAvx512:
      return isa_avx512::HalfConvertOps();
    case CpuIsa::kAvx2:
      return isa_avx2::HalfConvertOps();
#endif
    default:
      return isa_baseline::HalfConvertOps();
  }
}

}  // namespace tf_fused_losses
