// The negative control for the ThreadSanitizer run: a kernel that reads a
// __shared__ value another thread wrote, without the __syncthreads() in
// between. Under the emulation TSan must report it; if it does not, a clean
// tsan_driver run proves nothing.
#include <cstdio>

#include "cuda_emulation.h"

__global__ void SharedWithoutBarrier(int* out) {
  __shared__ int value;
  if (threadIdx.x == 0) value = static_cast<int>(blockIdx.x) + 1;
  if (threadIdx.x == warpSize) out[blockIdx.x] = value;
}

int main() {
  int out[4] = {};
  int* device_out = out;
  tfl_emu::Launch(4, 2 * warpSize, &SharedWithoutBarrier, device_out);
  std::printf("%d %d %d %d\n", out[0], out[1], out[2], out[3]);
  return 0;
}
