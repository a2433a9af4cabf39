// The grouped expert GEMM on Hopper's warpgroup MMA (wgmma, sm_90a): for every group g,
// y[r, :] = epilogue(x[src(r), :] W_g^T) over the group's rows, every group in one persistent
// launch whose tiles are planned on the device from the group offsets, so the host never needs
// the per-expert row counts (no synchronisation; a step can be captured in a CUDA graph). Built
// for many rows per group (prefill, wide decode batches), where SkinnyGemm's mma.sync register
// tiles fall behind cuBLAS. See kernels.h for the contract. Not the engine's default: on one H200
// it is still slower than cuBLAS on concurrent streams (benchmarks/NOTES.md, session 15).
//
// Tiles. A group of `rows` rows has ceil(rows / BM) m-tiles of BM = 64 x WG rows (WG consumer
// warpgroups, 64 rows each); the output columns are cut into n-tiles of BN (with SwiGLU: BN / 2
// features, whose BN / 2 gate rows and BN / 2 up rows of W_g make up the tile's B). Tile t is
// n-tile t / m_tiles, m-tile t % m_tiles: the CTAs running at once work on a few n-tiles across
// all groups, and the m-tiles of one group sit side by side, so a group's second m-tile finds its
// weights in L2. Every CTA computes the same plan (a scan of the offsets in shared memory) and
// takes tiles blockIdx.x, + gridDim.x, ... (one CTA per SM). A warpgroup whose 64 rows lie past
// its group's rows skips the MMAs.
//
// Two pipelines over S stages of shared memory (x rows and weight rows of one k-step of 64, in the
// 128-byte swizzle the wgmma descriptors name):
// - multistage (GroupedGemmKernel): every thread copies its share of each stage with 16-byte
//   cp.async (x rows gathered through row_index; the weights too, or by the TMA when weight_maps
//   are given), S - 2 stages ahead, one block barrier per k-step; one k-step's wgmma group stays in
//   flight while the next is issued;
// - warp-specialised (GroupedGemmTmaKernel, the kTma shapes): one producer thread streams x rows
//   (contiguous: gathered by the caller) and weight rows through the TMA, the consumer
//   warpgroups only wait on per-stage mbarriers and multiply.
// Either way the next tile's first stages load while this tile's epilogue writes its results
// from registers.
//
// Results: each output element is summed by one warpgroup in a fixed k order, so a row's result
// does not depend on the other rows, the grouping, the pipeline or timing.
#include "kernels/cuda_check.h"
#include "kernels/kernels.h"
#include "kernels/launch.cuh"
#include "kernels/ptx.cuh"
#include "kernels/wgmma.cuh"

#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <stdexcept>
#include <cstring>
#include <string>

