// One part of the GPU build of the kernel wrappers of tests/cuda_emu/emu_ops.h:
// nvcc compiles this file once per (logit type, op group), in parallel
// (tools/gpu_kit/backends.py), and the parts are linked with the pybind11
// module tests/cuda_emu/emu_module.cc (built by g++ with
// TFL_EMU_DEVICE_MEMORY). The emulation compiles the same wrappers in one
// translation unit instead.
//
//   -DTFL_KIT_TYPE=kFloat          the logit type of this part
//   -DTFL_KIT_GROUP=1              1: BP-MLL with every label type;
//                                  2: the grad-scale and correlation kernels
//   -DTFL_KIT_PLAN=1               this part also defines tfl_emu::Plan
#define TFL_EMU_SEPARATE_PARTS 1
#include "emu_ops_impl.h"

#if !defined(TFL_KIT_TYPE) || !defined(TFL_KIT_GROUP)
#error "define TFL_KIT_TYPE (kHalf, kBfloat16, kFloat, kDouble) and TFL_KIT_GROUP (1 or 2)"
#endif

namespace tfl_emu {

#if TFL_KIT_GROUP == 1
#define TFL_KIT_BPMLL(LABEL)                                                                                      \
  template LaunchInfo BpmllAs<Type::TFL_KIT_TYPE, Type::LABEL>(const void*, const void*, void*, void*, int64_t, \
                                                              int64_t, const Options&);
TFL_KIT_BPMLL(kHalf)
TFL_KIT_BPMLL(kBfloat16)
TFL_KIT_BPMLL(kFloat)
TFL_KIT_BPMLL(kDouble)
TFL_KIT_BPMLL(kInt32)
TFL_KIT_BPMLL(kInt64)
TFL_KIT_BPMLL(kUint8)
TFL_KIT_BPMLL(kBool)
#undef TFL_KIT_BPMLL
#else
template LaunchInfo ScaleRowsAs<Type::TFL_KIT_TYPE>(const void*, const void*, void*, int64_t, int64_t,
                                                    const Options&);
template LaunchInfo CorrelationForwardAs<Type::TFL_KIT_TYPE>(const void*, const void*, const bool*, float, bool,
                                                             void*, double*, int64_t, int64_t, const Options&);
template LaunchInfo CorrelationBackwardAs<Type::TFL_KIT_TYPE>(const void*, const void*, const void*, const bool*,
                                                              const double*, float, bool, void*, void*, int64_t,
                                                              int64_t, const Options&);
#endif

#if defined(TFL_KIT_PLAN) && TFL_KIT_PLAN
PlanInfo Plan(int64_t rows, int64_t row_length, int64_t partial_bytes, const Options& options) {
  return PlanImpl(rows, row_length, partial_bytes, options);
}
#endif

}  // namespace tfl_emu
