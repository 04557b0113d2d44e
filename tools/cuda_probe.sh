#!/usr/bin/env bash
# Prints "on" where NVCC compiles a small kernel as the CUDA build compiles
# its own (C++17, warnings as errors, sm_75), else "off", saying why on
# stderr: an nvcc too old or broken for the build then skips CUDA instead of
# failing `make`. TFL_CUDA=on still forces the CUDA build.
nvcc=${1:?usage: tools/cuda_probe.sh NVCC}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/probe.cu" <<'CU'
#include <cstdint>
#include <type_traits>
template <typename T>
__global__ void Scale(T* x, int64_t n, T s) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if constexpr (std::is_floating_point_v<T>) {
    if (i < n) x[i] *= s;
  }
}
template __global__ void Scale<float>(float*, int64_t, float);
CU
if out=$("$nvcc" -std=c++17 --Werror all-warnings -arch=sm_75 -c "$dir/probe.cu" -o "$dir/probe.o" 2>&1); then
    echo on
else
    echo "make: $nvcc cannot compile the CUDA kernels (C++17, warnings as errors), so the build skips CUDA; set TFL_CUDA=on to insist:" >&2
    printf '%s\n' "$out" | head -n 5 >&2
    echo off
fi
