// Decode attention: one query row (G <= 8 query heads of one KV head) over its sequence's cached
// keys. Blocks of 4 warps per (row, KV head, split): each warp takes its own 32-key tiles (keys
// begin + 32 w, begin + 32 (w + 4), ...) with a private online softmax, so the four warps load four
// tiles at once and never wait for each other; their partial results merge at the end.
//   loads:  a warp's 32 keys and 32 values go to its own shared rows with cp.async, all of them in
//           flight at once (no load waits on another);
//   scores: lane j takes key j (its row read back as 16-byte chunks; the chunk order is rotated
//           per key so the lanes of a phase hit different banks) and dots it with the G query
//           vectors (float, pre-scaled, in shared memory);
//   values: lane l accumulates dimensions l, l + 32, ... of every query vector, taking each key's
//           weight from lane j by shuffle.
// Split over keys (flash-decoding): with few rows, one block per (row, KV head) walks its keys
// tile after tile while most of the GPU idles (24 us at batch 1 with 128-token contexts, 98 us
// with 1,024). DecodeSplit spreads each row's keys over several blocks; each writes its partial
// (max, sum, unnormalised output) per query vector, and the last block of a (row, KV head) to
// finish merges them in split order, so the result does not depend on which block ends last.
// Everything the addresses need (tile, row, position, block table) is a step input, so the first
// tile's block-table lookups happen before the wait for the kernel that wrote the queries.
#include "kernels/attention_common.cuh"
#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/ptx.cuh"
#include "kernels/reduce.cuh"

#include <algorithm>
#include <stdexcept>

namespace moe::gpu {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxVectors = 8;  // query heads per KV head
constexpr int kSplitKeys = 32 * kWarps;  // a split's keys are a multiple of one round of the warps

__device__ __forceinline__ void Dot8(const uint4& u, const float* q, float& acc) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&u);
  const float4 a = *reinterpret_cast<const float4*>(q), b = *reinterpret_cast<const float4*>(q + 4);
  const float2 k0 = __bfloat1622float2(p[0]), k1 = __bfloat1622float2(p[1]), k2 = __bfloat1622float2(p[2]),
               k3 = __bfloat1622float2(p[3]);
  acc += a.x * k0.x + a.y * k0.y + a.z * k1.x + a.w * k1.y + b.x * k2.x + b.y * k2.y + b.z * k3.x + b.w * k3.y;
}

// Shared memory: q [G][D] float; per warp keys [32][D] and values [32][D] bf16 (after the loop,
// the warps' partial accumulators [4][G][D] float reuse them); m, l [4][G].
// Key j's chunk c sits at chunk position (c + j) % chunks, so 8 lanes reading the same logical
// chunk of 8 different keys touch 8 different 16-byte bank groups.
// kDims: dimensions per lane (head_dim <= 32 kDims).
template <int kDims>
__global__ void __launch_bounds__(kThreads) DecodeAttentionKernel(const bf16* q, const int32_t* row_seq,
                                                                  const int32_t* row_pos, const int32_t* tiles,
                                                                  int64_t heads, PagedKv kv, int64_t window,
                                                                  float scale, bf16* out, DecodeSplit split,
                                                                  int split_keys) {
  const int64_t row = tiles[2 * blockIdx.x];
  const int kvh = blockIdx.y, D = static_cast<int>(kv.head_dim), G = static_cast<int>(heads / kv.kv_heads);
  const int seq = row_seq[row], pos = row_pos[row];
  const int lo = window > 0 ? max(0, pos - static_cast<int>(window) + 1) : 0;
  // This block's keys: [begin, end).
  const int begin = lo + static_cast<int>(blockIdx.z) * split_keys, end = min(pos + 1, begin + split_keys);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, chunks = D / 8;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* qs = reinterpret_cast<float*>(smem_raw);                       // [G][D]
  bf16* kvs = reinterpret_cast<bf16*>(qs + kMaxVectors * D);            // [kWarps][2][32][D]
  float* pm = reinterpret_cast<float*>(kvs + kWarps * 2 * 32 * D);      // [kWarps][G]
  float* pl = pm + kWarps * kMaxVectors;                                // [kWarps][G]
  bf16* kw = kvs + warp * 2 * 32 * D;
  bf16* vw = kw + 32 * D;
  // Lane j's key of the tile at k0, as a cache offset (one block-table lookup per lane).
  auto lookup = [&](int k0) -> long long { return k0 + lane < end ? CacheOffset(kv, seq, k0 + lane, kvh) : 0; };
  // A tile's keys and values into the warp's rows, every copy in flight at once; rows past the
  // last key are zeros. The copies take each key's offset from its lane by shuffle.
  auto issue = [&](int k0, long long key_off) {
    const int keys = min(32, end - k0);
    for (int i = lane; i < 32 * chunks; i += 32) {
      const int j = i / chunks, c = i - j * chunks;
      const bool ok = j < keys;
      const int64_t off = __shfl_sync(0xffffffffu, key_off, j) + (ok ? 8 * c : 0);
      const int slot = j * D + 8 * ((c + j) % chunks);
      CopyAsync(SharedAddress(kw + slot), kv.keys + off, ok ? 16 : 0);
      CopyAsync(SharedAddress(vw + j * D + 8 * c), kv.values + off, ok ? 16 : 0);
    }
  };
  const long long first_off = lookup(begin + 32 * warp);
  PdlGate();
  // The first tile's loads go out before the queries are staged.
  if (begin + 32 * warp < end) issue(begin + 32 * warp, first_off);
  // The G query heads are contiguous: 16-byte loads, one per thread for G * D <= 1024.
  const uint4* qrow = reinterpret_cast<const uint4*>(q + (row * heads + static_cast<int64_t>(kvh) * G) * D);
  for (int c = tid; c < G * D / 8; c += kThreads) {
    const uint4 u = qrow[c];
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(h[i]);
      qs[8 * c + 2 * i] = f.x * scale;
      qs[8 * c + 2 * i + 1] = f.y * scale;
    }
  }
  __syncthreads();

  float m[kMaxVectors], l[kMaxVectors], acc[kMaxVectors][kDims];
