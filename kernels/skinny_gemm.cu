// The grouped "skinny" GEMM: y = x W^T for few rows per weight matrix (decode), streaming each
// weight once from memory at close to the copy bandwidth. See kernels.h for the contract.
//
// Work. A CTA of 4 warps owns 128 weight rows of one group (with the SwiGLU epilogue: 64 gate rows
// f0.. and the 64 up rows I + f0.., so that each warp holds the gate and the up value of the same
// 16 features) and a range of K (split-K across CTAs when a launch would otherwise leave SMs idle).
// It walks its K range kBk at a time through a cp.async pipeline (Stages: 128 k and 3 stages for
// up to 8 token rows, else 64 k and 4): each stage brings the 128 x kBk weight tile (32 or 16 KB)
// and the matching k of up to 8 * NT token rows (gathered through row_index) into XOR-swizzled
// shared memory, and all stages but the one the tensor cores work on are in flight. Warp w
// multiplies its 32 weight rows (two 16-row tiles, loaded with ldmatrix) by the token rows (8 per
// tile, ldmatrix too) with mma.sync m16n8k16: the weights are the A operand and the tokens the
// narrow N side ("swap AB").
//
// Output. Without split-K the warps write their results (and SwiGLU) straight from registers. With
// S splits every CTA writes float32 partial sums to a workspace and SkinnyReduce adds the S parts
// in split order and applies the epilogue: the sum order is fixed, so a result never depends on
// timing. A row's result does not depend on the other rows or on the grouping, for a given
// number of splits.
//
// A group with more rows than the 8 * NT one pass holds takes several passes over its weights
// (the later ones mostly from L2); the host picks NT from the expected rows per group.
#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/ptx.cuh"
#include "kernels/kernels.h"

#include <algorithm>
#include <type_traits>
#include <stdexcept>

