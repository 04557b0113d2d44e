// Shape checks and element-type dispatch shared by the Host and CUDA FFI
// handlers. Errors name the op, the argument, its shape and what was
// expected, as the TF ops' do.
#ifndef TF_FUSED_LOSSES_CC_XLA_FFI_COMMON_H_
#define TF_FUSED_LOSSES_CC_XLA_FFI_COMMON_H_

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "correlation_math.h"
#include "cpu_half_types.h"
#include "xla/ffi/api/ffi.h"

namespace tf_fused_losses {
namespace ffi_frontend {

namespace ffi = ::xla::ffi;

inline std::string ShapeString(const ffi::AnyBuffer& b) {
  std::ostringstream out;
  out << "[";
  const auto dims = b.dimensions();
  for (size_t i = 0; i < dims.size(); ++i) out << (i ? "," : "") << dims[i];
  out << "]";
  return out.str();
}

inline ffi::Error InvalidArgument(const std::string& message) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, message);
}

inline const char* DtypeName(ffi::DataType type) {
  static constexpr std::pair<ffi::DataType, const char*> kNames[] = {
      {ffi::DataType::F16, "float16"}, {ffi::DataType::BF16, "bfloat16"}, {ffi::DataType::F32, "float32"},
      {ffi::DataType::F64, "float64"}, {ffi::DataType::S32, "int32"},     {ffi::DataType::S64, "int64"},
      {ffi::DataType::U8, "uint8"},    {ffi::DataType::PRED, "bool"}};
  for (const auto& [known, name] : kNames) {
    if (known == type) return name;
  }
  return "another dtype";
}

// An error unless `b` is `type` of shape `dims`, "what" saying where those
// come from. A handler calls this for every buffer whose extents it takes
// from another: a caller of jax.ffi.ffi_call declares them all, and a
// mismatch would otherwise be read or written out of bounds.
inline ffi::Error ExpectBuffer(const char* op, const char* name, const ffi::AnyBuffer& b,
                               const std::vector<int64_t>& dims, ffi::DataType type, const char* what) {
  const auto got = b.dimensions();
  if (std::equal(got.begin(), got.end(), dims.begin(), dims.end()) && b.element_type() == type) {
    return ffi::Error::Success();
  }
  std::string expected;
  for (int64_t d : dims) expected += (expected.empty() ? "" : ",") + std::to_string(d);
  return InvalidArgument(std::string(op) + ": " + name + " must be " + DtypeName(type) + " of shape [" + expected +
                         "] (" + what + "), got " + DtypeName(b.element_type()) + " of shape " + ShapeString(b));
}

// Calls f(T{}) with T the storage type of a logit buffer.
template <typename F>
ffi::Error WithLogitType(const char* op, const char* name, ffi::DataType type, F&& f) {
  switch (type) {
    case ffi::DataType::F16:
      return f(Float16Bits{});
    case ffi::DataType::BF16:
      return f(BFloat16Bits{});
    case ffi::DataType::F32:
      return f(float{});
    case ffi::DataType::F64:
      return f(double{});
    default:
      return InvalidArgument(std::string(op) + ": " + name + " must be float16, bfloat16, float32 or float64");
  }
}

// Calls f(TLabel{}) with TLabel the storage type of a BP-MLL label buffer.
template <typename F>
ffi::Error WithLabelType(const char* op, ffi::DataType type, F&& f) {
  switch (type) {
    case ffi::DataType::S32:
      return f(int32_t{});
    case ffi::DataType::S64:
      return f(int64_t{});
    case ffi::DataType::U8:
      return f(uint8_t{});
    case ffi::DataType::PRED:
      return f(bool{});
    default:
      return WithLogitType(op, "y_true", type, f);
  }
}

struct RowShape {
  int64_t rows = 0;
  int64_t length = 0;
};

inline ffi::Error BpmllShape(const char* op, const ffi::AnyBuffer& y_true, const ffi::AnyBuffer& y_pred, RowShape* s) {
  const auto pred = y_pred.dimensions();
  const auto labels = y_true.dimensions();
  if (pred.size() != 2) {
    return InvalidArgument(std::string(op) + ": y_pred must be rank 2 (batch, labels), got shape " + ShapeString(y_pred));
  }
  if (labels.size() != 2 || labels[0] != pred[0] || labels[1] != pred[1]) {
    return InvalidArgument(std::string(op) + ": y_true and y_pred must have the same shape, got " +
                           ShapeString(y_true) + " and " + ShapeString(y_pred));
  }
  s->rows = pred[0];
  s->length = pred[1];
  return ffi::Error::Success();
}

