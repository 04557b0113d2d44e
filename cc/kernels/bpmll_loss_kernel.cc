#include <algorithm>
#include <cmath>
#include <atomic>
#include <mutex>
#include <type_traits>
#include <vector>

#include "bpmll_cpu_chunks.h"
#include "bpmll_loss_functor.h"
#include "bpmll_math.h"
#include "cpu_stream_store.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/register_types.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/platform/threadpool.h"

namespace tf_fused_losses {

using CPUDevice = Eigen::ThreadPoolDevice;
using GPUDevice = Eigen::GpuDevice;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

namespace {

// Elements per inner call: the chunk's logits, labels and gradient stay in L1.
constexpr int64_t kChunk = kBpmllChunk;
// A whole row is one task while its logits, labels and gradient fit in L2,
// so the gradient loop rereads them from cache: one pass over memory.
constexpr int64_t kWholeRowMax = 1 << 16;
// Longer rows are split into pieces; each piece is read twice from memory
// (statistics, then gradient), in two parallel phases.
constexpr int64_t kPiece = 1 << 15;
// Rough cost of one element in cycles, for the thread pool's sharding.
constexpr int64_t kCyclesPerElement = 12;

// Where a label outside [0, 1] was seen first; reported after the pool joins.
struct BadLabel {
  std::mutex mu;
  int64_t row = -1;
  void Note(int64_t r) {
    std::lock_guard<std::mutex> lock(mu);
    if (row < 0 || r < row) row = r;
  }
};

static_assert(sizeof(Eigen::half) == sizeof(Float16Bits) && sizeof(Eigen::bfloat16) == sizeof(BFloat16Bits),
              "the chunk code reads 16-bit floats as their bits");

template <typename T, typename TLabel>
class CpuBpmll {
 public:
  using Logit = typename ChunkTypeOf<T>::type;
  using Label = typename ChunkTypeOf<TLabel>::type;
  using Ops = BpmllChunkOps<Logit, Label>;
  using Acc = typename Ops::Acc;

  CpuBpmll(const BpmllLossArgs<T, TLabel>& args, BadLabel* bad)
      : logits_(reinterpret_cast<const Logit*>(args.y_pred)),
        labels_(reinterpret_cast<const Label*>(args.y_true)),
        grad_(reinterpret_cast<Logit*>(args.grad)),
        args_(args),
        ops_(BpmllChunkOpsForThisCpu<Logit, Label>()),
        stream_(args.rows * args.labels * static_cast<int64_t>(sizeof(T)) >= kStreamStoreMinBytes),
        bad_(bad) {}

  struct PieceStats {
    BpmllStats<Acc> stats = BpmllEmptyStats<Acc>();
    bool soft = false;
  };

  // A whole row's chunks whose terms the statistics pass stored.
  struct StoredTerms {
    Acc* terms;  // the row's terms, kWholeRowMax at most
    struct Chunk {
      bool stored;
      bool has_positive;
      bool has_negative;
      double guess;
    };
    Chunk chunks[kWholeRowMax / kChunk];
  };

  // terms: null, or where the row's chunk terms go (whole rows only).
  PieceStats Stats(int64_t row, int64_t begin, int64_t end, StoredTerms* terms = nullptr) const {
    PieceStats out;
    const int64_t offset = row * args_.labels;
    for (int64_t start = begin; start < end; start += kChunk) {
      BpmllChunkLabels seen;
      const BpmllStats<Acc> chunk = ops_.stats(logits_ + offset + start, labels_ + offset + start,
                                               std::min(kChunk, end - start), &seen,
                                               terms ? terms->terms + (start - begin) : nullptr);
      if (terms) {
        terms->chunks[(start - begin) / kChunk] = {seen.terms_stored, chunk.pos_count > 0.0, chunk.neg_count > 0.0,
                                                   seen.guess};
      }
      out.stats = BpmllMerge(out.stats, chunk);
      out.soft = out.soft || seen.soft;
      if (seen.invalid) bad_->Note(row);
    }
    return out;
  }

  void Gradient(int64_t row, int64_t begin, int64_t end, const BpmllRowResult<Acc>& result, bool soft,
                const StoredTerms* terms = nullptr) const {
    const int64_t offset = row * args_.labels;
    if (!result.has_pairs) {
      std::fill(args_.grad + offset + begin, args_.grad + offset + end, T(0));
      return;
    }
    for (int64_t start = begin; start < end; start += kChunk) {
      const int64_t n = std::min(kChunk, end - start);
      Acc pos_factor, neg_factor;
      if (terms && ScalesStoredTerms(result, terms->chunks[(start - begin) / kChunk], &pos_factor, &neg_factor)) {
        ops_.gradient_from_terms(terms->terms + (start - begin), labels_ + offset + start, n, pos_factor, neg_factor,
                                 stream_, grad_ + offset + start);
      } else {
        ops_.gradient(result, logits_ + offset + start, labels_ + offset + start, n, soft, stream_,
                      grad_ + offset + start);
      }
    }
  }

