#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_fused_losses {

using tensorflow::Status;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("FusedBpmllIdsLoss")
    .Input("label_ids: Tid")
    .Input("y_pred: T")
    .Output("loss: T")
    .Output("cached_grad: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tid: {int32, int64}")
    .SetShapeFn([](InferenceContext* c) -> Status {
      for (int i = 0; i < 2; ++i) {
        if (c->RankKnown(c->input(i)) && c->Rank(c->input(i)) != 2) {
          return tensorflow::errors::InvalidArgument(
              "FusedBpmllIdsLoss: ", i == 0 ? "label_ids must be rank 2 (batch, ids)" : "y_pred must be rank 2 (batch, labels)",
              ", got shape ", c->DebugString(c->input(i)));
        }
      }
      ShapeHandle label_ids, y_pred;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &label_ids));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &y_pred));
      DimensionHandle batch;
      if (!c->Merge(c->Dim(label_ids, 0), c->Dim(y_pred, 0), &batch).ok()) {
        return tensorflow::errors::InvalidArgument(
            "FusedBpmllIdsLoss: label_ids and y_pred must have the same batch size, got shapes ",
            c->DebugString(label_ids), " and ", c->DebugString(y_pred));
      }
      c->set_output(0, c->Vector(batch));
      c->set_output(1, c->Matrix(batch, c->Dim(y_pred, 1)));
      return Status();
    })
    .Doc(R"doc(
FusedBpmllLoss with each row's positive labels given as ids: label_ids
(batch, K) holds them in any order, -1 as padding anywhere, a repeated id
counting once; y_pred (batch, labels) the logits. Gives FusedBpmllLoss's loss
and gradient on the equivalent 0/1 matrix, bit for bit, without building it;
cached_grad is scaled by FusedBpmllLossGrad. Ids outside [0, labels) other
than -1 are an error.
)doc");

}  // namespace tf_fused_losses
