// Eigen's 16-bit float types as the CUDA types of the same bits, for the
// launchers, which see TensorFlow's element types but include no Eigen
// header (so the types are only declared here).
#ifndef TF_FUSED_LOSSES_CUDA_TF_DEVICE_TYPES_H_
#define TF_FUSED_LOSSES_CUDA_TF_DEVICE_TYPES_H_

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace Eigen {
struct GpuDevice;
struct half;
struct bfloat16;
}  // namespace Eigen

namespace tf_fused_losses {

using GPUDevice = Eigen::GpuDevice;

template <typename T>
struct DeviceTypeOf {
  using type = T;
};
template <>
struct DeviceTypeOf<Eigen::half> {
  using type = __half;
};
template <>
struct DeviceTypeOf<Eigen::bfloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
using DeviceType = typename DeviceTypeOf<T>::type;

template <typename T>
const DeviceType<T>* ToDevice(const T* p) {
  return reinterpret_cast<const DeviceType<T>*>(p);
}
template <typename T>
DeviceType<T>* ToDevice(T* p) {
  return reinterpret_cast<DeviceType<T>*>(p);
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_TF_DEVICE_TYPES_H_
