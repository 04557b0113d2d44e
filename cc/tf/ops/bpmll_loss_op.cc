#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_fused_losses {

using tensorflow::Status;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("FusedBpmllLoss")
    .Input("y_true: Tlabel")
    .Input("y_pred: T")
    .Output("loss: T")
    .Output("grad: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tlabel: {half, bfloat16, float, double, int32, int64, uint8, bool}")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle y_true = c->input(0);
      ShapeHandle y_pred = c->input(1);
      for (int i = 0; i < 2; ++i) {
        if (c->RankKnown(c->input(i)) && c->Rank(c->input(i)) != 2) {
          return tensorflow::errors::InvalidArgument(
              "FusedBpmllLoss: ", i == 0 ? "y_true" : "y_pred", " must be rank 2 (batch, labels), got shape ",
              c->DebugString(c->input(i)));
        }
      }
      ShapeHandle merged;
      if (!c->Merge(y_true, y_pred, &merged).ok()) {
        return tensorflow::errors::InvalidArgument("FusedBpmllLoss: y_true and y_pred must have the same shape, got ",
                                                   c->DebugString(y_true), " and ", c->DebugString(y_pred));
      }
      TF_RETURN_IF_ERROR(c->WithRank(merged, 2, &merged));
      c->set_output(0, c->Vector(c->Dim(merged, 0)));
      c->set_output(1, merged);
      return Status();
    })
    .Doc(R"doc(
BP-MLL ranking loss per row and its gradient with respect to y_pred, in one pass.

loss[i] = (sum_k y_ik e^{-c_ik}) (sum_l (1 - y_il) e^{c_il}) / ((sum_k y_ik) (sum_l (1 - y_il)))
grad[i, j] = d loss[i] / d y_pred[i, j]. Rows without a positive or without a
negative label give loss 0 and gradient 0. Labels must lie in [0, 1].
)doc");

}  // namespace tf_fused_losses
