// FusedCorrelationLoss and FusedCorrelationLossGrad on the GPU: the per-row
// math of correlation_math.h run by the row kernels of row_kernels.cuh.
// Includes no TensorFlow header.
//
// Forward: reduce a row's valid steps to CorrelationMoments (Welford's
// update per element, CorrelationMerge across threads and pieces), store
// them as the row's row_stats, write loss_t for every step.
// Backward: each row's CorrelationRow comes from row_stats; reduce the row
// to CorrelationGradSums, finish them into coefficients, write both
// gradients for every step.
#ifndef TF_FUSED_LOSSES_CUDA_CORRELATION_KERNELS_CUH_
#define TF_FUSED_LOSSES_CUDA_CORRELATION_KERNELS_CUH_

#include "correlation_math.h"
#include "row_kernels.cuh"

namespace tf_fused_losses {
namespace gpu {

// The validity of a slot's steps: the mask's, or all valid without one.
template <int V>
TFL_DEVICE void LoadValid(const bool* mask, int count, bool vector, bool* valid) {
  if (mask != nullptr) {
    LoadSlot<bool, V>(mask, count, vector, valid);
    return;
  }
#pragma unroll
  for (int k = 0; k < V; ++k) valid[k] = true;
}

// T is the device storage type (__half, not Eigen::half).
template <typename T>
struct CorrelationForwardOp {
  using Acc = typename AccumulatorOf<T>::type;
  static constexpr int kVector = VectorWidthFor<T, bool>();
  static constexpr bool kMapOnly = false;

  using Partial = CorrelationMoments<Acc>;
  struct Context {};
  using Result = CorrelationRow<Acc>;
  struct Elements {
    Acc x[kVector];
    Acc y[kVector];
    bool valid[kVector];
  };

  const T* y_true;
  const T* y_pred;
  const bool* mask;  // nullptr: every step is valid
  Acc epsilon;
  bool concordance;
  T* loss;
  double* row_stats;
  bool vector_aligned;

  TFL_DEVICE Elements Load(int64_t i, int count) const {
    const bool vector = vector_aligned && count == kVector;
    Elements e;
    LoadSlot<Acc, kVector>(y_pred + i, count, vector, e.x);
    LoadSlot<Acc, kVector>(y_true + i, count, vector, e.y);
    LoadValid<kVector>(mask == nullptr ? nullptr : mask + i, count, vector, e.valid);
    return e;
  }

  TFL_DEVICE Context RowContext(int64_t) const { return Context{}; }

  TFL_DEVICE Partial Empty() const { return CorrelationEmptyMoments<Acc>(); }

  TFL_DEVICE void Accumulate(const Context&, Partial* p, const Elements& e, int count) const {
#pragma unroll
    for (int k = 0; k < kVector; ++k) {
      if (k < count && e.valid[k]) CorrelationAccumulate(p, e.x[k], e.y[k]);
    }
  }

  TFL_DEVICE Partial Merge(const Partial& a, const Partial& b) const { return CorrelationMerge(a, b); }

  TFL_DEVICE Result Finish(const Context&, const Partial& p, int64_t row, bool writes_row) const {
    if (writes_row) CorrelationStoreMoments(p, row_stats + row * kCorrelationRowStats);
    return CorrelationFinish(p, epsilon, concordance);
  }

  TFL_DEVICE void Map(const Result& r, const Elements& e, int64_t i, int count) const {
    Acc out[kVector];
#pragma unroll
    for (int k = 0; k < kVector; ++k) out[k] = CorrelationElementLoss(r, e.x[k], e.y[k], e.valid[k]);
    StoreSlot<kVector>(loss + i, count, vector_aligned && count == kVector, out);
  }
};

template <typename T>
struct CorrelationBackwardOp {
  using Acc = typename AccumulatorOf<T>::type;
  static constexpr int kVector = VectorWidthFor<T, bool>();
  static constexpr bool kMapOnly = false;

  using Partial = CorrelationGradSums<Acc>;
  using Context = CorrelationRow<Acc>;
  struct Result {
    CorrelationGradCoeffs<Acc> coeffs;
    bool has_gradient;  // false: zeros, whatever the upstream gradient holds (as on the CPU)
  };
  struct Elements {
    Acc g[kVector];
    Acc x[kVector];
    Acc y[kVector];
    bool valid[kVector];
  };

