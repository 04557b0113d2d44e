#include <algorithm>
#include <type_traits>

#include "correlation_cpu_chunks.h"
#include "correlation_kernel_common.h"
#include "correlation_loss_functor.h"
#include "correlation_math.h"
#include "cpu_row_passes.h"
#include "cpu_stream_store.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"

namespace tf_fused_losses {

namespace {

// g, x, y and both gradients of a whole row: 20 bytes a step in float; the
// three inputs (1.5 MiB at the limit) are reread by the gradient pass from
// L2, or L3 at the top of the range.
constexpr int64_t kWholeRowMax = 1 << 17;
constexpr int64_t kCyclesPerElement = 6;

}  // namespace

template <typename T>
struct CorrelationLossGradFunctor<CPUDevice, T> {
  void operator()(tensorflow::OpKernelContext* ctx, const CorrelationLossGradArgs<T>& args) {
    using Acc = typename AccumulatorOf<T>::type;
    const CorrelationChunkOps<Acc>& ops = CorrelationChunkOpsForThisCpu<Acc>();
    const int64_t steps = args.steps;
    const Acc epsilon = static_cast<Acc>(args.epsilon);
    // 16-bit gradients are converted from buffers by AccChunk, not streamed.
    const bool stream =
        std::is_same<T, Acc>::value && args.rows * steps * static_cast<int64_t>(sizeof(T)) >= kStreamStoreMinBytes;
    auto row_of = [&](int64_t row) {
      return CorrelationFinish(CorrelationLoadMoments<Acc>(args.row_stats + row * kCorrelationRowStats), epsilon,
                               args.concordance);
    };

    auto sums = [&](int64_t row, int64_t begin, int64_t end) {
      const CorrelationRow<Acc> r = row_of(row);
      CorrelationGradSums<Acc> total = CorrelationEmptyGradSums<Acc>();
      if (!r.has_gradient) return total;
      AccChunk<Acc, T> g, x, y;
      ForEachChunk(row * steps + begin, row * steps + end, [&](int64_t at, int64_t n) {
        const CorrelationGradSums<Acc> chunk = ops.grad_sums(r, g.Read(args.grad_loss + at, n),
                                                             x.Read(args.y_pred + at, n), y.Read(args.y_true + at, n),
                                                             MaskBytesAt(args.mask, at), n);
        total = CorrelationAddGradSums(total, chunk);
      });
      return total;
    };
    auto finish = [&](int64_t row, const CorrelationGradSums<Acc>& total) {
      return CorrelationFinishGradient(row_of(row), total);
    };
    auto write_gradients = [&](int64_t row, int64_t begin, int64_t end, const CorrelationGradCoeffs<Acc>& coeffs) {
      if (!row_of(row).has_gradient) {
        std::fill(args.grad_y_pred + row * steps + begin, args.grad_y_pred + row * steps + end, T(0));
        if (args.grad_y_true) {
          std::fill(args.grad_y_true + row * steps + begin, args.grad_y_true + row * steps + end, T(0));
        }
        return;
      }
      AccChunk<Acc, T> g, x, y, grad_x, grad_y;
      ForEachChunk(row * steps + begin, row * steps + end, [&](int64_t at, int64_t n) {
        ops.gradient(coeffs, g.Read(args.grad_loss + at, n), x.Read(args.y_pred + at, n),
                     y.Read(args.y_true + at, n), MaskBytesAt(args.mask, at), n, stream,
                     grad_x.Output(args.grad_y_pred + at),
                     args.grad_y_true ? grad_y.Output(args.grad_y_true + at) : nullptr);
        grad_x.Write(args.grad_y_pred + at, n);
        if (args.grad_y_true) grad_y.Write(args.grad_y_true + at, n);
      });
    };
    RunTwoPassRows(ctx, args.rows, steps, kWholeRowMax, kCyclesPerElement, sums, CorrelationAddGradSums<Acc>, finish,
                   write_gradients);
  }
};

template <typename Device, typename T>
class FusedCorrelationLossGradOp : public tensorflow::OpKernel {
 public:
  explicit FusedCorrelationLossGradOp(tensorflow::OpKernelConstruction* ctx) : tensorflow::OpKernel(ctx) {
    ReadCorrelationAttrs(ctx, kOp, &attrs_);
    OP_REQUIRES_OK(ctx, ctx->GetAttr("compute_grad_y_true", &compute_grad_y_true_));
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& grad_loss = ctx->input(0);
    const tensorflow::Tensor& y_true = ctx->input(1);
    const tensorflow::Tensor& y_pred = ctx->input(2);
    const tensorflow::Tensor& mask = ctx->input(3);
    const tensorflow::Tensor& row_stats = ctx->input(4);
    CorrelationShape shape;
    OP_REQUIRES_OK(ctx, ValidateCorrelationInputs(kOp, y_true, y_pred, mask, &shape));
    OP_REQUIRES(ctx,
                grad_loss.dims() == 2 && grad_loss.dim_size(0) == shape.rows && grad_loss.dim_size(1) == shape.steps,
                tensorflow::errors::InvalidArgument(kOp, ": grad_loss must have shape (batch, steps) = [", shape.rows,
                                                    ",", shape.steps, "], got shape ",
                                                    grad_loss.shape().DebugString()));
    OP_REQUIRES(ctx,
                row_stats.dims() == 2 && row_stats.dim_size(0) == shape.rows &&
                    row_stats.dim_size(1) == kCorrelationRowStats,
                tensorflow::errors::InvalidArgument(kOp, ": row_stats must have shape (batch, ", kCorrelationRowStats,
                                                    ") = [", shape.rows, ",", kCorrelationRowStats, "], got shape ",
                                                    row_stats.shape().DebugString()));
    tensorflow::Tensor* grad_y_true = nullptr;
    tensorflow::Tensor* grad_y_pred = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, compute_grad_y_true_ ? y_true.shape() : tensorflow::TensorShape({0}),
                                             &grad_y_true));
    // grad_loss is usually a temporary that dies here: its buffer can take
    // grad_y_pred, which then lands in lines the first pass brought to cache.
    OP_REQUIRES_OK(ctx, ctx->forward_input_or_allocate_output({0}, 1, y_pred.shape(), &grad_y_pred));
    if (shape.rows == 0 || shape.steps == 0) return;
    CorrelationLossGradArgs<T> args{grad_loss.flat<T>().data(),
                                    y_true.flat<T>().data(),
                                    y_pred.flat<T>().data(),
                                    shape.has_mask ? mask.flat<bool>().data() : nullptr,
                                    row_stats.flat<double>().data(),
                                    shape.rows,
                                    shape.steps,
                                    attrs_.epsilon,
                                    attrs_.concordance,
                                    compute_grad_y_true_ ? grad_y_true->flat<T>().data() : nullptr,
                                    grad_y_pred->flat<T>().data()};
    CorrelationLossGradFunctor<Device, T>()(ctx, args);
  }

 private:
  static constexpr const char* kOp = "FusedCorrelationLossGrad";
  CorrelationAttrs attrs_;
  bool compute_grad_y_true_ = true;
};

TFL_REGISTER_CORRELATION_KERNELS(tensorflow::DEVICE_CPU, CPUDevice, "FusedCorrelationLossGrad",
                                 FusedCorrelationLossGradOp)
#if GOOGLE_CUDA
TFL_REGISTER_CORRELATION_KERNELS(tensorflow::DEVICE_GPU, GPUDevice, "FusedCorrelationLossGrad",
                                 FusedCorrelationLossGradOp)
#endif  // GOOGLE_CUDA

}  // namespace tf_fused_losses
