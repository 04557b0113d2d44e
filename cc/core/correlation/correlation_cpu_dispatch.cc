// Picks the best build of correlation_cpu_chunks.cc that this CPU can run.
#include "correlation_cpu_chunks.h"
#include "cpu_isa.h"

namespace tf_fused_losses {

#define TFL_DECLARE_ISA(isa)                                                                    \
  namespace isa {                                                                               \
  template <typename Acc>                                                                       \
  const tf_fused_losses::CorrelationChunkOps<Acc>& CorrelationChunkOps();                       \
  extern template const tf_fused_losses::CorrelationChunkOps<float>& CorrelationChunkOps<float>();   \
  extern template const tf_fused_losses::CorrelationChunkOps<double>& CorrelationChunkOps<double>(); \
  }
TFL_DECLARE_ISA(isa_baseline)
#if defined(__x86_64__)
TFL_DECLARE_ISA(isa_avx2)
TFL_DECLARE_ISA(isa_avx512)
#endif
#undef TFL_DECLARE_ISA

template <typename Acc>
const CorrelationChunkOps<Acc>& CorrelationChunkOpsForThisCpu() {
  switch (BestCpuIsa()) {
#if defined(__x86_64__)
    case CpuIsa::kAvx512:
      return isa_avx512::CorrelationChunkOps<Acc>();
    case CpuIsa::kAvx2:
      return isa_avx2::CorrelationChunkOps<Acc>();
#endif
    default:
      return isa_baseline::CorrelationChunkOps<Acc>();
  }
}

template const CorrelationChunkOps<float>& CorrelationChunkOpsForThisCpu<float>();
template const CorrelationChunkOps<double>& CorrelationChunkOpsForThisCpu<double>();

}  // namespace tf_fused_losses