  void WholeRows(int64_t first_row, int64_t last_row) const {
    // Per thread, reused across calls: a fresh 256 KiB allocation per task
    // would cost page faults.
    thread_local std::vector<Acc> scratch;
    scratch.resize(std::max<size_t>(scratch.size(), static_cast<size_t>(args_.labels)));
    StoredTerms terms;
    terms.terms = scratch.data();
    for (int64_t row = first_row; row < last_row; ++row) {
      PieceStats piece = Stats(row, 0, args_.labels, &terms);
      BpmllRowResult<Acc> result = BpmllFinish(piece.stats);
      args_.loss[row] = static_cast<T>(result.loss);
      Gradient(row, 0, args_.labels, result, piece.soft, &terms);
    }
  }

 private:
  // The gradient of a chunk from its stored terms t_j (bpmll_math.h):
  //   y_j = 1: -E e^{-c_j - pos_shift - pos_log_sum} = -E e^{-guess - pos_shift - pos_log_sum} * t_j
  //   y_j = 0:  E e^{ c_j - neg_shift - neg_log_sum} =  E e^{ guess - neg_shift - neg_log_sum} * t_j
  // The factors are taken in double. Since t_j lies within e^{+-60}, a factor
  // within [1e-30, 1e30] keeps every product as exact as the direct form;
  // otherwise (extreme rows, NaN) the chunk takes the direct form.
  static bool ScalesStoredTerms(const BpmllRowResult<Acc>& r, const typename StoredTerms::Chunk& chunk,
                                Acc* pos_factor, Acc* neg_factor) {
    if (!chunk.stored) return false;
    const double loss = static_cast<double>(r.loss);
    const double pos = loss * std::exp(-chunk.guess - static_cast<double>(r.pos_shift) - r.pos_log_sum);
    const double neg = loss * std::exp(chunk.guess - static_cast<double>(r.neg_shift) - r.neg_log_sum);
    auto usable = [](double f) { return f >= 1e-30 && f <= 1e30; };
    if ((chunk.has_positive && !usable(pos)) || (chunk.has_negative && !usable(neg))) return false;
    *pos_factor = chunk.has_positive ? static_cast<Acc>(pos) : Acc(0);
    *neg_factor = chunk.has_negative ? static_cast<Acc>(neg) : Acc(0);
    return true;
  }

