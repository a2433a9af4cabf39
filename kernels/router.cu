#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/reduce.cuh"
#include "kernels/kernels.h"

#include <climits>
#include <stdexcept>

namespace moe::gpu {
namespace {

constexpr int kMaxExperts = 256;
// RouteAndGroup's block: 256 threads for up to 256 slots (a decode step's few: 8 warps to schedule
// and synchronise instead of 32, RouteAndGroup 6.1 -> 4.9 us a layer at batch 1), else 1,024 (each
// top-k pass and rank round covers four times the slots).
constexpr int kSmallGroupThreads = 256;
constexpr int kMaxGroupThreads = 1024;
constexpr int kTopKThreads = 128;  // RouterTopK's blocks

// Lanes that route one token together: E rounded up to a power of two, at most a warp.
__host__ __device__ inline int SegmentLanes(int64_t E) {
  int g = 1;
  while (g < E && g < 32) g <<= 1;
  return g;
}

// One token's routing by a segment of G lanes (SegmentLanes(E), aligned in the warp): softmax over
// its E logits, the k largest (ties to the lower expert id, as on the CPU; NaN ranks as -inf),
// renormalised over the k. Lane j of the segment holds logits j, j + G, ... (kPer of them: 1 when
// E <= 32) in registers, so the logits cost one memory round trip and the picks are shuffles.
// Every lane of the warp calls it (the shuffles span the warp); `valid` is false past the last
// token. `cache` (shared memory, optional): the token's experts also go to cache[s] for its slots s
// below cache_slots.
template <int kPer>
__device__ void TopKSegment(const float* z, int E, int k, int G, bool valid, int32_t* experts, float* weights,
                            int32_t* cache, int cache_slots) {
  const int sl = threadIdx.x & (G - 1);
  const int shift = __ffs(G) - 1;  // log2 G
  float v[kPer];
  float mx = -INFINITY;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int e = sl + (j << shift);
    v[j] = valid && e < E ? z[e] : -INFINITY;
    if (isnan(v[j])) v[j] = -INFINITY;
    mx = fmaxf(mx, v[j]);
  }
  for (int o = G / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  float sum = 0.f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    if (sl + (j << shift) < E) sum += __expf(v[j] - mx);
  }
  for (int o = G / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  unsigned taken = 0;    // bit j: expert sl + G * j is picked
  int32_t picked[kPer];  // slot s is held by segment lane s % G at s / G
  float prob[kPer];
  float kept = 0.f;
  for (int s = 0; s < k; ++s) {
    float bv = -INFINITY;
    int bi = INT_MAX;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int e = sl + (j << shift);
      if (e < E && !((taken >> j) & 1u) && (bi == INT_MAX || v[j] > bv)) {
        bv = v[j];
        bi = e;
      }
    }
    for (int o = G / 2; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if ((bi & (G - 1)) == sl) taken |= 1u << (bi >> shift);
    const float p = __expf(bv - mx) / sum;
    kept += p;
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      if (j == (s >> shift) && sl == (s & (G - 1))) {
        picked[j] = bi;
        prob[j] = p;
      }
    }
  }
  if (!valid) return;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int s = sl + (j << shift);
    if (s < k) {
      experts[s] = picked[j];
      weights[s] = prob[j] / kept;
      if (s < cache_slots) cache[s] = picked[j];
    }
  }
}

// TopKSegment with the logits a lane holds fixed at compile time: one for up to 32 experts (the
// common case; the eight-way instance, a fifth of the code and its picks in a local array, took
// 5.6 us for batch 1's top-k against 2.8), eight up to 256.
__device__ __forceinline__ void TopKToken(const float* z, int E, int k, int G, bool valid, int32_t* experts,
                                          float* weights, int32_t* cache, int cache_slots) {
  if (E <= 32) {
    TopKSegment<1>(z, E, k, G, valid, experts, weights, cache, cache_slots);
  } else {
    TopKSegment<kMaxExperts / 32>(z, E, k, G, valid, experts, weights, cache, cache_slots);
  }
}

__global__ void __launch_bounds__(kTopKThreads) RouterTopKKernel(const float* logits, int64_t T, int64_t E, int64_t k,
                                                                 int32_t* experts, float* weights) {
  PdlGate();
  const int G = SegmentLanes(E);
  const int64_t t = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / G;
  const bool valid = t < T;
  const int64_t row = valid ? t : 0;
  TopKToken(logits + row * E, static_cast<int>(E), static_cast<int>(k), G, valid, experts + row * k,
            weights + row * k, nullptr, 0);
}

