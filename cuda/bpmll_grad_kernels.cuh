// FusedBpmllLossGrad on the GPU: every row of the cached gradient times the
// upstream gradient of its loss, as a map-only row op (row_kernels.cuh), so
// that long rows spread over many blocks and short ones share blocks.
// Includes no TensorFlow header.
#ifndef TF_FUSED_LOSSES_CUDA_BPMLL_GRAD_KERNELS_CUH_
#define TF_FUSED_LOSSES_CUDA_BPMLL_GRAD_KERNELS_CUH_

#include "math_common.h"
#include "row_kernels.cuh"

namespace tf_fused_losses {
namespace gpu {

// T is the device storage type (__half, not Eigen::half). The product is
// rounded once from the accumulation type, as Eigen's half * half is.
template <typename T>
struct ScaleRowsOp {
  using Acc = typename AccumulatorOf<T>::type;
  static constexpr int kVector = VectorWidthFor<T>();
  static constexpr bool kMapOnly = true;

  struct Partial {
    uint32_t unused;
  };
  using Context = Acc;  // the row's scale
  using Result = Acc;
  struct Elements {
    Acc value[kVector];
  };

  const T* scale;
  const T* in;
  T* out;  // may be `in`: each element is read before it is written, by the same thread
  bool vector_aligned;

  TFL_DEVICE Elements Load(int64_t i, int count) const {
    Elements e;
    LoadSlot<Acc, kVector>(in + i, count, vector_aligned && count == kVector, e.value);
    return e;
  }
  TFL_DEVICE Context RowContext(int64_t row) const { return ToAcc<Acc>(scale[row]); }
  TFL_DEVICE Partial Empty() const { return Partial{0u}; }
  TFL_DEVICE void Accumulate(const Context&, Partial*, const Elements&, int) const {}
  TFL_DEVICE Partial Merge(const Partial& a, const Partial&) const { return a; }
  TFL_DEVICE Result Finish(const Context& row_scale, const Partial&, int64_t, bool) const { return row_scale; }

  TFL_DEVICE void Map(const Result& row_scale, const Elements& e, int64_t i, int count) const {
    Acc product[kVector];
#pragma unroll
    for (int k = 0; k < kVector; ++k) product[k] = e.value[k] * row_scale;
    StoreSlot<kVector>(out + i, count, vector_aligned && count == kVector, product);
  }
};

template <typename T>
ScaleRowsOp<T> MakeScaleRowsOp(const T* scale, const T* in, T* out) {
  constexpr int V = ScaleRowsOp<T>::kVector;
  return ScaleRowsOp<T>{scale, in, out, IsAligned(in, V) && IsAligned(out, V)};
}

}  // namespace gpu
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_BPMLL_GRAD_KERNELS_CUH_