namespace moe::gpu {
namespace {

constexpr int kBk = 64;  // k per stage: one 128-byte swizzle row
constexpr int kRowBytes = kBk * 2;
constexpr int kPipelineBytes = 200 * 1024;
constexpr int kMaxGroups = 256;

// WG warpgroups of 64 rows each make an m-tile of 64 WG rows; BN columns (weight rows) per tile.
template <int WG, int BN>
constexpr int StageBytes() {
  return (64 * WG + BN) * kRowBytes;
}
template <int WG, int BN>
constexpr int Stages() {
  return kPipelineBytes / StageBytes<WG, BN>();
}
// The dynamic shared memory a launch asks for: the stages and room to align them to 1024 bytes.
template <int WG, int BN>
constexpr size_t SharedBytes() {
  return static_cast<size_t>(Stages<WG, BN>()) * StageBytes<WG, BN>() + 1024;
}

__device__ __forceinline__ float Silu(float a) { return a / (1.f + __expf(-a)); }
__device__ __forceinline__ float RoundBf16(float v) { return __bfloat162float(__float2bfloat16(v)); }

// Byte offset of 16-byte chunk c of row r in a [rows][64] bf16 tile with the 128-byte swizzle.
__device__ __forceinline__ uint32_t SwizzledOffset(int r, int c) {
  return static_cast<uint32_t>(r * kRowBytes + ((c ^ (r & 7)) << 4));
}

// mbarrier helpers (shared-memory barriers that count arrivals per phase).
__device__ __forceinline__ void BarrierInit(uint32_t bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void BarrierArrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void BarrierArriveExpectTx(uint32_t bar, uint32_t bytes) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
// The tensor-memory accelerator: box {64 k, 64 rows} at (k, row) of a weight's tensor map into
// shared memory (128-byte swizzle, zeros out of bounds), counted on mbarrier `bar`.
__device__ __forceinline__ void TmaLoadBox(uint32_t dst, const WeightTensorMap* map, int k, int row, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(map), "r"(k), "r"(row), "r"(bar)
      : "memory");
}
// Waits until the phase of parity `parity` has completed (a fresh barrier is in phase 0, and
// parity 1 counts as completed: producers start by waiting on parity 1 of their empty barriers).
__device__ __forceinline__ void BarrierWait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  while (!done) {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  }
}

// The tile plan every CTA computes from the group offsets: m-tiles of kBm rows per group (scanned
// over the block into `prefix`), n-tiles of kCols output columns, tile t = n-tile t / m_tiles,
// m-tile t % m_tiles.
struct Tile {
  int group, row0, rows, col0;
};
template <int kBm, int kCols, int kThreads>
struct TilePlan {
  int* prefix;  // shared [count + 1]
  int count, m_tiles, tiles;

  // Every thread of the block calls it (two block barriers).
  __device__ __forceinline__ void Build(const SkinnyGroups& groups, int N, int* warp_sums) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    int mine = 0;
    if (tid < count) {
      const int rows = groups.offsets[tid + 1] - groups.offsets[tid];
      mine = rows > 0 ? (rows + kBm - 1) / kBm : 0;
    }
    int incl = mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += v;
    }
    if (lane == 31) warp_sums[warp] = incl;
    __syncthreads();
    int before = 0;
    for (int w = 0; w < warp; ++w) before += warp_sums[w];
    if (tid < count) prefix[tid] = before + incl - mine;
    if (tid == kThreads - 1) prefix[count] = before + incl;  // count <= kThreads
    __syncthreads();
    m_tiles = prefix[count];
    tiles = m_tiles * ((N + kCols - 1) / kCols);
  }
  __device__ __forceinline__ Tile Find(const SkinnyGroups& groups, int t) const {
    const int nt = t / m_tiles, mt = t - nt * m_tiles;
    int lo = 0, hi = count;  // the last group whose first m-tile is <= mt
    while (hi - lo > 1) {
      const int mid = (lo + hi) >> 1;
      if (prefix[mid] <= mt) {
        lo = mid;
      } else {
        hi = mid;
      }
    }
    Tile tl;
    tl.group = lo;
    tl.row0 = groups.offsets[lo] + (mt - prefix[lo]) * kBm;
    tl.rows = min(kBm, groups.offsets[lo + 1] - tl.row0);
    tl.col0 = nt * kCols;
    return tl;
  }
};

// The TMA loads of a stage's BN weight rows (64-row boxes, counted on `bar`): the tile's columns
// from col0, or with SwiGLU its BN / 2 gate rows then the matching up rows (W_g is [2N, K]).
template <int BN, bool kSwiGlu>
__device__ __forceinline__ void LoadWeightBoxes(uint32_t b_base, const WeightTensorMap* map, int k, int col0, int N,
                                                uint32_t bar) {
#pragma unroll
  for (int h = 0; h < BN / 64; ++h) {
    const int row = kSwiGlu ? (h < BN / 128 ? col0 + 64 * h : N + col0 + 64 * (h - BN / 128)) : col0 + 64 * h;
    TmaLoadBox(b_base + h * 64 * kRowBytes, map, k, row, bar);
  }
}

