// CPU kernels of FusedHeadWriteColumns and FusedHeadAddColumns (see
// ops/head_gradient_columns_op.cc): strided copies, bound by memory
// bandwidth, the rows split over TF's thread pool. CPU only: on a GPU the
// head runs under XLA (Keras' default there), or collects its chunks in a
// TensorArray.
#include <cstdint>
#include <cstring>

#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tf_parallel_for.h"

namespace tf_fused_losses {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::errors::InvalidArgument;

template <typename T>
class FusedHeadWriteColumnsOp : public OpKernel {
 public:
  explicit FusedHeadWriteColumnsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    // The input's buffer itself (a Tensor copy shares it): written in place
    // and passed on as the output.
    Tensor matrix = ctx->input(0);
    OP_REQUIRES(ctx, matrix.dims() == 2,
                InvalidArgument("FusedHeadWriteColumns: matrix must be rank 2, got shape ", matrix.shape().DebugString()));
    const Tensor& columns = ctx->input(1);
    const Tensor& start_tensor = ctx->input(2);
    OP_REQUIRES(ctx, columns.dims() == 2 && columns.dim_size(0) == matrix.dim_size(0),
                InvalidArgument("FusedHeadWriteColumns: columns must be (", matrix.dim_size(0),
                                ", w) for matrix ", matrix.shape().DebugString(), ", got ",
                                columns.shape().DebugString()));
    OP_REQUIRES(ctx, start_tensor.dims() == 0,
                InvalidArgument("FusedHeadWriteColumns: start must be a scalar, got shape ",
                                start_tensor.shape().DebugString()));
    const int64_t rows = matrix.dim_size(0), width = matrix.dim_size(1), w = columns.dim_size(1);
    const int64_t start = start_tensor.scalar<int32_t>()();
    OP_REQUIRES(ctx, start >= 0 && start + w <= width,
                InvalidArgument("FusedHeadWriteColumns: columns [", start, ", ", start + w,
                                ") are outside the matrix's [0, ", width, ")"));
    T* out = matrix.flat<T>().data();
    const T* in = columns.flat<T>().data();
    if (rows > 0 && w > 0) {
      TfParallelFor(ctx).Run(rows, w * sizeof(T), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) std::memcpy(out + r * width + start, in + r * w, w * sizeof(T));
      });
    }
    ctx->set_output(0, matrix);
  }
};

template <typename T, typename Tid>
class FusedHeadAddColumnsOp : public OpKernel {
 public:
  explicit FusedHeadAddColumnsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    // The input's buffer itself (a Tensor copy shares it): written in place
    // and passed on as the output.
    Tensor matrix = ctx->input(0);
    OP_REQUIRES(ctx, matrix.dims() == 2,
                InvalidArgument("FusedHeadAddColumns: matrix must be rank 2, got shape ", matrix.shape().DebugString()));
    const Tensor& ids = ctx->input(1);
    const Tensor& columns = ctx->input(2);
    const int64_t rows = matrix.dim_size(0), width = matrix.dim_size(1);
    OP_REQUIRES(ctx, ids.dims() == 1 && columns.dims() == 2 && columns.dim_size(0) == ids.dim_size(0) &&
                         columns.dim_size(1) == rows,
                InvalidArgument("FusedHeadAddColumns: ids must be (n,) and columns (n, ", rows, "), got ",
                                ids.shape().DebugString(), " and ", columns.shape().DebugString()));
    const int64_t n = ids.dim_size(0);
    const Tid* id = ids.flat<Tid>().data();
    for (int64_t j = 0; j < n; ++j) {
      OP_REQUIRES(ctx, id[j] >= 0 && id[j] < width,
                  InvalidArgument("FusedHeadAddColumns: ids[", j, "] = ", id[j], " is outside [0, ", width, ")"));
    }
    T* out = matrix.flat<T>().data();
    const T* in = columns.flat<T>().data();
    if (rows > 0 && n > 0) {
      // Split by matrix rows, so that a repeated id's additions stay in order
      // within the one thread that owns the row.
      TfParallelFor(ctx).Run(rows, n * 2 * sizeof(T), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          T* row = out + r * width;
          for (int64_t j = 0; j < n; ++j) row[id[j]] = static_cast<T>(row[id[j]] + in[j * rows + r]);
        }
      });
    }
    ctx->set_output(0, matrix);
  }
};

#define TFL_REGISTER_HEAD_COLUMNS(T)                                                                               \
  REGISTER_KERNEL_BUILDER(                                                                                         \
      Name("FusedHeadWriteColumns").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T").HostMemory("start"),     \
      FusedHeadWriteColumnsOp<T>);                                                                                 \
  REGISTER_KERNEL_BUILDER(                                                                                         \
      Name("FusedHeadAddColumns").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T").TypeConstraint<int32_t>("Tid"), \
      FusedHeadAddColumnsOp<T, int32_t>);                                                                          \
  REGISTER_KERNEL_BUILDER(                                                                                         \
      Name("FusedHeadAddColumns").Device(tensorflow::DEVICE_CPU).TypeConstraint<T>("T").TypeConstraint<int64_t>("Tid"), \
      FusedHeadAddColumnsOp<T, int64_t>);
TFL_REGISTER_HEAD_COLUMNS(Eigen::half)
TFL_REGISTER_HEAD_COLUMNS(Eigen::bfloat16)
TFL_REGISTER_HEAD_COLUMNS(float)
TFL_REGISTER_HEAD_COLUMNS(double)
#undef TFL_REGISTER_HEAD_COLUMNS

}  // namespace tf_fused_losses
