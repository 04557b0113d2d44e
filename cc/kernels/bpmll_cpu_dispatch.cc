// Picks the best build of bpmll_cpu_chunks.cc that this CPU can run.
#include "bpmll_cpu_chunks.h"

namespace tf_fused_losses {

#define TFL_DECLARE_ISA(isa)                                    \
  namespace isa {                                               \
  template <typename Acc>                                       \
  const tf_fused_losses::BpmllChunkOps<Acc>& BpmllChunkOps();   \
  extern template const tf_fused_losses::BpmllChunkOps<float>& BpmllChunkOps<float>();   \
  extern template const tf_fused_losses::BpmllChunkOps<double>& BpmllChunkOps<double>(); \
  }
TFL_DECLARE_ISA(isa_baseline)
#if defined(__x86_64__)
TFL_DECLARE_ISA(isa_avx2)
TFL_DECLARE_ISA(isa_avx512)
#endif
#undef TFL_DECLARE_ISA

template <typename Acc>
const BpmllChunkOps<Acc>& BpmllChunkOpsForThisCpu() {
  static const BpmllChunkOps<Acc>& ops = []() -> const BpmllChunkOps<Acc>& {
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")) {
      return isa_avx512::BpmllChunkOps<Acc>();
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return isa_avx2::BpmllChunkOps<Acc>();
    }
#endif
    return isa_baseline::BpmllChunkOps<Acc>();
  }();
  return ops;
}

template const BpmllChunkOps<float>& BpmllChunkOpsForThisCpu<float>();
template const BpmllChunkOps<double>& BpmllChunkOpsForThisCpu<double>();

}  // namespace tf_fused_losses