// One thread's share of a stage's loads: x rows r0 + kPass j of the m-tile (gathered), weight rows
// r0 + kPass j of the tile's B, 16-byte column `chunk`.
template <int kBm, int BN, int kPass, bool kSwiGlu>
struct StageLoader {
  static constexpr int kAJ = kBm / kPass;
  static constexpr int kBJ = (BN + kPass - 1) / kPass;
  const bf16* a_src[kAJ];
  const bf16* b_src[kBJ];
  int r0, chunk;

  __device__ __forceinline__ void Point(const bf16* x, int K, const SkinnyGroups& groups, int N, const Tile& tl) {
#pragma unroll
    for (int j = 0; j < kAJ; ++j) {
      const int r = r0 + kPass * j;
      const int src = r < tl.rows ? (groups.row_index != nullptr ? groups.row_index[tl.row0 + r] : tl.row0 + r) : -1;
      a_src[j] = src >= 0 ? x + static_cast<int64_t>(src) * K : nullptr;
    }
    const bf16* w = groups.weights[tl.group];
#pragma unroll
    for (int j = 0; j < kBJ; ++j) {
      const int r = r0 + kPass * j;
      int wr = -1;
      if (r >= BN) {
        // past the tile (BN not a multiple of the pass): no load
      } else if constexpr (kSwiGlu) {  // gate rows, then the matching up rows (W_g is [2N, K])
        const int f = tl.col0 + (r < BN / 2 ? r : r - BN / 2);
        wr = f < N ? (r < BN / 2 ? f : N + f) : -1;
      } else {
        wr = tl.col0 + r < N ? tl.col0 + r : -1;
      }
      b_src[j] = wr >= 0 ? w + static_cast<int64_t>(wr) * K : nullptr;
    }
  }
  // Zeros past the group's rows, the tile's columns or K. With tensor maps the weight rows come
  // through the TMA (issued by thread 0, counted on `bar`) instead of this thread's copies.
  __device__ __forceinline__ void Load(const bf16* x, int K, const SkinnyGroups& groups, int N, const Tile& tl,
                                       uint32_t a_base, int step, uint32_t bar) const {
    const int k = step * kBk + 8 * chunk;
    const bool kin = k < K;
    const uint32_t b_base = a_base + kBm * kRowBytes;
#pragma unroll
    for (int j = 0; j < kAJ; ++j) {
      const bool ok = kin && a_src[j] != nullptr;
      CopyAsync(a_base + SwizzledOffset(r0 + kPass * j, chunk), ok ? a_src[j] + k : x, ok ? 16 : 0);
    }
    if (groups.weight_maps != nullptr) {
      if (threadIdx.x == 0) {
        BarrierArriveExpectTx(bar, BN * kRowBytes);
        LoadWeightBoxes<BN, kSwiGlu>(b_base, groups.weight_maps + tl.group, step * kBk, tl.col0, N, bar);
      }
      return;
    }
#pragma unroll
    for (int j = 0; j < kBJ; ++j) {
      if (BN % kPass != 0 && r0 + kPass * j >= BN) continue;
      const bool ok = kin && b_src[j] != nullptr;
      CopyAsync(b_base + SwizzledOffset(r0 + kPass * j, chunk), ok ? b_src[j] + k : x, ok ? 16 : 0);
    }
  }
};

