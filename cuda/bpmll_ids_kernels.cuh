// FusedBpmllIdsLoss on the GPU: the dense BP-MLL row op (bpmll_kernels.cuh)
// with uint8_t labels, whose labels come from each row's sorted ids instead
// of a label matrix. The elements then reach the same math in the same
// order as the dense op's with uint8_t 0/1 labels (same kVector, same
// slots), so the bits are that op's. Includes no TensorFlow header.
//
// A first launch sorts and deduplicates each row's ids into scratch (one
// thread a row: rows hold few ids). The row kernels then find a slot's
// labels by one binary search in its row's sorted ids and a walk over the
// slot. A row with a bad id (neither in [0, labels) nor -1) cannot raise
// without a host synchronisation: its labels all read NaN, which gives the
// row NaN loss and NaN gradient, as the dense GPU op does for bad labels.
#ifndef TF_FUSED_LOSSES_CUDA_BPMLL_IDS_KERNELS_CUH_
#define TF_FUSED_LOSSES_CUDA_BPMLL_IDS_KERNELS_CUH_

#include <cstdint>
#include <limits>

#include "bpmll_kernels.cuh"
#include "row_kernels.cuh"

namespace tf_fused_losses {
namespace gpu {

// counts[row] for a row holding a bad id.
constexpr int32_t kBadIdRow = -1;

// sorted[row, :counts[row]] = the row's distinct ids ascending, or
// counts[row] = kBadIdRow. Insertion sort in place: O(K^2) per row, for the
// few ids (tens, a few hundred) a row of label ids holds.
template <typename TId>
__global__ void __launch_bounds__(kBlockThreads)
    SortRowIdsKernel(const TId* ids, int64_t rows, int64_t width, int64_t labels, TId* sorted, int32_t* counts) {
  for (int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; row < rows;
       row += int64_t(gridDim.x) * blockDim.x) {
    const TId* in = ids + row * width;
    TId* out = sorted + row * width;
    int32_t n = 0;
    for (int64_t k = 0; k < width; ++k) {
      const TId id = in[k];
      if (id == TId(-1)) continue;
      if (id < TId(0) || int64_t(id) >= labels) {
        n = kBadIdRow;
        break;
      }
      int32_t at = n;
      while (at > 0 && out[at - 1] > id) --at;
      if (at > 0 && out[at - 1] == id) continue;  // a repeated id counts once
      for (int32_t m = n; m > at; --m) out[m] = out[m - 1];
      out[at] = id;
      ++n;
    }
    counts[row] = n;
  }
}

// Bytes of scratch for the sorted ids of (rows, width) ids, counts included.
template <typename TId>
int64_t SortedIdsBytes(int64_t rows, int64_t width) {
  return (rows * width * int64_t(sizeof(TId)) + 15) / 16 * 16 + rows * int64_t(sizeof(int32_t));
}

template <typename TId>
struct SortedIds {
  TId* ids;
  int32_t* counts;
};

template <typename TId>
SortedIds<TId> SortedIdsIn(void* scratch, int64_t rows, int64_t width) {
  char* base = static_cast<char*>(scratch);
  return SortedIds<TId>{reinterpret_cast<TId*>(base),
                        reinterpret_cast<int32_t*>(base + (rows * width * int64_t(sizeof(TId)) + 15) / 16 * 16)};
}

// Enqueues the sort on `stream`; returns the launch status.
template <typename TId>
cudaError_t LaunchSortRowIds(const TId* ids, int64_t rows, int64_t width, int64_t labels, const SortedIds<TId>& out,
                             cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  const int64_t wanted = (rows + kBlockThreads - 1) / kBlockThreads;
  const int64_t blocks = wanted < kMaxGrid ? wanted : kMaxGrid;
#if defined(__CUDACC__)
  SortRowIdsKernel<TId><<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(ids, rows, width, labels, out.ids,
                                                                                      out.counts);
#else
  (void)stream;
  tfl_emu::Launch(static_cast<unsigned>(blocks), kBlockThreads, &SortRowIdsKernel<TId>, ids, rows, width, labels,
                  out.ids, out.counts);
#endif
  return cudaGetLastError();
}

template <typename T, typename TId>
struct BpmllIdsRowOp : BpmllRowOp<T, uint8_t> {
  using Base = BpmllRowOp<T, uint8_t>;
  using Acc = typename Base::Acc;
  using Elements = typename Base::Elements;
  static constexpr int kVector = Base::kVector;

  SortedIds<TId> sorted;
  int64_t width;
  int64_t labels;

  // Hides Base::Load, which would read a label matrix: RowKernel calls the
  // op's own type.
  TFL_DEVICE Elements Load(int64_t i, int count) const {
    Elements e;
    LoadSlot<Acc, kVector>(this->y_pred + i, count, this->vector_aligned && count == kVector, e.logit);
    const int64_t row = i / labels, column = i - row * labels;
    const int32_t n = sorted.counts[row];
    if (n == kBadIdRow) {
#pragma unroll
      for (int k = 0; k < kVector; ++k) e.label[k] = std::numeric_limits<Acc>::quiet_NaN();
      return e;
    }
    const TId* ids = sorted.ids + row * width;
    int32_t low = 0, high = n;  // the first id >= column
    while (low < high) {
      const int32_t mid = (low + high) / 2;
      if (int64_t(ids[mid]) < column) {
        low = mid + 1;
      } else {
        high = mid;
      }
    }
#pragma unroll
    for (int k = 0; k < kVector; ++k) {
      const bool positive = k < count && low < n && int64_t(ids[low]) == column + k;
      e.label[k] = positive ? Acc(1) : Acc(0);
      low += positive ? 1 : 0;
    }
    return e;
  }
};

template <typename T, typename TId>
BpmllIdsRowOp<T, TId> MakeBpmllIdsRowOp(const SortedIds<TId>& sorted, int64_t width, int64_t labels, const T* y_pred,
                                        T* loss, T* grad) {
  constexpr int V = BpmllIdsRowOp<T, TId>::kVector;
  const bool aligned = IsAligned(y_pred, V) && IsAligned(grad, V);
  BpmllIdsRowOp<T, TId> op;
  static_cast<BpmllRowOp<T, uint8_t>&>(op) = BpmllRowOp<T, uint8_t>{nullptr, y_pred, loss, grad, aligned};
  op.sorted = sorted;
  op.width = width;
  op.labels = labels;
  return op;
}

}  // namespace gpu
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_BPMLL_IDS_KERNELS_CUH_