#pragma unroll
  for (int v = 0; v < kMaxVectors; ++v) {
    m[v] = -INFINITY;
    l[v] = 0.f;
#pragma unroll
    for (int i = 0; i < kDims; ++i) acc[v][i] = 0.f;
  }
  for (int k0 = begin + 32 * warp; k0 < end; k0 += 32 * kWarps) {
    const int keys = min(32, end - k0);
    WaitAllAsync();
    __syncwarp();

    // Scores of this lane's key.
    const bool valid = lane < keys;
    float sc[kMaxVectors];
#pragma unroll
    for (int v = 0; v < kMaxVectors; ++v) sc[v] = 0.f;
    for (int c = 0; c < chunks; ++c) {
      const uint4 kk = *reinterpret_cast<const uint4*>(kw + lane * D + 8 * ((c + lane) % chunks));
#pragma unroll
      for (int v = 0; v < kMaxVectors; ++v) {
        if (v >= G) break;
        Dot8(kk, qs + v * D + 8 * c, sc[v]);
      }
    }
    // Online softmax per query vector over this tile (lane 0's key k0 is always visible).
    float p[kMaxVectors];
#pragma unroll
    for (int v = 0; v < kMaxVectors; ++v) {
      if (v >= G) break;
      const float s = valid ? sc[v] : -INFINITY;
      const float m_new = fmaxf(m[v], WarpMax(s));
      p[v] = __expf(s - m_new);
      const float c = __expf(m[v] - m_new);
      l[v] = l[v] * c + WarpSum(p[v]);
      m[v] = m_new;
#pragma unroll
      for (int i = 0; i < kDims; ++i) acc[v][i] *= c;
    }
    for (int j = 0; j < keys; ++j) {
      float vd[kDims];
#pragma unroll
      for (int i = 0; i < kDims; ++i) {
        const int d = lane + 32 * i;
        vd[i] = d < D ? __bfloat162float(vw[j * D + d]) : 0.f;
      }
#pragma unroll
      for (int v = 0; v < kMaxVectors; ++v) {
        if (v >= G) break;
        const float pj = __shfl_sync(0xffffffffu, p[v], j);
#pragma unroll
        for (int i = 0; i < kDims; ++i) acc[v][i] += pj * vd[i];
      }
    }
    __syncwarp();  // the next tile overwrites the warp's rows
    const int next = k0 + 32 * kWarps;
    if (next < end) issue(next, lookup(next));
  }

  // Merge the warps: acc of warp w, vector v, dimension d at pacc[(w * G + v) * D + d].
  __syncthreads();  // every warp is done with its rows
  float* pacc = reinterpret_cast<float*>(kvs);
