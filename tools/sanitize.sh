#!/usr/bin/env bash
# Builds the op library with AddressSanitizer and UndefinedBehaviorSanitizer
# (CPU kernels only) into its own folder through tools/dev_stage.sh, then runs
# the op tests with the sanitizer runtimes preloaded into the uninstrumented
# Python. Any report fails the run: ASan aborts on its first error, UBSan is
# compiled not to recover.
#
#   tools/sanitize.sh [OUT_DIR] [pytest args...]     (OUT_DIR: /tmp/tf_fused_losses_sanitize)
#
# Leak detection is off: CPython and TensorFlow keep allocations to exit by
# design. TFL_SANITIZE_TESTS overrides the test files; TFL_JOBS the build jobs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-/tmp/tf_fused_losses_sanitize}
shift $(($# > 0 ? 1 : 0))
py=${PYTHON:-$root/.venv/bin/python}
cxx=${CXX:-g++}

# GCC's null-pointer checks (null, nonnull-attribute, returns-nonnull-attribute)
# turn off -fdelete-null-pointer-checks, and Abseil's headers in TensorFlow
# then fail to compile ("... == 0 is not a constant expression"); ASan still
# reports a null dereference as a SEGV with its stack. float-cast-overflow is
# not in -fsanitize=undefined, and float-to-int conversions happen in exp().
flags="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize=null,nonnull-attribute,returns-nonnull-attribute"
flags+=" -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
start=$(date +%s)
"$root/tools/dev_stage.sh" "$out" -DTFL_CUDA=off -DCMAKE_CXX_COMPILER="$(command -v "$cxx")" "-DCMAKE_CXX_FLAGS=$flags"
built=$(date +%s)
echo "sanitizer build: $((built - start)) s"

runtimes="$("$cxx" -print-file-name=libasan.so) $("$cxx" -print-file-name=libubsan.so)"
for lib in $runtimes; do
  [[ -e $lib ]] || { echo "sanitize.sh: $cxx has no $(basename "$lib")" >&2; exit 1; }
done

cd "$root"
# Unquoted on purpose: the globs expand here.
tests=(${TFL_SANITIZE_TESTS:-tests/test_bpmll.py tests/test_correlation*.py tests/test_bad_input.py tests/test_properties.py tests/test_concurrency.py})
# pytest captures file descriptor 2, and an aborting process takes the
# capture with it: the sanitizers write their reports to files instead.
reports="$out/reports"
rm -rf "$reports" && mkdir -p "$reports"
status=0
LD_PRELOAD="$runtimes" \
  ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:symbolize=1:print_summary=1:log_path=$reports/asan" \
  UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:symbolize=1:log_path=$reports/ubsan" \
  TF_CPP_MIN_LOG_LEVEL=2 \
  PYTHONPATH="$out/pkg" \
  "$py" -m pytest -q -p no:cacheprovider "${tests[@]}" "$@" || status=$?
echo "sanitized tests: $(($(date +%s) - built)) s, exit status $status"
for report in "$reports"/*; do
  [[ -e $report ]] || continue
  echo "=== $report"
  cat "$report"
  status=${status/#0/1}
done
exit $status