// (batch, steps) or (batch, steps, 1), both the same; mask (batch, steps) bool or (0,).
inline ffi::Error CorrelationShape(const char* op, const ffi::AnyBuffer& y_true, const ffi::AnyBuffer& y_pred,
                                   const ffi::AnyBuffer& mask, RowShape* s, bool* has_mask) {
  for (const ffi::AnyBuffer* b : {&y_true, &y_pred}) {
    const auto d = b->dimensions();
    if (!(d.size() == 2 || (d.size() == 3 && d[2] == 1))) {
      return InvalidArgument(std::string(op) + ": " + (b == &y_true ? "y_true" : "y_pred") +
                             " must be (batch, steps) or (batch, steps, 1), got shape " + ShapeString(*b));
    }
  }
  const auto t = y_true.dimensions();
  const auto p = y_pred.dimensions();
  if (t[0] != p[0] || t[1] != p[1]) {
    return InvalidArgument(std::string(op) + ": y_true and y_pred must have the same (batch, steps), got shapes " +
                           ShapeString(y_true) + " and " + ShapeString(y_pred));
  }
  if (y_true.element_type() != y_pred.element_type()) {
    return InvalidArgument(std::string(op) + ": y_true and y_pred must have the same dtype");
  }
  s->rows = p[0];
  s->length = p[1];
  const auto m = mask.dimensions();
  *has_mask = !(m.size() == 1 && m[0] == 0);
  if (*has_mask && !(m.size() == 2 && m[0] == s->rows && m[1] == s->length &&
                     mask.element_type() == ffi::DataType::PRED)) {
    return InvalidArgument(std::string(op) + ": mask must be bool of shape (batch, steps) = [" +
                           std::to_string(s->rows) + "," + std::to_string(s->length) +
                           "] (or shape [0] for no mask), got shape " + ShapeString(mask));
  }
  return ffi::Error::Success();
}

// grad_loss (batch,) and cached_grad (batch, labels).
inline ffi::Error BpmllGradShape(const char* op, const ffi::AnyBuffer& grad_loss, const ffi::AnyBuffer& cached_grad,
                                 RowShape* s) {
  const auto dims = cached_grad.dimensions();
  if (dims.size() != 2 || grad_loss.dimensions().size() != 1 || grad_loss.dimensions()[0] != dims[0]) {
    return InvalidArgument(std::string(op) + ": grad_loss must be (batch,) and cached_grad (batch, labels); got " +
                           ShapeString(grad_loss) + " and " + ShapeString(cached_grad));
  }
  s->rows = dims[0];
  s->length = dims[1];
  return ExpectBuffer(op, "grad_loss", grad_loss, {s->rows}, cached_grad.element_type(),
                      "the forward loss's shape (batch,) and cached_grad's dtype");
}

// The backward op's inputs: as the forward's, grad_loss (batch, steps) of
// y_pred's dtype (the forward loss) and row_stats (batch, 5) float64.
inline ffi::Error CorrelationGradShape(const char* op, const ffi::AnyBuffer& grad_loss, const ffi::AnyBuffer& y_true,
                                       const ffi::AnyBuffer& y_pred, const ffi::AnyBuffer& mask,
                                       const ffi::AnyBuffer& row_stats, RowShape* s, bool* has_mask) {
  if (ffi::Error e = CorrelationShape(op, y_true, y_pred, mask, s, has_mask); e.failure()) return e;
  if (ffi::Error e = ExpectBuffer(op, "grad_loss", grad_loss, {s->rows, s->length}, y_pred.element_type(),
                                  "the forward loss's shape (batch, steps) and y_pred's dtype");
      e.failure()) {
    return e;
  }
  return ExpectBuffer(op, "row_stats", row_stats, {s->rows, kCorrelationRowStats}, ffi::DataType::F64,
                      "the forward's row_stats: (batch, 5)");
}

// The operands, results and attributes of each custom call (ffi_handlers.h),
// appended to a binding that already holds the platform's context (the Host
// thread pool, or the CUDA stream and scratch allocator).
template <typename Binding>
auto BpmllLossSignature(Binding binding) {
  return std::move(binding).template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>();
}
template <typename Binding>
auto BpmllLossGradSignature(Binding binding) {
  return std::move(binding).template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>();
}
template <typename Binding>
auto CorrelationLossSignature(Binding binding) {
  return std::move(binding).template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attr<bool>("concordance")
      .template Attr<float>("epsilon");
}
template <typename Binding>
auto CorrelationLossGradSignature(Binding binding) {
  return std::move(binding).template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>()
      .template Attr<bool>("concordance")
      .template Attr<float>("epsilon")
      .template Attr<bool>("compute_grad_y_true");
}

}  // namespace ffi_frontend
}  // namespace tf_fused_losses

#endif  // TF_FUSED_LOSSES_CC_XLA_FFI_COMMON_H_
