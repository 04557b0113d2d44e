// Row-wise "reduce, then map" on the GPU, shared by every fused loss: each
// row of a row-major (rows, row_length) problem is reduced to a partial
// result (Op::Partial, merged with Op::Merge), finished once per row
// (Op::Finish) and then every element of the row is written from it
// (Op::Map). Includes no TensorFlow header: nvcc compiles it for the op
// library and g++ compiles it against tests/cuda_emu/cuda_emulation.h.
//
// Launch shapes (PlanRows picks one; one kernel, RowKernel, runs them all):
//  * kRowsPerWarp: short rows, one warp per row, 8 rows per block; the warp
//    reduces with shuffles and rereads its row (from L1) to write it.
//  * kRowPerBlock: long rows and enough of them to fill the GPU; one block
//    per row, reduced through shared memory; the row is reread from L1/L2.
//  * kPieces: few long rows, cut into pieces of piece_length elements. A
//    first launch (kPieceReduce) writes one partial per piece into scratch;
//    a second (kPieceMap) merges the row's partials in every block of the
//    row (all in the same order, so they agree bit for bit) and maps its
//    piece.
//
// Merge orders are fixed (no atomics), so results do not vary from run to
// run. Elements are visited in aligned slots of Op::kVector elements, read
// and written as one vector access when every array of the op is aligned
// for it (Op::vector_aligned).
//
// What an Op provides (bpmll_kernels.cuh is an example):
//   kVector; kMapOnly (true: no reduction, Finish gets Empty());
//   types Partial, Context, Result, Elements; bool vector_aligned;
//   Elements Load(int64_t i, int count);  // elements i .. i+count-1 (flat index),
//                                         // count <= kVector, i % kVector == 0 if count == kVector
//   Context RowContext(int64_t row);      // per-row inputs read before reducing
//   Partial Empty();
//   void Accumulate(const Context&, Partial*, const Elements&, int count);
//   Partial Merge(const Partial&, const Partial&);
//   Result Finish(const Context&, const Partial&, int64_t row, bool writes_row);
//   void Map(const Result&, const Elements&, int64_t i, int count);
// Partial must be trivially copyable with a size that is a multiple of 4.
#ifndef TF_FUSED_LOSSES_CUDA_ROW_KERNELS_CUH_
#define TF_FUSED_LOSSES_CUDA_ROW_KERNELS_CUH_

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#define TFL_DEVICE __device__ __forceinline__
#elif defined(TFL_CUDA_EMULATION)
#define TFL_DEVICE inline
#else
#error "cuda/*.cuh are compiled by nvcc, or by a host compiler after tests/cuda_emu/cuda_emulation.h"
#endif

#ifndef TFL_EMU_CHECK_ALIGNMENT
#define TFL_EMU_CHECK_ALIGNMENT(pointer, alignment)
#endif

