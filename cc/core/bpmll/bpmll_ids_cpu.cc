#include "bpmll_ids_cpu.h"

#include <algorithm>
#include <cstring>
#include <sstream>
#include <vector>

#include "bpmll_cpu_chunks.h"
#include "bpmll_cpu_rows.h"

namespace tf_fused_losses {

namespace {

using bpmll_cpu_rows::kChunk;

// The labels of a chunk without positives, the common case at large label
// counts: one shared buffer that stays in L1, and no per-chunk fill.
alignas(64) const uint8_t kNoPositives[kChunk] = {};

// Each row's 0/1 labels, built a chunk at a time from its distinct ids in
// ascending order. The chunk code then sees exactly the uint8_t labels the
// dense op would read, so positives are skipped exactly in the negatives'
// sum (no "all minus positives" that cancellation could ruin) and the bits
// are the dense op's.
struct SortedIdLabels {
  using Label = uint8_t;
  struct Buffer {
    alignas(64) uint8_t labels[kChunk];
  };
  const int64_t* ids;     // (rows, width): a row's distinct ids first, ascending
  const int64_t* counts;  // how many ids of each row are in use
  int64_t width;

  const uint8_t* Chunk(int64_t row, int64_t start, int64_t n, Buffer* buffer) const {
    const int64_t* last = ids + row * width + counts[row];
    const int64_t* id = std::lower_bound(ids + row * width, last, start);
    if (id == last || *id >= start + n) return kNoPositives;
    std::memset(buffer->labels, 0, n);
    for (; id != last && *id < start + n; ++id) buffer->labels[*id - start] = 1;
    return buffer->labels;
  }
};

bool IsBadId(int64_t id, int64_t labels) { return id != -1 && (id < 0 || id >= labels); }

// The row's distinct ids, ascending, into out; their count, or -1 when the
// row holds a bad id. A row has few ids (tens, a few hundred), so a sort per
// row costs nothing next to the row's labels.
template <typename TId>
int64_t SortRowIds(const TId* row_ids, int64_t width, int64_t labels, int64_t* out) {
  int64_t count = 0;
  for (int64_t k = 0; k < width; ++k) {
    const int64_t id = static_cast<int64_t>(row_ids[k]);
    if (id == -1) continue;
    if (IsBadId(id, labels)) return -1;
    out[count++] = id;
  }
  std::sort(out, out + count);
  return std::unique(out, out + count) - out;
}

}  // namespace

std::string BpmllBadLabelIdMessage(const BpmllBadLabelId& bad, int64_t labels) {
  std::ostringstream message;
  message << "label_ids[" << bad.row << ", " << bad.column << "] = " << bad.value;
  if (bad.value < 0) {
    message << " is neither a label id in [0, " << labels << ") nor the padding -1";
  } else {
    message << " is outside [0, " << labels << ")";
  }
  return message.str();
}

template <typename T, typename TId>
BpmllBadLabelId RunBpmllIdsLossCpu(const BpmllIdsLossArgs<T, TId>& args, const ParallelFor& pool) {
  const int64_t rows = args.rows, width = args.width;
  std::vector<int64_t> sorted(static_cast<size_t>(rows * width));
  std::vector<int64_t> counts(static_cast<size_t>(rows));
  bpmll_cpu_rows::BadRow bad;
  pool.Run(rows, std::max<int64_t>(width, 1) * 20, [&](int64_t first, int64_t last) {
    for (int64_t row = first; row < last; ++row) {
      counts[row] = SortRowIds(args.label_ids + row * width, width, args.labels, sorted.data() + row * width);
      if (counts[row] < 0) bad.Note(row);
    }
  });
  if (bad.row >= 0) {
    const TId* row_ids = args.label_ids + bad.row * width;
    int64_t column = 0;
    while (!IsBadId(static_cast<int64_t>(row_ids[column]), args.labels)) ++column;
    return BpmllBadLabelId{bad.row, column, static_cast<int64_t>(row_ids[column])};
  }
  const SortedIdLabels source{sorted.data(), counts.data(), width};
  bpmll_cpu_rows::RunBpmllRows(source, bpmll_cpu_rows::BpmllRows<T>{args.y_pred, rows, args.labels, args.loss, args.grad},
                               pool);
  return BpmllBadLabelId{};
}

#define TFL_INSTANTIATE_IDS(T)                                                                                       \
  template BpmllBadLabelId RunBpmllIdsLossCpu<T, int32_t>(const BpmllIdsLossArgs<T, int32_t>&, const ParallelFor&); \
  template BpmllBadLabelId RunBpmllIdsLossCpu<T, int64_t>(const BpmllIdsLossArgs<T, int64_t>&, const ParallelFor&);
TFL_FOR_EACH_LOGIT(TFL_INSTANTIATE_IDS)
#undef TFL_INSTANTIATE_IDS

}  // namespace tf_fused_losses
