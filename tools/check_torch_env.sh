#!/usr/bin/env bash
# The PyTorch user: a fresh venv with torch, keras and numpy (no TensorFlow,
# no JAX), the wheel installed, and the keras.ops forms' and the Keras-level
# tests on KERAS_BACKEND=torch from a copy of the tests.
#
#   tools/check_torch_env.sh WHEEL
# PyPI's Linux torch brings its CUDA libraries (about 5.7 GB installed; about
# 2 minutes here from a warm pip cache).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
wheel=$(realpath "${1:?usage: check_torch_env.sh WHEEL}")
work=$(mktemp -d -t tfl-torch-env.XXXXXX)
trap 'rm -rf "$work"' EXIT
started=$SECONDS
log() { printf '==> [%4ds] %s\n' $((SECONDS - started)) "$*" >&2; }
pip_in() { "$1/bin/pip" "${@:2}" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

venv=$work/venv
log "fresh venv: torch, keras, numpy (no TensorFlow, no JAX)"
python3 -m venv "$venv"
pip_in "$venv" install -q --upgrade pip
pip_in "$venv" install -q torch keras numpy pytest hypothesis scipy
pip_in "$venv" install -q "$wheel"
"$venv/bin/pip" list 2>/dev/null | grep -iE "^(torch|keras|tf-fused-losses) "

mkdir -p "$work/tree"
tar -C "$root" -c tests pyproject.toml | tar -C "$work/tree" -x
log "tests on KERAS_BACKEND=torch"
(cd "$work/tree" && KERAS_BACKEND=torch "$venv/bin/python" -m pytest -q -rs -p no:cacheprovider \
    tests/test_keras_ops_path.py tests/test_backends.py)
log "done"
