#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"

namespace moe::gpu {
namespace {

__global__ void SwiGluKernel(const bf16* gate_up, int64_t I, bf16* out) {
  PdlGate();
  const int64_t m = blockIdx.x;
  const bf16* g = gate_up + m * 2 * I;
  for (int64_t i = threadIdx.x; i < I; i += blockDim.x) {
    const float a = __bfloat162float(g[i]), b = __bfloat162float(g[I + i]);
    out[m * I + i] = __float2bfloat16(a / (1.f + __expf(-a)) * b);
  }
}

}  // namespace

void SwiGlu(const bf16* gate_up, int64_t M, int64_t I, bf16* out, cudaStream_t s) {
  if (M == 0) return;
  Launch(SwiGluKernel, static_cast<unsigned>(M), 256, 0, s, gate_up, I, out);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
