#include "kernels/cuda_check.h"
#include "kernels/kernels.h"
#include "kernels/reduce.cuh"

namespace moe::gpu {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxGroup = 8;         // query heads per KV head
constexpr int kMaxDimPerLane = 8;    // head_dim <= 256

__device__ __forceinline__ int64_t CacheOffset(const PagedKv& kv, int64_t seq, int64_t pos, int64_t kv_head) {
  const int64_t block = kv.block_tables[seq * kv.max_blocks_per_seq + pos / kv.block_size];
  return ((block * kv.block_size + pos % kv.block_size) * kv.kv_heads + kv_head) * kv.head_dim;
}

__global__ void WriteKvKernel(const bf16* k, const bf16* v, const int32_t* row_seq, const int32_t* row_pos,
                              PagedKv kv) {
  const int64_t r = blockIdx.x, width = kv.kv_heads * kv.head_dim;
  const int64_t dst = CacheOffset(kv, row_seq[r], row_pos[r], 0);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    kv.keys[dst + i] = k[r * width + i];
    kv.values[dst + i] = v[r * width + i];
  }
}

// Grid (rows, kv_heads), kWarps warps. Warp w takes keys w, w + kWarps, ...; for each key every lane
// computes its slice of the G dot products, a warp reduction completes them, and an online
// softmax (running max m, running sum l, accumulator) absorbs the key. The warps' partial results
// are merged through shared memory at the end.
__global__ void PagedAttentionKernel(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, int64_t heads,
                                     PagedKv kv, int64_t window, float scale, bf16* out) {
  const int64_t r = blockIdx.x, kvh = blockIdx.y;
  const int64_t D = kv.head_dim, G = heads / kv.kv_heads;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t seq = row_seq[r], pos = row_pos[r];
  const int64_t lo = window > 0 ? max(static_cast<int64_t>(0), pos - window + 1) : 0;

  extern __shared__ float smem[];
  float* qs = smem;                           // [G, D]
  float* part_acc = qs + G * D;               // [kWarps, G, D]
  float* part_m = part_acc + kWarps * G * D;  // [kWarps, G]
  float* part_l = part_m + kWarps * G;        // [kWarps, G]
  for (int64_t i = threadIdx.x; i < G * D; i += blockDim.x) {
    qs[i] = __bfloat162float(q[(r * heads + kvh * G) * D + i]) * scale;
  }
  __syncthreads();

  float m[kMaxGroup], l[kMaxGroup], acc[kMaxGroup][kMaxDimPerLane];
#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.f;
#pragma unroll
    for (int i = 0; i < kMaxDimPerLane; ++i) acc[g][i] = 0.f;
  }

  for (int64_t j = lo + warp; j <= pos; j += kWarps) {
    const int64_t off = CacheOffset(kv, seq, j, kvh);
    const bf16* key = kv.keys + off;
    const bf16* val = kv.values + off;
    float kd[kMaxDimPerLane], vd[kMaxDimPerLane];
#pragma unroll
    for (int i = 0; i < kMaxDimPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      kd[i] = d < D ? __bfloat162float(key[d]) : 0.f;
      vd[i] = d < D ? __bfloat162float(val[d]) : 0.f;
    }
#pragma unroll
    for (int g = 0; g < kMaxGroup; ++g) {
      if (g >= G) break;
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < kMaxDimPerLane; ++i) {
        const int64_t d = lane + 32 * i;
        if (d < D) dot += qs[g * D + d] * kd[i];
      }
      const float score = WarpSum(dot);
      const float m_new = fmaxf(m[g], score);
      const float correction = __expf(m[g] - m_new);
      const float p = __expf(score - m_new);
      l[g] = l[g] * correction + p;
#pragma unroll
      for (int i = 0; i < kMaxDimPerLane; ++i) acc[g][i] = acc[g][i] * correction + p * vd[i];
      m[g] = m_new;
    }
  }

#pragma unroll
  for (int g = 0; g < kMaxGroup; ++g) {
    if (g >= G) break;
    if (lane == 0) {
      part_m[warp * G + g] = m[g];
      part_l[warp * G + g] = l[g];
    }
#pragma unroll
    for (int i = 0; i < kMaxDimPerLane; ++i) {
      const int64_t d = lane + 32 * i;
      if (d < D) part_acc[(warp * G + g) * D + d] = acc[g][i];
    }
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < G * D; i += blockDim.x) {
    const int64_t g = i / D, d = i % D;
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, part_m[w * G + g]);
    float L = 0.f, o = 0.f;
    for (int w = 0; w < kWarps; ++w) {
      if (part_m[w * G + g] == -INFINITY) continue;  // a warp that saw no key
      const float f = __expf(part_m[w * G + g] - M);
      L += part_l[w * G + g] * f;
      o += part_acc[(w * G + g) * D + d] * f;
    }
    out[(r * heads + kvh * G + g) * D + d] = __float2bfloat16(o / L);
  }
}

}  // namespace

void WriteKv(const bf16* k, const bf16* v, const int32_t* row_seq, const int32_t* row_pos, int64_t rows,
             const PagedKv& kv, cudaStream_t s) {
  if (rows == 0) return;
  WriteKvKernel<<<static_cast<unsigned>(rows), 128, 0, s>>>(k, v, row_seq, row_pos, kv);
  MOE_CUDA_CHECK_LAUNCH();
}

void PagedAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, int64_t rows, int64_t heads,
                    const PagedKv& kv, int64_t window, float scale, bf16* out, cudaStream_t s) {
  if (rows == 0) return;
  const int64_t G = heads / kv.kv_heads;
  if (heads % kv.kv_heads != 0 || G > kMaxGroup || kv.head_dim > 32 * kMaxDimPerLane) {
    throw std::invalid_argument("PagedAttention: need heads % kv_heads == 0, heads/kv_heads <= 8, head_dim <= 256");
  }
  const size_t shared = sizeof(float) * static_cast<size_t>(G * kv.head_dim * (1 + kWarps) + 2 * kWarps * G);
  if (shared > 48 * 1024) {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(PagedAttentionKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared)));
  }
  dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(kv.kv_heads));
  PagedAttentionKernel<<<grid, 32 * kWarps, shared, s>>>(q, row_seq, row_pos, heads, kv, window, scale, out);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
