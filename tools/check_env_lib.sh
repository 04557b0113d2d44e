# Shared by tools/check_*.sh, which set up a user's environment from scratch
# and test the package installed there. Source it after `set -euo pipefail`
# with the scratch directory's name: `source check_env_lib.sh tfl-jax-env`.
# Gives $root (the checkout), $work (removed on exit), log, pip_in,
# fresh_venv and copy_tests.
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d -t "${1:?name the scratch directory}.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$SECONDS
log() { printf '==> [%4ds] %s\n' $((SECONDS - started)) "$*" >&2; }
# pip without this machine's warnings about configured index folders that do not exist.
pip_in() { "$1/bin/pip" "${@:2}" 2> >(grep -v "^WARNING: Location 'file:" >&2); }
# fresh_venv DIR: a new venv with the current pip.
fresh_venv() {
    python3 -m venv "$1"
    pip_in "$1" install -q --upgrade pip
}
# copy_tests PATH...: the named parts of the checkout (never python/) into
# $work/tree, so that the tests there import the installed package.
copy_tests() {
    mkdir -p "$work/tree"
    tar -C "$root" -c "$@" pyproject.toml | tar -C "$work/tree" -x
}
