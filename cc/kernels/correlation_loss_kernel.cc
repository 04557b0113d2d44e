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

// x, y and the loss of a whole row: 12 bytes a step in float, so 1 MiB at
// the limit; the loss pass rereads x and y from L2.
constexpr int64_t kWholeRowMax = 1 << 17;
constexpr int64_t kCyclesPerElement = 4;
static_assert(kCpuChunk <= kCorrelationChunk, "the chunk ops take at most kCorrelationChunk elements");

}  // namespace

template <typename T>
struct CorrelationLossFunctor<CPUDevice, T> {
  void operator()(tensorflow::OpKernelContext* ctx, const CorrelationLossArgs<T>& args) {
    using Acc = typename AccumulatorOf<T>::type;
    const CorrelationChunkOps<Acc>& ops = CorrelationChunkOpsForThisCpu<Acc>();
    const int64_t steps = args.steps;
    // 16-bit losses are converted from a buffer by AccChunk, not streamed.
    const bool stream =
        std::is_same<T, Acc>::value && args.rows * steps * static_cast<int64_t>(sizeof(T)) >= kStreamStoreMinBytes;

    auto moments = [&](int64_t row, int64_t begin, int64_t end) {
      AccChunk<Acc, T> x, y;
      CorrelationMoments<Acc> total = CorrelationEmptyMoments<Acc>();
      ForEachChunk(row * steps + begin, row * steps + end, [&](int64_t at, int64_t n) {
        total = CorrelationMerge(total, ops.moments(x.Read(args.y_pred + at, n), y.Read(args.y_true + at, n),
                                                    MaskBytesAt(args.mask, at), n));
      });
      return total;
    };
    auto finish = [&](int64_t row, const CorrelationMoments<Acc>& total) {
      CorrelationStoreMoments(total, args.row_stats + row * kCorrelationRowStats);
      return CorrelationFinish(total, static_cast<Acc>(args.epsilon), args.concordance);
    };
    auto write_loss = [&](int64_t row, int64_t begin, int64_t end, const CorrelationRow<Acc>& result) {
      AccChunk<Acc, T> x, y, loss;
      ForEachChunk(row * steps + begin, row * steps + end, [&](int64_t at, int64_t n) {
        ops.loss(result, x.Read(args.y_pred + at, n), y.Read(args.y_true + at, n), MaskBytesAt(args.mask, at), n,
                 stream, loss.Output(args.loss + at));
        loss.Write(args.loss + at, n);
      });
    };
    RunTwoPassRows(ctx, args.rows, steps, kWholeRowMax, kCyclesPerElement, moments, CorrelationMerge<Acc>, finish,
                   write_loss);
  }
};

template <typename Device, typename T>
class FusedCorrelationLossOp : public tensorflow::OpKernel {
 public:
  explicit FusedCorrelationLossOp(tensorflow::OpKernelConstruction* ctx) : tensorflow::OpKernel(ctx) {
    ReadCorrelationAttrs(ctx, kOp, &attrs_);
  }

  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& y_true = ctx->input(0);
    const tensorflow::Tensor& y_pred = ctx->input(1);
    const tensorflow::Tensor& mask = ctx->input(2);
    CorrelationShape shape;
    OP_REQUIRES_OK(ctx, ValidateCorrelationInputs(kOp, y_true, y_pred, mask, &shape));
    tensorflow::Tensor* loss = nullptr;
    tensorflow::Tensor* row_stats = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, tensorflow::TensorShape({shape.rows, shape.steps}), &loss));
    OP_REQUIRES_OK(ctx,
                   ctx->allocate_output(1, tensorflow::TensorShape({shape.rows, kCorrelationRowStats}), &row_stats));
    if (shape.rows == 0) return;
    CorrelationLossArgs<T> args{y_true.flat<T>().data(),
                                y_pred.flat<T>().data(),
                                shape.has_mask ? mask.flat<bool>().data() : nullptr,
                                shape.rows,
                                shape.steps,
                                attrs_.epsilon,
                                attrs_.concordance,
                                loss->flat<T>().data(),
                                row_stats->flat<double>().data()};
    CorrelationLossFunctor<Device, T>()(ctx, args);
  }

 private:
  static constexpr const char* kOp = "FusedCorrelationLoss";
  CorrelationAttrs attrs_;
};

TFL_REGISTER_CORRELATION_KERNELS(tensorflow::DEVICE_CPU, CPUDevice, "FusedCorrelationLoss", FusedCorrelationLossOp)
#if GOOGLE_CUDA
TFL_REGISTER_CORRELATION_KERNELS(tensorflow::DEVICE_GPU, GPUDevice, "FusedCorrelationLoss", FusedCorrelationLossOp)
#endif  // GOOGLE_CUDA

}  // namespace tf_fused_losses
