// TensorFlow's XLA frontend: tf2xla lowerings that turn the four fused ops
// into typed-FFI custom calls, and the registration of their handlers
// (ffi_handlers.h) with the XLA that TensorFlow links. Inside jit_compile
// functions the same CPU row drivers and CUDA kernels then run as inside the
// OpKernels.
#include <cstdio>
#include <string>
#include <vector>

#include "ffi_handlers.h"
#include "tensorflow/compiler/tf2xla/xla_op_kernel.h"
#include "tensorflow/compiler/tf2xla/xla_op_registry.h"
#include "tensorflow/core/framework/kernel_def.pb.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_def.pb.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "xla/ffi/api/ffi.h"
#include "xla/hlo/builder/xla_builder.h"
#include "xla/shape_util.h"

// GCC 12 flags absl::InlinedVector's copy (inside xla::ShapeIndex, built
// here) as maybe-uninitialized: a known false positive in absl's code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Defined in libtensorflow_cc; its header (xla/ffi/ffi_api.h) pulls in MLIR,
// which the TensorFlow wheel does not ship.
namespace xla::ffi {
const XLA_FFI_Api* GetXlaFfiApi();
}  // namespace xla::ffi

XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_BPMLL_LOSS, "Host", TflBpmllLossHost);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_BPMLL_LOSS_GRAD, "Host", TflBpmllLossGradHost);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_BPMLL_IDS_LOSS, "Host", TflBpmllIdsLossHost);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_CORRELATION_LOSS, "Host", TflCorrelationLossHost);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_CORRELATION_LOSS_GRAD, "Host",
                         TflCorrelationLossGradHost);
#if GOOGLE_CUDA
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_BPMLL_LOSS, "CUDA", TflBpmllLossCuda);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_BPMLL_LOSS_GRAD, "CUDA", TflBpmllLossGradCuda);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_BPMLL_IDS_LOSS, "CUDA", TflBpmllIdsLossCuda);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_CORRELATION_LOSS, "CUDA", TflCorrelationLossCuda);
XLA_FFI_REGISTER_HANDLER(xla::ffi::GetXlaFfiApi(), TFL_FFI_TARGET_CORRELATION_LOSS_GRAD, "CUDA",
                         TflCorrelationLossGradCuda);
#endif

namespace tf_fused_losses {
namespace {

using tensorflow::XlaOpKernel;
using tensorflow::XlaOpKernelContext;

xla::Shape RowMajor(xla::PrimitiveType type, absl::Span<const int64_t> dims) {
  return xla::ShapeUtil::MakeShapeWithDescendingLayout(type, dims);
}

// Emits target(inputs...) -> (outputs...) with row-major layouts, so that the
// handlers see flat arrays, and sets the op's outputs from the tuple.
// aliased: {output k, input i} pairs whose buffers may be shared, as the
// OpKernels forward an input buffer to an output (XLA copies the input first
// where it is still needed).
void EmitCustomCall(XlaOpKernelContext* ctx, const char* target, int num_inputs, const std::vector<xla::Shape>& outputs,
                    const std::string& attributes, std::vector<std::pair<int, int>> aliased = {}) {
  std::vector<xla::XlaOp> operands;
  std::vector<xla::Shape> operand_shapes;
  for (int i = 0; i < num_inputs; ++i) {
    absl::StatusOr<xla::Shape> shape = ctx->InputXlaShape(i);
    OP_REQUIRES_OK(ctx, shape.status());
    operands.push_back(ctx->Input(i));
    operand_shapes.push_back(RowMajor(shape->element_type(), shape->dimensions()));
  }
  std::vector<std::pair<xla::ShapeIndex, std::pair<int64_t, xla::ShapeIndex>>> aliasing;
  for (const auto& [output, input] : aliased) aliasing.push_back({xla::ShapeIndex({output}), {input, xla::ShapeIndex()}});
  const xla::XlaOp call = xla::CustomCallWithLayout(
      ctx->builder(), target, operands, xla::ShapeUtil::MakeTupleShape(outputs), operand_shapes, attributes,
      /*has_side_effect=*/false, aliasing, /*literal=*/nullptr,
      xla::CustomCallSchedule::SCHEDULE_NONE, xla::CustomCallApiVersion::API_VERSION_TYPED_FFI);
  for (int k = 0; k < static_cast<int>(outputs.size()); ++k) ctx->SetOutput(k, xla::GetTupleElement(call, k));
}

// The typed FFI reads attributes from an MLIR dictionary in backend_config;
// floats need their decimal point and type.
std::string CorrelationAttributes(bool concordance, float epsilon, const char* extra = "") {
  char text[160];
  std::snprintf(text, sizeof(text), "{concordance = %s, epsilon = %.9e : f32%s}", concordance ? "true" : "false",
                static_cast<double>(epsilon), extra);
  return text;
}

absl::StatusOr<std::vector<int64_t>> InputDims(XlaOpKernelContext* ctx, int i) {
  absl::StatusOr<xla::Shape> shape = ctx->InputXlaShape(i);
  if (!shape.ok()) return shape.status();
  return std::vector<int64_t>(shape->dimensions().begin(), shape->dimensions().end());
}

// FusedBpmllLoss(y_true, y_pred), and FusedBpmllIdsLoss(label_ids, y_pred)
// with target TFL_FFI_TARGET_BPMLL_IDS_LOSS: both give (loss, grad) shaped
// by y_pred.
class BpmllLossLowering : public XlaOpKernel {
 public:
  explicit BpmllLossLowering(tensorflow::OpKernelConstruction* ctx, const char* target = TFL_FFI_TARGET_BPMLL_LOSS)
      : XlaOpKernel(ctx), target_(target) {}
  void Compile(XlaOpKernelContext* ctx) override {
    absl::StatusOr<std::vector<int64_t>> dims = InputDims(ctx, 1);
    OP_REQUIRES_OK(ctx, dims.status());
    OP_REQUIRES(ctx, dims->size() == 2,
                tensorflow::errors::InvalidArgument(type_string(), ": y_pred must be rank 2 (batch, labels), got ",
                                                    dims->size(), " dimensions"));
    const xla::PrimitiveType type = ctx->input_xla_type(1);
    EmitCustomCall(ctx, target_, 2, {RowMajor(type, {(*dims)[0]}), RowMajor(type, *dims)}, "");
  }

