#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/reduce.cuh"
#include "kernels/kernels.h"

#include <stdexcept>

namespace moe::gpu {
namespace {

constexpr int kMaxExperts = 256;
constexpr int kGroupThreads = 1024;
constexpr int kGroupWarps = kGroupThreads / 32;

// One token's routing: softmax over E logits, the k largest (ties to the lower expert id, as on
// the CPU), renormalised over the k. E is small (8 for Mixtral), so serial passes beat cooperation.
__device__ void TopKOne(const float* z, int64_t E, int64_t k, int32_t* experts, float* weights) {
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
    experts[s] = static_cast<int32_t>(best);
    weights[s] = p;
    kept += p;
  }
  for (int64_t s = 0; s < k; ++s) weights[s] /= kept;
}

__global__ void RouterTopKKernel(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts,
                                 float* weights) {
  PdlGate();
  const int64_t t = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (t >= T) return;
  TopKOne(logits + t * E, E, k, experts + t * k, weights + t * k);
}

__device__ __forceinline__ float Dot8Bf16(const uint4& a, const uint4& b) {
  const __nv_bfloat162* x = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* y = reinterpret_cast<const __nv_bfloat162*>(&b);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 u = __bfloat1622float2(x[i]), v = __bfloat1622float2(y[i]);
    s += u.x * v.x + u.y * v.y;
  }
  return s;
}

// One block. Phase 0 (when the router inputs are given): the router logits, one or more warps per
// (token, expert) dot product. Phase 1: every token's top-k. Phase 2: each slot's rank among the earlier slots of its
// expert, 1024 slots per round: inside a warp by __match_any_sync, across the warps by a scan of
// per-warp counts in shared memory, across rounds by a running count per expert. Phase 3: the
// offsets, the experts with rows, then every slot's grouped row and the token row of every grouped row.
__global__ void __launch_bounds__(kGroupThreads) RouteAndGroupKernel(RouterInputs in, float* logits, int64_t T,
                                                                     int64_t E, int64_t k, int32_t* experts,
                                                                     float* weights, int32_t* src_row,
                                                                     int32_t* position, int32_t* offsets,
                                                                     int32_t* active, int32_t* count_accum) {
  PdlGate();
  extern __shared__ int32_t smem[];
  int32_t* warp_count = smem;                    // [kGroupWarps][E]
  int32_t* running = warp_count + kGroupWarps * E;  // [E]
  int32_t* start = running + E;                   // [E + 1]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n = T * k;
  if (in.x != nullptr) {
    // `per` warps share each (token, expert) dot product, so that with few tokens every warp
    // works; each lane issues kUnroll chunk loads of both vectors before using any.
    constexpr int kUnroll = 4;
    __shared__ float partial[kGroupWarps];
    const int64_t Q = T * E, chunks = in.hidden / 8;
    const int per = Q >= kGroupWarps ? 1 : static_cast<int>(kGroupWarps / Q), slots = kGroupWarps / per;
    const int sub = warp % per;
    const int64_t stride = 32 * static_cast<int64_t>(per);
    for (int64_t q0 = 0; q0 < Q; q0 += slots) {
      const int64_t q = q0 + warp / per;
      float acc = 0.f;
      if (warp / per < slots && q < Q) {
        const int64_t t = q / E, e = q % E;
        const uint4* xr = reinterpret_cast<const uint4*>(in.x + t * in.hidden);
        const uint4* wr = reinterpret_cast<const uint4*>(in.weight + e * in.hidden);
        for (int64_t c0 = 32 * sub + lane; c0 < chunks; c0 += kUnroll * stride) {
          uint4 xa[kUnroll], wa[kUnroll];
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) {
            const int64_t c = c0 + u * stride;
            xa[u] = c < chunks ? xr[c] : make_uint4(0, 0, 0, 0);
            wa[u] = c < chunks ? wr[c] : make_uint4(0, 0, 0, 0);
          }
#pragma unroll
          for (int u = 0; u < kUnroll; ++u) acc += Dot8Bf16(xa[u], wa[u]);
        }
      }
      acc = WarpSum(acc);
      if (lane == 0) partial[warp] = acc;
      __syncthreads();
      if (sub == 0 && lane == 0 && warp / per < slots && q < Q) {
        float sum = 0.f;
        for (int i = 0; i < per; ++i) sum += partial[warp + i];
        logits[q] = sum;
      }
      __syncthreads();
    }
  }
  TraceMark(1);  // phase 0 done (measurement builds)
  for (int64_t t = tid; t < T; t += kGroupThreads) TopKOne(logits + t * E, E, k, experts + t * k, weights + t * k);
  for (int64_t e = tid; e < E; e += kGroupThreads) running[e] = 0;
  __syncthreads();  // the block's global writes are visible to the block after the barrier
  TraceMark(2);  // phase 1

  for (int64_t r0 = 0; r0 < n; r0 += kGroupThreads) {
    for (int64_t i = tid; i < kGroupWarps * E; i += kGroupThreads) warp_count[i] = 0;
    __syncthreads();
    const int64_t i = r0 + tid;
    const bool active = i < n;
    const int e = active ? experts[i] : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (active && rank == 0) warp_count[warp * E + e] = __popc(peers);
    __syncthreads();
    for (int64_t x = tid; x < E; x += kGroupThreads) {
      int32_t run = running[x];
      for (int w = 0; w < kGroupWarps; ++w) {
        const int32_t c = warp_count[w * E + x];
        warp_count[w * E + x] = run;
        run += c;
      }
      running[x] = run;
    }
    __syncthreads();
    if (active) position[i] = warp_count[warp * E + e] + rank;  // rank within the expert, for now
    __syncthreads();
  }

  TraceMark(3);  // phase 2
  if (tid == 0) {
    start[0] = 0;
    for (int64_t e = 0; e < E; ++e) start[e + 1] = start[e] + running[e];
  }
  __syncthreads();
  for (int64_t e = tid; e <= E; e += kGroupThreads) offsets[e] = start[e];
  if (active != nullptr && tid == 0) {
    int64_t a = 0;
    for (int64_t e = 0; e < E; ++e) {
      if (running[e] > 0) active[a++] = static_cast<int32_t>(e);
    }
    for (; a < E; ++a) active[a] = -1;
  }
  if (count_accum != nullptr) {
    for (int64_t e = tid; e < E; e += kGroupThreads) count_accum[e] += running[e];
  }
  for (int64_t i = tid; i < n; i += kGroupThreads) {
    const int32_t p = start[experts[i]] + position[i];
    position[i] = p;
    src_row[p] = static_cast<int32_t>(i / k);
  }
  TraceMark(4);  // phase 3
}

}  // namespace

