#include "kernels/cuda_check.h"
#include "worker/gpu/random_fill.h"

namespace moe::gpu {
namespace {

__host__ __device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__global__ void FillNormalKernel(bf16* out, int64_t n, uint64_t stream_key, float mean, float std) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t h = SplitMix64(stream_key + static_cast<uint64_t>(i) * 0xd1b54a32d192ed03ull);
    // u1 in (0, 1] so the log is finite, u2 in [0, 1).
    const float u1 = (static_cast<float>(h >> 40) + 1.f) * 0x1.0p-24f;
    const float u2 = static_cast<float>((h >> 8) & 0xffffffu) * 0x1.0p-24f;
    const float z = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
    out[i] = __float2bfloat16(mean + std * z);
  }
}

}  // namespace

uint64_t TensorKey(const std::string& name) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : name) h = (h ^ ch) * 1099511628211ull;
  return h;
}

void FillNormal(bf16* out, int64_t n, uint64_t seed, uint64_t key, float mean, float std, cudaStream_t s) {
  if (n == 0) return;
  const uint64_t stream_key = SplitMix64(seed ^ SplitMix64(key));
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  const unsigned grid = static_cast<unsigned>(blocks < 65535 * 64 ? blocks : 65535 * 64);
  FillNormalKernel<<<grid, threads, 0, s>>>(out, n, stream_key, mean, std);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
