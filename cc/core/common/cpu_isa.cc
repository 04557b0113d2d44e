// Which per-ISA build runs, for the frontends to report and check
// (tf_fused_losses.build_info()["cpu_isa"]; the loader validates TFL_CPU_ISA
// against tfl_cpu_isa_supported() before any kernel runs).
#include "cpu_isa.h"

extern "C" {

// The ISA build the kernels use: the best this CPU runs, capped by TFL_CPU_ISA.
__attribute__((visibility("default"))) const char* tfl_cpu_isa_in_use() {
  return tf_fused_losses::CpuIsaName(tf_fused_losses::BestCpuIsa());
}

// The best ISA build this CPU runs, whatever TFL_CPU_ISA says.
__attribute__((visibility("default"))) const char* tfl_cpu_isa_supported() {
  return tf_fused_losses::CpuIsaName(tf_fused_losses::DetectCpuIsa(/*apply_cap=*/false));
}

}  // extern "C"
