// Picks the best build of correlation_cpu_chunks.cc that this CPU can run.
#include "correlation_cpu_chunks.h"
#include "cpu_isa_dispatch.h"

namespace tf_fused_losses {

#define TFL_DECLARE_ISA(isa)                                                                    \
  namespace isa {                                                                               \
  template <typename Acc>                                                                       \
  const tf_fused_losses::CorrelationChunkOps<Acc>& CorrelationChunkOps();                       \
  extern template const tf_fused_losses::CorrelationChunkOps<float>& CorrelationChunkOps<float>();   \
  extern template const tf_fused_losses::CorrelationChunkOps<double>& CorrelationChunkOps<double>(); \
  }
TFL_FOR_EACH_ISA(TFL_DECLARE_ISA)
#undef TFL_DECLARE_ISA

template <typename Acc>
const CorrelationChunkOps<Acc>& CorrelationChunkOpsForThisCpu() {
  TFL_RETURN_FROM_BEST_ISA(template CorrelationChunkOps<Acc>())
}

template const CorrelationChunkOps<float>& CorrelationChunkOpsForThisCpu<float>();
template const CorrelationChunkOps<double>& CorrelationChunkOpsForThisCpu<double>();

}  // namespace tf_fused_losses
