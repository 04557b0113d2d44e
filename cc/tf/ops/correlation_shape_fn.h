// Shape checks shared by FusedCorrelationLoss and FusedCorrelationLossGrad.
#ifndef TF_FUSED_LOSSES_CC_TF_OPS_CORRELATION_SHAPE_FN_H_
#define TF_FUSED_LOSSES_CC_TF_OPS_CORRELATION_SHAPE_FN_H_

#include "correlation_math.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_fused_losses {

// (batch, steps) of an input that is (batch, steps) or (batch, steps, 1).
inline tensorflow::Status CorrelationSequenceShape(tensorflow::shape_inference::InferenceContext* c, const char* op,
                                                   const char* name, int input,
                                                   tensorflow::shape_inference::ShapeHandle* batch_steps) {
  tensorflow::shape_inference::ShapeHandle shape = c->input(input);
  if (!c->RankKnown(shape)) {
    *batch_steps = c->Matrix(c->UnknownDim(), c->UnknownDim());
    return tensorflow::Status();
  }
  const int rank = c->Rank(shape);
  const bool last_is_one = rank == 3 && (!c->ValueKnown(c->Dim(shape, 2)) || c->Value(c->Dim(shape, 2)) == 1);
  if (rank != 2 && !last_is_one) {
    return tensorflow::errors::InvalidArgument(op, ": ", name,
                                               " must be (batch, steps) or (batch, steps, 1), got shape ",
                                               c->DebugString(shape));
  }
  *batch_steps = c->Matrix(c->Dim(shape, 0), c->Dim(shape, 1));
  return tensorflow::Status();
}

// Checks y_true, y_pred and mask, found at inputs first, first + 1 and
// first + 2, and sets *batch_steps to their common (batch, steps).
inline tensorflow::Status CorrelationInputsShape(tensorflow::shape_inference::InferenceContext* c, const char* op,
                                                 int first, tensorflow::shape_inference::ShapeHandle* batch_steps) {
  tensorflow::shape_inference::ShapeHandle y_true, y_pred;
  TF_RETURN_IF_ERROR(CorrelationSequenceShape(c, op, "y_true", first, &y_true));
  TF_RETURN_IF_ERROR(CorrelationSequenceShape(c, op, "y_pred", first + 1, &y_pred));
  if (!c->Merge(y_true, y_pred, batch_steps).ok()) {
    return tensorflow::errors::InvalidArgument(op, ": y_true and y_pred must have the same (batch, steps), got shapes ",
                                               c->DebugString(c->input(first)), " and ",
                                               c->DebugString(c->input(first + 1)));
  }
  tensorflow::shape_inference::ShapeHandle mask = c->input(first + 2);
  if (!c->RankKnown(mask)) return tensorflow::Status();
  // An empty vector stands for "no mask".
  const bool no_mask = c->Rank(mask) == 1 && (!c->ValueKnown(c->Dim(mask, 0)) || c->Value(c->Dim(mask, 0)) == 0);
  tensorflow::shape_inference::ShapeHandle merged;
  if (!no_mask && !c->Merge(mask, *batch_steps, &merged).ok()) {
    return tensorflow::errors::InvalidArgument(op, ": mask must have shape (batch, steps) = ",
                                               c->DebugString(*batch_steps), " (or be empty for no mask), got shape ",
                                               c->DebugString(mask));
  }
  if (!no_mask) *batch_steps = merged;
  return tensorflow::Status();
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_TF_OPS_CORRELATION_SHAPE_FN_H_
