#!/usr/bin/env bash
# Installs a tf-fused-losses wheel into a fresh venv per TensorFlow minor, as a
# user who already has TensorFlow would, and checks it there:
#   * pip's dry run of the wheel plans no TensorFlow distribution;
#   * losses and gradients (BP-MLL, Pearson, CCC) match float64 numpy, and a
#     Keras model trains (tools/wheel_user_check.py);
#   * with QUICK_TESTS_ON="X.Y ...", the BP-MLL, correlation and loader tests run
#     against the installed wheel on those minors.
#
#   tools/check_wheel_install.sh WHEEL MINOR [MINOR...]
set -euo pipefail
wheel=$(realpath "${1:?usage: check_wheel_install.sh WHEEL MINOR...}")
shift
(($#)) || { echo "name at least one TensorFlow minor" >&2; exit 2; }
source "$(dirname "$0")/check_env_lib.sh" tfl-wheel-check
copy_tests tests bench cc cuda

for minor in "$@"; do
    venv=$work/venv-$minor
    log "TensorFlow $minor: fresh venv with tensorflow-cpu==$minor.*"
    fresh_venv "$venv"
    pip_in "$venv" install -q "tensorflow-cpu==$minor.*"
    pip_in "$venv" install -q --dry-run --report "$work/plan-$minor.json" "$wheel"
    "$venv/bin/python" - "$work/plan-$minor.json" <<'PY'
import json, sys
planned = [i["metadata"]["name"] for i in json.load(open(sys.argv[1]))["install"]]
tf = [n for n in planned if n.lower().startswith(("tensorflow", "tf-", "tf_", "keras", "jax")) and n != "tf-fused-losses"]
print("pip --dry-run plans:", ", ".join(planned))
if tf:
    sys.exit(f"installing the wheel would also install {tf}: it must bring no TensorFlow, Keras or JAX")
PY
    pip_in "$venv" install -q "$wheel"
    (cd "$work" && "$venv/bin/python" "$root/tools/wheel_user_check.py")
    if [[ " ${QUICK_TESTS_ON:-} " == *" $minor "* ]]; then
        log "TensorFlow $minor: BP-MLL, correlation and loader tests against the installed wheel"
        pip_in "$venv" install -q -r "$root/requirements-dev.txt"
        (cd "$work/tree" && "$venv/bin/python" -m pytest -q -p no:cacheprovider \
            tests/test_loader.py tests/test_bpmll.py tests/test_correlation.py)
    fi
done
log "done"
