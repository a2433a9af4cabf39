#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"
#include "kernels/rope.cuh"

namespace moe::gpu {
namespace {

// One block per token; thread i of the half-dimension computes its angle once (in double: at
// long contexts a float angle loses the low frequencies) and rotates that pair in every head.
__global__ void RopeKernel(bf16* x, const int32_t* positions, int64_t heads, int64_t head_dim,
                           const double* inv_freq) {
  PdlGate();
  const int64_t t = blockIdx.x, half = head_dim / 2;
  const int pos = positions[t];
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    float c, s;
    RopeAngle(pos, inv_freq[i], c, s);
    for (int64_t h = 0; h < heads; ++h) {
      bf16* v = x + (t * heads + h) * head_dim;
      const float a = __bfloat162float(v[i]), b = __bfloat162float(v[i + half]);
      v[i] = __float2bfloat16(a * c - b * s);
      v[i + half] = __float2bfloat16(b * c + a * s);
    }
  }
}

}  // namespace

void Rope(bf16* x, const int32_t* positions, int64_t T, int64_t heads, int64_t head_dim, const double* inv_freq,
          cudaStream_t s) {
  if (T == 0) return;
  Launch(RopeKernel, static_cast<unsigned>(T), 64, 0, s, x, positions, heads, head_dim, inv_freq);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
