#!/usr/bin/env bash
# Developer build without pip: compiles into $1/cmake and stages an importable
# package at $1/pkg, so that several people can build and test from one tree
# at once (run tests with PYTHONPATH=$1/pkg). Extra arguments go to cmake.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: tools/dev_stage.sh OUT_DIR [cmake args...]}
shift
py=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$out/cmake" "$out/pkg"
cmake -S "$root" -B "$out/cmake" -DPython3_EXECUTABLE="$py" -DTFL_TF_PYTHONS="$py" "$@" > "$out/cmake.log"
cmake --build "$out/cmake" --target tf_fused_losses -j "${TFL_JOBS:-2}"
rm -rf "$out/pkg/tf_fused_losses"
cp -r "$root/python/tf_fused_losses" "$out/pkg/"
# The source tree's lib/ may be a developer's link to another build.
rm -rf "$out/pkg/tf_fused_losses/lib"
cp -r "$out/cmake/lib" "$out/pkg/tf_fused_losses/lib"
echo "staged: PYTHONPATH=$out/pkg"
