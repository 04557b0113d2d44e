// Included by every *_cpu_chunks.cc. CMake compiles those files once per
// x86-64 level (baseline, x86-64-v3, x86-64-v4), each time with TFL_CPU_ISA
// naming the namespace that build's functions live in (isa_baseline, ...);
// cpu_isa.h picks one at run time. Such a file must not include TensorFlow or
// Eigen headers: their inline functions would be compiled for that file's
// instruction set and could be merged into code that runs on any CPU.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_BUILD_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_BUILD_H_

#ifndef TFL_CPU_ISA
#error "TFL_CPU_ISA must name the instruction-set namespace"
#endif

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ISA_BUILD_H_
