#!/usr/bin/env bash
# Instruction counts of the fused BP-MLL forward+backward under callgrind.
# usage: bench/profile_bpmll.sh OUT_DIR [profile_bpmll.py options, e.g. --batch 256 --labels 30000]
# Needs valgrind (with its headers) and the package importable (PYTHONPATH).
# Valgrind does not emulate AVX-512: the kernels' AVX2 build runs here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:?usage: bench/profile_bpmll.sh OUT_DIR [driver options]}
shift
py=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$out"
out=$(cd "$out" && pwd)
gcc -O2 -shared -fPIC -o "$out/libcallgrind_toggle.so" "$root/bench/callgrind_toggle.c"
rm -f "$out"/callgrind.out.*
valgrind --tool=callgrind --instr-atstart=no --dump-instr=yes --callgrind-out-file="$out/callgrind.out.%p" \
  "$py" "$root/bench/profile_bpmll.py" --toggle-lib "$out/libcallgrind_toggle.so" "$@" 2> "$out/valgrind.log"
# The client request's dump is the second part (.1); the first is the rest of the run.
measured=$(ls "$out"/callgrind.out.*.1)
"$py" "$root/bench/profile_bpmll.py" --summarize "$measured" "$@" | tee "$out/summary.md"