// One k-step of warpgroup `wg`: its 64 rows of the stage's x tile times the stage's BN weight rows.
template <int BN>
__device__ __forceinline__ void StepMma(float (&acc)[BN / 2], uint32_t a_base, int kBm, int wg) {
  const uint32_t b_base = a_base + kBm * kRowBytes;
  WgmmaFence();
#pragma unroll
  for (int kk = 0; kk < kBk / 16; ++kk) {
    if constexpr (BN == 256) {
      WgmmaM64N256K16(acc, WgmmaDescriptor(a_base + wg * 64 * kRowBytes + 32 * kk), WgmmaDescriptor(b_base + 32 * kk),
                      1);
    } else if constexpr (BN == 64) {
      WgmmaM64N64K16(acc, WgmmaDescriptor(a_base + wg * 64 * kRowBytes + 32 * kk), WgmmaDescriptor(b_base + 32 * kk),
                     1);
    } else {
      WgmmaM64N128K16(acc, WgmmaDescriptor(a_base + wg * 64 * kRowBytes + 32 * kk), WgmmaDescriptor(b_base + 32 * kk),
                      1);
    }
  }
  WgmmaCommit();
}

// The epilogue of warpgroup `wg` (thread `t` of it): accumulator i holds row 64 wg + 16 (t / 32) +
// (t % 32) / 4 + 8 ((i >> 1) & 1), column 8 (i >> 2) + 2 (t % 4) + (i & 1).
template <int BN, bool kSwiGlu>
__device__ __forceinline__ void StoreTile(const float (&acc)[BN / 2], const Tile& tl, int wg, int t, int N,
                                          bf16* __restrict__ out) {
  const int wi = t >> 5, fr = (t & 31) >> 2, quad = t & 3;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int r = 64 * wg + 16 * wi + fr + 8 * h;
    if (r >= tl.rows) continue;
    bf16* dst = out + static_cast<int64_t>(tl.row0 + r) * N;
    if constexpr (kSwiGlu) {
#pragma unroll
      for (int j = 0; j < BN / 16; ++j) {
        const int f = tl.col0 + 8 * j + 2 * quad;
        if (f >= N) continue;
        const int gi = 4 * j + 2 * h, ui = 4 * (j + BN / 16) + 2 * h;
        // gate and up rounded to bf16 first, as out of a bf16 GEMM (the other expert paths).
        const float a0 = Silu(RoundBf16(acc[gi])) * RoundBf16(acc[ui]);
        const float a1 = Silu(RoundBf16(acc[gi + 1])) * RoundBf16(acc[ui + 1]);
        *reinterpret_cast<__nv_bfloat162*>(dst + f) = __floats2bfloat162_rn(a0, a1);
      }
    } else {
#pragma unroll
      for (int j = 0; j < BN / 8; ++j) {
        const int c = tl.col0 + 8 * j + 2 * quad;
        if (c >= N) continue;
        *reinterpret_cast<__nv_bfloat162*>(dst + c) = __floats2bfloat162_rn(acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1]);
      }
    }
  }
}

