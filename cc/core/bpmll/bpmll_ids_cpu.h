// BP-MLL with each row's positive labels given as ids, on the CPU: the same
// loss and gradient as RunBpmllLossCpu on the equivalent 0/1 matrix, bit for
// bit, without that matrix. Element types as in bpmll_cpu.h; ids int32_t or
// int64_t.
#ifndef TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_IDS_CPU_H_
#define TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_IDS_CPU_H_

#include <cstdint>
#include <string>

#include "parallel_for.h"

namespace tf_fused_losses {

// label_ids: row-major (rows, width), each row's positive labels in any
// order, -1 as padding anywhere; a repeated id counts once. y_pred: (rows,
// labels). Writes loss[rows] and grad[rows, labels].
template <typename T, typename TId>
struct BpmllIdsLossArgs {
  const TId* label_ids;
  int64_t width;
  const T* y_pred;
  int64_t rows;
  int64_t labels;
  T* loss;
  T* grad;
};

// The first id, in row-major order, that is neither in [0, labels) nor -1;
// row < 0 when there is none.
struct BpmllBadLabelId {
  int64_t row = -1;
  int64_t column = -1;
  int64_t value = 0;
};

// "label_ids[3, 2] = 670091 is outside [0, 670091)", or for a negative id
// other than -1, "label_ids[0, 1] = -2 is neither a label id in [0, 5) nor
// the padding -1". The frontends prefix their op's name.
std::string BpmllBadLabelIdMessage(const BpmllBadLabelId& bad, int64_t labels);

// Checks every id first: with a bad one, returns it and writes nothing.
template <typename T, typename TId>
BpmllBadLabelId RunBpmllIdsLossCpu(const BpmllIdsLossArgs<T, TId>& args, const ParallelFor& pool);

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_IDS_CPU_H_
