#include "bpmll_cpu.h"

#include <algorithm>
#include <type_traits>

#include "bpmll_cpu_chunks.h"
#include "bpmll_cpu_rows.h"
#include "cpu_half_types.h"
#include "cpu_row_passes.h"

namespace tf_fused_losses {

namespace {

// A label as double, for the bad-label report.
template <typename TLabel>
double LabelAsDouble(TLabel v) {
  if constexpr (std::is_same<TLabel, Float16Bits>::value || std::is_same<TLabel, BFloat16Bits>::value) {
    float f;
    WidenToAcc(&v, 1, &f);
    return f;
  } else {
    return static_cast<double>(v);
  }
}

}  // namespace

template <typename T, typename TLabel>
BpmllBadLabel RunBpmllLossCpu(const BpmllLossArgs<T, TLabel>& args, const ParallelFor& pool) {
  const int64_t labels = args.labels;
  const bpmll_cpu_rows::DenseLabels<TLabel> source{args.y_true, labels};
  const int64_t bad_row = bpmll_cpu_rows::RunBpmllRows(
      source, bpmll_cpu_rows::BpmllRows<T>{args.y_pred, args.rows, labels, args.loss, args.grad}, pool);

  BpmllBadLabel report;
  if (bad_row >= 0) {
    const TLabel* row_labels = args.y_true + bad_row * labels;
    for (int64_t j = 0; j < labels; ++j) {
      const double v = LabelAsDouble(row_labels[j]);
      if (!(v >= 0.0 && v <= 1.0)) {  // NaN too
        report = BpmllBadLabel{bad_row, j, v};
        break;
      }
    }
  }
  return report;
}

template <typename T>
void RunBpmllLossGradCpu(const T* grad_loss, const T* cached_grad, int64_t rows, int64_t labels, T* out,
                         const ParallelFor& pool) {
  if (rows == 0 || labels == 0) return;
  const auto& ops = ScaleChunkOpsForThisCpu<T>();
  // Blocks of a row or less, so that a few long rows still spread over all threads.
  const int64_t block = std::min<int64_t>(labels, 1 << 14);
  const int64_t blocks_per_row = (labels + block - 1) / block;
  pool.Run(rows * blocks_per_row, block * 2, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      const int64_t row = b / blocks_per_row, begin = (b % blocks_per_row) * block;
      const int64_t offset = row * labels + begin;
      ops.scale(cached_grad + offset, grad_loss + row, std::min(block, labels - begin), out + offset);
    }
  });
}

#define TFL_INSTANTIATE_PAIR(T, TLabel) \
  template BpmllBadLabel RunBpmllLossCpu<T, TLabel>(const BpmllLossArgs<T, TLabel>&, const ParallelFor&);
TFL_FOR_EACH_BPMLL_PAIR(TFL_INSTANTIATE_PAIR)
#undef TFL_INSTANTIATE_PAIR
#define TFL_INSTANTIATE_LOGIT(T) \
  template void RunBpmllLossGradCpu<T>(const T*, const T*, int64_t, int64_t, T*, const ParallelFor&);
TFL_FOR_EACH_LOGIT(TFL_INSTANTIATE_LOGIT)
#undef TFL_INSTANTIATE_LOGIT

}  // namespace tf_fused_losses
