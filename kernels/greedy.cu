// The greedy pick of logits rows on the device (kernels.h: GreedyRows), the same numbers as
// PickGreedy on the host (worker/sampler.h): the argmax with NaN ranked as -inf and ties to the
// lower index, and the log-probability -log(sum of exp(x - max)) summed in double.
#include <cmath>
#include <stdexcept>

#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"

namespace moe::gpu {
namespace {

constexpr int kThreads = 1024;

// (value, index) ordered as the host's argmax: the larger value, then the lower index.
__device__ __forceinline__ bool Better(float v, int i, float bv, int bi) { return v > bv || (v == bv && i < bi); }

__device__ __forceinline__ float Sanitized(float v) { return isnan(v) ? -INFINITY : v; }

__global__ void __launch_bounds__(kThreads) GreedyRowsKernel(const float* logits, int64_t V, int32_t* tokens,
                                                             float* logprobs) {
  PdlGate();
  __shared__ float best_v[32];
  __shared__ int best_i[32];
  __shared__ double sums[32];
  const float* row = logits + blockIdx.x * V;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

  float bv = -INFINITY;
  int bi = static_cast<int>(V);  // past the end: any real index wins a tie with it
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const float v = Sanitized(row[i]);
    if (Better(v, static_cast<int>(i), bv, bi)) bv = v, bi = static_cast<int>(i);
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (Better(ov, oi, bv, bi)) bv = ov, bi = oi;
  }
  if (lane == 0) best_v[warp] = bv, best_i[warp] = bi;
  __syncthreads();
  if (warp == 0) {
    bv = lane < warps ? best_v[lane] : -INFINITY;
    bi = lane < warps ? best_i[lane] : static_cast<int>(V);
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (Better(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    if (lane == 0) best_v[0] = bv, best_i[0] = bi;
  }
  __syncthreads();
  const double max_logit = best_v[0];

  // The max token(s) count as exp(0) = 1 exactly, so an infinite max gives no inf - inf.
  double sum = 0.0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
    const double x = Sanitized(row[i]);
    sum += x == max_logit ? 1.0 : exp(x - max_logit);
  }
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) sums[warp] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < warps; ++w) total += sums[w];
    tokens[blockIdx.x] = best_i[0] < V ? best_i[0] : 0;
    logprobs[blockIdx.x] = static_cast<float>(-log(total));
  }
}

}  // namespace

void GreedyRows(const float* logits, int64_t rows, int64_t V, int32_t* tokens, float* logprobs, cudaStream_t s) {
  if (rows == 0) return;
  if (V <= 0 || V >= (int64_t{1} << 31)) throw std::invalid_argument("GreedyRows: vocabulary size out of range");
  Launch(GreedyRowsKernel, static_cast<unsigned>(rows), kThreads, 0, s, logits, V, tokens, logprobs);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
