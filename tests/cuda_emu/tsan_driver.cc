// Runs every CUDA kernel, in every launch shape, under the emulation, for a
// ThreadSanitizer build (tests/cuda_emu/build.py: build_tsan_driver). The
// kernels' threads are real threads, so a missing __syncthreads() or a
// shared-memory race shows up as a TSan report. Each op also runs once with
// a grid of one block and once through the other launch shapes, and the
// results must agree (bit for bit where the reduction order is the same).
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "emu_ops.h"

namespace {

using RowLaunchOptions = tfl_emu::Options;

int failures = 0;

void Expect(bool ok, const char* what, const tfl_emu::LaunchInfo& info) {
  std::printf("%-4s %-46s %-14s grid %lld\n", ok ? "ok" : "FAIL", what, info.shape.c_str(),
              static_cast<long long>(info.grid));
  if (!ok) ++failures;
}

bool Close(const std::vector<float>& a, const std::vector<float>& b, float tol) {
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) != std::isnan(b[i])) return false;
    if (!std::isnan(a[i]) && std::fabs(a[i] - b[i]) > tol * (1 + std::fabs(b[i]))) return false;
  }
  return true;
}

RowLaunchOptions Options(int64_t piece_length, int64_t max_grid = 0) {
  return tfl_emu::MakeOptions(1, piece_length, max_grid);
}

void Bpmll(std::mt19937& rng, int64_t rows, int64_t labels) {
  std::normal_distribution<float> normal(0, 2);
  std::uniform_real_distribution<float> uniform(0, 1);
  std::vector<float> c(rows * labels), y(rows * labels);
  for (auto& v : c) v = normal(rng);
  for (auto& v : y) v = uniform(rng) < 0.4f ? 1.0f : (uniform(rng) < 0.1f ? 0.5f : 0.0f);
  struct Out {
    std::vector<float> loss, grad;
    tfl_emu::LaunchInfo info;
  };
  auto run = [&](const RowLaunchOptions& options) {
    Out o{std::vector<float>(rows), std::vector<float>(rows * labels), {}};
    o.info = tfl_emu::Bpmll(tfl_emu::Type::kFloat, tfl_emu::Type::kFloat, y.data(), c.data(), o.loss.data(),
                            o.grad.data(), rows, labels, options);
    return o;
  };
  const Out whole = run(Options(0));
  const Out one_block = run(Options(0, 1));
  Expect(whole.loss == one_block.loss && whole.grad == one_block.grad, "bpmll: one block walks the grid", whole.info);
  const Out pieces = run(Options(128));
  Expect(Close(pieces.loss, whole.loss, 1e-5f) && Close(pieces.grad, whole.grad, 1e-5f), "bpmll: pieces vs rows",
         pieces.info);
  const Out pieces_one_block = run(Options(128, 1));
  Expect(pieces_one_block.loss == pieces.loss && pieces_one_block.grad == pieces.grad,
         "bpmll: pieces, one block walks the grid", pieces_one_block.info);
}

void BpmllHalfLabels(std::mt19937& rng) {
  const int64_t rows = 3, labels = 300;
  std::vector<__half> c(rows * labels);
  std::vector<uint8_t> y(rows * labels);
  std::normal_distribution<float> normal(0, 1);
  for (auto& v : c) v = __float2half_rn(normal(rng));
  for (size_t i = 0; i < y.size(); ++i) y[i] = (i * 7) % 3 == 0;
  std::vector<__half> loss(rows), grad(rows * labels), loss_p(rows), grad_p(rows * labels);
  auto info = tfl_emu::Bpmll(tfl_emu::Type::kHalf, tfl_emu::Type::kUint8, y.data(), c.data(), loss.data(),
                             grad.data(), rows, labels, Options(0));
  auto info_p = tfl_emu::Bpmll(tfl_emu::Type::kHalf, tfl_emu::Type::kUint8, y.data(), c.data(), loss_p.data(),
                               grad_p.data(), rows, labels, Options(64));
  bool ok = true;
  for (int64_t r = 0; r < rows; ++r) {
    ok = ok && std::fabs(__half2float(loss[r]) - __half2float(loss_p[r])) <= 2e-3f * __half2float(loss[r]);
  }
  Expect(ok, "bpmll: half logits, uint8 labels", info);
  Expect(ok, "bpmll: half logits, uint8 labels, pieces", info_p);
}