namespace moe::gpu {
namespace {

constexpr int kThreads = 128;
constexpr int kRows = 128;   // weight rows per CTA
// The pipeline's stages for NT token tiles. With one tile (up to 8 rows: decode's dense products
// and small batches' experts) 128 k a stage, three stages: each weight row is read 256 contiguous
// bytes at a time; with 128 bytes (64 k, four stages) those products streamed at ~3.9 TB/s and
// batch-1 decode ran 4-5% slower (benchmarks/NOTES.md, session 16): the memory serves longer runs
// of a row better. Two tiles (batch 9-16's dense products) measured 0-3% faster at batch 12 and
// 16 with 64 k and four stages; four or eight tiles (the device exchange's experts) would leave
// one 128 k CTA an SM: they keep 64 k and four stages too.
template <int NT>
struct Stages {
  static constexpr int kBk = NT <= 1 ? 128 : 64;  // k per stage
  static constexpr int kCount = NT <= 1 ? 3 : 4;  // stages: all but one in flight
  static constexpr int kRowChunks = kBk / 8;      // 16-byte chunks of a tile row
  static constexpr int kRowsPerPass = kThreads / kRowChunks;  // tile rows one pass of the CTA's loads covers
  static_assert(kBk % 64 == 0 && kThreads % kRowChunks == 0 && kRows % kRowsPerPass == 0);
};

// Element offset of (row, 16-byte chunk) in a swizzled [rows][kBk] bf16 tile: chunk c of row r
// sits at chunk position c ^ (r % 8), so the 8 rows an ldmatrix phase reads (the same chunk c)
// hit 8 different bank groups.
template <int kBk>
__device__ __forceinline__ int Swizzle(int row, int chunk) {
  return row * kBk + ((chunk ^ (row & 7)) << 3);
}

__device__ __forceinline__ float Silu(float a) { return a / (1.f + __expf(-a)); }
__device__ __forceinline__ float RoundBf16(float v) { return __bfloat162float(__float2bfloat16(v)); }

template <int EPI>
__device__ __forceinline__ void Store(void* out, int64_t index, float v) {
  if constexpr (EPI == static_cast<int>(SkinnyEpilogue::kStoreBf16)) {
    static_cast<bf16*>(out)[index] = __float2bfloat16(v);
  } else if constexpr (EPI == static_cast<int>(SkinnyEpilogue::kStoreF32)) {
    static_cast<float*>(out)[index] = v;
  } else {
    static_cast<float*>(out)[index] += v;
  }
}

// Grid (CTAs over N, groups, splits), 128 threads, dynamic shared memory kStages x (weights + x).
template <int NT, int EPI, bool kPartialOut>
__global__ void __launch_bounds__(kThreads) SkinnyGemmKernel(const bf16* __restrict__ x, int K, SkinnyGroups groups,
                                                              int N, void* out, float* partial, int64_t partial_rows,
                                                              int32_t* counters) {
  constexpr int kTokens = 8 * NT;
  constexpr int kBk = Stages<NT>::kBk, kStages = Stages<NT>::kCount;
  constexpr int kRowChunks = Stages<NT>::kRowChunks, kRowsPerPass = Stages<NT>::kRowsPerPass;
  constexpr bool kSwiGlu = EPI == static_cast<int>(SkinnyEpilogue::kSwiGluBf16);
  // Programmatic launch: a product whose weights are known without waiting (dense, or grouped with
  // ready groups) streams its first weight tiles before waiting for the previous kernel; a grouped
  // one whose row split was just made on the device waits first. Every CTA waits, on every path.
  bool prefetch = (groups.offsets == nullptr && groups.active == nullptr) || groups.ready;
  if (!prefetch) PdlGate();
  const int g = groups.active != nullptr ? groups.active[blockIdx.y] : static_cast<int>(blockIdx.y);
  int row0 = 0, rows = g < 0 ? 0 : static_cast<int>(groups.rows);
  if (g >= 0 && groups.offsets != nullptr) {
    row0 = groups.offsets[g];
    rows = groups.offsets[g + 1] - row0;
  }
  const bf16* __restrict__ w = g < 0 ? nullptr : groups.weights != nullptr ? groups.weights[g] : groups.weight;
  if (rows <= 0 || w == nullptr) {  // the host never sends rows to a group without weights
    if (prefetch) PdlGate();
    return;
  }

  extern __shared__ __align__(128) unsigned char smem[];
  bf16* sw = reinterpret_cast<bf16*>(smem);       // [kStages][kRows][kBk]
  bf16* sx = sw + kStages * kRows * kBk;          // [kStages][kTokens][kBk]
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int fr = lane >> 2, quad = lane & 3;

  // The weight row (global) behind tile row r: gate rows f0 + 16w' + i for the first 16 rows of
  // each warp's 32, up rows I + f0 + 16w' + i for the second 16 (SwiGLU); else f0 + r.
  const int f0 = blockIdx.x * (kSwiGlu ? kRows / 2 : kRows);
  const int n_rows = kSwiGlu ? 2 * N : N;  // rows of W
  auto weight_row = [&](int r) -> int {
    if (kSwiGlu) {
      const int wq = r >> 5, t = (r >> 4) & 1, i = r & 15;
      const int f = f0 + 16 * wq + i;
      return f < N ? (t ? N : 0) + f : -1;
    }
    return f0 + r < N ? f0 + r : -1;
  };
  // This thread's loads of a stage: kRows / kRowsPerPass weight chunks (rows tid / kRowChunks +
  // kRowsPerPass j, chunk tid % kRowChunks) and up to kTokens * kRowChunks / kThreads token chunks.
  constexpr int kPasses = kRows / kRowsPerPass;
  const int chunk = tid % kRowChunks;
  int wrow[kPasses];
#pragma unroll
  for (int j = 0; j < kPasses; ++j) wrow[j] = weight_row(tid / kRowChunks + kRowsPerPass * j);
  constexpr int kXLoads = (kTokens * kRowChunks + kThreads - 1) / kThreads;

  // K range of this split, in kBk steps.
  const int steps_total = (K + kBk - 1) / kBk;
  const int per_split = (steps_total + gridDim.z - 1) / gridDim.z;
  const int s_begin = blockIdx.z * per_split, s_end = min(steps_total, s_begin + per_split);
  const int steps = max(0, s_end - s_begin);

  for (int c0 = 0; c0 < rows; c0 += kTokens) {
    const int crows = min(kTokens, rows - c0);
    // The last pass over the weights reads them for the last time in this launch: L2 may drop them
    // first (earlier passes leave them for the next pass).
    const bool last_pass = c0 + kTokens >= rows;
    auto load_weights = [&](int slot, int step) {
      if (step >= s_end) return;
      const int k = step * kBk + 8 * chunk;
      const bool kin = k < K;
      bf16* sws = sw + slot * kRows * kBk;
      const uint64_t evict_first = last_pass ? EvictFirstPolicy() : 0;
#pragma unroll
      for (int j = 0; j < kPasses; ++j) {
        const int r = tid / kRowChunks + kRowsPerPass * j;
        const bool ok = kin && wrow[j] >= 0;
        const bf16* src = ok ? w + static_cast<int64_t>(wrow[j]) * K + k : w;
        if (last_pass) {
          CopyAsyncEvictFirst(SharedAddress(sws + Swizzle<kBk>(r, chunk)), src, ok ? 16 : 0, evict_first);
        } else {
          CopyAsync(SharedAddress(sws + Swizzle<kBk>(r, chunk)), src, ok ? 16 : 0);
        }
      }
    };
    __syncthreads();  // the previous pass's readers are done with every slot
    if (prefetch) {
      // The first weight tiles are static: in flight before the wait (they join stage 0's group).
#pragma unroll
      for (int s = 0; s < kStages - 1; ++s) load_weights(s, s_begin + s);
      PdlGate();
    }
    const bf16* xrow[kXLoads];
    int xtok[kXLoads];
#pragma unroll
    for (int j = 0; j < kXLoads; ++j) {
      const int q = tid + kThreads * j, i = q / kRowChunks;
      xtok[j] = q < kTokens * kRowChunks ? i : kTokens;  // kTokens: this thread has no token chunk j
      const int r = row0 + c0 + (i < crows ? i : 0);
      const int src = groups.row_index != nullptr ? groups.row_index[r] : r;
      xrow[j] = x + static_cast<int64_t>(src) * K;
    }
    auto load_tokens = [&](int slot, int step) {
      if (step < s_end) {
        const int k = step * kBk + 8 * chunk;
        const bool kin = k < K;
        bf16* sxs = sx + slot * kTokens * kBk;
#pragma unroll
        for (int j = 0; j < kXLoads; ++j) {
          if (xtok[j] >= kTokens) continue;
          const bool ok = kin && xtok[j] < crows;
          CopyAsync(SharedAddress(sxs + Swizzle<kBk>(xtok[j], chunk)), ok ? xrow[j] + k : x, ok ? 16 : 0);
        }
      }
      CommitAsync();  // always, so the group count stays in step
    };
    auto load_stage = [&](int slot, int step) {
      load_weights(slot, step);
      load_tokens(slot, step);
    };

    float acc[2][NT][4];
#pragma unroll
    for (int t = 0; t < 2; ++t)
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[t][n][j] = 0.f;

#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (prefetch) {
        load_tokens(s, s_begin + s);  // the weights of these stages are already on their way
      } else {
        load_stage(s, s_begin + s);
      }
    }
    prefetch = false;
    for (int it = 0; it < steps; ++it) {
      WaitAsync<kStages - 2>();
      __syncthreads();  // stage `it` is in for everyone; slot (it - 1) % kStages is free
      load_stage((it + kStages - 1) % kStages, s_begin + it + kStages - 1);
      const bf16* sws = sw + (it % kStages) * kRows * kBk;
      const bf16* sxs = sx + (it % kStages) * kTokens * kBk;
#pragma unroll
      for (int kk = 0; kk < kBk / 16; ++kk) {
        uint32_t a[2][4];
#pragma unroll
        for (int t = 0; t < 2; ++t) {
          const int r = 32 * warp + 16 * t + (lane & 15);
          LoadMatrixX4(a[t], SharedAddress(sws + Swizzle<kBk>(r, 2 * kk + (lane >> 4))));
        }
#pragma unroll
        for (int n = 0; n < NT; ++n) {
          if (8 * n >= crows) break;  // the same for the whole CTA
          uint32_t b0, b1;
          const int tok = 8 * n + (lane & 7);
          LoadMatrixX2(b0, b1, SharedAddress(sxs + Swizzle<kBk>(tok, 2 * kk + ((lane >> 3) & 1))));
          Mma(acc[0][n], a[0], b0, b1);
          Mma(acc[1][n], a[1], b0, b1);
        }
      }
    }
    WaitAsync<0>();

