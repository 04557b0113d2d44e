#!/usr/bin/env bash
# What `make` needs before it creates .venv, checked first, so that a fresh
# machine stops with the Debian package to install instead of failing minutes
# into a build. Usage: tools/check_prereqs.sh PYTHON
set -uo pipefail
python=${1:-python3}
missing=()

need() {  # need PACKAGE REASON: record a missing Debian package
    missing+=("$1 ($2)")
}

version_at_least() {  # version_at_least HAVE WANT
    [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]
}

if ! command -v "$python" >/dev/null 2>&1; then
    need python3 "no $python on PATH"
else
    "$python" -c 'import venv, ensurepip' >/dev/null 2>&1 || need python3-venv "$python -m venv needs venv and ensurepip"
    include=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)
    [[ -f "$include/Python.h" ]] || need python3-dev "Python.h for the tests' pybind11 CUDA emulation module, not in $include"
fi
if ! command -v g++ >/dev/null 2>&1; then
    need g++ "the C++ compiler"
else
    gxx=$(g++ -dumpfullversion -dumpversion 2>/dev/null | head -n1)
    version_at_least "$gxx" 11 || need "g++-12" "g++ $gxx is older than 11 (C++17 and the x86-64-v4 target)"
fi
if ! command -v cmake >/dev/null 2>&1; then
    need cmake "the build"
else
    have=$(cmake --version | head -n1 | awk '{print $3}')
    version_at_least "$have" 3.18 || need cmake "cmake $have is older than 3.18"
fi
command -v make >/dev/null 2>&1 || need make "make itself"

if ((${#missing[@]})); then
    echo "make: missing prerequisites; on Debian/Ubuntu install them with apt:" >&2
    for m in "${missing[@]}"; do echo "  - $m" >&2; done
    pkgs=$(printf '%s\n' "${missing[@]}" | awk '{print $1}' | sort -u | tr '\n' ' ')
    echo "  sudo apt-get install $pkgs" >&2
    exit 1
fi
