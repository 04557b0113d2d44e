// The per-ISA builds of the *_cpu_chunks.cc sources (CMakeLists.txt compiles
// each once per ISA, in a namespace named after it), and the pick among them
// that the dispatch files make at run time.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_DISPATCH_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_DISPATCH_H_

#include "cpu_isa.h"

// X(isa) for each ISA namespace built on this architecture (declarations).
#if defined(__x86_64__)
#define TFL_FOR_EACH_ISA(X) X(isa_baseline) X(isa_avx2) X(isa_avx512)
#else
#define TFL_FOR_EACH_ISA(X) X(isa_baseline)
#endif

// `return isa::EXPR;` from the best build this CPU can run (BestCpuIsa:
// TFL_CPU_ISA where set).
#if defined(__x86_64__)
#define TFL_RETURN_FROM_BEST_ISA(...)     \
  switch (BestCpuIsa()) {                 \
    case CpuIsa::kAvx512:                 \
      return isa_avx512::__VA_ARGS__;     \
    case CpuIsa::kAvx2:                   \
      return isa_avx2::__VA_ARGS__;       \
    default:                              \
      return isa_baseline::__VA_ARGS__;   \
  }
#else
#define TFL_RETURN_FROM_BEST_ISA(...) return isa_baseline::__VA_ARGS__;
#endif

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_DISPATCH_H_