// Multistage: every thread loads and computes; a block barrier per k-step.
template <int WG, int BN, bool kSwiGlu>
__global__ void __launch_bounds__(128 * WG, 1)
    GroupedGemmKernel(const bf16* __restrict__ x, int K, SkinnyGroups groups, int N, bf16* __restrict__ out) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kThreads = 128 * WG;
  constexpr int kBm = 64 * WG;
  constexpr int S = Stages<WG, BN>();
  constexpr int kAcc = BN / 2;
  constexpr int kCols = kSwiGlu ? BN / 2 : BN;
  static_assert(S >= 3, "the pipeline needs a stage in flight besides the two being read");

  __shared__ int prefix[kMaxGroups + 1];
  __shared__ int warp_sums[kThreads / 32];
  __shared__ __align__(8) uint64_t bars[S];  // the TMA's weight tiles of each stage
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = SharedAddress(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t bar0 = SharedAddress(&bars[0]);
  const int tid = threadIdx.x, wg = __shfl_sync(0xffffffffu, tid >> 7, 0);  // warp-uniform to the compiler
  const bool tma = groups.weight_maps != nullptr;
  if (tma && tid == 0) {
    for (int s = 0; s < S; ++s) BarrierInit(bar0 + 8 * s, 1);
  }
  PdlGate();  // the offsets and the rows come from the kernels before
  TilePlan<kBm, kCols, kThreads> plan{prefix, static_cast<int>(groups.count), 0, 0};
  plan.Build(groups, N, warp_sums);  // its block barriers also publish the mbarrier inits
  int tile = blockIdx.x;
  if (tile >= plan.tiles) return;
  uint32_t phases = 0;  // bit s: the parity stage slot s waits for next

  StageLoader<kBm, BN, kThreads / 8, kSwiGlu> ld;
  ld.r0 = tid >> 3;
  ld.chunk = tid & 7;
  const int steps = (K + kBk - 1) / kBk;
  auto prologue = [&](const Tile& tl) {
#pragma unroll
    for (int s = 0; s < S - 2; ++s) {
      if (s < steps) ld.Load(x, K, groups, N, tl, base + s * StageBytes<WG, BN>(), s, bar0 + 8 * s);
      CommitAsync();
    }
  };
  float acc[kAcc];
  Tile cur = plan.Find(groups, tile);
  ld.Point(x, K, groups, N, cur);
  prologue(cur);
  while (true) {
#pragma unroll
    for (int i = 0; i < kAcc; ++i) acc[i] = 0.f;
    // A warpgroup whose 64 rows are all past the group's rows (its last m-tile) skips the MMAs.
    const bool busy = __shfl_sync(0xffffffffu, 64 * wg < cur.rows ? 1 : 0, 0);
    for (int kt = 0; kt < steps; ++kt) {
      WaitAsync<S - 3>();  // this thread's part of stage kt is in
      if (tma) {           // and the TMA's weight tile
        const int slot = kt % S;
        BarrierWait(bar0 + 8 * slot, (phases >> slot) & 1u);
        phases ^= 1u << slot;
      }
      FenceProxyAsync();   // ... and visible to the tensor cores' reads
      __syncthreads();     // everyone's part; the MMAs of step kt - 2 are done (slot free)
      const int ahead = kt + S - 2;
      if (ahead < steps) {
        ld.Load(x, K, groups, N, cur, base + (ahead % S) * StageBytes<WG, BN>(), ahead, bar0 + 8 * (ahead % S));
      }
      CommitAsync();
      if (busy) {
        StepMma<BN>(acc, base + (kt % S) * StageBytes<WG, BN>(), kBm, wg);
        WgmmaWait<1>();  // step kt - 1's group is done
      }
    }
    WgmmaWait<0>();
    FenceAccumulators(acc);
    __syncthreads();  // both warpgroups are done with every stage

    // The next tile's first stages load while this one's results go out.
    const int next = tile + static_cast<int>(gridDim.x);
    Tile nxt{};
    if (next < plan.tiles) {
      nxt = plan.Find(groups, next);
      ld.Point(x, K, groups, N, nxt);
      prologue(nxt);
    }
    StoreTile<BN, kSwiGlu>(acc, cur, wg, tid & 127, N, out);
    if (next >= plan.tiles) break;
    tile = next;
    cur = nxt;
  }
  WaitAsync<0>();
#else
  __trap();  // sm_90a code only (GroupedGemmSupported)
#endif
}

