#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_fused_losses {

using tensorflow::Status;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("FusedBpmllLossGrad")
    .Input("grad_loss: T")
    .Input("cached_grad: T")
    .Output("grad_y_pred: T")
    .Attr("T: {half, bfloat16, float, double}")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle grad_loss, cached_grad;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 1, &grad_loss));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &cached_grad));
      tensorflow::shape_inference::DimensionHandle rows;
      TF_RETURN_IF_ERROR(c->Merge(c->Dim(grad_loss, 0), c->Dim(cached_grad, 0), &rows));
      c->set_output(0, cached_grad);
      return Status();
    })
    .Doc(R"doc(
The gradient of FusedBpmllLoss: grad_y_pred[i, j] = grad_loss[i] * cached_grad[i, j],
where cached_grad is FusedBpmllLoss's second output. Reuses cached_grad's
buffer when nothing else holds it.
)doc");

}  // namespace tf_fused_losses
