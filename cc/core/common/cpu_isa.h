// Which x86-64 level's build of the per-ISA chunk files (*_cpu_chunks.cc,
// compiled once per entry of TFL_ISAS in CMakeLists.txt) this CPU runs.
//
// TFL_CPU_ISA=baseline|avx2|avx512 in the environment caps the choice, so
// that tests can run every build on one machine. Any other value, and a build
// above what this CPU runs, is a mistake the user must hear about: this file
// decides that once for every frontend (tfl_cpu_isa_error), and the frontends
// refuse to run a CPU kernel while it holds (the TF CPU OpKernels, the Host
// FFI handlers; the Python loaders raise it at load). The chunk dispatchers,
// which must pick a build anyway, take the best at or below the named one
// (baseline for a name that is none), so that nothing here ever runs an
// instruction the CPU lacks.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_H_

#include <string>

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

// The best level this CPU runs, whatever TFL_CPU_ISA says.
inline CpuIsa SupportedCpuIsa() {
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
  return best;
}

struct CpuIsaChoice {
  CpuIsa isa;         // the build the kernels use
  std::string error;  // empty, or why `setting` is refused (the message users see)
};

// The choice for a CPU that runs up to `supported`, with TFL_CPU_ISA set to
// `setting` (nullptr or "": unset).
CpuIsaChoice ChooseCpuIsa(CpuIsa supported, const char* setting);

// ChooseCpuIsa for this CPU and this process's TFL_CPU_ISA, read once.
const CpuIsaChoice& ProcessCpuIsa();

inline CpuIsa BestCpuIsa() { return ProcessCpuIsa().isa; }

}  // namespace tf_fused_losses

extern "C" {
// NULL when TFL_CPU_ISA is unset, empty or names a build this CPU runs; else
// the message a frontend refuses a CPU kernel with (the same text everywhere).
const char* tfl_cpu_isa_error(void);
}

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_H_
