// Eigen's 16-bit float types as the CUDA types of the same bits, for the
// launchers, which see TensorFlow's element types but include no Eigen
// header (so the types are only declared here).
#ifndef TF_FUSED_LOSSES_CUDA_TF_DEVICE_TYPES_H_
#define TF_FUSED_LOSSES_CUDA_TF_DEVICE_TYPES_H_

#include "cpu_half_types.h"
#include "device_types.cuh"

namespace Eigen {
struct GpuDevice;
}  // namespace Eigen

namespace tf_fused_losses {

using GPUDevice = Eigen::GpuDevice;

// Eigen::half -> Float16Bits -> __half.
template <typename T>
using DeviceType = CudaType<typename ChunkTypeOf<T>::type>;

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