 private:
  const char* target_;
};

class BpmllIdsLossLowering : public BpmllLossLowering {
 public:
  explicit BpmllIdsLossLowering(tensorflow::OpKernelConstruction* ctx)
      : BpmllLossLowering(ctx, TFL_FFI_TARGET_BPMLL_IDS_LOSS) {}
};

class BpmllLossGradLowering : public XlaOpKernel {
 public:
  explicit BpmllLossGradLowering(tensorflow::OpKernelConstruction* ctx) : XlaOpKernel(ctx) {}
  void Compile(XlaOpKernelContext* ctx) override {
    absl::StatusOr<std::vector<int64_t>> dims = InputDims(ctx, 1);
    OP_REQUIRES_OK(ctx, dims.status());
    // The scaled gradient overwrites the cached one, as the OpKernel does.
    EmitCustomCall(ctx, TFL_FFI_TARGET_BPMLL_LOSS_GRAD, 2, {RowMajor(ctx->input_xla_type(1), *dims)}, "", {{0, 1}});
  }
};

class CorrelationLossLowering : public XlaOpKernel {
 public:
  explicit CorrelationLossLowering(tensorflow::OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("concordance", &concordance_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
  }
  void Compile(XlaOpKernelContext* ctx) override {
    absl::StatusOr<std::vector<int64_t>> dims = InputDims(ctx, 1);
    OP_REQUIRES_OK(ctx, dims.status());
    OP_REQUIRES(ctx, dims->size() == 2 || dims->size() == 3,
                tensorflow::errors::InvalidArgument(
                    "FusedCorrelationLoss: y_pred must be (batch, steps) or (batch, steps, 1), got ", dims->size(),
                    " dimensions"));
    const int64_t rows = (*dims)[0], steps = (*dims)[1];
    EmitCustomCall(ctx, TFL_FFI_TARGET_CORRELATION_LOSS, 3,
                   {RowMajor(ctx->input_xla_type(1), {rows, steps}), RowMajor(xla::F64, {rows, 5})},
                   CorrelationAttributes(concordance_, epsilon_));
  }

 private:
  bool concordance_ = false;
  float epsilon_ = 0;
};

class CorrelationLossGradLowering : public XlaOpKernel {
 public:
  explicit CorrelationLossGradLowering(tensorflow::OpKernelConstruction* ctx) : XlaOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("concordance", &concordance_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("epsilon", &epsilon_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("compute_grad_y_true", &compute_grad_y_true_));
  }
  void Compile(XlaOpKernelContext* ctx) override {
    absl::StatusOr<std::vector<int64_t>> true_dims = InputDims(ctx, 1);
    absl::StatusOr<std::vector<int64_t>> pred_dims = InputDims(ctx, 2);
    OP_REQUIRES_OK(ctx, true_dims.status());
    OP_REQUIRES_OK(ctx, pred_dims.status());
    absl::StatusOr<std::vector<int64_t>> grad_loss_shape = InputDims(ctx, 0);
    OP_REQUIRES_OK(ctx, grad_loss_shape.status());
    const std::vector<int64_t>& grad_loss_dims = *grad_loss_shape;
    const xla::PrimitiveType type = ctx->input_xla_type(2);
    const std::vector<int64_t> grad_y_true_dims = compute_grad_y_true_ ? *true_dims : std::vector<int64_t>{0};
    EmitCustomCall(ctx, TFL_FFI_TARGET_CORRELATION_LOSS_GRAD, 5,
                   {RowMajor(type, grad_y_true_dims), RowMajor(type, *pred_dims)},
                   CorrelationAttributes(concordance_, epsilon_,
                                         compute_grad_y_true_ ? ", compute_grad_y_true = true"
                                                              : ", compute_grad_y_true = false"),
                   // grad_y_pred into grad_loss's buffer (the kernels read an
                   // element's grad_loss before writing it), when the shapes agree.
                   *pred_dims == grad_loss_dims ? std::vector<std::pair<int, int>>{{1, 0}}
                                                : std::vector<std::pair<int, int>>{});
  }

