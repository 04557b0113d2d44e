#include "bpmll_head_cpu.h"

#include <algorithm>
#include <vector>

#include "cpu_isa_dispatch.h"

namespace tf_fused_losses {

#define TFL_DECLARE_ISA(isa)                                                                              \
  namespace isa {                                                                                         \
  template <typename Acc>                                                                                 \
  void HeadChunkRows(const tf_fused_losses::HeadChunkArgs<Acc>& a, int64_t first, int64_t last, Acc* sums); \
  }
TFL_FOR_EACH_ISA(TFL_DECLARE_ISA)
#undef TFL_DECLARE_ISA

namespace {

// Rows per block: each block keeps its own column sums, added up at the end,
// so that blocks run in parallel without sharing a sum and the result does
// not depend on the thread count.
constexpr int64_t kRowsPerBlock = 32;

template <typename Acc>
void HeadChunkRowsForThisCpu(const HeadChunkArgs<Acc>& a, int64_t first, int64_t last, Acc* sums) {
  TFL_RETURN_FROM_BEST_ISA(HeadChunkRows(a, first, last, sums))
}

}  // namespace

template <typename Acc>
void RunHeadChunkCpu(const HeadChunkArgs<Acc>& args, const ParallelFor& pool) {
  const int64_t width = args.width;
  std::fill(args.column_sums, args.column_sums + width, Acc(0));
  if (args.rows == 0) return;
  const int64_t blocks = (args.rows + kRowsPerBlock - 1) / kRowsPerBlock;
  std::vector<Acc> partial(static_cast<size_t>(blocks * width), Acc(0));
  pool.Run(blocks, kRowsPerBlock * width * 12, [&](int64_t first, int64_t last) {
    for (int64_t b = first; b < last; ++b) {
      HeadChunkRowsForThisCpu(args, b * kRowsPerBlock, std::min(args.rows, (b + 1) * kRowsPerBlock),
                              partial.data() + b * width);
    }
  });
  for (int64_t b = 0; b < blocks; ++b) {
    const Acc* sums = partial.data() + b * width;
    for (int64_t j = 0; j < width; ++j) args.column_sums[j] += sums[j];
  }
}

template void RunHeadChunkCpu<float>(const HeadChunkArgs<float>&, const ParallelFor&);
template void RunHeadChunkCpu<double>(const HeadChunkArgs<double>&, const ParallelFor&);

}  // namespace tf_fused_losses
