"""The GPU check kit: the CUDA kernels of cuda/ against float64 numpy
references, without TensorFlow. `tools/gpu_check.sh [--emulate]` runs it;
docs/gpu.md says what it does and what it found.

Modules:
  numerics   storage dtypes (bfloat16 without ml_dtypes) and the comparison
  cases      the cases, and run_case(backend, case): the one harness
  backends   builds: the emulated module (tests/cuda_emu/build.py), the GPU
             module (nvcc), the XLA FFI handler libraries (Host and CUDA)
  ffi_check  the FFI handlers through jax.jit(jax.ffi.ffi_call(...))
  sanitize   compute-sanitizer over a reduced case set
  bench      CUDA-event timings against a device-to-device copy, JAX, PyTorch
  report     the table, gpu_check.json and gpu_check.md
  __main__   the driver (python -m gpu_kit)
"""

import os
import sys
import time as _time

KIT_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(KIT_DIR))
TESTS_DIR = os.path.join(ROOT, "tests")

# tests/cuda_emu (the emulation harness and the float64 references) is
# imported as the package `cuda_emu`, as the tests do.
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

_STARTED = _time.monotonic()


def elapsed():
    return _time.monotonic() - _STARTED


def log(message):
    """A progress line on stdout, with the seconds since the kit started."""
    print(f"[gpu_check {elapsed():6.1f}s] {message}", flush=True)
