// Shape checks and id-type dispatch of the label-id BP-MLL handlers
// (tfl_bpmll_ids_loss), shared by the Host and CUDA handlers; worded as the
// TF op's errors.
#ifndef TF_FUSED_LOSSES_CC_XLA_FFI_IDS_COMMON_H_
#define TF_FUSED_LOSSES_CC_XLA_FFI_IDS_COMMON_H_

#include <cstdint>
#include <string>

#include "ffi_common.h"

namespace tf_fused_losses {
namespace ffi_frontend {

// Calls f(TId{}) with TId the storage type of a label-id buffer.
template <typename F>
ffi::Error WithIdType(const char* op, ffi::DataType type, F&& f) {
  switch (type) {
    case ffi::DataType::S32:
      return f(int32_t{});
    case ffi::DataType::S64:
      return f(int64_t{});
    default:
      return InvalidArgument(std::string(op) + ": label_ids must be int32 or int64");
  }
}

// label_ids (batch, K) and y_pred (batch, labels): s gets (batch, labels),
// width K.
inline ffi::Error BpmllIdsShape(const char* op, const ffi::AnyBuffer& label_ids, const ffi::AnyBuffer& y_pred,
                                RowShape* s, int64_t* width) {
  const auto pred = y_pred.dimensions();
  const auto ids = label_ids.dimensions();
  if (ids.size() != 2) {
    return InvalidArgument(std::string(op) + ": label_ids must be rank 2 (batch, ids), got shape " +
                           ShapeString(label_ids));
  }
  if (pred.size() != 2) {
    return InvalidArgument(std::string(op) + ": y_pred must be rank 2 (batch, labels), got shape " + ShapeString(y_pred));
  }
  if (ids[0] != pred[0]) {
    return InvalidArgument(std::string(op) + ": label_ids and y_pred must have the same batch size, got shapes " +
                           ShapeString(label_ids) + " and " + ShapeString(y_pred));
  }
  s->rows = pred[0];
  s->length = pred[1];
  *width = ids[1];
  return ffi::Error::Success();
}

}  // namespace ffi_frontend
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_XLA_FFI_IDS_COMMON_H_
