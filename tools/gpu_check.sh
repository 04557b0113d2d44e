#!/usr/bin/env bash
# The GPU check kit: proves the CUDA kernels of cuda/ without TensorFlow.
#
#   tools/gpu_check.sh             on a GPU machine: builds the kernels with nvcc
#                                  for the local GPU's arch, runs every case against
#                                  float64 numpy references, the XLA FFI handlers
#                                  through jax.jit (Host and CUDA), compute-sanitizer
#                                  (memcheck, racecheck, synccheck, initcheck) and
#                                  the benchmarks; at most ~8 minutes
#   tools/gpu_check.sh --emulate   the same cases on the CPU emulation (g++ against
#                                  tests/cuda_emu/cuda_emulation.h) and the Host FFI
#                                  handlers; no GPU needed
#
# Writes gpu_check.json and gpu_check.md to $OUT when set, else build/gpu_check/,
# and a table on stdout. Exit status 1 when a case fails, a build fails or a
# sanitizer reports errors. Needs python3 with numpy and pybind11 (jax and torch
# optional), g++, and on a GPU nvcc. Downloads nothing; imports no
# TensorFlow. More options: tools/gpu_check.sh --help; docs/gpu.md.
#
# Environment: PYTHON (the interpreter), TFL_KIT_JOBS (compile jobs), TFL_KIT_ARCH
# (e.g. 90), NVCC / CUDA_HOME, TFL_KIT_COMMIT (when there is no .git).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
started=$SECONDS

python=${PYTHON:-}
if [[ -z $python ]]; then
    for candidate in python3 python; do
        if command -v "$candidate" > /dev/null 2>&1; then
            python=$(command -v "$candidate")
            break
        fi
    done
fi
if [[ -z $python ]]; then
    echo "gpu_check.sh: no python3 found (set PYTHON)" >&2
    exit 2
fi
missing=$("$python" -c '
import importlib.util
print(" ".join(m for m in ("numpy", "pybind11") if importlib.util.find_spec(m) is None))')
if [[ -n $missing ]]; then
    echo "gpu_check.sh: $python lacks: $missing" >&2
    exit 2
fi
echo "gpu_check.sh: $("$python" --version 2>&1) at $python; repository $root"

status=0
PYTHONPATH="$root/tools${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 \
    "$python" -m gpu_kit run "$@" || status=$?
echo "gpu_check.sh: exit status $status after $((SECONDS - started)) s"
exit $status