    // Fragment (t, n, j) of this lane: tile row 32 w + 16 t + fr + 8 (j >= 2), token 8 n + 2 quad + (j & 1).
#pragma unroll
    for (int n = 0; n < NT; ++n) {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int i = 8 * n + 2 * quad + (j & 1);
        if (i >= crows) continue;
        const int64_t orow = row0 + c0 + i;
        const int rr = fr + (j >= 2 ? 8 : 0);
        if constexpr (kPartialOut) {
          float* p = partial + (static_cast<int64_t>(blockIdx.z) * partial_rows + orow) * n_rows;
#pragma unroll
          for (int t = 0; t < 2; ++t) {
            const int wr = weight_row(32 * warp + 16 * t + rr);
            if (wr >= 0) p[wr] = acc[t][n][j];
          }
        } else if constexpr (kSwiGlu) {
          const int f = f0 + 16 * warp + rr;
          if (f < N) {
            // gate and up rounded to bf16 first, as when they come out of a bf16 GEMM: the skinny
            // and the cuBLAS expert paths then differ only in float summation order.
            const float gate = RoundBf16(acc[0][n][j]), up = RoundBf16(acc[1][n][j]);
            static_cast<bf16*>(out)[orow * N + f] = __float2bfloat16(Silu(gate) * up);
          }
        } else {
#pragma unroll
          for (int t = 0; t < 2; ++t) {
            const int f = f0 + 32 * warp + 16 * t + rr;
            if (f < N) Store<EPI>(out, orow * N + f, acc[t][n][j]);
          }
        }
      }
    }
  }

  // Split-K with counters (one pass guaranteed by the host): the last CTA of this output tile to
  // finish adds the splits' partial sums in split order and applies the epilogue, as
  // SkinnyReduceKernel would, without a second launch.
  if constexpr (kPartialOut) {
    if (counters == nullptr) return;
    __shared__ int last;
    __threadfence();  // this CTA's partial sums are visible before it is counted
    __syncthreads();
    int32_t* counter = counters + blockIdx.y * gridDim.x + blockIdx.x;
    if (tid == 0) last = atomicAdd(counter, 1) == static_cast<int>(gridDim.z) - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const int S = gridDim.z;
    if constexpr (kSwiGlu) {
      for (int idx = tid; idx < rows * (kRows / 2); idx += kThreads) {
        const int i = idx / (kRows / 2), f = f0 + idx % (kRows / 2);
        if (f >= N) continue;
        float gate = 0.f, up = 0.f;
        for (int z = 0; z < S; ++z) {
          const float* p = partial + (static_cast<int64_t>(z) * partial_rows + row0 + i) * n_rows;
          gate += __ldcg(p + f);
          up += __ldcg(p + N + f);
        }
        static_cast<bf16*>(out)[(row0 + i) * static_cast<int64_t>(N) + f] =
            __float2bfloat16(Silu(RoundBf16(gate)) * RoundBf16(up));
      }
    } else {
      for (int idx = tid; idx < rows * kRows; idx += kThreads) {
        const int i = idx / kRows, f = f0 + idx % kRows;
        if (f >= N) continue;
        float v = 0.f;
        for (int z = 0; z < S; ++z) v += __ldcg(partial + (static_cast<int64_t>(z) * partial_rows + row0 + i) * n_rows + f);
        Store<EPI>(out, (row0 + i) * static_cast<int64_t>(N) + f, v);
      }
    }
    if (tid == 0) *counter = 0;  // ready for the next launch
  }
}

