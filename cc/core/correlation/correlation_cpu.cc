#include "correlation_cpu.h"

#include <algorithm>
#include <type_traits>

#include "correlation_cpu_chunks.h"
#include "correlation_math.h"
#include "cpu_row_passes.h"
#include "cpu_stream_store.h"

namespace tf_fused_losses {

namespace {

// x, y and the loss of a whole row: 12 bytes a step in float, so 1 MiB at
// the limit; the loss pass rereads x and y from L2.
constexpr int64_t kLossWholeRowMax = 1 << 17;
constexpr int64_t kLossCyclesPerElement = 4;
// g, x, y and both gradients of a whole row: 20 bytes a step in float; the
// three inputs (1.5 MiB at the limit) are reread by the gradient pass from
// L2, or L3 at the top of the range.
constexpr int64_t kGradWholeRowMax = 1 << 17;
constexpr int64_t kGradCyclesPerElement = 6;
static_assert(kCpuChunk <= kCorrelationChunk, "the chunk ops take at most kCorrelationChunk elements");

}  // namespace

template <typename T>
void RunCorrelationLossCpu(const CorrelationLossArgs<T>& args, const ParallelFor& pool) {
if (args.rows == 0) return;
  using Acc = typename AccumulatorOf<T>::type;
  const CorrelationChunkOps<Acc>& ops = CorrelationChunkOpsForThisCpu<Acc>();
  const int64_t steps = args.steps;
  // 16-bit losses are converted from a buffer by AccChunk, not streamed.
  const bool stream =
      std::is_same<T, Acc>::value && args.rows * steps * static_cast<int64_t>(sizeof(T)) >= kStreamStoreMinBytes;

  auto moments = [&](int64_t row, int64_t begin, int64_t end) {
    AccChunk<Acc, T> x, y;
    CorrelationMoments<Acc> total = CorrelationEmptyMoments<Acc>();
    ForEachChunk(row * steps + begin, row * steps + end, [&](int64_t at, int64_t n) {
      total = CorrelationMerge(total, ops.moments(x.Read(args.y_pred + at, n), y.Read(args.y_true + at, n),
                                                  MaskBytesAt(args.mask, at), n));
    });
    return total;
  };
  auto finish = [&](int64_t row, const CorrelationMoments<Acc>& total) {
    CorrelationStoreMoments(total, args.row_stats + row * kCorrelationRowStats);
    return CorrelationFinish(total, static_cast<Acc>(args.epsilon), args.concordance);
  };
  auto write_loss = [&](int64_t row, int64_t begin, int64_t end, const CorrelationRow<Acc>& result) {
    AccChunk<Acc, T> x, y, loss;
    ForEachChunk(row * steps + begin, row * steps + end, [&](int64_t at, int64_t n) {
      ops.loss(result, x.Read(args.y_pred + at, n), y.Read(args.y_true + at, n), MaskBytesAt(args.mask, at), n,
               stream, loss.Output(args.loss + at));
      loss.Write(args.loss + at, n);
    });
  };
  RunTwoPassRows(pool, args.rows, steps, kLossWholeRowMax, kLossCyclesPerElement, moments, CorrelationMerge<Acc>, finish,
                 write_loss);
}

template <typename T>
void RunCorrelationLossGradCpu(const CorrelationLossGradArgs<T>& args, const ParallelFor& pool) {
if (args.rows == 0 || args.steps == 0) return;
  using Acc = typename AccumulatorOf<T>::type;
  const CorrelationChunkOps<Acc>& ops = CorrelationChunkOpsForThisCpu<Acc>();
  const int64_t steps = args.steps;
  const Acc epsilon = static_cast<Acc>(args.epsilon);
  // 16-bit gradients are converted from buffers by AccChunk, not streamed.
  const bool stream =
      std::is_same<T, Acc>::value && args.rows * steps * static_cast<int64_t>(sizeof(T)) >= kStreamStoreMinBytes;
  auto row_of = [&](int64_t row) {
    return CorrelationFinish(CorrelationLoadMoments<Acc>(args.row_stats + row * kCorrelationRowStats), epsilon,
                             args.concordance);
  };

  auto sums = [&](int64_t row, int64_t begin, int64_t end) {
    const CorrelationRow<Acc> r = row_of(row);
    CorrelationGradSums<Acc> total = CorrelationEmptyGradSums<Acc>();
    if (!r.has_gradient) return total;
    AccChunk<Acc, T> g, x, y;
    ForEachChunk(row * steps + begin, row * steps + end, [&](int64_t at, int64_t n) {
      const CorrelationGradSums<Acc> chunk = ops.grad_sums(r, g.Read(args.grad_loss + at, n),
                                                           x.Read(args.y_pred + at, n), y.Read(args.y_true + at, n),
                                                           MaskBytesAt(args.mask, at), n);
      total = CorrelationAddGradSums(total, chunk);
    });
    return total;
  };
  auto finish = [&](int64_t row, const CorrelationGradSums<Acc>& total) {
    return CorrelationFinishGradient(row_of(row), total);
  };
  auto write_gradients = [&](int64_t row, int64_t begin, int64_t end, const CorrelationGradCoeffs<Acc>& coeffs) {
    if (!row_of(row).has_gradient) {
      std::fill(args.grad_y_pred + row * steps + begin, args.grad_y_pred + row * steps + end, T{});
      if (args.grad_y_true) {
        std::fill(args.grad_y_true + row * steps + begin, args.grad_y_true + row * steps + end, T{});
      }
      return;
    }
    AccChunk<Acc, T> g, x, y, grad_x, grad_y;
    ForEachChunk(row * steps + begin, row * steps + end, [&](int64_t at, int64_t n) {
      ops.gradient(coeffs, g.Read(args.grad_loss + at, n), x.Read(args.y_pred + at, n),
                   y.Read(args.y_true + at, n), MaskBytesAt(args.mask, at), n, stream,
                   grad_x.Output(args.grad_y_pred + at),
                   args.grad_y_true ? grad_y.Output(args.grad_y_true + at) : nullptr);
      grad_x.Write(args.grad_y_pred + at, n);
      if (args.grad_y_true) grad_y.Write(args.grad_y_true + at, n);
    });
  };
  RunTwoPassRows(pool, args.rows, steps, kGradWholeRowMax, kGradCyclesPerElement, sums, CorrelationAddGradSums<Acc>, finish,
                 write_gradients);
}

#define TFL_INSTANTIATE(T)                                                                      \
  template void RunCorrelationLossCpu<T>(const CorrelationLossArgs<T>&, const ParallelFor&); \
  template void RunCorrelationLossGradCpu<T>(const CorrelationLossGradArgs<T>&, const ParallelFor&);
TFL_INSTANTIATE(Float16Bits)
TFL_INSTANTIATE(BFloat16Bits)
TFL_INSTANTIATE(float)
TFL_INSTANTIATE(double)
#undef TFL_INSTANTIATE

}  // namespace tf_fused_losses
