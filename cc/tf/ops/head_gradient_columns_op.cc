// Two in-place writes into a (rows, columns) matrix, for the fused linear
// head's kernel gradient outside XLA (python/tf_fused_losses/_head_tf.py):
// its label chunks' columns are written straight into the (d, labels)
// gradient, as XLA's dynamic-update-slice does under jit_compile. TF's own
// ops copy there: a while loop never forwards its carried buffer to
// TensorScatterUpdate (measured: a 171 MB copy per iteration), and
// InplaceUpdate writes rows only, which would leave a transposing copy of the
// kernel gradient. Both ops alias their input: the caller must own the
// matrix alone (made by Empty, carried through one sequential loop), and they
// are stateful so that no graph pass merges, folds or reorders them.
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace tf_fused_losses {

using tensorflow::Status;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

REGISTER_OP("FusedHeadWriteColumns")
    .Input("matrix: T")
    .Input("columns: T")
    .Input("start: int32")
    .Output("out: T")
    .Attr("T: {half, bfloat16, float, double}")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle matrix, columns, start;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &matrix));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &columns));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &start));
      c->set_output(0, matrix);
      return Status();
    })
    .Doc(R"doc(
matrix[:, start:start + w] = columns for columns (rows, w), written into
matrix's own buffer, which out aliases.
)doc");

REGISTER_OP("FusedHeadAddColumns")
    .Input("matrix: T")
    .Input("ids: Tid")
    .Input("columns: T")
    .Output("out: T")
    .Attr("T: {half, bfloat16, float, double}")
    .Attr("Tid: {int32, int64}")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) -> Status {
      ShapeHandle matrix, ids, columns;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &matrix));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &ids));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &columns));
      c->set_output(0, matrix);
      return Status();
    })
    .Doc(R"doc(
matrix[:, ids[j]] += columns[j, :] for each j in turn (a repeated id adds
each), for columns (n, rows), in matrix's own buffer, which out aliases.
)doc");

}  // namespace tf_fused_losses
