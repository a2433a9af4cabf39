// What the attention kernels share: the paged cache address of a (sequence, position, KV head),
// and the launchers of the specialised kernels (attention.cu dispatches between them).
#pragma once

#include "kernels/kernels.h"
#include "kernels/ptx.cuh"

namespace moe::gpu {

// Element offset of the head_dim-long key (or value) of `kv_head` at `pos` of sequence `seq`.
__device__ __forceinline__ int64_t CacheOffset(const PagedKv& kv, int seq, int pos, int kv_head) {
  const int bs = static_cast<int>(kv.block_size);
  const int64_t block = kv.block_tables[static_cast<int64_t>(seq) * kv.max_blocks_per_seq + pos / bs];
  return ((block * bs + pos % bs) * kv.kv_heads + kv_head) * kv.head_dim;
}

// Decode attention split over the keys (DecodeSplit), for both kernels that split (the tensor-core
// kernel for head_dim 64 / 128, the decode kernel for others): each of a (tile, KV head)'s S blocks
// takes its share of the row's keys (the decode kernel: KeySplits::keys of them from the first
// visible key on; the tensor-core kernel: one of S runs of whole key tiles of the row's own keys)
// and writes its partial result, the last of them to finish merges the S partials in split order
// (so the result does not depend on which block ends last).

// The split count that leaves no split without keys, and the keys of a split (a multiple of
// `round`, the kernel's key tile: the decode kernel's splits; the tensor-core kernel splits each
// row's own keys into that many runs), for split->splits splits of up to split->max_keys keys
// (window: the sliding window, 0 for none). Throws when the split lacks its partials, counters or
// max_keys.
struct KeySplits {
  int count = 1;
  int keys = 1 << 30;  // every visible key in one block when not split
};
KeySplits PlanKeySplits(const DecodeSplit* split, int64_t window, int round);

// Split partials: [tile][KV head][split] x (o [G][D] unnormalised, m [G], l [G]) floats.
__device__ __forceinline__ float* SplitPartial(const DecodeSplit& split, int64_t tile, int kv_heads, int kvh, int S,
                                               int z, int G, int D) {
  return split.partial + ((tile * kv_heads + kvh) * S + z) * static_cast<int64_t>(G) * (D + 2);
}

// Element i = v D + d of split z's partial at `part` (SplitPartial of split 0): the unnormalised
// output o of query vector v, with that vector's m and l where d == 0.
__device__ __forceinline__ void StoreSplitPartial(float* part, unsigned z, int G, int D, int i, int v, int d, float o,
                                                  float m, float l) {
  float* p = part + z * static_cast<int64_t>(G) * (D + 2);
  p[i] = o;
  if (d == 0) {
    p[G * D + v] = m;
    p[G * D + G + v] = l;
  }
}

// Called by every thread once its block's partials are written: true in the last of the S blocks
// of the (tile, KV head) whose counter this is, with every other block's partials visible; that
// block leaves the counter zero for the next launch.
__device__ __forceinline__ bool LastSplitBlock(int32_t* counter, int S) {
  __shared__ int last;
  __threadfence();  // this block's partials are visible before it is counted
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(counter, 1) == S - 1;
    if (last) *counter = 0;  // every block has counted: ready for the next launch
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// The last block's merge of the S <= kMaxKeySplits partials at `part` (SplitPartial of split 0)
// into out[i] for i < G D (the G query vectors of a row and KV head): per vector M = max m_z, L =
// sum l_z e_z and weights e_z / L with e_z = exp(m_z - M) (a warp per vector, into `scratch`, G x
// kMaxKeySplits floats of shared memory the block no longer uses), then out[i] = sum over z in order of o_z[i] e_z / L,
// eight splits' loads in flight at a time: two dependent rounds of loads, not one per split. A
// partial's m is in the exponent domain of its kernel: natural (kLog2 false) or base 2 (the
// tensor-core kernel's, the scale folded in). A split with no keys (past its row's last key) has
// m = -inf and weight 0.
template <bool kLog2>
__device__ __forceinline__ void MergeKeySplits(const float* part, int S, int G, int D, bf16* out, float* scratch) {
  constexpr int kBatch = 8;
  static_assert(kMaxKeySplits <= 64, "a lane takes two splits' m and l");
  const int64_t stride = static_cast<int64_t>(G) * (D + 2);
  const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
  auto exp = [](float x) {
    if constexpr (kLog2) {
      return Exp2(x);
    } else {
      return __expf(x);
    }
  };
  for (int v = threadIdx.x >> 5; v < G; v += warps) {
    float m[2], l[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int z = lane + 32 * h;
      m[h] = z < S ? __ldcg(part + z * stride + G * D + v) : -INFINITY;
      l[h] = z < S ? __ldcg(part + z * stride + G * D + G + v) : 0.f;
    }
    float M = fmaxf(m[0], m[1]);
    for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
    float e[2], L = 0.f;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      e[h] = m[h] == -INFINITY ? 0.f : exp(m[h] - M);
      L += l[h] * e[h];
    }
    for (int o = 16; o > 0; o >>= 1) L += __shfl_xor_sync(0xffffffffu, L, o);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (lane + 32 * h < S) scratch[v * kMaxKeySplits + lane + 32 * h] = e[h] / L;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
    const float* w = scratch + (i / D) * kMaxKeySplits;
    float acc = 0.f;
    for (int z0 = 0; z0 < S; z0 += kBatch) {
      float oz[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) oz[u] = z0 + u < S ? __ldcg(part + (z0 + u) * stride + i) : 0.f;
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        if (z0 + u < S) acc += oz[u] * w[z0 + u];
      }
    }
    out[i] = __float2bfloat16(acc);
  }
}

// Single-row tiles (decode): blocks per (row, KV head[, split of the keys]), four warps on different keys.
void LaunchDecodeAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                           int64_t num_tiles, int64_t heads, const PagedKv& kv, int64_t window, float scale, bf16* out,
                           const DecodeSplit* split, cudaStream_t s);

// How many blocks of the tensor-core kernel the device runs at once: SMs x blocks per SM (zeros
// for a head_dim it does not serve); one_row: of its instance for one-row tiles (decode).
struct AttentionResidency {
  int sms = 0;
  int blocks_per_sm = 0;
};
AttentionResidency TensorCoreAttentionResidency(int64_t head_dim, bool one_row = false);
// The key tile the tensor-core kernel walks its keys in.
constexpr int kTensorCoreKeyTile = 64;

// Tiles on the tensor cores (flash-attention style), for head_dim 64 or 128 and tiles of at most
// 64 query vectors; one-row tiles (max_rows 1) with their keys split over blocks when `split`
// says so. Returns false (launching nothing) for other head dims.
bool LaunchTensorCoreAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                               int64_t num_tiles, int64_t max_rows, int64_t heads, const PagedKv& kv, int64_t window,
                               float scale, bf16* out, cudaStream_t s, const DecodeSplit* split = nullptr);

// One-row tiles (each its sequence's only row in the step) straight from the QKV product: RoPE,
// the cache write and the attention in the tensor-core kernel (QkvRopeKv then the split-keys
// instance, the same bits, split over blocks as that instance would be), for head_dim 64 or 128
// and G <= 8. Returns false (launching nothing) otherwise.
bool LaunchTensorCoreRopeAttention(const bf16* qkv, const int32_t* row_seq, const int32_t* row_pos,
                                   const int32_t* tiles, int64_t num_tiles, int64_t heads, const double* inv_freq,
                                   const PagedKv& kv, int64_t window, float scale, bf16* out, cudaStream_t s,
                                   const DecodeSplit* split);

}  // namespace moe::gpu
