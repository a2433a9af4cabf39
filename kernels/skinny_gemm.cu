// The grouped "skinny" GEMM: y = x W^T for few rows per weight matrix (decode), streaming each
// weight once from memory at close to the copy bandwidth. See kernels.h for the contract.
//
// Layout of the work. A CTA of 8 warps owns 32 weight rows (two 16-row tiles; with the SwiGLU
// epilogue the 16 gate rows f0.. and the 16 up rows I + f0..) of one group, and splits K into 8
// contiguous slices, one per warp. A warp walks its slice 32 k-values at a time: every lane loads
// 16 bytes of each of 4 weight rows (rows g and g + 8 of each tile, g = lane / 4, at k offset
// 8 * (lane % 4)), so a tile's 16 rows x 32 k arrive as 16-byte loads with no shared memory, and
// feeds them to mma.sync m16n8k16 (bf16 in, float32 accumulate) with the weights as the A operand
// (16 output features) and 8 token rows as the B operand ("swap AB": the token count is the
// narrow N side). Because a dot product may sum its k terms in any order, the lane's 8 loaded k
// values are assigned to the MMA's fragment slots in the order that matches the same lane's
// 16-byte load of the token row: no shuffles are needed for either operand. The weight loads of
// kUnroll steps are issued before the MMAs that use them, so each warp keeps 8 KB in flight.
//
// At the end the 8 warps' partial sums are added through shared memory in a fixed order (the
// result of a row does not depend on any other row, on the group or on the launch shape: the same
// row gives the same bits whichever way it is batched), and the epilogue writes the output.
//
// A group with more rows than the 8 * NT that a pass holds in registers takes several passes over
// its weights (the later passes mostly from L2); the host picks NT from the expected rows.
#include "kernels/cuda_check.h"
#include "kernels/kernels.h"

#include <stdexcept>

namespace moe::gpu {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = 32 * kWarps;
constexpr int kUnroll = 4;  // 32-k steps whose weight loads are in flight together

__device__ __forceinline__ void Mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                    uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// Weights are read once: stream them past L1 (evict-first).
__device__ __forceinline__ uint4 LoadWeight(const bf16* p) { return __ldcs(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ uint4 LoadInput(const bf16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

__device__ __forceinline__ float Silu(float a) { return a / (1.f + __expf(-a)); }

template <int NT, int EPI>
__global__ void __launch_bounds__(kThreads, NT == 1 ? 2 : 1) SkinnyGemmKernel(const bf16* __restrict__ x, int64_t K,
                                                              SkinnyGroups groups, int64_t N, void* out) {
  const int g = blockIdx.y;
  int64_t row0 = 0, rows = groups.rows;
  if (groups.offsets != nullptr) {
    row0 = groups.offsets[g];
    rows = groups.offsets[g + 1] - row0;
  }
  if (rows <= 0) return;
  const bf16* __restrict__ w = groups.weights != nullptr ? groups.weights[g] : groups.weight;
  if (w == nullptr) return;  // the host never sends rows to a group without weights

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int fr = lane >> 2, quad = lane & 3;  // fragment row (and token column) group, k quad
  constexpr bool kSwiGlu = EPI == static_cast<int>(SkinnyEpilogue::kSwiGluBf16);
  // The output features of this CTA and the weight rows of its two tiles.
  const int64_t f0 = static_cast<int64_t>(blockIdx.x) * (kSwiGlu ? 16 : 32);
  const bf16* wp[2][2];  // weight row of each tile half (rows fr and fr + 8), at this lane's k offset
  bool wok[2][2];
#pragma unroll
  for (int t = 0; t < 2; ++t) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t f = f0 + (kSwiGlu ? 0 : 16 * t) + fr + 8 * h;  // output feature
      wok[t][h] = f < N;
      wp[t][h] = w + ((kSwiGlu && t == 1 ? N : 0) + (wok[t][h] ? f : 0)) * K + 8 * quad;
    }
  }
  // This warp's K slice, in 32-k steps (K < 2^31: checked on the host).
  const int steps = static_cast<int>((K + 31) / 32);
  const int per_warp = (steps + kWarps - 1) / kWarps;
  const int s_begin = warp * per_warp, s_end = min(steps, s_begin + per_warp);
  const int kq = 8 * quad, k_end = static_cast<int>(K);

  __shared__ float red[kWarps][2][4][32];

  for (int64_t c0 = 0; c0 < rows; c0 += 8 * NT) {
    const int64_t crows = min(static_cast<int64_t>(8 * NT), rows - c0);
    float acc[2][NT][4];
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[t][n][j] = 0.f;
    // The token row this lane feeds into each n-tile (column fr of the tile), at its k offset.
    const bf16* xrow[NT];
    bool xok[NT];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const int64_t i = c0 + 8 * n + fr;
      xok[n] = i < rows;
      const int64_t r = row0 + (xok[n] ? i : 0);
      const int64_t src = groups.row_index != nullptr ? groups.row_index[r] : r;
      xrow[n] = x + src * K + kq;
    }

    for (int s = s_begin; s < s_end; s += kUnroll) {
      uint4 wv[kUnroll][2][2];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int k = (s + u) * 32;
        const bool kin = s + u < s_end && k + kq < k_end;
#pragma unroll
        for (int t = 0; t < 2; ++t)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            wv[u][t][h] = kin && wok[t][h] ? LoadWeight(wp[t][h] + k) : make_uint4(0, 0, 0, 0);
          }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int k = (s + u) * 32;
        const bool kin = s + u < s_end && k + kq < k_end;
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          if (8 * n >= crows) break;  // the same for the whole CTA
          const uint4 xv = kin && xok[n] ? LoadInput(xrow[n] + k) : make_uint4(0, 0, 0, 0);
#pragma unroll
          for (int t = 0; t < 2; ++t) {
            // k values 8q+0..3 of rows fr, fr+8 and of token fr, then 8q+4..7 (see the header).
            Mma(acc[t][n], wv[u][t][0].x, wv[u][t][1].x, wv[u][t][0].y, wv[u][t][1].y, xv.x, xv.y);
            Mma(acc[t][n], wv[u][t][0].z, wv[u][t][1].z, wv[u][t][0].w, wv[u][t][1].w, xv.z, xv.w);
          }
        }
      }
    }

    // Sum the warps' partial products and write: thread (t, j, l) takes accumulator j of tile t
    // held by lane l in every warp.
    const int et = threadIdx.x >> 7, ej = (threadIdx.x >> 5) & 3, el = threadIdx.x & 31;
    const int64_t feature = (el >> 2) + (ej >= 2 ? 8 : 0);   // row of the 16-row tile
    const int64_t token = 2 * (el & 3) + (ej & 1);           // column of the 8-token tile
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      if (8 * n >= crows) break;
      __syncthreads();  // the previous n-tile's sums have been read
