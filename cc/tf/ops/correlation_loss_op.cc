#include "correlation_shape_fn.h"
#include "tensorflow/core/framework/op.h"

namespace tf_fused_losses {

using tensorflow::Status;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("FusedCorrelationLoss")
    .Input("y_true: T")
    .Input("y_pred: T")
    .Input("mask: bool")
    .Output("loss: T")
    .Output("row_stats: double")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("concordance: bool = false")
    .Attr("epsilon: float = 1e-7")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle batch_steps;
      TF_RETURN_IF_ERROR(CorrelationInputsShape(c, "FusedCorrelationLoss", 0, &batch_steps));
      c->set_output(0, batch_steps);
      c->set_output(1, c->Matrix(c->Dim(batch_steps, 0), kCorrelationRowStats));
      return Status();
    })
    .Doc(R"doc(
Per-step Pearson (concordance = false) or CCC (concordance = true) loss of
x = y_pred against y = y_true, with moments over the valid steps of each row:

  loss[b, t] = 1 - (x_t - mean x)(y_t - mean y) / (std x * std y + epsilon)              (Pearson)
  loss[b, t] = 1 - 2 (x_t - mean x)(y_t - mean y) / (var x + var y + (mean x - mean y)^2 + epsilon)   (CCC)

(population moments). y_true and y_pred are (batch, steps) or (batch, steps, 1).
mask is (batch, steps), true on valid steps, or an empty vector for no mask;
masked steps get loss 0. Degenerate rows (Pearson: fewer than 2 valid steps
or a constant sequence) get loss 1 on valid steps.
row_stats[b] = (valid steps, mean x, mean y, sum (x - mean x)^2,
sum (y - mean y)^2), for FusedCorrelationLossGrad.
)doc");

}  // namespace tf_fused_losses