namespace tf_fused_losses {
namespace gpu {

constexpr int kWarpSize = 32;
constexpr int kBlockThreads = 256;
constexpr int kWarpsPerBlock = kBlockThreads / kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;

// ---------------------------------------------------------------------------
// Element types: 16-bit floats are stored as __half / __nv_bfloat16 on the
// device (the same bits as Eigen::half / Eigen::bfloat16); everything is
// computed in the accumulation type.

template <typename Acc, typename T>
TFL_DEVICE Acc ToAcc(T v) {
  return static_cast<Acc>(v);
}
template <typename Acc>
TFL_DEVICE Acc ToAcc(__half v) {
  return static_cast<Acc>(__half2float(v));
}
template <typename Acc>
TFL_DEVICE Acc ToAcc(__nv_bfloat16 v) {
  return static_cast<Acc>(__bfloat162float(v));
}

template <typename T, typename Acc>
struct FromAccImpl {
  TFL_DEVICE static T Convert(Acc v) { return static_cast<T>(v); }
};
template <typename Acc>
struct FromAccImpl<__half, Acc> {
  TFL_DEVICE static __half Convert(Acc v) { return __float2half_rn(static_cast<float>(v)); }
};
template <typename Acc>
struct FromAccImpl<__nv_bfloat16, Acc> {
  TFL_DEVICE static __nv_bfloat16 Convert(Acc v) { return __float2bfloat16_rn(static_cast<float>(v)); }
};
template <typename T, typename Acc>
TFL_DEVICE T FromAcc(Acc v) {
  return FromAccImpl<T, Acc>::Convert(v);
}

template <typename... Ts>
struct MaxSize;
template <typename T>
struct MaxSize<T> {
  static constexpr int value = sizeof(T);
};
template <typename T, typename... Ts>
struct MaxSize<T, Ts...> {
  static constexpr int value = sizeof(T) > MaxSize<Ts...>::value ? int(sizeof(T)) : MaxSize<Ts...>::value;
};

// Elements per vector access for arrays of these types: 16 bytes of the
// widest, so that one access is one 128-bit load for it.
template <typename... Ts>
constexpr int VectorWidthFor() {
  return 16 / MaxSize<Ts...>::value;
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
TFL_DEVICE Pack<T, V> LoadPack(const T* p) {
  TFL_EMU_CHECK_ALIGNMENT(p, sizeof(Pack<T, V>));
  return *reinterpret_cast<const Pack<T, V>*>(p);
}

template <int V, typename T>
TFL_DEVICE void StorePack(T* p, const Pack<T, V>& value) {
  TFL_EMU_CHECK_ALIGNMENT(p, sizeof(Pack<T, V>));
  *reinterpret_cast<Pack<T, V>*>(p) = value;
}

// The `count` values of a slot (count <= V) converted to Out; one vector
// access when `vector` (then count == V and p is aligned for it). Entries
// past count are set to 0.
template <typename Out, int V, typename T>
TFL_DEVICE void LoadSlot(const T* p, int count, bool vector, Out* out) {
  if (vector) {
    const Pack<T, V> pack = LoadPack<V>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) out[k] = ToAcc<Out>(pack.v[k]);
    return;
  }
#pragma unroll
  for (int k = 0; k < V; ++k) out[k] = k < count ? ToAcc<Out>(p[k]) : Out(0);
}

template <int V, typename T, typename Acc>
TFL_DEVICE void StoreSlot(T* p, int count, bool vector, const Acc* values) {
  if (vector) {
    Pack<T, V> pack;
#pragma unroll
    for (int k = 0; k < V; ++k) pack.v[k] = FromAcc<T>(values[k]);
    StorePack<V>(p, pack);
    return;
  }
#pragma unroll
  for (int k = 0; k < V; ++k) {
    if (k < count) p[k] = FromAcc<T>(values[k]);
  }
}

template <typename T>
inline bool IsAligned(const T* p, int elements) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * elements) == 0;
}

// ---------------------------------------------------------------------------
// Reductions. Structs travel through shuffles as 64-bit words where their
// size allows (CUDA splits those into two 32-bit shuffles), else 32-bit ones.

template <typename S>
using ShuffleWord = typename std::conditional<sizeof(S) % sizeof(long long) == 0, long long, int>::type;

template <typename S, class Shuffle>
TFL_DEVICE S ShuffleWords(const S& value, Shuffle&& shuffle) {
  using Word = ShuffleWord<S>;
  static_assert(sizeof(S) % sizeof(int) == 0, "shuffled structs must be made of 32-bit words");
  static_assert(std::is_trivially_copyable<S>::value, "shuffled structs must be trivially copyable");
  Word words[sizeof(S) / sizeof(Word)];
  std::memcpy(words, &value, sizeof(S));
#pragma unroll
  for (int i = 0; i < int(sizeof(S) / sizeof(Word)); ++i) words[i] = shuffle(words[i]);
  S out;
  std::memcpy(&out, words, sizeof(S));
  return out;
}

template <typename S>
TFL_DEVICE S ShuffleDown(const S& value, int delta) {
  return ShuffleWords(value, [delta](auto word) { return __shfl_down_sync(kFullMask, word, delta); });
}

template <typename S>
TFL_DEVICE S ShuffleFrom(const S& value, int lane) {
  return ShuffleWords(value, [lane](auto word) { return __shfl_sync(kFullMask, word, lane); });
}

// Lane 0 gets the warp's total; a tree, so the order is fixed. Lanes past
// the tree's reach merge copies of their own value, which nobody reads.
template <class Op>
TFL_DEVICE typename Op::Partial WarpReduce(const Op& op, typename Op::Partial partial) {
#pragma unroll
  for (int delta = kWarpSize / 2; delta > 0; delta /= 2) partial = op.Merge(partial, ShuffleDown(partial, delta));
  return partial;
}