// One block. Phase 1: every token's top-k (TopKToken, a segment of lanes per token). Phase 2:
// each slot's rank among the earlier slots of its expert, a block's worth per round: inside a warp by
// __match_any_sync, across the warps by a scan of per-warp counts in shared memory, across rounds
// by a running count per expert. Phase 3: the offsets, the experts with rows, then every slot's
// grouped row and the token row of every grouped row. The first round's slots (all of a decode
// step's) keep their experts and ranks in shared memory between the phases, not in global memory
// (a round trip each).
template <int kGroupThreads>
__global__ void __launch_bounds__(kGroupThreads) RouteAndGroupKernel(const float* logits, int64_t T, int64_t E,
                                                                     int64_t k, int32_t* experts, float* weights,
                                                                     int32_t* src_row, int32_t* position,
                                                                     int32_t* offsets, int32_t* active,
                                                                     int32_t* count_accum) {
  constexpr int kGroupWarps = kGroupThreads / 32;
  PdlGate();
  extern __shared__ int32_t smem[];
  int32_t* warp_count = smem;                       // [kGroupWarps][E]
  int32_t* running = warp_count + kGroupWarps * E;  // [E]
  int32_t* start = running + E;                     // [E + 1]
  __shared__ int32_t first_expert[kGroupThreads];   // slot i < kGroupThreads: its expert,
  __shared__ int32_t first_rank[kGroupThreads];     // and its rank within the expert
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n = T * k;
  const int G = SegmentLanes(E);
  const int64_t per_pass = kGroupThreads / G;
  for (int64_t t0 = 0; t0 < T; t0 += per_pass) {
    const int64_t t = t0 + tid / G;
    const bool valid = t < T;
    const int64_t row = valid ? t : 0;
    const int64_t first = row * k;  // the token's first slot
    const bool cached = first < kGroupThreads;
    TopKToken(logits + row * E, static_cast<int>(E), static_cast<int>(k), G, valid, experts + first,
              weights + first, cached ? first_expert + first : nullptr,
              cached ? static_cast<int>(kGroupThreads - first) : 0);
  }
  for (int64_t e = tid; e < E; e += kGroupThreads) running[e] = 0;
  __syncthreads();  // the block's global writes are visible to the block after the barrier
  TraceMark(1);  // phase 1 done (measurement builds)

  for (int64_t r0 = 0; r0 < n; r0 += kGroupThreads) {
    // The warps holding slots this round (a decode step's few slots: one), so the scan below is as
    // short as they are.
    const int warps = static_cast<int>(n - r0 >= kGroupThreads ? kGroupWarps : (n - r0 + 31) / 32);
    for (int64_t i = tid; i < warps * E; i += kGroupThreads) warp_count[i] = 0;
    __syncthreads();
    const int64_t i = r0 + tid;
    const bool in_range = i < n;
    const int e = !in_range ? -1 : r0 == 0 ? first_expert[i] : experts[i];
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (in_range && rank == 0) warp_count[warp * E + e] = __popc(peers);
    __syncthreads();
    for (int64_t x = tid; x < E; x += kGroupThreads) {
      int32_t run = running[x];
      for (int w = 0; w < warps; ++w) {
        const int32_t c = warp_count[w * E + x];
        warp_count[w * E + x] = run;
        run += c;
      }
      running[x] = run;
    }
    __syncthreads();
    if (in_range) {
      const int32_t r = warp_count[warp * E + e] + rank;  // rank within the expert, for now
      if (r0 == 0) {
        first_rank[i] = r;
      } else {
        position[i] = r;
      }
    }
    __syncthreads();
  }

  TraceMark(2);  // phase 2
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
    const bool first = i < kGroupThreads;
    const int32_t p = start[first ? first_expert[i] : experts[i]] + (first ? first_rank[i] : position[i]);
    position[i] = p;
    src_row[p] = static_cast<int32_t>(i / k);
  }
  TraceMark(3);  // phase 3
}

}  // namespace

void RouterTopK(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts, float* weights,
                cudaStream_t s) {
  if (T == 0) return;
  if (E > kMaxExperts || k > E || k <= 0) throw std::invalid_argument("RouterTopK: need 0 < k <= E <= 256");
  const int64_t per_block = kTopKThreads / SegmentLanes(E);
  Launch(RouterTopKKernel, static_cast<unsigned>((T + per_block - 1) / per_block), kTopKThreads, 0, s, logits, T, E, k,
         experts, weights);
  MOE_CUDA_CHECK_LAUNCH();
}

void RouteAndGroup(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts, float* weights,
                   int32_t* src_row, int32_t* position, int32_t* offsets, int32_t* active, int32_t* count_accum,
                   cudaStream_t s) {
  if (E > kMaxExperts || k > E || k <= 0) throw std::invalid_argument("RouteAndGroup: need 0 < k <= E <= 256");
  if (T * k > (int64_t{1} << 30)) throw std::invalid_argument("RouteAndGroup: too many rows");
  const int threads = T * k <= kSmallGroupThreads ? kSmallGroupThreads : kMaxGroupThreads;
  const size_t shared = sizeof(int32_t) * static_cast<size_t>(threads / 32 * E + 2 * E + 1);
  // T = 0 still runs: the offsets (all zero) are read by the grouped GEMMs.
  Launch(threads == kSmallGroupThreads ? RouteAndGroupKernel<kSmallGroupThreads> : RouteAndGroupKernel<kMaxGroupThreads>,
         1, threads, shared, s, logits, T, E, k, experts, weights, src_row, position, offsets, active, count_accum);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
