// Row algorithms of the shape "reduce each row, finish it, then write every
// element from the finished row", on a ParallelFor.
//
// Rows whose data fit in L2 are one task each, so that the write pass
// rereads them from cache: one pass over memory. Few or long rows are cut
// into pieces; each piece is then read twice from memory (reduce, write), in
// two parallel phases. Either way a row is reduced piece by piece (pieces of
// kCpuPiece elements, chunk by chunk within a piece) and the pieces' partial
// results are combined in piece order, so the bits of every result depend on
// the shape alone, not on the thread count or the path taken.
#ifndef TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ROW_PASSES_H_
#define TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ROW_PASSES_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu_half_types.h"
#include "parallel_for.h"

namespace tf_fused_losses {

// Elements per inner call: a chunk of each array stays in L1.
constexpr int64_t kCpuChunk = 2048;
// Elements per piece of a long row.
constexpr int64_t kCpuPiece = 1 << 15;

// n elements of a T array as the accumulation type Acc, and back: 16-bit
// inputs through the per-ISA array conversions (cpu_half_types.h), the rest
// by a cast.
template <typename Acc, typename T>
void WidenToAcc(const T* in, int64_t n, Acc* out) {
  if constexpr (std::is_same<T, Float16Bits>::value && std::is_same<Acc, float>::value) {
    HalfConvertOpsForThisCpu().widen_half(in, n, out);
  } else if constexpr (std::is_same<T, BFloat16Bits>::value && std::is_same<Acc, float>::value) {
    HalfConvertOpsForThisCpu().widen_bfloat16(in, n, out);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<Acc>(in[i]);
  }
}
template <typename Acc, typename T>
void NarrowFromAcc(const Acc* in, int64_t n, T* out) {
  if constexpr (std::is_same<T, Float16Bits>::value && std::is_same<Acc, float>::value) {
    HalfConvertOpsForThisCpu().narrow_half(in, n, out);
  } else if constexpr (std::is_same<T, BFloat16Bits>::value && std::is_same<Acc, float>::value) {
    HalfConvertOpsForThisCpu().narrow_bfloat16(in, n, out);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(in[i]);
  }
}

// A chunk of a T array as the accumulation type Acc: the array itself when
// the types agree, else a converted copy.
template <typename Acc, typename T>
class AccChunk {
 public:
  static constexpr bool kSame = std::is_same<T, Acc>::value;

  const Acc* Read(const T* data, int64_t n) {
    if constexpr (kSame) {
      return data;
    } else {
      WidenToAcc(data, n, buffer_);
      return buffer_;
    }
  }
  // Where to compute n outputs destined for data; Write() stores them.
  Acc* Output(T* data) {
    if constexpr (kSame) {
      return data;
    } else {
      return buffer_;
    }
  }
  void Write(T* data, int64_t n) {
    if constexpr (!kSame) NarrowFromAcc(buffer_, n, data);
  }

 private:
  Acc buffer_[kSame ? 1 : kCpuChunk];
};

// Calls body(start, n) over [begin, end) in chunks of kCpuChunk.
template <typename Body>
void ForEachChunk(int64_t begin, int64_t end, const Body& body) {
  for (int64_t start = begin; start < end; start += kCpuChunk) body(start, std::min(kCpuChunk, end - start));
}

// reduce(row, begin, end) -> Partial over the elements [begin, end) of row;
// combine(Partial, Partial) -> Partial, applied in element order;
// finish(row, Partial) -> Result, once per row;
// write(row, begin, end, const Result&).
// whole_row_max: the longest row done as one task (its working set should
// fit in L2); cycles_per_element: rough cost, for the pool's sharding.
template <typename Reduce, typename Combine, typename Finish, typename Write>
void RunTwoPassRows(const ParallelFor& pool, int64_t rows, int64_t steps, int64_t whole_row_max,
                    int64_t cycles_per_element, const Reduce& reduce, const Combine& combine, const Finish& finish,
                    const Write& write) {
  using Partial = decltype(reduce(int64_t{0}, int64_t{0}, int64_t{0}));
  using Result = decltype(finish(int64_t{0}, std::declval<Partial>()));
  const int64_t pieces_per_row = std::max<int64_t>(1, (steps + kCpuPiece - 1) / kCpuPiece);
  auto piece_end = [&](int64_t begin) { return std::min(steps, begin + kCpuPiece); };

  if (steps <= whole_row_max && (rows >= 2 * pool.NumThreads() || steps <= 4 * kCpuChunk)) {
    pool.Run(rows, std::max<int64_t>(steps, 1) * cycles_per_element, [&](int64_t first, int64_t last) {
      for (int64_t row = first; row < last; ++row) {
        Partial total = reduce(row, 0, piece_end(0));
        for (int64_t k = 1; k < pieces_per_row; ++k) total = combine(total, reduce(row, k * kCpuPiece, piece_end(k * kCpuPiece)));
        write(row, 0, steps, finish(row, total));
      }
    });
    return;
  }

  const int64_t pieces = rows * pieces_per_row;
  auto for_each_piece = [&](auto&& body) {
    pool.Run(pieces, kCpuPiece * cycles_per_element, [&](int64_t first, int64_t last) {
      for (int64_t p = first; p < last; ++p) {
        const int64_t row = p / pieces_per_row;
        const int64_t begin = (p % pieces_per_row) * kCpuPiece;
        body(p, row, begin, piece_end(begin));
      }
    });
  };
  std::vector<Partial> partials(pieces);
  for_each_piece([&](int64_t p, int64_t row, int64_t begin, int64_t end) { partials[p] = reduce(row, begin, end); });
  std::vector<Result> results;
  results.reserve(rows);
  for (int64_t row = 0; row < rows; ++row) {
    Partial total = partials[row * pieces_per_row];
    for (int64_t k = 1; k < pieces_per_row; ++k) total = combine(total, partials[row * pieces_per_row + k]);
    results.push_back(finish(row, total));
  }
  for_each_piece([&](int64_t, int64_t row, int64_t begin, int64_t end) { write(row, begin, end, results[row]); });
}

}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_CORE_COMMON_CPU_ROW_PASSES_H_
