#!/usr/bin/env bash
# The JAX-only user: a fresh venv with jax[cpu], keras and numpy and no
# TensorFlow, `pip install .` from this checkout (an isolated build: the
# backend builds the TF-free core against the installed jaxlib's XLA FFI
# headers), then the functional and Keras-level tests on KERAS_BACKEND=jax
# from a copy of the tests, so that the installed package is the one imported.
#
#   tools/check_jax_env.sh        (TFL_CUDA=off by default here: CI compiles the
#                                  CUDA handlers in `make test` already)
set -euo pipefail
source "$(dirname "$0")/check_env_lib.sh" tfl-jax-env
# test_core_ffi_checks: the Host handlers through direct jax.ffi calls;
# test_gpu_kit's FFI check: every kit FFI case through jax.jit (builds the
# handlers from cc/ with g++, hence the sources and pybind11 below).
tests=(tests/test_jax_ops.py tests/test_jax_sharding.py tests/test_head_sharded.py tests/test_keras_ops_path.py tests/test_backends.py tests/test_dispatch.py
       tests/test_bpmll_from_ids.py tests/test_sequence_targets.py
       tests/test_core_ffi_checks.py tests/test_gpu_kit.py::test_ffi_handlers_through_jax)

venv=$work/venv
log "fresh venv: jax[cpu], keras, numpy, pybind11 (no TensorFlow)"
fresh_venv "$venv"
pip_in "$venv" install -q "jax[cpu]" keras numpy pytest hypothesis scipy pybind11
log "pip install $root (isolated build, TFL_CUDA=${TFL_CUDA:-off})"
TFL_CUDA=${TFL_CUDA:-off} TFL_BUILD_DIR=$work/cmake pip_in "$venv" install -q "$root"
if "$venv/bin/python" -c "import importlib.util as u, sys; sys.exit(u.find_spec('tensorflow') is None)"; then
    echo "TensorFlow got installed into the JAX-only venv" >&2
    exit 1
fi
"$venv/bin/pip" list 2>/dev/null | grep -iE "^(jax|jaxlib|keras|tf-fused-losses) "

copy_tests tests tools cc cuda
log "tests on KERAS_BACKEND=jax: ${tests[*]}"
(cd "$work/tree" && KERAS_BACKEND=jax "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider "${tests[@]}")

log "done"