  const Logit* logits_;
  const Label* labels_;
  Logit* grad_;
  const BpmllLossArgs<T, TLabel>& args_;
  const Ops& ops_;
  const bool stream_;
  BadLabel* bad_;
};

template <typename TLabel>
double LabelAsDouble(TLabel v) {
  return static_cast<double>(static_cast<float>(v));
}
template <>
double LabelAsDouble<double>(double v) {
  return v;
}
template <>
double LabelAsDouble<int64_t>(int64_t v) {
  return static_cast<double>(v);
}

}  // namespace

template <typename T, typename TLabel>
struct BpmllLossFunctor<CPUDevice, T, TLabel> {
  void operator()(OpKernelContext* ctx, const BpmllLossArgs<T, TLabel>& args) {
    using Acc = typename CpuBpmll<T, TLabel>::Acc;
    const int64_t rows = args.rows, labels = args.labels;
    BadLabel bad;
    CpuBpmll<T, TLabel> bpmll(args, &bad);
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const int64_t threads = pool->NumThreads();

    if (labels <= kWholeRowMax && (rows >= 2 * threads || labels <= 4 * kChunk)) {
      pool->ParallelFor(rows, labels * kCyclesPerElement,
                        [&](int64_t first, int64_t last) { bpmll.WholeRows(first, last); });
    } else {
      // Few or long rows: pieces of rows, statistics first, then gradients.
      const int64_t pieces_per_row = (labels + kPiece - 1) / kPiece;
      const int64_t pieces = rows * pieces_per_row;
      auto piece_range = [&](int64_t piece, int64_t* row, int64_t* begin, int64_t* end) {
        *row = piece / pieces_per_row;
        *begin = (piece % pieces_per_row) * kPiece;
        *end = std::min(labels, *begin + kPiece);
      };
      std::vector<typename CpuBpmll<T, TLabel>::PieceStats> piece_stats(pieces);
      pool->ParallelFor(pieces, kPiece * kCyclesPerElement, [&](int64_t first, int64_t last) {
        for (int64_t p = first; p < last; ++p) {
          int64_t row, begin, end;
          piece_range(p, &row, &begin, &end);
          piece_stats[p] = bpmll.Stats(row, begin, end);
        }
      });
      std::vector<BpmllRowResult<Acc>> results(rows);
      std::vector<char> soft(rows, 0);
      for (int64_t row = 0; row < rows; ++row) {
        BpmllStats<Acc> stats = BpmllEmptyStats<Acc>();
        for (int64_t k = 0; k < pieces_per_row; ++k) {
          stats = BpmllMerge(stats, piece_stats[row * pieces_per_row + k].stats);
          soft[row] |= piece_stats[row * pieces_per_row + k].soft;
        }
        results[row] = BpmllFinish(stats);
        args.loss[row] = static_cast<T>(results[row].loss);
      }
      pool->ParallelFor(pieces, kPiece * kCyclesPerElement, [&](int64_t first, int64_t last) {
        for (int64_t p = first; p < last; ++p) {
          int64_t row, begin, end;
          piece_range(p, &row, &begin, &end);
          bpmll.Gradient(row, begin, end, results[row], soft[row] != 0);
        }
      });
    }

    if (bad.row >= 0) {
      const TLabel* row_labels = args.y_true + bad.row * labels;
      for (int64_t j = 0; j < labels; ++j) {
        double v = LabelAsDouble(row_labels[j]);
        if (!(v >= 0.0 && v <= 1.0)) {  // NaN too
          ctx->SetStatus(tensorflow::errors::InvalidArgument(
              "FusedBpmllLoss: y_true must hold labels in [0, 1]; y_true[", bad.row, ", ", j, "] = ", v));
          return;
        }
      }
    }
  }
};

template <typename Device, typename T, typename TLabel>
class FusedBpmllLossOp : public OpKernel {
 public:
  explicit FusedBpmllLossOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& y_true = ctx->input(0);
    const Tensor& y_pred = ctx->input(1);
    OP_REQUIRES(ctx, y_pred.dims() == 2,
                tensorflow::errors::InvalidArgument("FusedBpmllLoss: y_pred must be rank 2 (batch, labels), got shape ",
                                                    y_pred.shape().DebugString()));
    OP_REQUIRES(ctx, y_true.shape() == y_pred.shape(),
                tensorflow::errors::InvalidArgument("FusedBpmllLoss: y_true and y_pred must have the same shape, got ",
                                                    y_true.shape().DebugString(), " and ",
                                                    y_pred.shape().DebugString()));
    const int64_t rows = y_pred.dim_size(0), labels = y_pred.dim_size(1);
    Tensor* loss = nullptr;
    Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, y_pred.shape(), &grad));
    if (rows == 0) return;
    BpmllLossArgs<T, TLabel> args{y_true.flat<TLabel>().data(), y_pred.flat<T>().data(), rows, labels,
                                  loss->flat<T>().data(), grad->flat<T>().data()};
    BpmllLossFunctor<Device, T, TLabel>()(ctx, args);
  }
};

#define TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, TLabel)                                          \
  REGISTER_KERNEL_BUILDER(                                                                             \
      Name("FusedBpmllLoss").Device(DEVICE_NAME).TypeConstraint<T>("T").TypeConstraint<TLabel>("Tlabel"), \
      FusedBpmllLossOp<DEVICE_TYPE, T, TLabel>);

#define TFL_REGISTER_BPMLL_LABELS(DEVICE_NAME, DEVICE_TYPE, T)       \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, Eigen::half)       \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, Eigen::bfloat16)   \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, float)             \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, double)            \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, tensorflow::int32) \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, int64_t)           \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, tensorflow::uint8) \
  TFL_REGISTER_BPMLL(DEVICE_NAME, DEVICE_TYPE, T, bool)

#define TFL_REGISTER_BPMLL_CPU(T) TFL_REGISTER_BPMLL_LABELS(tensorflow::DEVICE_CPU, CPUDevice, T)
TFL_REGISTER_BPMLL_CPU(Eigen::half)
TFL_REGISTER_BPMLL_CPU(Eigen::bfloat16)
TFL_REGISTER_BPMLL_CPU(float)
TFL_REGISTER_BPMLL_CPU(double)
#undef TFL_REGISTER_BPMLL_CPU

#if GOOGLE_CUDA
#define TFL_REGISTER_BPMLL_GPU(T) TFL_REGISTER_BPMLL_LABELS(tensorflow::DEVICE_GPU, GPUDevice, T)
TFL_REGISTER_BPMLL_GPU(Eigen::half)
TFL_REGISTER_BPMLL_GPU(Eigen::bfloat16)
TFL_REGISTER_BPMLL_GPU(float)
TFL_REGISTER_BPMLL_GPU(double)
#undef TFL_REGISTER_BPMLL_GPU
#endif  // GOOGLE_CUDA

}  // namespace tf_fused_losses
