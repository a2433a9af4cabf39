#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"
#include "kernels/reduce.cuh"

namespace moe::gpu {
namespace {

// One block per row: add the delta into the float residual, then normalise it into bf16.
__global__ void AddRmsNormKernel(float* residual, const float* delta, const bf16* weight, int64_t H, float eps,
                                 bf16* out) {
  PdlGate();
  const int64_t t = blockIdx.x;
  float* x = residual + t * H;
  float ss = 0.f;
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    float v = x[h];
    if (delta) {
      v += delta[t * H + h];
      x[h] = v;
    }
    ss += v * v;
  }
  const float inv = rsqrtf(BlockSum(ss) / static_cast<float>(H) + eps);
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) {
    out[t * H + h] = __float2bfloat16(__bfloat162float(weight[h]) * (x[h] * inv));
  }
}

}  // namespace

void AddRmsNorm(float* residual, const float* delta, const bf16* weight, int64_t T, int64_t H, float eps, bf16* out,
                cudaStream_t s) {
  if (T == 0) return;
  Launch(AddRmsNormKernel, static_cast<unsigned>(T), 256, 0, s, residual, delta, weight, H, eps, out);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
