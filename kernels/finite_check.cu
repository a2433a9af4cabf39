// FirstNonFinite: where a bf16 array first holds NaN or infinity (the load-time check of a
// checkpoint's weights, kernels.h).
#include "kernels/cuda_check.h"
#include "kernels/kernels.h"
#include "kernels/launch.cuh"

namespace moe::gpu {
namespace {

__global__ void FirstNonFiniteKernel(const uint16_t* x, int64_t n, unsigned long long* first) {
  PdlGate();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    // Every exponent bit set: infinity or NaN. The lowest index wins, whatever the timing.
    if ((x[i] & 0x7f80u) == 0x7f80u) {
      atomicMin(first, static_cast<unsigned long long>(i));
      return;  // this thread's later elements have higher indices
    }
  }
}

}  // namespace

void FirstNonFinite(const bf16* x, int64_t n, unsigned long long* first, cudaStream_t s) {
  MOE_CUDA_CHECK(cudaMemsetAsync(first, 0xff, sizeof *first, s));
  if (n == 0) return;
  constexpr int kThreads = 256;
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  Launch(FirstNonFiniteKernel, static_cast<unsigned>(blocks < 4096 ? blocks : 4096), kThreads, 0, s,
         reinterpret_cast<const uint16_t*>(x), n, first);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