  const T* grad_loss;
  const T* y_true;
  const T* y_pred;
  const bool* mask;  // nullptr: every step is valid
  const double* row_stats;
  Acc epsilon;
  bool concordance;
  T* grad_y_true;  // nullptr: not wanted
  T* grad_y_pred;
  bool vector_aligned;

  TFL_DEVICE Elements Load(int64_t i, int count) const {
    const bool vector = vector_aligned && count == kVector;
    Elements e;
    LoadSlot<Acc, kVector>(grad_loss + i, count, vector, e.g);
    LoadSlot<Acc, kVector>(y_pred + i, count, vector, e.x);
    LoadSlot<Acc, kVector>(y_true + i, count, vector, e.y);
    LoadValid<kVector>(mask == nullptr ? nullptr : mask + i, count, vector, e.valid);
    return e;
  }

  TFL_DEVICE Context RowContext(int64_t row) const {
    return CorrelationFinish(CorrelationLoadMoments<Acc>(row_stats + row * kCorrelationRowStats), epsilon,
                             concordance);
  }

  TFL_DEVICE Partial Empty() const { return CorrelationEmptyGradSums<Acc>(); }

  TFL_DEVICE void Accumulate(const Context& r, Partial* p, const Elements& e, int count) const {
    // Degenerate rows have no gradient; their sums are not needed.
    if (!r.has_gradient) return;
#pragma unroll
    for (int k = 0; k < kVector; ++k) {
      *p = CorrelationAddGradSums(*p, CorrelationGradTerms(r, e.g[k], e.x[k], e.y[k], k < count && e.valid[k]));
    }
  }

  TFL_DEVICE Partial Merge(const Partial& a, const Partial& b) const { return CorrelationAddGradSums(a, b); }

  TFL_DEVICE Result Finish(const Context& r, const Partial& p, int64_t, bool) const {
    return Result{CorrelationFinishGradient(r, p), r.has_gradient};
  }

  TFL_DEVICE void Map(const Result& r, const Elements& e, int64_t i, int count) const {
    Acc dx[kVector], dy[kVector];
#pragma unroll
    for (int k = 0; k < kVector; ++k) {
      const bool valid = r.has_gradient && e.valid[k];
      dx[k] = CorrelationGradientX(r.coeffs, e.g[k], e.x[k], e.y[k], valid);
      dy[k] = CorrelationGradientY(r.coeffs, e.g[k], e.x[k], e.y[k], valid);
    }
    const bool vector = vector_aligned && count == kVector;
    StoreSlot<kVector>(grad_y_pred + i, count, vector, dx);
    if (grad_y_true != nullptr) StoreSlot<kVector>(grad_y_true + i, count, vector, dy);
  }
};

template <typename T>
CorrelationForwardOp<T> MakeCorrelationForwardOp(const T* y_true, const T* y_pred, const bool* mask, float epsilon,
                                                 bool concordance, T* loss, double* row_stats) {
  using Op = CorrelationForwardOp<T>;
  constexpr int V = Op::kVector;
  const bool aligned = IsAligned(y_true, V) && IsAligned(y_pred, V) && IsAligned(loss, V) &&
                       (mask == nullptr || IsAligned(mask, V));
  return Op{y_true, y_pred, mask, static_cast<typename Op::Acc>(epsilon), concordance, loss, row_stats, aligned};
}

template <typename T>
CorrelationBackwardOp<T> MakeCorrelationBackwardOp(const T* grad_loss, const T* y_true, const T* y_pred,
                                                   const bool* mask, const double* row_stats, float epsilon,
                                                   bool concordance, T* grad_y_true, T* grad_y_pred) {
  using Op = CorrelationBackwardOp<T>;
  constexpr int V = Op::kVector;
  const bool aligned = IsAligned(grad_loss, V) && IsAligned(y_true, V) && IsAligned(y_pred, V) &&
                       (grad_y_true == nullptr || IsAligned(grad_y_true, V)) && IsAligned(grad_y_pred, V) &&
                       (mask == nullptr || IsAligned(mask, V));
  return Op{grad_loss, y_true,   y_pred, mask, row_stats, static_cast<typename Op::Acc>(epsilon), concordance,
            grad_y_true, grad_y_pred, aligned};
}

}  // namespace gpu
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_CORRELATION_KERNELS_CUH_
