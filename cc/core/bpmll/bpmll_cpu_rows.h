// The BP-MLL row driver on the CPU, for any source of labels: the dense op
// (bpmll_cpu.cc) reads y_true, the label-id op (bpmll_ids_cpu.cc) builds each
// chunk's 0/1 labels from the row's sorted ids. One driver, so that both walk
// a row in the same chunks and pieces, take the same path for a shape and
// call the same chunk code: ids give the bits of the dense op on the
// equivalent 0/1 matrix. Internal to the core's row drivers.
#ifndef TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_CPU_ROWS_H_
#define TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_CPU_ROWS_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "bpmll_cpu_chunks.h"
#include "bpmll_math.h"
#include "cpu_row_passes.h"
#include "cpu_stream_store.h"
#include "parallel_for.h"

namespace tf_fused_losses {
namespace bpmll_cpu_rows {

// Elements per inner call: the chunk's logits, labels and gradient stay in L1.
constexpr int64_t kChunk = kBpmllChunk;
// A whole row is one task while its logits, labels and gradient fit in L2,
// so the gradient loop rereads them from cache: one pass over memory.
constexpr int64_t kWholeRowMax = 1 << 16;
// Rows are reduced in pieces of this many elements, merged in piece order:
// long rows are split into such pieces (each read twice from memory,
// statistics then gradient, in two parallel phases), and whole rows are
// reduced the same way.
constexpr int64_t kPiece = 1 << 15;
// Whole rows need this many rows to keep a pool busy (or rows so short that
// pieces would not pay). The choice depends on the shape alone, never on the
// pool: whole rows take their gradient from stored terms, pieces do not, so
// the path shows in the last bits and must not vary with the thread count.
constexpr int64_t kWholeRowMinRows = 16;
// Rough cost of one element in cycles, for the pool's sharding.
constexpr int64_t kCyclesPerElement = 12;

// A label source gives the labels of elements [start, start + n) of a row,
// n <= kChunk, as the chunk code's Label type:
//   const Label* Chunk(int64_t row, int64_t start, int64_t n, Buffer* buffer) const;
// where Buffer is room for one chunk's labels, used by sources that build them.

// The dense (rows, labels) matrix.
template <typename TLabel>
struct DenseLabels {
  using Label = TLabel;
  struct Buffer {};
  const TLabel* y_true;
  int64_t labels;
  const TLabel* Chunk(int64_t row, int64_t start, int64_t, Buffer*) const { return y_true + row * labels + start; }
};

// The earliest row with a label outside [0, 1]; reported after the pool joins.
struct BadRow {
  std::mutex mu;
  int64_t row = -1;
  void Note(int64_t r) {
    std::lock_guard<std::mutex> lock(mu);
    if (row < 0 || r < row) row = r;
  }
};

// What the driver reads and writes besides the labels: row-major (rows,
// labels) logits and gradient, loss[rows].
template <typename T>
struct BpmllRows {
  const T* y_pred;
  int64_t rows;
  int64_t labels;
  T* loss;
  T* grad;
};

template <typename T, typename Source>
class CpuBpmll {
 public:
  using Label = typename Source::Label;
  using Ops = BpmllChunkOps<T, Label>;
  using Acc = typename Ops::Acc;

  struct PieceStats {
    BpmllStats<Acc> stats = BpmllEmptyStats<Acc>();
    bool soft = false;
  };

  CpuBpmll(const Source& source, const BpmllRows<T>& args, BadRow* bad)
      : source_(source),
        args_(args),
        ops_(BpmllChunkOpsForThisCpu<T, Label>()),
        stream_(args.rows * args.labels * static_cast<int64_t>(sizeof(T)) >= kStreamStoreMinBytes),
        bad_(bad) {}

  int64_t PiecesPerRow() const { return std::max<int64_t>(1, (args_.labels + kPiece - 1) / kPiece); }
  int64_t PieceBegin(int64_t k) const { return k * kPiece; }
  int64_t PieceEnd(int64_t k) const { return std::min(args_.labels, (k + 1) * kPiece); }

