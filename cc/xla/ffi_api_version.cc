// The XLA FFI C API version that this library's handlers were compiled
// against (XLA_FFI_API_MAJOR / XLA_FFI_API_MINOR of the xla/ffi/api/c_api.h
// the build used). A frontend that registers the handlers itself (JAX:
// python/tf_fused_losses/_jax_ops.py) compares it with the version its own
// XLA implements before registering, so that a mismatch is reported with both
// versions instead of as a failed registration or a crash.
#include <cstdint>

#include "xla/ffi/api/c_api.h"

extern "C" void TflXlaFfiApiVersion(int32_t* major, int32_t* minor) {
  if (major != nullptr) *major = XLA_FFI_API_MAJOR;
  if (minor != nullptr) *minor = XLA_FFI_API_MINOR;
}
