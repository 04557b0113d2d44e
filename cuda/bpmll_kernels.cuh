// FusedBpmllLoss on the GPU: the per-row math of bpmll_math.h run by the
// row kernels of row_kernels.cuh. Includes no TensorFlow header.
//
// Pass 1 reduces a row to BpmllStats, element by element (BpmllAccumulate:
// one exp per element, rescaling when the row maximum moves). Pass 2 writes
// the loss (first thread of the row) and every gradient element.
//
// Labels outside [0, 1], NaN included, cannot be reported as an error
// without a host synchronisation; like TensorFlow's GPU kernels for invalid
// labels (e.g. SparseSoftmaxCrossEntropyWithLogits), such a row gets NaN
// loss and NaN gradient. The CPU kernel reports an InvalidArgument error.
#ifndef TF_FUSED_LOSSES_CUDA_BPMLL_KERNELS_CUH_
#define TF_FUSED_LOSSES_CUDA_BPMLL_KERNELS_CUH_

#include <limits>

#include "bpmll_math.h"
#include "row_kernels.cuh"

namespace tf_fused_losses {
namespace gpu {

// T and TLabel are device storage types (__half, not Eigen::half).
template <typename T, typename TLabel>
struct BpmllRowOp {
  using Acc = typename AccumulatorOf<T>::type;
  static constexpr int kVector = VectorWidthFor<T, TLabel>();
  static constexpr bool kMapOnly = false;

  struct Partial {
    BpmllStats<Acc> stats;
    uint32_t bad_labels;  // a label outside [0, 1] was seen
    uint32_t unused;      // keeps the size a multiple of 8 without padding bytes
  };
  struct Context {};
  struct Result {
    BpmllRowResult<Acc> row;
    bool bad_labels;
  };
  struct Elements {
    Acc logit[kVector];
    Acc label[kVector];
  };

  const TLabel* y_true;
  const T* y_pred;
  T* loss;
  T* grad;
  bool vector_aligned;

  TFL_DEVICE Elements Load(int64_t i, int count) const {
    const bool vector = vector_aligned && count == kVector;
    Elements e;
    LoadSlot<Acc, kVector>(y_pred + i, count, vector, e.logit);
    LoadSlot<Acc, kVector>(y_true + i, count, vector, e.label);
    return e;
  }

  TFL_DEVICE Context RowContext(int64_t) const { return Context{}; }

  TFL_DEVICE Partial Empty() const { return Partial{BpmllEmptyStats<Acc>(), 0u, 0u}; }

  TFL_DEVICE void Accumulate(const Context&, Partial* p, const Elements& e, int count) const {
    // Not unrolled: BpmllAccumulate branches, and kVector copies of it made
    // ptxas take ~2.5x as long for every architecture. The slot's elements
    // then live in local memory, which stays in L1.
#pragma unroll 1
    for (int k = 0; k < kVector; ++k) {
      if (k < count) {
        p->bad_labels |= (e.label[k] >= Acc(0) && e.label[k] <= Acc(1)) ? 0u : 1u;  // NaN too
        BpmllAccumulate(&p->stats, e.logit[k], e.label[k]);
      }
    }
  }

  TFL_DEVICE Partial Merge(const Partial& a, const Partial& b) const {
    return Partial{BpmllMerge(a.stats, b.stats), a.bad_labels | b.bad_labels, 0u};
  }

  TFL_DEVICE Result Finish(const Context&, const Partial& p, int64_t row, bool writes_row) const {
    Result r{BpmllFinish(p.stats), p.bad_labels != 0u};
    if (writes_row) loss[row] = FromAcc<T>(r.bad_labels ? std::numeric_limits<Acc>::quiet_NaN() : r.row.loss);
    return r;
  }

  TFL_DEVICE void Map(const Result& r, const Elements& e, int64_t i, int count) const {
    Acc g[kVector];
#pragma unroll
    for (int k = 0; k < kVector; ++k) {
      const Acc gradient = BpmllRowGradient(r.row, e.logit[k], e.label[k]);
      g[k] = r.bad_labels ? std::numeric_limits<Acc>::quiet_NaN() : gradient;
    }
    StoreSlot<kVector>(grad + i, count, vector_aligned && count == kVector, g);
  }
};

template <typename T, typename TLabel>
BpmllRowOp<T, TLabel> MakeBpmllRowOp(const TLabel* y_true, const T* y_pred, T* loss, T* grad) {
  constexpr int V = BpmllRowOp<T, TLabel>::kVector;
  const bool aligned = IsAligned(y_true, V) && IsAligned(y_pred, V) && IsAligned(grad, V);
  return BpmllRowOp<T, TLabel>{y_true, y_pred, loss, grad, aligned};
}

}  // namespace gpu
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_BPMLL_KERNELS_CUH_
