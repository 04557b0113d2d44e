// Picks the best build of bpmll_cpu_chunks.cc that this CPU can run.
#include "bpmll_cpu_chunks.h"
#include "cpu_isa_dispatch.h"

namespace tf_fused_losses {

#define TFL_DECLARE_ISA(isa)                                              \
  namespace isa {                                                         \
  template <typename Logit, typename Label>                               \
  const tf_fused_losses::BpmllChunkOps<Logit, Label>& BpmllChunkOps();    \
  template <typename Logit>                                               \
  const tf_fused_losses::ScaleChunkOps<Logit>& ScaleChunkOps();           \
  }
TFL_FOR_EACH_ISA(TFL_DECLARE_ISA)
#undef TFL_DECLARE_ISA


template <typename Logit, typename Label>
const BpmllChunkOps<Logit, Label>& BpmllChunkOpsForThisCpu() {
  TFL_RETURN_FROM_BEST_ISA(template BpmllChunkOps<Logit, Label>())
}

template <typename Logit>
const ScaleChunkOps<Logit>& ScaleChunkOpsForThisCpu() {
  TFL_RETURN_FROM_BEST_ISA(template ScaleChunkOps<Logit>())
}

#define TFL_INSTANTIATE_PAIR(Logit, Label) \
  template const BpmllChunkOps<Logit, Label>& BpmllChunkOpsForThisCpu<Logit, Label>();
TFL_FOR_EACH_BPMLL_PAIR(TFL_INSTANTIATE_PAIR)
#undef TFL_INSTANTIATE_PAIR
#define TFL_INSTANTIATE_LOGIT(Logit) template const ScaleChunkOps<Logit>& ScaleChunkOpsForThisCpu<Logit>();
TFL_FOR_EACH_LOGIT(TFL_INSTANTIATE_LOGIT)
#undef TFL_INSTANTIATE_LOGIT

}  // namespace tf_fused_losses