// Warp-specialised on the TMA: WG consumer warpgroups multiply; one thread of a producer warp
// streams every stage (the m-tile's x rows and the weight rows, 64-row boxes) through the TMA.
// Stages are handed over through mbarriers: full (the producer's expect_tx arrival and the bytes
// landing) and empty (every consumer thread done reading). x must hold the rows contiguously
// (no row_index): the caller gathers them first.
template <int WG, int BN, bool kSwiGlu>
__global__ void __launch_bounds__(128 * WG + 32, 1)
    GroupedGemmTmaKernel(int K, SkinnyGroups groups, int N, bf16* __restrict__ out,
                         const __grid_constant__ CUtensorMap x_map) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int kThreads = 128 * WG + 32;
  constexpr int kBm = 64 * WG;
  constexpr int S = Stages<WG, BN>();
  constexpr int kAcc = BN / 2;
  constexpr int kCols = kSwiGlu ? BN / 2 : BN;
  static_assert(!kSwiGlu || BN >= 128, "SwiGLU tiles hold 64-row boxes of gate and of up rows");

  __shared__ int prefix[kMaxGroups + 1];
  __shared__ int warp_sums[kThreads / 32];
  __shared__ __align__(8) uint64_t bars[2 * S];  // full[S], then empty[S]
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw = SharedAddress(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t full0 = SharedAddress(&bars[0]), empty0 = SharedAddress(&bars[S]);
  // The warpgroup index and everything the MMAs branch on are broadcast from lane 0, so that the
  // compiler sees them warp-uniform (else it serialises the wgmma instructions in their branch).
  const int tid = threadIdx.x, wg = __shfl_sync(0xffffffffu, tid >> 7, 0);
  if (tid == 0) {
    for (int s = 0; s < S; ++s) {
      BarrierInit(full0 + 8 * s, 1);
      BarrierInit(empty0 + 8 * s, 128 * WG);
    }
  }
  PdlGate();  // the offsets and the rows come from the kernels before
  TilePlan<kBm, kCols, kThreads> plan{prefix, static_cast<int>(groups.count), 0, 0};
  plan.Build(groups, N, warp_sums);  // its block barriers also publish the mbarrier inits
  const int steps = (K + kBk - 1) / kBk;

  if (wg == WG) {  // the producer warp
    if (tid != 128 * WG) return;
    int it = 0;
    for (int tile = blockIdx.x; tile < plan.tiles; tile += gridDim.x) {
      const Tile tl = plan.Find(groups, tile);
      const WeightTensorMap* map = groups.weight_maps + tl.group;
      for (int kt = 0; kt < steps; ++kt, ++it) {
        const int slot = it % S;
        BarrierWait(empty0 + 8 * slot, ((it / S) & 1) ^ 1);
        const uint32_t bar = full0 + 8 * slot, a_base = base + slot * StageBytes<WG, BN>();
        const uint32_t b_base = a_base + kBm * kRowBytes;
        BarrierArriveExpectTx(bar, (kBm + BN) * kRowBytes);
#pragma unroll
        for (int h = 0; h < WG; ++h) {
          TmaLoadBox(a_base + h * 64 * kRowBytes, reinterpret_cast<const WeightTensorMap*>(&x_map), kt * kBk,
                     tl.row0 + 64 * h, bar);
        }
        LoadWeightBoxes<BN, kSwiGlu>(b_base, map, kt * kBk, tl.col0, N, bar);
      }
    }
    return;
  }

  // Consumers.
  float acc[kAcc];
  int it = 0;
  for (int tile = blockIdx.x; tile < plan.tiles; tile += gridDim.x) {
    const Tile cur = plan.Find(groups, tile);
#pragma unroll
    for (int i = 0; i < kAcc; ++i) acc[i] = 0.f;
    const bool busy = __shfl_sync(0xffffffffu, 64 * wg < cur.rows ? 1 : 0, 0);  // rows past the group's end: no MMAs
    if (busy) {
      for (int kt = 0; kt < steps; ++kt, ++it) {
        const int slot = it % S;
        BarrierWait(full0 + 8 * slot, (it / S) & 1);
        StepMma<BN>(acc, base + slot * StageBytes<WG, BN>(), kBm, wg);
        WgmmaWait<1>();  // the previous step's MMAs are done: release its stage
        if (kt > 0) BarrierArrive(empty0 + 8 * ((it - 1) % S));
      }
      WgmmaWait<0>();
      FenceAccumulators(acc);
      BarrierArrive(empty0 + 8 * ((it - 1) % S));
    } else {
      for (int kt = 0; kt < steps; ++kt, ++it) {
        const int slot = it % S;
        BarrierWait(full0 + 8 * slot, (it / S) & 1);
        BarrierArrive(empty0 + 8 * slot);
      }
    }
    StoreTile<BN, kSwiGlu>(acc, cur, wg, tid & 127, N, out);
  }
#else
  __trap();  // sm_90a code only (GroupedGemmSupported)
#endif
}