  // A whole row's chunks whose terms the statistics pass stored, so that
  // the gradient pass scales them instead of evaluating exp again.
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

  // terms: null, or where the terms of the row's chunks go (whole rows only).
  PieceStats Stats(int64_t row, int64_t begin, int64_t end, StoredTerms* terms = nullptr) const {
    PieceStats out;
    const int64_t offset = row * args_.labels;
    typename Source::Buffer buffer;
    for (int64_t start = begin; start < end; start += kChunk) {
      const int64_t n = std::min(kChunk, end - start);
      BpmllChunkLabels seen;
      const BpmllStats<Acc> chunk = ops_.stats(args_.y_pred + offset + start, source_.Chunk(row, start, n, &buffer),
                                               n, &seen, terms ? terms->terms + start : nullptr);
      if (terms) {
        terms->chunks[start / kChunk] = {seen.terms_stored, chunk.pos_count > 0.0, chunk.neg_count > 0.0,
                                         seen.guess};
      }
      out.stats = BpmllMerge(out.stats, chunk);
      out.soft = out.soft || seen.soft;
      if (seen.invalid) bad_->Note(row);
    }
    return out;
  }

  static PieceStats Merge(const PieceStats& a, const PieceStats& b) {
    return PieceStats{BpmllMerge(a.stats, b.stats), a.soft || b.soft};
  }

  void Gradient(int64_t row, int64_t begin, int64_t end, const BpmllRowResult<Acc>& result, bool soft,
                const StoredTerms* terms = nullptr) const {
    const int64_t offset = row * args_.labels;
    if (!result.has_pairs) {
      // 0, or NaN after a NaN logit (bpmll_math.h): the loss times 0.
      T gradient;
      const Acc value = result.loss * Acc(0);
      NarrowFromAcc(&value, 1, &gradient);
      std::fill(args_.grad + offset + begin, args_.grad + offset + end, gradient);
      return;
    }
    typename Source::Buffer buffer;
    for (int64_t start = begin; start < end; start += kChunk) {
      const int64_t n = std::min(kChunk, end - start);
      const Label* labels = source_.Chunk(row, start, n, &buffer);
      Acc pos_factor, neg_factor;
      if (terms && ScalesStoredTerms(result, terms->chunks[start / kChunk], &pos_factor, &neg_factor)) {
        ops_.gradient_from_terms(terms->terms + start, labels, n, pos_factor, neg_factor, stream_,
                                 args_.grad + offset + start);
      } else {
        ops_.gradient(result, args_.y_pred + offset + start, labels, n, soft, stream_, args_.grad + offset + start);
      }
    }
  }

  void StoreLoss(int64_t row, Acc loss) const { NarrowFromAcc(&loss, 1, args_.loss + row); }

  void WholeRows(int64_t first_row, int64_t last_row) const {
    // Per thread, reused across calls: a fresh 256 KiB allocation per task
    // would cost page faults.
    thread_local std::vector<Acc> scratch;
    scratch.resize(std::max<size_t>(scratch.size(), static_cast<size_t>(args_.labels)));
    StoredTerms terms;
    terms.terms = scratch.data();
    for (int64_t row = first_row; row < last_row; ++row) {
      PieceStats total = Stats(row, PieceBegin(0), PieceEnd(0), &terms);
      for (int64_t k = 1; k < PiecesPerRow(); ++k) total = Merge(total, Stats(row, PieceBegin(k), PieceEnd(k), &terms));
      const BpmllRowResult<Acc> result = BpmllFinish(total.stats);
      StoreLoss(row, result.loss);
      Gradient(row, 0, args_.labels, result, total.soft, &terms);
    }
  }

