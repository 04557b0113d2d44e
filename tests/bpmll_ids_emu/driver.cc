// The GPU label-id BP-MLL kernel (cuda/bpmll_ids_kernels.cuh) under the CUDA
// emulation of tests/cuda_emu/cuda_emulation.h, against the dense GPU kernel
// (bpmll_kernels.cuh) on the equivalent uint8 matrix: loss and gradient must
// agree bit for bit in every launch shape, and a row with a bad id must read
// NaN. Prints one line per case and exits 1 on any failure
// (tests/test_bpmll_ids_cuda_emulation.py builds and runs it).
#include "cuda_emulation.h"
// Kernel headers after the emulation.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bpmll_ids_kernels.cuh"
#include "bpmll_kernels.cuh"

namespace {

namespace gpu = tf_fused_losses::gpu;

int failures = 0;

void Expect(bool ok, const std::string& what) {
  std::printf("%-4s %s\n", ok ? "ok" : "FAIL", what.c_str());
  if (!ok) ++failures;
}

template <class Op>
void Launch(const Op& op, int64_t rows, int64_t labels, const gpu::RowLaunchOptions& options) {
  const gpu::RowLaunchPlan plan = gpu::PlanRowsFor<Op>(rows, labels, options);
  std::vector<char> scratch(static_cast<size_t>(plan.scratch_bytes) + 16);
  if (gpu::LaunchRows(op, plan, scratch.data(), nullptr) != cudaSuccess) Expect(false, "launch");
}

template <typename T>
bool SameBits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <typename T>
T FromDouble(double v) {
  if constexpr (std::is_same<T, __half>::value) {
    return __float2half_rn(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

// ids (rows, width): random positives, -1 padding anywhere, repeats; bad:
// also a row with an out-of-range id and one with -2.
template <typename T, typename TId>
void Case(std::mt19937& rng, int64_t rows, int64_t labels, int64_t width, int64_t piece_length, int64_t max_grid,
          bool bad) {
  std::normal_distribution<double> normal(0, 3);
  std::vector<T> c(rows * labels);
  for (auto& v : c) v = FromDouble<T>(normal(rng));
  if (rows > 1 && labels > 2) {
    c[1] = FromDouble<T>(INFINITY);  // row 0 holds +inf, the last row NaN
    c[c.size() - 1] = FromDouble<T>(NAN);
  }
  std::vector<TId> ids(rows * width, TId(-1));
  std::vector<uint8_t> dense(rows * labels, 0);
  std::uniform_int_distribution<int64_t> label(0, labels > 0 ? labels - 1 : 0);
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t count = labels > 0 ? std::uniform_int_distribution<int64_t>(0, width)(rng) : 0;
    for (int64_t k = 0; k < count; ++k) {
      const int64_t slot = std::uniform_int_distribution<int64_t>(0, width - 1)(rng);
      const int64_t id = (k > 0 && k % 3 == 0) ? int64_t(ids[r * width]) : label(rng);  // some repeats
      if (id < 0) continue;
      if (ids[r * width + slot] >= 0) dense[r * labels + ids[r * width + slot]] = 0;  // overwritten
      ids[r * width + slot] = TId(id);
    }
    for (int64_t k = 0; k < width; ++k) {
      if (ids[r * width + k] >= 0) dense[r * labels + ids[r * width + k]] = 1;
    }
  }
  std::vector<bool> bad_row(rows, false);
  if (bad && rows >= 2 && width >= 1) {
    ids[0 * width + width - 1] = TId(labels);
    ids[1 * width] = TId(-2);
    bad_row[0] = bad_row[1] = true;
  }
  gpu::RowLaunchOptions options;
  options.multiprocessors = 1;
  options.piece_length = piece_length;
  if (max_grid > 0) options.max_grid = max_grid;

  std::vector<T> dense_loss(rows), dense_grad(rows * labels), ids_loss(rows), ids_grad(rows * labels);
  Launch(gpu::MakeBpmllRowOp(dense.data(), c.data(), dense_loss.data(), dense_grad.data()), rows, labels, options);

  std::vector<char> sorted_scratch(static_cast<size_t>(gpu::SortedIdsBytes<TId>(rows, width)) + 16);
  const auto sorted = gpu::SortedIdsIn<TId>(sorted_scratch.data(), rows, width);
  if (gpu::LaunchSortRowIds(ids.data(), rows, width, labels, sorted, nullptr) != cudaSuccess) Expect(false, "sort");
  Launch(gpu::MakeBpmllIdsRowOp(sorted, width, labels, c.data(), ids_loss.data(), ids_grad.data()), rows, labels,
         options);

  const std::string what = std::string(sizeof(T) == 8 ? "double" : sizeof(T) == 4 ? "float" : "half") + " ids" +
                           std::to_string(8 * sizeof(TId)) + " " + std::to_string(rows) + "x" +
                           std::to_string(labels) + " K" + std::to_string(width) + " piece " +
                           std::to_string(piece_length) + " grid " + std::to_string(max_grid) +
                           (bad ? " bad ids" : "");
  if (!bad) {
    Expect(SameBits(ids_loss, dense_loss) && SameBits(ids_grad, dense_grad), what + ": dense bits");
    return;
  }
  bool ok = true;
  for (int64_t r = 0; r < rows; ++r) {
    const double loss = static_cast<double>(gpu::ToAcc<float>(ids_loss[r]));
    if (bad_row[r]) {
      ok = ok && std::isnan(loss);
      for (int64_t j = 0; j < labels; ++j) ok = ok && std::isnan(gpu::ToAcc<float>(ids_grad[r * labels + j]));
    } else {
      ok = ok && std::memcmp(&ids_loss[r], &dense_loss[r], sizeof(T)) == 0 &&
           std::memcmp(&ids_grad[r * labels], &dense_grad[r * labels], labels * sizeof(T)) == 0;
    }
  }
  Expect(ok, what + ": NaN rows, the others dense bits");
}

}  // namespace

int main() {
  std::mt19937 rng(21);
  // Rows per warp, a block per row, pieces (forced and planned), a grid of
  // one block walking the rows, L = 1, B = 0, K = 0.
  Case<float, int32_t>(rng, 5, 37, 6, 0, 0, false);
  Case<float, int64_t>(rng, 3, 2049, 9, 0, 0, false);
  Case<double, int32_t>(rng, 3, 2049, 9, 0, 1, false);
  Case<float, int32_t>(rng, 2, 5000, 7, 128, 0, false);
  Case<__half, int64_t>(rng, 2, 5000, 7, 1024, 3, false);
  Case<float, int64_t>(rng, 1, 40000, 12, 0, 0, false);
  Case<float, int32_t>(rng, 4, 1, 2, 0, 0, false);
  Case<float, int32_t>(rng, 0, 7, 3, 0, 0, false);
  Case<double, int64_t>(rng, 4, 50, 0, 0, 0, false);
  Case<float, int32_t>(rng, 4, 300, 5, 0, 0, true);
  Case<float, int64_t>(rng, 3, 3000, 5, 256, 0, true);
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
