#!/usr/bin/env bash
# The PyTorch user: a fresh venv with torch, keras and numpy (no TensorFlow,
# no JAX), the wheel installed, and the tests of the keras.ops forms, the Keras
# level and the fused torch ops on KERAS_BACKEND=torch from a copy of the tests.
#
#   tools/check_torch_env.sh WHEEL
# PyPI's Linux torch brings its CUDA libraries (about 5.7 GB installed; about
# 2 minutes here from a warm pip cache).
set -euo pipefail
wheel=$(realpath "${1:?usage: check_torch_env.sh WHEEL}")
source "$(dirname "$0")/check_env_lib.sh" tfl-torch-env

venv=$work/venv
log "fresh venv: torch, keras, numpy (no TensorFlow, no JAX)"
fresh_venv "$venv"
pip_in "$venv" install -q torch keras numpy pytest hypothesis scipy
pip_in "$venv" install -q "$wheel"
"$venv/bin/pip" list 2>/dev/null | grep -iE "^(torch|keras|tf-fused-losses) "

copy_tests tests
log "tests on KERAS_BACKEND=torch"
(cd "$work/tree" && KERAS_BACKEND=torch "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider \
    tests/test_keras_ops_path.py tests/test_backends.py tests/test_torch_ops.py tests/test_bpmll_from_ids.py tests/test_sequence_targets.py)
log "done"