#pragma unroll
  for (int v = 0; v < kMaxVectors; ++v) {
    if (v >= G) break;
    if (lane == 0) {
      pm[warp * kMaxVectors + v] = m[v];
      pl[warp * kMaxVectors + v] = l[v];
    }
#pragma unroll
    for (int i = 0; i < kDims; ++i) {
      const int d = lane + 32 * i;
      if (d < D) pacc[(warp * G + v) * D + d] = acc[v][i];
    }
  }
  __syncthreads();
  // The block's (M, L, unnormalised O) per query vector; a block (or warp) with no keys has M = -inf.
  const int64_t out_base = (row * heads + static_cast<int64_t>(kvh) * G) * D;
  const int S = gridDim.z;
  float* part = S > 1 ? SplitPartial(split, blockIdx.x, gridDim.y, kvh, S, 0, G, D) : nullptr;
  for (int i = tid; i < G * D; i += kThreads) {
    const int v = i / D, d = i - v * D;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, pm[w * kMaxVectors + v]);
    float L = 0.f, o = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      const float mw = pm[w * kMaxVectors + v];
      if (mw == -INFINITY) continue;  // a warp that had no keys
      const float f = __expf(mw - M);
      L += pl[w * kMaxVectors + v] * f;
      o += pacc[(w * G + v) * D + d] * f;
    }
    if (S == 1) {
      out[out_base + i] = __float2bfloat16(o / L);
    } else {
      StoreSplitPartial(part, blockIdx.z, G, D, i, v, d, o, M, L);
    }
  }
  if (S == 1) return;
  if (LastSplitBlock(split.counters + static_cast<int64_t>(blockIdx.x) * gridDim.y + kvh, S)) {
    MergeKeySplits<false>(part, S, G, D, out + out_base, pacc);
  }
}

size_t DecodeSharedBytes(int64_t D) {
  return sizeof(float) * kMaxVectors * D + sizeof(bf16) * kWarps * 2 * 32 * D + sizeof(float) * 2 * kWarps * kMaxVectors;
}

template <int kDims>
void LaunchDims(dim3 grid, const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                int64_t heads, const PagedKv& kv, int64_t window, float scale, bf16* out, const DecodeSplit& split,
                int split_keys, cudaStream_t s) {
  // The merge area [4][G][D] float fits in the key and value rows [4][2][32][D] bf16. Raised once
  // to what head_dim 256 needs (not per launch: launches may be captured into a CUDA graph).
  static const bool raised = [] {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(DecodeAttentionKernel<kDims>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(DecodeSharedBytes(256))));
    return true;
  }();
  (void)raised;
  Launch(DecodeAttentionKernel<kDims>, grid, kThreads, DecodeSharedBytes(kv.head_dim), s, q, row_seq, row_pos, tiles,
         heads, kv, window, scale, out, split, split_keys);
}

}  // namespace

size_t DecodeSplitFloats(int64_t num_tiles, int64_t heads, int64_t head_dim, int splits) {
  return splits <= 1 ? 0 : static_cast<size_t>(num_tiles * heads * (head_dim + 2) * splits);
}

void LaunchDecodeAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                           int64_t num_tiles, int64_t heads, const PagedKv& kv, int64_t window, float scale, bf16* out,
                           const DecodeSplit* split, cudaStream_t s) {
  const KeySplits ks = PlanKeySplits(split, window, kSplitKeys);
  const DecodeSplit sp = ks.count > 1 ? *split : DecodeSplit{};
  const dim3 grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(kv.kv_heads),
                  static_cast<unsigned>(ks.count));
  const int sk = ks.keys;
  if (kv.head_dim <= 64) {
    LaunchDims<2>(grid, q, row_seq, row_pos, tiles, heads, kv, window, scale, out, sp, sk, s);
  } else if (kv.head_dim <= 128) {
    LaunchDims<4>(grid, q, row_seq, row_pos, tiles, heads, kv, window, scale, out, sp, sk, s);
  } else {
    LaunchDims<8>(grid, q, row_seq, row_pos, tiles, heads, kv, window, scale, out, sp, sk, s);
  }
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