// The TMA descriptor of x [rows, K] (boxes of 64 k x 64 rows, 128-byte swizzle).
CUtensorMap RowsTensorMap(const bf16* x, int64_t rows, int64_t K);

// The grid of a launch (one CTA per SM, at most one per tile there can be), after raising the
// kernel's shared-memory limit once (a static per instance: the template parameters name it).
template <int WG, int BN, bool kSwiGlu, bool kTma, typename Kernel>
int64_t PrepareGrid(Kernel kernel, const SkinnyGroups& groups, int64_t N, int64_t max_rows) {
  static const bool prepared = [&] {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(SharedBytes<WG, BN>())));
    return true;
  }();
  (void)prepared;
  const int64_t cols = kSwiGlu ? BN / 2 : BN, bm = 64 * WG;
  const int64_t n_tiles = (N + cols - 1) / cols;
  const int64_t most_tiles = n_tiles * ((max_rows + bm - 1) / bm + groups.count);
  return std::min<int64_t>(DeviceSmCount(), most_tiles);
}

template <int WG, int BN, bool kSwiGlu>
void LaunchGroupedTma(const bf16* x, int64_t K, const SkinnyGroups& groups, int64_t N, bf16* out, int64_t max_rows,
                      cudaStream_t s) {
  auto kernel = GroupedGemmTmaKernel<WG, BN, kSwiGlu>;
  const int64_t grid = PrepareGrid<WG, BN, kSwiGlu, true>(kernel, groups, N, max_rows);
  const CUtensorMap x_map = RowsTensorMap(x, max_rows, K);
  Launch(kernel, dim3(static_cast<unsigned>(grid)), dim3(128 * WG + 32), SharedBytes<WG, BN>(), s,
         static_cast<int>(K), groups, static_cast<int>(N), out, x_map);
  MOE_CUDA_CHECK_LAUNCH();
}

template <int WG, int BN, bool kSwiGlu>
void LaunchGrouped(const bf16* x, int64_t K, const SkinnyGroups& groups, int64_t N, bf16* out, int64_t max_rows,
                   cudaStream_t s) {
  auto kernel = GroupedGemmKernel<WG, BN, kSwiGlu>;
  const int64_t grid = PrepareGrid<WG, BN, kSwiGlu, false>(kernel, groups, N, max_rows);
  Launch(kernel, dim3(static_cast<unsigned>(grid)), dim3(128 * WG), SharedBytes<WG, BN>(), s, x,
         static_cast<int>(K), groups, static_cast<int>(N), out);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace

namespace {

// A 2D tensor map of row-major bf16 [rows, K] in boxes of 64 k x 64 rows, 128-byte swizzle, zeros
// out of bounds.
CUtensorMap EncodeRows(const bf16* p, int64_t rows, int64_t K) {
  static PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    MOE_CUDA_CHECK(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &found));
    if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
      throw std::runtime_error("BuildWeightTensorMaps: the driver has no cuTensorMapEncodeTiled");
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  if (K % 8 != 0) throw std::invalid_argument("tensor map: K must be a multiple of 8");
  CUtensorMap m{};
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(K), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(K) * sizeof(bf16)};
  const cuuint32_t box[2] = {kBk, 64}, element_strides[2] = {1, 1};
  const CUresult r = encode(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<bf16*>(p), dims, strides, box,
                            element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) throw std::runtime_error("cuTensorMapEncodeTiled failed with " + std::to_string(r));
  return m;
}

CUtensorMap RowsTensorMap(const bf16* x, int64_t rows, int64_t K) { return EncodeRows(x, rows, K); }

}  // namespace