void ScaleRows(std::mt19937& rng) {
  const int64_t rows = 3, labels = 1500;
  std::normal_distribution<double> normal(0, 1);
  std::vector<double> x(rows * labels), scale(rows);
  for (auto& v : x) v = normal(rng);
  for (auto& v : scale) v = normal(rng);
  for (int64_t piece : {int64_t(0), int64_t(256)}) {
    std::vector<double> out = x;  // in place
    auto info = tfl_emu::ScaleRows(tfl_emu::Type::kDouble, scale.data(), out.data(), out.data(), rows, labels,
                                   Options(piece));
    bool ok = true;
    for (int64_t i = 0; i < rows * labels; ++i) ok = ok && out[i] == x[i] * scale[i / labels];
    Expect(ok, "scale rows in place", info);
  }
}

void Correlation(std::mt19937& rng, bool concordance, int64_t rows, int64_t steps) {
  std::normal_distribution<float> normal(0, 1);
  std::uniform_real_distribution<float> uniform(0, 1);
  std::vector<float> x(rows * steps), y(rows * steps), g(rows * steps);
  std::unique_ptr<bool[]> mask(new bool[rows * steps]);
  for (int64_t i = 0; i < rows * steps; ++i) {
    y[i] = normal(rng);
    x[i] = 0.5f * y[i] + normal(rng);
    g[i] = normal(rng);
    mask[i] = uniform(rng) < 0.8f;
  }
  struct Out {
    std::vector<float> loss, grad_y, grad_x;
    std::vector<double> row_stats;
    tfl_emu::LaunchInfo forward, backward;
  };
  auto run = [&](const RowLaunchOptions& options) {
    Out o{std::vector<float>(rows * steps), std::vector<float>(rows * steps), std::vector<float>(rows * steps),
          std::vector<double>(rows * 5), {}, {}};
    o.forward = tfl_emu::CorrelationForward(tfl_emu::Type::kFloat, y.data(), x.data(), mask.get(), 1e-7f, concordance,
                                            o.loss.data(), o.row_stats.data(), rows, steps, options);
    o.backward = tfl_emu::CorrelationBackward(tfl_emu::Type::kFloat, g.data(), y.data(), x.data(), mask.get(),
                                              o.row_stats.data(), 1e-7f, concordance, o.grad_y.data(),
                                              o.grad_x.data(), rows, steps, options);
    return o;
  };
  const Out whole = run(Options(0));
  const Out one_block = run(Options(0, 1));
  Expect(whole.loss == one_block.loss && whole.grad_x == one_block.grad_x && whole.grad_y == one_block.grad_y,
         concordance ? "ccc: one block walks the grid" : "pearson: one block walks the grid", whole.forward);
  const Out pieces = run(Options(128));
  Expect(Close(pieces.loss, whole.loss, 1e-4f) && Close(pieces.grad_x, whole.grad_x, 1e-4f) &&
             Close(pieces.grad_y, whole.grad_y, 1e-4f),
         concordance ? "ccc: pieces vs rows" : "pearson: pieces vs rows", pieces.backward);
}

}  // namespace

int main() {
  std::mt19937 rng(2024);
  Bpmll(rng, 9, 33);    // warp per row, more rows than warps in a block
  Bpmll(rng, 2, 1500);  // block per row
  BpmllHalfLabels(rng);
  ScaleRows(rng);
  Correlation(rng, false, 5, 200);
  Correlation(rng, true, 2, 1100);
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "passed", failures);
  return failures ? 1 : 0;
}