// Every thread of the block gets the block's total. Safe to call again in
// a block-uniform loop: warp 0 rewrites block_total only after the next
// call's first barrier, which every reader of the last total has passed.
template <class Op>
TFL_DEVICE typename Op::Partial BlockReduce(const Op& op, typename Op::Partial partial) {
  __shared__ typename Op::Partial warp_totals[kWarpsPerBlock];
  __shared__ typename Op::Partial block_total;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  partial = WarpReduce(op, partial);
  if (lane == 0) warp_totals[warp] = partial;
  __syncthreads();
  if (warp == 0) {
    partial = lane < kWarpsPerBlock ? warp_totals[lane] : op.Empty();
    partial = WarpReduce(op, partial);
    if (lane == 0) block_total = partial;
  }
  __syncthreads();
  return block_total;
}

template <typename I>
TFL_DEVICE I MinOf(I a, I b) {
  return a < b ? a : b;
}

template <typename I>
TFL_DEVICE I MaxOf(I a, I b) {
  return a > b ? a : b;
}

// Calls visit(elements, i, count) for the elements [begin, end), in slots of
// Op::kVector elements at multiples of kVector (the first and last slots
// may hold fewer): elements[k] is element i + k for k < count. Slots are
// dealt to the `threads` threads in turn, so that neighbouring threads read
// neighbouring addresses. Full slots are read and written as one vector
// when op.vector_aligned.
template <class Op, class Visit>
TFL_DEVICE void ForEachElement(const Op& op, int64_t begin, int64_t end, int thread, int threads, Visit&& visit) {
  constexpr int V = Op::kVector;
  const int64_t base = begin / V * V;
  const int64_t slots = (end - base + V - 1) / V;
  for (int64_t slot = thread; slot < slots; slot += threads) {
    const int64_t slot_begin = base + slot * V;
    const int64_t i = MaxOf(begin, slot_begin);
    const int count = static_cast<int>(MinOf(end, slot_begin + V) - i);
    visit(op.Load(i, count), i, count);
  }
}

// ---------------------------------------------------------------------------
// The kernel. One per op: the launch shapes differ only in what a "team"
// (the threads that share a row or a piece of one) is and in which steps
// run, and one kernel keeps nvcc's work and the library small.

enum class RowStep : int {
  kRowsPerWarp,   // team = warp, task = row: reduce, finish, map
  kRowPerBlock,   // team = block, task = row: reduce, finish, map
  kPieceReduce,   // team = block, task = piece: reduce, store the partial
  kPieceMap,      // team = block, task = piece: merge the row's partials, finish, map
};

struct RowKernelParams {
  RowStep step;
  int64_t rows;
  int64_t row_length;
  int64_t piece_length;    // the pieces steps only
  int64_t pieces_per_row;  // the pieces steps only
  void* piece_partials;    // the pieces steps only: Op::Partial[rows * pieces_per_row]
};

