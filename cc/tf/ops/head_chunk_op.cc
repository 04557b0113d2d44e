#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_fused_losses {

using tensorflow::Status;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("FusedHeadChunk")
    .Input("matmul: T")
    .Input("bias: T")
    .Input("factor: T")
    .Input("row_scale: T")
    .Input("ids: int32")
    .Input("start: int32")
    .Output("dlogits: T")
    .Output("term_sums: T")
    .Output("logit_sums: T")
    .Output("column_sums: T")
    .Attr("T: {float, double}")
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle matmul, vector, ids, start;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &matmul));
      for (int i = 1; i < 4; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 1, &vector));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(4), 2, &ids));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(5), 0, &start));
      c->set_output(0, matmul);
      c->set_output(1, c->Vector(c->Dim(matmul, 0)));
      c->set_output(2, c->Vector(c->Dim(matmul, 0)));
      c->set_output(3, c->Vector(c->Dim(matmul, 1)));
      return Status();
    })
    .Doc(R"doc(
One label chunk of the fused BP-MLL head's one-pass form, fast case
(cc/core/bpmll/bpmll_head_cpu.h), in one pass: with c = matmul + bias and
t = e^{c + factor}, 0 at the row's ids in [start, start + width),
dlogits = row_scale t, and the row sums of t and c, and dlogits' column sums.
)doc");

}  // namespace tf_fused_losses