#pragma unroll
      for (int t = 0; t < 2; ++t)
#pragma unroll
        for (int j = 0; j < 4; ++j) red[warp][t][j][lane] = acc[t][n][j];
      __syncthreads();
      const int64_t i = 8 * n + token;  // row within this pass
      if (i >= crows) continue;
      const int64_t orow = row0 + c0 + i;
      if constexpr (kSwiGlu) {
        if (et != 0) continue;
        const int64_t f = f0 + feature;
        if (f >= N) continue;
        float gate = 0.f, up = 0.f;
#pragma unroll
        for (int v = 0; v < kWarps; ++v) {
          gate += red[v][0][ej][el];
          up += red[v][1][ej][el];
        }
        // gate and up rounded to bf16 first, as when they come out of a bf16 GEMM: the skinny
        // and the cuBLAS expert paths then differ only in float summation order.
        gate = __bfloat162float(__float2bfloat16(gate));
        up = __bfloat162float(__float2bfloat16(up));
        static_cast<bf16*>(out)[orow * N + f] = __float2bfloat16(Silu(gate) * up);
      } else {
        const int64_t f = f0 + 16 * et + feature;
        if (f >= N) continue;
        float v = 0.f;
#pragma unroll
        for (int u = 0; u < kWarps; ++u) v += red[u][et][ej][el];
        if constexpr (EPI == static_cast<int>(SkinnyEpilogue::kStoreBf16)) {
          static_cast<bf16*>(out)[orow * N + f] = __float2bfloat16(v);
        } else if constexpr (EPI == static_cast<int>(SkinnyEpilogue::kStoreF32)) {
          static_cast<float*>(out)[orow * N + f] = v;
        } else {
          static_cast<float*>(out)[orow * N + f] += v;
        }
      }
    }
  }
}

template <int NT>
void Launch(const bf16* x, int64_t K, const SkinnyGroups& groups, int64_t N, SkinnyEpilogue epi, void* out,
            cudaStream_t s) {
  const int64_t per_cta = epi == SkinnyEpilogue::kSwiGluBf16 ? 16 : 32;
  const dim3 grid(static_cast<unsigned>((N + per_cta - 1) / per_cta), static_cast<unsigned>(groups.count));
  switch (epi) {
    case SkinnyEpilogue::kStoreBf16:
      SkinnyGemmKernel<NT, 0><<<grid, kThreads, 0, s>>>(x, K, groups, N, out);
      break;
    case SkinnyEpilogue::kStoreF32:
      SkinnyGemmKernel<NT, 1><<<grid, kThreads, 0, s>>>(x, K, groups, N, out);
      break;
    case SkinnyEpilogue::kAddF32:
      SkinnyGemmKernel<NT, 2><<<grid, kThreads, 0, s>>>(x, K, groups, N, out);
      break;
    case SkinnyEpilogue::kSwiGluBf16:
      SkinnyGemmKernel<NT, 3><<<grid, kThreads, 0, s>>>(x, K, groups, N, out);
      break;
  }
}

}  // namespace

static_assert(static_cast<int>(SkinnyEpilogue::kStoreBf16) == 0 && static_cast<int>(SkinnyEpilogue::kStoreF32) == 1 &&
              static_cast<int>(SkinnyEpilogue::kAddF32) == 2 && static_cast<int>(SkinnyEpilogue::kSwiGluBf16) == 3);

int SkinnyTileCount(int64_t expected_rows) {
  if (expected_rows <= 8) return 1;
  if (expected_rows <= 16) return 2;
  if (expected_rows <= 32) return 4;
  return 8;
}

void SkinnyGemm(const bf16* x, int64_t K, const SkinnyGroups& groups, int64_t N, SkinnyEpilogue epi, void* out,
                int64_t expected_rows, cudaStream_t s) {
  if (N == 0 || groups.count == 0 || (groups.offsets == nullptr && groups.rows == 0)) return;
  if (K % 8 != 0 || K <= 0) throw std::invalid_argument("SkinnyGemm: K must be a positive multiple of 8");
  if (groups.count > 65535) throw std::invalid_argument("SkinnyGemm: at most 65535 groups");
  if (K >= (int64_t{1} << 31) - 64) throw std::invalid_argument("SkinnyGemm: K too large");
  switch (SkinnyTileCount(expected_rows)) {
    case 1:
      Launch<1>(x, K, groups, N, epi, out, s);
      break;
    case 2:
      Launch<2>(x, K, groups, N, epi, out, s);
      break;
    case 4:
      Launch<4>(x, K, groups, N, epi, out, s);
      break;
    default:
      Launch<8>(x, K, groups, N, epi, out, s);
      break;
  }
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