// Every loop and branch below that contains a shuffle or a barrier is
// uniform over the team, as they require.
template <class Op>
__global__ void __launch_bounds__(kBlockThreads) RowKernel(const Op op, const RowKernelParams params) {
  using Partial = typename Op::Partial;
  const bool per_warp = params.step == RowStep::kRowsPerWarp;
  const bool pieces = params.step == RowStep::kPieceReduce || params.step == RowStep::kPieceMap;
  const int team_size = per_warp ? kWarpSize : kBlockThreads;
  const int member = threadIdx.x % team_size;
  const int64_t teams_per_block = per_warp ? kWarpsPerBlock : 1;
  const int64_t pieces_per_row = pieces ? params.pieces_per_row : 1;
  const int64_t piece_length = pieces ? params.piece_length : params.row_length;
  Partial* piece_partials = static_cast<Partial*>(params.piece_partials);

  const int64_t tasks = params.rows * pieces_per_row;
  const int64_t first_task = int64_t(blockIdx.x) * teams_per_block + threadIdx.x / team_size;
  for (int64_t task = first_task; task < tasks; task += int64_t(gridDim.x) * teams_per_block) {
    const int64_t row = task / pieces_per_row;
    const int64_t row_begin = row * params.row_length;
    const int64_t begin = row_begin + (task % pieces_per_row) * piece_length;
    const int64_t end = MinOf(begin + piece_length, row_begin + params.row_length);
    const typename Op::Context context = op.RowContext(row);

    Partial partial = op.Empty();
    if constexpr (!Op::kMapOnly) {
      if (params.step == RowStep::kPieceMap) {
        // Every piece of the row merges the same partials in the same order.
        const Partial* row_partials = piece_partials + row * pieces_per_row;
        for (int64_t k = member; k < pieces_per_row; k += team_size) partial = op.Merge(partial, row_partials[k]);
      } else {
        ForEachElement(op, begin, end, member, team_size, [&](const auto& elements, int64_t, int count) {
          op.Accumulate(context, &partial, elements, count);
        });
      }
      partial = per_warp ? ShuffleFrom(WarpReduce(op, partial), 0) : BlockReduce(op, partial);
      if (params.step == RowStep::kPieceReduce) {
        if (member == 0) piece_partials[task] = partial;
        continue;
      }
    }
    const bool writes_row = member == 0 && task % pieces_per_row == 0;
    const typename Op::Result result = op.Finish(context, partial, row, writes_row);
    ForEachElement(op, begin, end, member, team_size,
                   [&](const auto& elements, int64_t i, int count) { op.Map(result, elements, i, count); });
  }
}

// ---------------------------------------------------------------------------
// Host side: the launch plan and the launches, shared by the op library and
// the emulation harness.

enum class RowShape { kRowsPerWarp, kRowPerBlock, kPieces };

inline const char* RowShapeName(RowShape shape) {
  switch (shape) {
    case RowShape::kRowsPerWarp:
      return "rows_per_warp";
    case RowShape::kRowPerBlock:
      return "row_per_block";
    case RowShape::kPieces:
      return "pieces";
  }
  return "?";
}

struct RowLaunchPlan {
  RowShape shape;
  int64_t rows;
  int64_t row_length;
  int64_t grid;            // blocks; the kernels loop when there is more work
  int64_t piece_length;    // kPieces only
  int64_t pieces_per_row;  // kPieces only
  int64_t scratch_bytes;   // kPieces only: one Partial per piece
};

// Rows up to this long take a warp each.
constexpr int64_t kWarpRowMax = 1024;
// Blocks of kBlockThreads that fill one multiprocessor (2048 threads).
constexpr int64_t kBlocksPerMultiprocessor = 8;
// Pieces are at least this long (64 elements a thread), so that merging the
// partials of a row stays small next to reading it.
constexpr int64_t kMinPieceLength = 16384;
// Piece boundaries fall on multiples of this, so that vectors never straddle.
constexpr int64_t kPieceAlignment = 64;
constexpr int64_t kMaxGrid = 0x7fffffff;

struct RowLaunchOptions {
  int multiprocessors = 1;
  int64_t piece_length = 0;  // > 0: force kPieces with pieces this long (tests)
  int64_t max_grid = kMaxGrid;
};

inline RowLaunchPlan PlanRows(int64_t rows, int64_t row_length, int64_t partial_bytes,
                              const RowLaunchOptions& options);

template <class Op>
RowLaunchPlan PlanRowsFor(int64_t rows, int64_t row_length, const RowLaunchOptions& options) {
  return PlanRows(rows, row_length, Op::kMapOnly ? 0 : sizeof(typename Op::Partial), options);
}