// out[r, f] = epilogue(sum over s of partial[s, r, :]) in split order, for the rows of the groups.
template <int EPI>
__global__ void SkinnyReduceKernel(const float* partial, int splits, int64_t partial_rows, int64_t total_rows,
                                   const int32_t* offsets, int groups, int N, void* out) {
  PdlGate();
  constexpr bool kSwiGlu = EPI == static_cast<int>(SkinnyEpilogue::kSwiGluBf16);
  const int64_t rows = offsets != nullptr ? offsets[groups] : total_rows;
  const int n_rows = kSwiGlu ? 2 * N : N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * N;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / N;
    const int f = static_cast<int>(i % N);
    float a = 0.f, b = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float* p = partial + (s * partial_rows + r) * n_rows;
      a += p[f];
      if (kSwiGlu) b += p[N + f];
    }
    if constexpr (kSwiGlu) {
      static_cast<bf16*>(out)[i] = __float2bfloat16(Silu(RoundBf16(a)) * RoundBf16(b));
    } else {
      Store<EPI>(out, i, a);
    }
  }
}

template <int NT>
constexpr size_t SharedBytes() {
  return sizeof(bf16) * Stages<NT>::kCount * (kRows + 8 * NT) * Stages<NT>::kBk;
}

// One SkinnyGemm launch's arguments, as the templates below pick its kernel instance.
struct SkinnyLaunch {
  dim3 grid;
  const bf16* x;
  int K;
  SkinnyGroups groups;
  int N;
  void* out;
  float* partial;
  int64_t partial_rows;
  int32_t* counters;
  cudaStream_t stream;
};

