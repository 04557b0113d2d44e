// Which x86-64 level's build of the per-ISA chunk files (*_cpu_chunks.cc,
// compiled once per entry of TFL_ISAS in CMakeLists.txt) this CPU runs.
//
// TFL_CPU_ISA=baseline|avx2|avx512 in the environment caps the choice, so
// that tests can run every build on one machine; it never raises it above
// what the CPU supports. The Python loader refuses unknown values and caps
// above what the CPU supports before the library runs a kernel; here an
// unknown value caps to baseline, the choice that runs everywhere.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_H_

#include <cstdlib>
#include <cstring>

namespace tf_fused_losses {

enum class CpuIsa { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

inline const char* CpuIsaName(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512:
      return "avx512";
    case CpuIsa::kAvx2:
      return "avx2";
    default:
      return "baseline";
  }
}

inline CpuIsa DetectCpuIsa(bool apply_cap = true) {
  CpuIsa best = CpuIsa::kBaseline;
#if defined(__x86_64__)
  // The same levels the builds are compiled for (-march=x86-64-v3, -v4):
  // those may use any of the level's instructions (BMI2, F16C, ...), not
  // only the vector ones.
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) {
    best = CpuIsa::kAvx512;
  } else if (__builtin_cpu_supports("x86-64-v3")) {
    best = CpuIsa::kAvx2;
  }
#endif
  const char* cap = apply_cap ? std::getenv("TFL_CPU_ISA") : nullptr;
  if (cap != nullptr && *cap != '\0') {
    CpuIsa limit = CpuIsa::kBaseline;
    if (std::strcmp(cap, "avx2") == 0) limit = CpuIsa::kAvx2;
    if (std::strcmp(cap, "avx512") == 0) limit = CpuIsa::kAvx512;
    if (static_cast<int>(limit) < static_cast<int>(best)) best = limit;
  }
  return best;
}

inline CpuIsa BestCpuIsa() {
  static const CpuIsa isa = DetectCpuIsa();
  return isa;
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_H_
