// The TF CPU kernels' side of TFL_CPU_ISA (cpu_isa.h): a CPU kernel is not
// made while the variable names no build, or one this CPU cannot run, so
// that the user learns what they asked for does not run, from the op itself,
// whatever loaded the library.
#ifndef TF_FUSED_LOSSES_CC_TF_KERNELS_TF_CPU_ISA_H_
#define TF_FUSED_LOSSES_CC_TF_KERNELS_TF_CPU_ISA_H_

#include <type_traits>

#include "cpu_isa.h"
#include "tensorflow/core/framework/op_kernel.h"

namespace tf_fused_losses {

// Call first in a kernel's constructor; does nothing for a GPU kernel.
template <typename Device>
void RequireUsableCpuIsa(tensorflow::OpKernelConstruction* ctx) {
  if constexpr (std::is_same<Device, Eigen::ThreadPoolDevice>::value) {
    const char* error = tfl_cpu_isa_error();
    OP_REQUIRES(ctx, error == nullptr, tensorflow::errors::InvalidArgument(error));
  }
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_TF_KERNELS_TF_CPU_ISA_H_