// Raises the kernel instance's shared memory limit, once (not per launch: launches may be captured
// into a CUDA graph).
template <int NT, int EPI, bool kPartialOut>
void RaiseSharedLimit() {
  static const bool raised = [] {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(SkinnyGemmKernel<NT, EPI, kPartialOut>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(SharedBytes<NT>())));
    return true;
  }();
  (void)raised;
}

template <int NT, int EPI, bool kPartialOut>
void LaunchKernel(const SkinnyLaunch& a) {
  RaiseSharedLimit<NT, EPI, kPartialOut>();
  Launch(SkinnyGemmKernel<NT, EPI, kPartialOut>, a.grid, kThreads, SharedBytes<NT>(), a.stream, a.x, a.K, a.groups, a.N,
         a.out, kPartialOut ? a.partial : nullptr, kPartialOut ? a.partial_rows : 0,
         kPartialOut ? a.counters : nullptr);
}

template <int NT, int EPI>
void LaunchEpilogue(const SkinnyLaunch& a) {
  if (a.grid.z > 1) {
    LaunchKernel<NT, EPI, true>(a);
  } else {
    LaunchKernel<NT, EPI, false>(a);
  }
}

template <int NT>
void LaunchTiles(const SkinnyLaunch& a, SkinnyEpilogue epi) {
  switch (epi) {
    case SkinnyEpilogue::kStoreBf16:
      LaunchEpilogue<NT, 0>(a);
      break;
    case SkinnyEpilogue::kStoreF32:
      LaunchEpilogue<NT, 1>(a);
      break;
    case SkinnyEpilogue::kAddF32:
      LaunchEpilogue<NT, 2>(a);
      break;
    case SkinnyEpilogue::kSwiGluBf16:
      LaunchEpilogue<NT, 3>(a);
      break;
  }
}

// CTAs of the kernel for NT tiles that one SM holds at once (shared memory bounds it: 2 with one
// tile, 3 with two, 2 with four or eight, on an H100/H200).
template <int NT>
int ResidentPerSm() {
  static const int blocks = [] {
    RaiseSharedLimit<NT, 0, false>();
    int b = 0;
    MOE_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, SkinnyGemmKernel<NT, 0, false>, kThreads,
                                                                 SharedBytes<NT>()));
    return std::max(1, b);
  }();
  return blocks;
}

// f(std::integral_constant<int, NT>) with NT the 8-row tiles of SkinnyTileCount(expected_rows).
template <typename F>
auto WithTileCount(int64_t expected_rows, F&& f) {
  switch (SkinnyTileCount(expected_rows)) {
    case 1:
      return f(std::integral_constant<int, 1>{});
    case 2:
      return f(std::integral_constant<int, 2>{});
    case 4:
      return f(std::integral_constant<int, 4>{});
    default:
      return f(std::integral_constant<int, 8>{});
  }
}

