// The CUDA type of each storage type (cpu_half_types.h): the same bits, as
// the kernels read them. Shared by the TF launchers and the XLA handlers.
#ifndef TF_FUSED_LOSSES_CUDA_DEVICE_TYPES_CUH_
#define TF_FUSED_LOSSES_CUDA_DEVICE_TYPES_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cpu_half_types.h"

namespace tf_fused_losses {

template <typename T>
struct CudaTypeOf {
  using type = T;
};
template <>
struct CudaTypeOf<Float16Bits> {
  using type = __half;
};
template <>
struct CudaTypeOf<BFloat16Bits> {
  using type = __nv_bfloat16;
};

template <typename T>
using CudaType = typename CudaTypeOf<T>::type;

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_DEVICE_TYPES_CUH_