// partial_bytes = 0: a map-only op, whose pieces need no scratch.
inline RowLaunchPlan PlanRows(int64_t rows, int64_t row_length, int64_t partial_bytes,
                              const RowLaunchOptions& options) {
  RowLaunchPlan plan{RowShape::kRowsPerWarp, rows, row_length, 0, 0, 0, 0};
  const int64_t resident_blocks = kBlocksPerMultiprocessor * (options.multiprocessors > 0 ? options.multiprocessors : 1);
  int64_t piece_length = options.piece_length;
  if (piece_length <= 0 && row_length > kWarpRowMax && rows < resident_blocks) {
    // Too few rows to fill the GPU a block each: split them.
    const int64_t wanted_pieces = (resident_blocks + rows - 1) / rows;
    const int64_t max_pieces = row_length / kMinPieceLength;
    const int64_t pieces = wanted_pieces < max_pieces ? wanted_pieces : max_pieces;
    if (pieces >= 2) {
      piece_length = ((row_length + pieces - 1) / pieces + kPieceAlignment - 1) / kPieceAlignment * kPieceAlignment;
    }
  }
  int64_t blocks;
  if (piece_length > 0) {
    plan.shape = RowShape::kPieces;
    plan.piece_length = piece_length;
    plan.pieces_per_row = row_length > 0 ? (row_length + piece_length - 1) / piece_length : 1;
    plan.scratch_bytes = rows * plan.pieces_per_row * partial_bytes;
    blocks = rows * plan.pieces_per_row;
  } else if (row_length > kWarpRowMax) {
    plan.shape = RowShape::kRowPerBlock;
    blocks = rows;
  } else {
    plan.shape = RowShape::kRowsPerWarp;
    blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
  }
  plan.grid = blocks < options.max_grid ? blocks : options.max_grid;
  return plan;
}

template <class Op>
inline void LaunchRowKernel(const Op& op, const RowKernelParams& params, int64_t blocks, cudaStream_t stream) {
#if defined(__CUDACC__)
  RowKernel<Op><<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(op, params);
#else
  (void)stream;
  tfl_emu::Launch(static_cast<unsigned>(blocks), kBlockThreads, &RowKernel<Op>, op, params);
#endif
}

// Enqueues the plan's kernels on `stream`; scratch holds plan.scratch_bytes
// bytes of device memory. Returns the launch status (no synchronisation).
template <class Op>
cudaError_t LaunchRows(const Op& op, const RowLaunchPlan& plan, void* scratch, cudaStream_t stream) {
  if (plan.rows == 0) return cudaSuccess;
  RowKernelParams params{RowStep::kRowsPerWarp, plan.rows, plan.row_length, plan.piece_length, plan.pieces_per_row,
                         scratch};
  switch (plan.shape) {
    case RowShape::kRowsPerWarp:
      LaunchRowKernel(op, params, plan.grid, stream);
      break;
    case RowShape::kRowPerBlock:
      params.step = RowStep::kRowPerBlock;
      LaunchRowKernel(op, params, plan.grid, stream);
      break;
    case RowShape::kPieces: {
      if (!Op::kMapOnly) {
        params.step = RowStep::kPieceReduce;
        LaunchRowKernel(op, params, plan.grid, stream);
        const cudaError_t first = cudaGetLastError();
        if (first != cudaSuccess) return first;
      }
      params.step = RowStep::kPieceMap;
      LaunchRowKernel(op, params, plan.grid, stream);
      break;
    }
  }
  return cudaGetLastError();
}

// The one launch path of every caller (the TF launchers of cc/tf/cuda, the
// CUDA FFI handlers, the emulation harness): plans `op` over (rows,
// row_length) and enqueues its kernels on `stream`, so that which shapes
// launch is decided here alone. Rows of length 0 launch too: their per-row
// outputs (BP-MLL's loss, 0) must still be written. allocate(bytes) is
// called only when the plan needs scratch and returns that much device
// memory, or nullptr when there is none to be had: then nothing is enqueued
// and the result is cudaErrorMemoryAllocation (the caller reports its
// allocator's error). The plan goes to *plan_out when that is not null.
template <class Op, class Allocate>
cudaError_t PlanAndLaunchRows(const Op& op, int64_t rows, int64_t row_length, const RowLaunchOptions& options,
                              Allocate&& allocate, cudaStream_t stream, RowLaunchPlan* plan_out = nullptr) {
  const RowLaunchPlan plan = PlanRowsFor<Op>(rows, row_length, options);
  if (plan_out != nullptr) *plan_out = plan;
  void* scratch = nullptr;
  if (plan.scratch_bytes > 0) {
    scratch = allocate(plan.scratch_bytes);
    if (scratch == nullptr) return cudaErrorMemoryAllocation;
  }
  return LaunchRows(op, plan, scratch, stream);
}

}  // namespace gpu
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CUDA_ROW_KERNELS_CUH_