 private:
  // The gradient of a chunk from its stored terms t_j (bpmll_cpu_chunks.h):
  //   y_j = 1: -E e^{-c_j - pos_shift - pos_log_sum} = -E e^{-guess - pos_shift - pos_log_sum} * t_j
  //   y_j = 0:  E e^{ c_j - neg_shift - neg_log_sum} =  E e^{ guess - neg_shift - neg_log_sum} * t_j
  // The factors are taken in double. Since t_j lies within e^{+-60}, a factor
  // within [1e-30, 1e30] keeps every product as exact as the direct form;
  // otherwise (extended rows, NaN, an overflowing loss) the chunk takes the
  // direct form.
  static bool ScalesStoredTerms(const BpmllRowResult<Acc>& r, const typename StoredTerms::Chunk& chunk,
                                Acc* pos_factor, Acc* neg_factor) {
    if (!chunk.stored || r.extended) return false;
    const double loss = static_cast<double>(r.loss);
    const double pos = loss * std::exp(-chunk.guess - static_cast<double>(r.pos_shift) - r.pos_log_sum);
    const double neg = loss * std::exp(chunk.guess - static_cast<double>(r.neg_shift) - r.neg_log_sum);
    auto usable = [](double f) { return f >= 1e-30 && f <= 1e30; };
    if ((chunk.has_positive && !usable(pos)) || (chunk.has_negative && !usable(neg))) return false;
    *pos_factor = chunk.has_positive ? static_cast<Acc>(pos) : Acc(0);
    *neg_factor = chunk.has_negative ? static_cast<Acc>(neg) : Acc(0);
    return true;
  }

  const Source& source_;
  const BpmllRows<T>& args_;
  const Ops& ops_;
  const bool stream_;
  BadRow* bad_;
};

// Writes every row's loss and gradient; returns the earliest row that holds
// a label outside [0, 1] (NaN included), or -1. Rows with bad labels are
// still written.
template <typename T, typename Source>
int64_t RunBpmllRows(const Source& source, const BpmllRows<T>& args, const ParallelFor& pool) {
  using Bpmll = CpuBpmll<T, Source>;
  using Acc = typename Bpmll::Acc;
  const int64_t rows = args.rows, labels = args.labels;
  BadRow bad;
  Bpmll bpmll(source, args, &bad);
  if (rows == 0) return -1;

  if (labels <= kWholeRowMax && (rows >= kWholeRowMinRows || labels <= 4 * kChunk)) {
    pool.Run(rows, std::max<int64_t>(labels, 1) * kCyclesPerElement,
             [&](int64_t first, int64_t last) { bpmll.WholeRows(first, last); });
  } else {
    // Few or long rows: pieces of rows, statistics first, then gradients.
    const int64_t pieces_per_row = bpmll.PiecesPerRow();
    const int64_t pieces = rows * pieces_per_row;
    std::vector<typename Bpmll::PieceStats> piece_stats(pieces);
    pool.Run(pieces, kPiece * kCyclesPerElement, [&](int64_t first, int64_t last) {
      for (int64_t p = first; p < last; ++p) {
        const int64_t row = p / pieces_per_row, k = p % pieces_per_row;
        piece_stats[p] = bpmll.Stats(row, bpmll.PieceBegin(k), bpmll.PieceEnd(k));
      }
    });
    std::vector<BpmllRowResult<Acc>> results(rows);
    std::vector<char> soft(rows, 0);
    for (int64_t row = 0; row < rows; ++row) {
      typename Bpmll::PieceStats total = piece_stats[row * pieces_per_row];
      for (int64_t k = 1; k < pieces_per_row; ++k) total = Bpmll::Merge(total, piece_stats[row * pieces_per_row + k]);
      results[row] = BpmllFinish(total.stats);
      soft[row] = total.soft;
      bpmll.StoreLoss(row, results[row].loss);
    }
    pool.Run(pieces, kPiece * kCyclesPerElement, [&](int64_t first, int64_t last) {
      for (int64_t p = first; p < last; ++p) {
        const int64_t row = p / pieces_per_row, k = p % pieces_per_row;
        bpmll.Gradient(row, bpmll.PieceBegin(k), bpmll.PieceEnd(k), results[row], soft[row] != 0);
      }
    });
  }
  return bad.row;
}

}  // namespace bpmll_cpu_rows
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_BPMLL_BPMLL_CPU_ROWS_H_
