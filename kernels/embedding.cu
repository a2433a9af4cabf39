#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"

namespace moe::gpu {
namespace {

__global__ void EmbeddingGatherKernel(const bf16* table, const int32_t* ids, int64_t H, float* out) {
  PdlGate();
  const int64_t t = blockIdx.x;
  const bf16* row = table + static_cast<int64_t>(ids[t]) * H;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) out[t * H + h] = __bfloat162float(row[h]);
}

__global__ void ToBf16Kernel(const float* in, int64_t n, bf16* out) {
  PdlGate();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __float2bfloat16(in[i]);
  }
}

__global__ void ToF32Kernel(const bf16* in, int64_t n, float* out) {
  PdlGate();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __bfloat162float(in[i]);
  }
}

unsigned GridFor(int64_t n, int threads) {
  const int64_t blocks = (n + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}

}  // namespace

void EmbeddingGather(const bf16* table, const int32_t* ids, int64_t T, int64_t H, float* out, cudaStream_t s) {
  if (T == 0) return;
  Launch(EmbeddingGatherKernel, static_cast<unsigned>(T), 256, 0, s, table, ids, H, out);
  MOE_CUDA_CHECK_LAUNCH();
}

void ToBf16(const float* in, int64_t n, bf16* out, cudaStream_t s) {
  if (n == 0) return;
  Launch(ToBf16Kernel, GridFor(n, 256), 256, 0, s, in, n, out);
  MOE_CUDA_CHECK_LAUNCH();
}

void ToF32(const bf16* in, int64_t n, float* out, cudaStream_t s) {
  if (n == 0) return;
  Launch(ToF32Kernel, GridFor(n, 256), 256, 0, s, in, n, out);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
