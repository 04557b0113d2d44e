#include "correlation_shape_fn.h"
#include "tensorflow/core/framework/op.h"

namespace tf_fused_losses {

using tensorflow::Status;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("FusedCorrelationLossGrad")
    .Input("grad_loss: T")
    .Input("y_true: T")
    .Input("y_pred: T")
    .Input("mask: bool")
    .Input("row_stats: double")
    .Output("grad_y_true: T")
    .Output("grad_y_pred: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("concordance: bool = false")
    .Attr("epsilon: float = 1e-7")
    .Attr("compute_grad_y_true: bool = true")
    .SetShapeFn([](InferenceContext* c) -> Status {
      const char* op = "FusedCorrelationLossGrad";
      ShapeHandle batch_steps, unused;
      TF_RETURN_IF_ERROR(CorrelationInputsShape(c, op, 1, &batch_steps));
      if (!c->Merge(c->input(0), batch_steps, &unused).ok()) {
        return tensorflow::errors::InvalidArgument(op, ": grad_loss must have shape (batch, steps) = ",
                                                   c->DebugString(batch_steps), ", got shape ",
                                                   c->DebugString(c->input(0)));
      }
      if (!c->Merge(c->input(4), c->Matrix(c->Dim(batch_steps, 0), kCorrelationRowStats), &unused).ok()) {
        return tensorflow::errors::InvalidArgument(op, ": row_stats must have shape (batch, ", kCorrelationRowStats,
                                                   "), got shape ", c->DebugString(c->input(4)));
      }
      bool compute_grad_y_true = true;
      TF_RETURN_IF_ERROR(c->GetAttr("compute_grad_y_true", &compute_grad_y_true));
      c->set_output(0, compute_grad_y_true ? c->input(1) : c->Vector(0));
      c->set_output(1, c->input(2));
      return Status();
    })
    .Doc(R"doc(
Gradients of sum_{b,t} grad_loss[b, t] * loss[b, t] of FusedCorrelationLoss
with respect to y_true and y_pred, from the forward op's row_stats. Each has
its input's shape. Masked steps and degenerate Pearson rows get gradient 0.
compute_grad_y_true = false (a training step, where y_true is constant)
skips y_true's gradient: grad_y_true is then an empty vector.
)doc");

}  // namespace tf_fused_losses