int64_t SkinnyCtasPerGroup(int64_t N, SkinnyEpilogue epi) {
  const int64_t per = epi == SkinnyEpilogue::kSwiGluBf16 ? kRows / 2 : kRows;
  return (N + per - 1) / per;
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

int DeviceSmCount() {
  static int cached[64] = {};
  int device = 0;
  MOE_CUDA_CHECK(cudaGetDevice(&device));
  if (device < 0 || device >= 64) return 132;
  if (cached[device] == 0) {
    MOE_CUDA_CHECK(cudaDeviceGetAttribute(&cached[device], cudaDevAttrMultiProcessorCount, device));
  }
  return cached[device];
}

int SkinnyResidentPerSm(int64_t expected_rows) {
  return WithTileCount(expected_rows, [](auto nt) { return ResidentPerSm<decltype(nt)::value>(); });
}

int SkinnySplits(int64_t N, int64_t K, SkinnyEpilogue epi, int64_t active_groups, int64_t expected_rows) {
  const int sms = DeviceSmCount();
  const int64_t ctas = SkinnyCtasPerGroup(N, epi) * std::max<int64_t>(1, active_groups);
  const int64_t wave = static_cast<int64_t>(SkinnyResidentPerSm(expected_rows)) * sms;
  // The weights stream at the full rate only while every CTA slot of the SMs holds a CTA (each keeps
  // its stages coming), and a CTA's rate does not grow when slots are idle: n equal CTAs take
  // ceil(n / wave) waves, a partial one as long as a full one. Each CTA also fills its pipeline:
  // about two stages' time in which its slot streams nothing, so s splits of steps / s stages each
  // take (1 + 2 s / steps) times their bytes' time. Of two equal costs the one with fewer splits wins.
  // Fit on the skinny_splits figure of moe-bench and on split counts forced inside decode steps
  // (`moe-bench --skinny-splits`; benchmarks/NOTES.md, session 17): batch 1's gate/up product (K
  // 4096, 448 tiles) runs fastest unsplit (112 us; 117 at the 4 splits that the former constants,
  // 1.5 CTAs an SM saturating and 1% a split, picked), its down product at 4 splits (256 CTAs: one
  // wave), QKV at 5 (240) and o_proj at 8 (256).
  const int bk = WithTileCount(expected_rows, [](auto nt) { return Stages<decltype(nt)::value>::kBk; });
  const int64_t steps = (K + bk - 1) / bk;
  const int64_t most = std::clamp<int64_t>(steps / 4, 1, 64);  // at least 4 pipeline steps of K each
  int best = 1;
  double best_cost = 0.0;
  for (int64_t s = 1; s <= most; ++s) {
    const int64_t n = ctas * s, waves = (n + wave - 1) / wave;
    const double cost = static_cast<double>(waves * wave) / static_cast<double>(n) *
                        (1.0 + 2.0 * static_cast<double>(s) / static_cast<double>(steps));
    if (s == 1 || cost < best_cost) {
      best = static_cast<int>(s);
      best_cost = cost;
    }
  }
  return best;
}

size_t SkinnyWorkspaceFloats(int64_t rows, int64_t N, SkinnyEpilogue epi, int splits) {
  if (splits <= 1) return 0;
  return static_cast<size_t>(splits) * static_cast<size_t>(rows) *
         static_cast<size_t>(epi == SkinnyEpilogue::kSwiGluBf16 ? 2 * N : N);
}

size_t SkinnyCounters(int64_t N, SkinnyEpilogue epi, int64_t slots) {
  return static_cast<size_t>(SkinnyCtasPerGroup(N, epi) * std::max<int64_t>(1, slots));
}

void SkinnyGemm(const bf16* x, int64_t K, const SkinnyGroups& groups, int64_t N, SkinnyEpilogue epi, void* out,
                int64_t expected_rows, int splits, float* workspace, int64_t workspace_rows, int32_t* counters,
                cudaStream_t s) {
  if (N == 0 || groups.count == 0 || (groups.offsets == nullptr && groups.rows == 0)) return;
  if (K % 8 != 0 || K <= 0) throw std::invalid_argument("SkinnyGemm: K must be a positive multiple of 8");
  if (groups.count > 65535) throw std::invalid_argument("SkinnyGemm: at most 65535 groups");
  if (K >= (int64_t{1} << 30) || N >= (int64_t{1} << 29) || workspace_rows >= (int64_t{1} << 31)) {
    throw std::invalid_argument("SkinnyGemm: a dimension is too large");
  }
  splits = std::max(1, std::min(splits, 64));
  if (splits > 1 && workspace == nullptr) throw std::invalid_argument("SkinnyGemm: split-K needs a workspace");
  const int64_t slots = groups.active != nullptr ? groups.slots : groups.count;
  if (slots <= 0) return;
  const dim3 grid(static_cast<unsigned>(SkinnyCtasPerGroup(N, epi)), static_cast<unsigned>(slots),
                  static_cast<unsigned>(splits));
  const int n = static_cast<int>(N);
  const SkinnyLaunch launch{grid, x, static_cast<int>(K), groups, n, out, workspace, workspace_rows, counters, s};
  WithTileCount(expected_rows, [&](auto nt) { LaunchTiles<decltype(nt)::value>(launch, epi); });
  MOE_CUDA_CHECK_LAUNCH();
  if (splits > 1 && counters == nullptr) {
    const int64_t total = workspace_rows * N;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + 255) / 256, 4096));
    const int G = static_cast<int>(groups.offsets != nullptr ? groups.count : 0);
    auto reduce = [&](auto kernel) {
      Launch(kernel, blocks, 256, 0, s, workspace, splits, workspace_rows, groups.rows, groups.offsets, G, n, out);
    };
    switch (epi) {
      case SkinnyEpilogue::kStoreBf16:
        reduce(SkinnyReduceKernel<0>);
        break;
      case SkinnyEpilogue::kStoreF32:
        reduce(SkinnyReduceKernel<1>);
        break;
      case SkinnyEpilogue::kAddF32:
        reduce(SkinnyReduceKernel<2>);
        break;
      case SkinnyEpilogue::kSwiGluBf16:
        reduce(SkinnyReduceKernel<3>);
        break;
    }
    MOE_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace moe::gpu