void RouterTopK(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts, float* weights,
                cudaStream_t s) {
  if (T == 0) return;
  if (E > kMaxExperts || k > E) throw std::invalid_argument("RouterTopK: need k <= E <= 256");
  Launch(RouterTopKKernel, static_cast<unsigned>((T + 127) / 128), 128, 0, s, logits, T, E, k, experts, weights);
  MOE_CUDA_CHECK_LAUNCH();
}

void RouteAndGroup(const RouterInputs& in, float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts,
                   float* weights, int32_t* src_row, int32_t* position, int32_t* offsets, int32_t* active,
                   int32_t* count_accum, cudaStream_t s) {
  if (in.x != nullptr && in.hidden % 8 != 0) throw std::invalid_argument("RouteAndGroup: hidden must be a multiple of 8");
  if (E > kMaxExperts || k > E || k <= 0) throw std::invalid_argument("RouteAndGroup: need 0 < k <= E <= 256");
  if (T * k > (int64_t{1} << 30)) throw std::invalid_argument("RouteAndGroup: too many rows");
  const size_t shared = sizeof(int32_t) * static_cast<size_t>(kGroupWarps * E + 2 * E + 1);
  // T = 0 still runs: the offsets (all zero) are read by the grouped GEMMs.
  Launch(RouteAndGroupKernel, 1, kGroupThreads, shared, s, in, logits, T, E, k, experts, weights, src_row, position,
         offsets, active, count_accum);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