 private:
  bool concordance_ = false;
  float epsilon_ = 0;
  bool compute_grad_y_true_ = true;
};

// The XLA devices the lowerings serve: the CPU, and the GPU where the CUDA
// handlers are built.
const absl::string_view kXlaDevices[] = {
    tensorflow::DEVICE_CPU_XLA_JIT,
#if GOOGLE_CUDA
    tensorflow::DEVICE_GPU_XLA_JIT,
#endif
};

REGISTER_XLA_OP(Name("FusedBpmllLoss").Device(kXlaDevices), BpmllLossLowering);
REGISTER_XLA_OP(Name("FusedBpmllLossGrad").Device(kXlaDevices), BpmllLossGradLowering);
REGISTER_XLA_OP(Name("FusedBpmllIdsLoss").Device(kXlaDevices), BpmllIdsLossLowering);
REGISTER_XLA_OP(Name("FusedCorrelationLoss").Device(kXlaDevices), CorrelationLossLowering);
REGISTER_XLA_OP(Name("FusedCorrelationLossGrad").Device(kXlaDevices), CorrelationLossGradLowering);

// Late loading. XlaOpRegistry::RegisterCompilationKernels() turns the
// REGISTER_XLA_OP entries into kernels of the XLA JIT devices once per
// process, at the first XLA compilation; a library loaded after that would be
// missed ("No registered 'FusedBpmllLoss' OpKernel for XLA_CPU_JIT"). Then
// the kernels are registered here, as that function would have.
template <class Lowering>
tensorflow::OpKernel* CreateLowering(tensorflow::OpKernelConstruction* ctx) {
  return new Lowering(ctx);
}

// A kernel of `device` for `op`, with the op's own type constraints.
void RegisterLate(const std::string& device, const char* op,
                  tensorflow::OpKernel* (*create)(tensorflow::OpKernelConstruction*)) {
  const tensorflow::OpDef* op_def = nullptr;
  if (!tensorflow::OpRegistry::Global()->LookUpOpDef(op, &op_def).ok()) return;
  auto* def = new tensorflow::KernelDef();  // owned by the registry for the life of the process
  def->set_op(op);
  def->set_device_type(device);
  for (const tensorflow::OpDef::AttrDef& attr : op_def->attr()) {
    if (attr.type() != "type" || !attr.has_allowed_values()) continue;
    tensorflow::KernelDef::AttrConstraint* constraint = def->add_constraint();
    constraint->set_name(attr.name());
    *constraint->mutable_allowed_values() = attr.allowed_values();
  }
  new tensorflow::kernel_factory::OpKernelRegistrar(def, "XlaJitOp", create);
}

const bool kLateRegistration = [] {
  // Any standard op's XLA kernel shows whether the JIT kernels exist yet.
  if (tensorflow::KernelsRegisteredForOp("Sin").find(tensorflow::DEVICE_CPU_XLA_JIT) == std::string::npos) {
    return false;
  }
  for (absl::string_view device_name : kXlaDevices) {
    const std::string device(device_name);
    if (!tensorflow::XlaOpRegistry::IsBackendRegistered(device)) continue;
    RegisterLate(device, "FusedBpmllLoss", &CreateLowering<BpmllLossLowering>);
    RegisterLate(device, "FusedBpmllLossGrad", &CreateLowering<BpmllLossGradLowering>);
    RegisterLate(device, "FusedBpmllIdsLoss", &CreateLowering<BpmllIdsLossLowering>);
    RegisterLate(device, "FusedCorrelationLoss", &CreateLowering<CorrelationLossLowering>);
    RegisterLate(device, "FusedCorrelationLossGrad", &CreateLowering<CorrelationLossGradLowering>);
  }
  return true;
}();

}  // namespace
}  // namespace tf_fused_losses
