// Per-ISA build: see cpu_isa_build.h.
#include "cpu_isa_build.h"  // first: checks TFL_CPU_ISA
#include "correlation_cpu_chunks.h"
#include "cpu_stream_store.h"

namespace tf_fused_losses {
namespace TFL_CPU_ISA {
namespace {

// Shifted two-loop moments. Shifting by the chunk's first valid value keeps
// the sums small when |mean| >> std, and makes a constant chunk give
// mean = its value and m2 = 0 exactly (every shifted value is 0). The
// second loop also sums the residuals, whose square removes the rounding of
// the first loop's mean (the corrected two-pass algorithm).
template <typename Acc, bool kMasked>
CorrelationMoments<Acc> ChunkMoments(const Acc* x, const Acc* y, const uint8_t* valid, int64_t n) {
  int64_t first = 0;
  if (kMasked) {
    while (first < n && valid[first] == 0) ++first;
    if (first == n) return CorrelationEmptyMoments<Acc>();
  }
  const Acc shift_x = x[first], shift_y = y[first];
  Acc count = 0, sum_x = 0, sum_y = 0;
#pragma omp simd reduction(+ : count, sum_x, sum_y)
  for (int64_t i = first; i < n; ++i) {
    const bool v = kMasked ? valid[i] != 0 : true;
    count += v ? Acc(1) : Acc(0);
    sum_x += v ? x[i] - shift_x : Acc(0);
    sum_y += v ? y[i] - shift_y : Acc(0);
  }
  const Acc mean_dx = sum_x / count, mean_dy = sum_y / count;
  Acc m2_x = 0, m2_y = 0, residual_x = 0, residual_y = 0;
#pragma omp simd reduction(+ : m2_x, m2_y, residual_x, residual_y)
  for (int64_t i = first; i < n; ++i) {
    const bool v = kMasked ? valid[i] != 0 : true;
    const Acc dx = (x[i] - shift_x) - mean_dx;
    const Acc dy = (y[i] - shift_y) - mean_dy;
    m2_x += v ? dx * dx : Acc(0);
    m2_y += v ? dy * dy : Acc(0);
    residual_x += v ? dx : Acc(0);
    residual_y += v ? dy : Acc(0);
  }
  m2_x -= residual_x * residual_x / count;
  m2_y -= residual_y * residual_y / count;
  CorrelationMoments<Acc> out;
  out.count = static_cast<double>(count);
  out.mean_x = shift_x + mean_dx;
  out.mean_y = shift_y + mean_dy;
  // The correction can overshoot by a rounding; NaN passes through.
  out.m2_x = m2_x < Acc(0) ? Acc(0) : m2_x;
  out.m2_y = m2_y < Acc(0) ? Acc(0) : m2_y;
  return out;
}

template <typename Acc, bool kMasked>
void ChunkLoss(const CorrelationRow<Acc>& row, const Acc* x, const Acc* y, const uint8_t* valid, int64_t n,
               bool stream, Acc* loss_out) {
  const CorrelationRow<Acc> r = row;
  StreamedChunkOutput<Acc, kCorrelationChunk> out(loss_out, stream);
  Acc* target = out.data();
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) target[i] = CorrelationElementLoss(r, x[i], y[i], kMasked ? valid[i] != 0 : true);
  out.Finish(n);
}

template <typename Acc, bool kMasked>
CorrelationGradSums<Acc> ChunkGradSums(const CorrelationRow<Acc>& row, const Acc* grad_loss, const Acc* x,
                                       const Acc* y, const uint8_t* valid, int64_t n) {
  const CorrelationRow<Acc> r = row;
  Acc cross = 0, sum_x = 0, sum_y = 0;
#pragma omp simd reduction(+ : cross, sum_x, sum_y)
  for (int64_t i = 0; i < n; ++i) {
    const bool v = kMasked ? valid[i] != 0 : true;
    const CorrelationGradSums<Acc> t = CorrelationGradTerms(r, grad_loss[i], x[i], y[i], v);
    cross += t.weighted_cross;
    sum_x += t.weighted_x;
    sum_y += t.weighted_y;
  }
  return CorrelationGradSums<Acc>{cross, sum_x, sum_y};
}

template <typename Acc, bool kMasked, bool kWriteY>
void ChunkGradient(const CorrelationGradCoeffs<Acc>& coeffs, const Acc* grad_loss, const Acc* x, const Acc* y,
                   const uint8_t* valid, int64_t n, bool stream, Acc* grad_x_out, Acc* grad_y_out) {
  const CorrelationGradCoeffs<Acc> c = coeffs;
  // A grad_x_out over grad_loss is in cache already: only fresh outputs stream.
  StreamedChunkOutput<Acc, kCorrelationChunk> out_x(grad_x_out, stream && grad_x_out != grad_loss);
  StreamedChunkOutput<Acc, kCorrelationChunk> out_y(grad_y_out, stream && kWriteY);
  Acc* const gx = out_x.data();
  Acc* const gy = out_y.data();
  // grad_x_out may be grad_loss (see CorrelationLossGradArgs): every input
  // of a step is read before its outputs are stored.
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const bool v = kMasked ? valid[i] != 0 : true;
    const Acc g = grad_loss[i], xi = x[i], yi = y[i];
    gx[i] = CorrelationGradientX(c, g, xi, yi, v);
    if constexpr (kWriteY) gy[i] = CorrelationGradientY(c, g, xi, yi, v);
  }
  out_x.Finish(n);
  out_y.Finish(n);
}

// The entry points pick the unmasked loops, which load no mask at all.
template <typename Acc>
CorrelationMoments<Acc> Moments(const Acc* x, const Acc* y, const uint8_t* valid, int64_t n) {
  return valid ? ChunkMoments<Acc, true>(x, y, valid, n) : ChunkMoments<Acc, false>(x, y, valid, n);
}

template <typename Acc>
void Loss(const CorrelationRow<Acc>& row, const Acc* x, const Acc* y, const uint8_t* valid, int64_t n, bool stream,
          Acc* loss_out) {
  valid ? ChunkLoss<Acc, true>(row, x, y, valid, n, stream, loss_out)
        : ChunkLoss<Acc, false>(row, x, y, valid, n, stream, loss_out);
}

template <typename Acc>
CorrelationGradSums<Acc> GradSums(const CorrelationRow<Acc>& row, const Acc* grad_loss, const Acc* x, const Acc* y,
                                  const uint8_t* valid, int64_t n) {
  return valid ? ChunkGradSums<Acc, true>(row, grad_loss, x, y, valid, n)
               : ChunkGradSums<Acc, false>(row, grad_loss, x, y, valid, n);
}

template <typename Acc>
void Gradient(const CorrelationGradCoeffs<Acc>& coeffs, const Acc* grad_loss, const Acc* x, const Acc* y,
              const uint8_t* valid, int64_t n, bool stream, Acc* grad_x_out, Acc* grad_y_out) {
  if (grad_y_out == nullptr) {
    valid ? ChunkGradient<Acc, true, false>(coeffs, grad_loss, x, y, valid, n, stream, grad_x_out, nullptr)
          : ChunkGradient<Acc, false, false>(coeffs, grad_loss, x, y, valid, n, stream, grad_x_out, nullptr);
  } else {
    valid ? ChunkGradient<Acc, true, true>(coeffs, grad_loss, x, y, valid, n, stream, grad_x_out, grad_y_out)
          : ChunkGradient<Acc, false, true>(coeffs, grad_loss, x, y, valid, n, stream, grad_x_out, grad_y_out);
  }
}

}  // namespace

#define TFL_STRINGIFY_INNER(x) #x
#define TFL_STRINGIFY(x) TFL_STRINGIFY_INNER(x)

template <typename Acc>
const CorrelationChunkOps<Acc>& CorrelationChunkOps() {
  static const tf_fused_losses::CorrelationChunkOps<Acc> ops = {TFL_STRINGIFY(TFL_CPU_ISA), &Moments<Acc>, &Loss<Acc>,
                                                                &GradSums<Acc>, &Gradient<Acc>};
  return ops;
}

template const tf_fused_losses::CorrelationChunkOps<float>& CorrelationChunkOps<float>();
template const tf_fused_losses::CorrelationChunkOps<double>& CorrelationChunkOps<double>();

}  // namespace TFL_CPU_ISA
}  // namespace tf_fused_losses
