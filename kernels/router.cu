#include "kernels/cuda_check.h"
#include "kernels/kernels.h"

namespace moe::gpu {
namespace {

constexpr int kMaxExperts = 256;

// One thread per token: E is small (8 for Mixtral), so a serial softmax and k selection passes
// are cheaper than any cooperation. Ties go to the lower expert id, as on the CPU.
__global__ void RouterTopKKernel(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts,
                                 float* weights) {
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= T) return;
  const float* z = logits + t * E;
  float mx = z[0];
  for (int64_t e = 1; e < E; ++e) mx = fmaxf(mx, z[e]);
  float sum = 0.f;
  for (int64_t e = 0; e < E; ++e) sum += __expf(z[e] - mx);
  unsigned taken[kMaxExperts / 32] = {};
  float kept = 0.f;
  for (int64_t s = 0; s < k; ++s) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      if ((taken[e >> 5] >> (e & 31)) & 1u) continue;
      if (best < 0 || z[e] > z[best]) best = e;
    }
    taken[best >> 5] |= 1u << (best & 31);
    const float p = __expf(z[best] - mx) / sum;
    experts[t * k + s] = static_cast<int32_t>(best);
    weights[t * k + s] = p;
    kept += p;
  }
  for (int64_t s = 0; s < k; ++s) weights[t * k + s] /= kept;
}

}  // namespace

void RouterTopK(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts, float* weights,
                cudaStream_t s) {
  if (T == 0) return;
  if (E > kMaxExperts || k > E) throw std::invalid_argument("RouterTopK: need k <= E <= 256");
  RouterTopKKernel<<<static_cast<unsigned>((T + 127) / 128), 128, 0, s>>>(logits, T, E, k, experts, weights);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