void BuildWeightTensorMaps(const bf16* const* weights, int64_t count, int64_t rows, int64_t K,
                           WeightTensorMap* out) {
  static_assert(sizeof(WeightTensorMap) == sizeof(CUtensorMap));
  for (int64_t g = 0; g < count; ++g) {
    out[g] = WeightTensorMap{};
    if (weights[g] == nullptr) continue;
    const CUtensorMap m = EncodeRows(weights[g], rows, K);
    std::memcpy(&out[g], &m, sizeof m);
  }
}

bool GroupedGemmSupported() {
  static const bool supported = [] {
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
      return false;
    }
    return major == 9 && minor == 0;
  }();
  return supported;
}

void GroupedGemm(const bf16* x, int64_t K, const SkinnyGroups& groups, int64_t N, SkinnyEpilogue epi, bf16* out,
                 int64_t max_rows, cudaStream_t s, GroupedTile tile) {
  if (groups.offsets == nullptr || groups.weights == nullptr || groups.count < 1 || groups.count > kMaxGroups) {
    throw std::invalid_argument("GroupedGemm: needs device offsets and a weights table of 1 to 256 groups");
  }
  if (K % 8 != 0 || N % 8 != 0 || K > (1 << 30) || N > (1 << 30)) {
    throw std::invalid_argument("GroupedGemm: K and N must be multiples of 8");
  }
  if (max_rows <= 0) return;
  const bool swiglu = epi == SkinnyEpilogue::kSwiGluBf16;
  if (!swiglu && epi != SkinnyEpilogue::kStoreBf16) {
    throw std::invalid_argument("GroupedGemm: only the bf16 and SwiGLU epilogues");
  }
  if (tile == GroupedTile::kAuto) tile = GroupedTile::k128x128;
  if (GroupedTileReadsRowsInOrder(tile) && (groups.weight_maps == nullptr || groups.row_index != nullptr)) {
    throw std::invalid_argument("GroupedGemm: the TMA shapes need weight_maps and no row_index");
  }
  switch (tile) {
    case GroupedTile::kTma128x256:
      return swiglu ? LaunchGroupedTma<2, 256, true>(x, K, groups, N, out, max_rows, s)
                    : LaunchGroupedTma<2, 256, false>(x, K, groups, N, out, max_rows, s);
    case GroupedTile::kTma256x128:
      return swiglu ? LaunchGroupedTma<4, 128, true>(x, K, groups, N, out, max_rows, s)
                    : LaunchGroupedTma<4, 128, false>(x, K, groups, N, out, max_rows, s);
    case GroupedTile::kTma128x128:
      return swiglu ? LaunchGroupedTma<2, 128, true>(x, K, groups, N, out, max_rows, s)
                    : LaunchGroupedTma<2, 128, false>(x, K, groups, N, out, max_rows, s);
    case GroupedTile::kTma128x64:
      if (swiglu) throw std::invalid_argument("GroupedGemm: the 128x64 tile has no SwiGLU epilogue");
      return LaunchGroupedTma<2, 64, false>(x, K, groups, N, out, max_rows, s);
    case GroupedTile::k128x256:
      return swiglu ? LaunchGrouped<2, 256, true>(x, K, groups, N, out, max_rows, s)
                    : LaunchGrouped<2, 256, false>(x, K, groups, N, out, max_rows, s);
    case GroupedTile::k192x128:
      return swiglu ? LaunchGrouped<3, 128, true>(x, K, groups, N, out, max_rows, s)
                    : LaunchGrouped<3, 128, false>(x, K, groups, N, out, max_rows, s);
    default:
      return swiglu ? LaunchGrouped<2, 128, true>(x, K, groups, N, out, max_rows, s)
                    : LaunchGrouped<2, 128, false>(x, K, groups, N, out, max_rows, s);
  }
}

}  // namespace moe::gpu
