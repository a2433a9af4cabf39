// The attention block's kernels: the fused QKV/RoPE/KV-cache write, the KV write, and paged
// attention, which dispatches single-row tiles to the decode kernel (attention_decode.cu) and
// multi-row tiles to the tensor-core kernel (attention_prefill.cu, head_dim 64 or 128) or, for
// other head dims, to the CUDA-core tiled kernel below.
#include "kernels/attention_common.cuh"
#include "kernels/rope.cuh"
#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"
#include "kernels/reduce.cuh"

#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace moe::gpu {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kKeyTile = 32;  // keys per shared-memory tile: one per lane in the score phase

// Query vectors (query rows x the query heads of one KV head) per block of the CUDA-core tiled
// kernel, and the output slots (pairs of dimensions x query vectors) each thread accumulates.
constexpr int kMaxGroup = 8;
// The tensor-core kernel's decode splits: at most kMaxDecodeSplits (the merge's cost grows with
// them: batch 1 over 16,384 keys 41 us in 32, 53 in 64), of at least kMinSplitKeys of the step's
// max_keys to fill the device once, and kMinWaveSplitKeys to fill a last wave better.
constexpr int64_t kMaxDecodeSplits = 32, kMinSplitKeys = 256, kMinWaveSplitKeys = 1024;
constexpr int kWideVectors = 64, kWideSlots = 32;

__global__ void WriteKvKernel(const bf16* k, const bf16* v, const int32_t* row_seq, const int32_t* row_pos,
                              PagedKv kv) {
  PdlGate();
  const int64_t r = blockIdx.x, width = kv.kv_heads * kv.head_dim;
  const int64_t dst = CacheOffset(kv, row_seq[r], row_pos[r], 0);
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    kv.keys[dst + i] = k[r * width + i];
    kv.values[dst + i] = v[r * width + i];
  }
}

// One block per token: RoPE on the q heads (to q_out) and on the k heads, which go with the v
// heads straight into the paged cache. The angles (in double: a float angle loses the low
// frequencies at long contexts) and the cache address depend on the step's inputs alone, so they
// are computed before the wait for the QKV product; then every thread loads all its pairs before
// rotating any (a decode step is one token: latency, not bandwidth). Pairs go as bf16x2 (the
// rotate-half partners i, i + half and i + 1, i + 1 + half together): head_dim % 4 == 0.
constexpr int kRopeThreads = 256;
constexpr int kRopeUnroll = 8;
constexpr int kRopeMaxHalf = 256;

__global__ void __launch_bounds__(kRopeThreads) QkvRopeKvKernel(const bf16* qkv, const int32_t* row_seq,
                                                                 const int32_t* row_pos, int heads,
                                                                 const double* inv_freq, PagedKv kv, bf16* q_out) {
  __shared__ float cos_s[kRopeMaxHalf], sin_s[kRopeMaxHalf];
  const int64_t t = blockIdx.x;
  const int D = static_cast<int>(kv.head_dim), half = D / 2, kvh = static_cast<int>(kv.kv_heads);
  const int pos = row_pos[t];
  const int64_t dst = CacheOffset(kv, row_seq[t], pos, 0);
  for (int i = threadIdx.x; i < half; i += blockDim.x) RopeAngle(pos, inv_freq[i], cos_s[i], sin_s[i]);
  __syncthreads();
  PdlGate();
  const int half2 = half / 2, rope_items = (heads + kvh) * half2, total = rope_items + kvh * half;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(qkv + t * (heads + 2 * kvh) * D);
  const uint32_t* vsrc = src + (heads + kvh) * half;
  for (int base = threadIdx.x; base < total; base += kRopeThreads * kRopeUnroll) {
    uint32_t a[kRopeUnroll], b[kRopeUnroll];
#pragma unroll
    for (int u = 0; u < kRopeUnroll; ++u) {
      const int item = base + kRopeThreads * u;
      if (item < rope_items) {
        const int h = item / half2, j = item - h * half2;
        a[u] = src[h * half + j];
        b[u] = src[h * half + half2 + j];
      } else if (item < total) {
        a[u] = vsrc[item - rope_items];
      }
    }
#pragma unroll
    for (int u = 0; u < kRopeUnroll; ++u) {
      const int item = base + kRopeThreads * u;
      if (item < rope_items) {
        const int h = item / half2, j = item - h * half2, i = 2 * j;
        __nv_bfloat162 lo, hi;
        RopeRotate(a[u], b[u], cos_s[i], sin_s[i], cos_s[i + 1], sin_s[i + 1], lo, hi);
        bf16* to = h < heads ? q_out + (t * heads + h) * D : kv.keys + dst + static_cast<int64_t>(h - heads) * D;
        *reinterpret_cast<__nv_bfloat162*>(to + i) = lo;
        *reinterpret_cast<__nv_bfloat162*>(to + i + half) = hi;
      } else if (item < total) {
        reinterpret_cast<uint32_t*>(kv.values + dst)[item - rope_items] = a[u];
      }
    }
  }
}

// Any even head_dim: one pair per thread and iteration.
__global__ void QkvRopeKvLoopKernel(const bf16* qkv, const int32_t* row_seq, const int32_t* row_pos, int64_t heads,
                                    const double* inv_freq, PagedKv kv, bf16* q_out) {
  PdlGate();
  const int64_t t = blockIdx.x, D = kv.head_dim, half = D / 2, kvh = kv.kv_heads;
  const bf16* src = qkv + t * (heads + 2 * kvh) * D;
  const int pos = row_pos[t];
  const int64_t dst = CacheOffset(kv, row_seq[t], pos, 0);
  for (int64_t i = threadIdx.x; i < half; i += blockDim.x) {
    float c, s;
    RopeAngle(pos, inv_freq[i], c, s);
    for (int64_t h = 0; h < heads + kvh; ++h) {
      const float a = __bfloat162float(src[h * D + i]), b = __bfloat162float(src[h * D + i + half]);
      bf16* to = h < heads ? q_out + (t * heads + h) * D : kv.keys + dst + (h - heads) * D;
      to[i] = __float2bfloat16(a * c - b * s);
      to[i + half] = __float2bfloat16(b * c + a * s);
    }
  }
  for (int64_t i = threadIdx.x; i < kvh * D; i += blockDim.x) kv.values[dst + i] = src[(heads + kvh) * D + i];
}

__device__ __forceinline__ void Unpack8(const uint4& u, float (&f)[8]) {
  const __nv_bfloat162* p = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 v = __bfloat1622float2(p[i]);
    f[2 * i] = v.x;
    f[2 * i + 1] = v.y;
  }
}

// The CUDA-core tiled kernel, for head dims the tensor-core kernel does not take.
// Grid (tiles, kv_heads), 128 threads. A tile is `rows` query rows of one sequence at consecutive
// positions; with the G query heads of the block's KV head they make NQ = rows x G query vectors,
// which share every key and value the block loads. Keys go through shared memory 32 at a time:
//   scores:  lane j takes key j, warp w the query vectors w, w + 4, ...: NQ x 32 dot products;
//            masked (causal, sliding window) to -inf; an online softmax per query vector (running
//            max m and sum l, warp-wide over the tile's 32 keys) turns them into weights p;
//   values:  thread (group, dp) holds dimensions 2dp, 2dp + 1 of query vectors group, group +
//            groups, ... and adds p x v over the tile's keys after rescaling by exp(m_old - m_new).
// Shared memory: q (float, pre-scaled) [NQ][D], keys [32][D + 8] (the pad keeps lanes' 16-byte
// reads of different keys on different banks), values [32][D], p [NQ][32], rescale [NQ], l [NQ].
template <int kVectors, int kSlots>
__global__ void __launch_bounds__(kThreads) AttentionKernel(const bf16* q, const int32_t* row_seq,
                                                            const int32_t* row_pos, const int32_t* tiles,
                                                            int64_t heads, PagedKv kv, int64_t window, float scale,
                                                            bf16* out) {
  PdlGate();
  constexpr int kScoreSlots = kVectors / kWarps;
  const int64_t first = tiles[2 * blockIdx.x], rows = tiles[2 * blockIdx.x + 1];
  const int64_t kvh = blockIdx.y, D = kv.head_dim, G = heads / kv.kv_heads;
  const int NQ = static_cast<int>(rows * G);
  const int64_t seq = row_seq[first], pos0 = row_pos[first], pos_last = pos0 + rows - 1;
  const int64_t lo = window > 0 ? max(static_cast<int64_t>(0), pos0 - window + 1) : 0;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t kpitch = D + 8;

  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* qs = reinterpret_cast<float*>(smem_raw);              // [NQ][D]
  bf16* ks = reinterpret_cast<bf16*>(qs + NQ * D);             // [kKeyTile][D + 8]
  bf16* vs = ks + kKeyTile * kpitch;                           // [kKeyTile][D]
  float* ps = reinterpret_cast<float*>(vs + kKeyTile * D);     // [NQ][kKeyTile]
  float* rescale = ps + NQ * kKeyTile;                         // [NQ]
  float* lsum = rescale + NQ;                                  // [NQ]

  for (int64_t i = tid; i < NQ * D; i += kThreads) {
    const int64_t v = i / D, d = i % D, r = v / G, g = v % G;
    qs[i] = __bfloat162float(q[((first + r) * heads + kvh * G + g) * D + d]) * scale;
  }

  float m[kScoreSlots], l[kScoreSlots];
#pragma unroll
  for (int i = 0; i < kScoreSlots; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
  }
  const int64_t half = D / 2, groups = kThreads / half;
  const int64_t group = tid / half, dp = tid % half;
  const bool pv = group < groups;
  float2 acc[kSlots];
#pragma unroll
  for (int i = 0; i < kSlots; ++i) acc[i] = make_float2(0.f, 0.f);

  const int64_t chunks = D / 8;  // 16-byte pieces of a key row
  for (int64_t k0 = lo; k0 <= pos_last; k0 += kKeyTile) {
    __syncthreads();  // the previous tile's keys, values and weights have been read (and q is in)
    for (int64_t i = tid; i < kKeyTile * chunks; i += kThreads) {
      const int64_t j = i / chunks, c = i % chunks, key = k0 + j;
      uint4 kk = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
      if (key <= pos_last) {
        const int64_t off = CacheOffset(kv, static_cast<int>(seq), static_cast<int>(key), static_cast<int>(kvh)) + 8 * c;
        kk = *reinterpret_cast<const uint4*>(kv.keys + off);
        vv = *reinterpret_cast<const uint4*>(kv.values + off);
      }
      *reinterpret_cast<uint4*>(ks + j * kpitch + 8 * c) = kk;
      *reinterpret_cast<uint4*>(vs + j * D + 8 * c) = vv;
    }
    __syncthreads();

    // Scores of key k0 + lane against this warp's query vectors.
    float sc[kScoreSlots];
#pragma unroll
    for (int i = 0; i < kScoreSlots; ++i) sc[i] = 0.f;
    for (int64_t d = 0; d < D; d += 8) {
      float kf[8];
      Unpack8(*reinterpret_cast<const uint4*>(ks + lane * kpitch + d), kf);
#pragma unroll
      for (int i = 0; i < kScoreSlots; ++i) {
        const int v = warp + kWarps * i;
        if (v >= NQ) break;  // the same for the whole warp
        const float4 a = *reinterpret_cast<const float4*>(qs + v * D + d);
        const float4 b = *reinterpret_cast<const float4*>(qs + v * D + d + 4);
        sc[i] += a.x * kf[0] + a.y * kf[1] + a.z * kf[2] + a.w * kf[3] + b.x * kf[4] + b.y * kf[5] + b.z * kf[6] +
                 b.w * kf[7];
      }
    }
    const int64_t key = k0 + lane;
#pragma unroll
    for (int i = 0; i < kScoreSlots; ++i) {
      const int v = warp + kWarps * i;
      if (v >= NQ) break;
      const int64_t pos = pos0 + v / G;
      const bool visible = key <= pos && (window <= 0 || key > pos - window);
      const float s = visible ? sc[i] : -INFINITY;
      const float m_new = fmaxf(m[i], WarpMax(s));  // finite: every row sees at least its own key
      const float p = __expf(s - m_new);
      const float c = __expf(m[i] - m_new);
      l[i] = l[i] * c + WarpSum(p);
      m[i] = m_new;
      ps[v * kKeyTile + lane] = p;
      if (lane == 0) rescale[v] = c;
    }
    __syncthreads();

    if (pv) {
#pragma unroll
      for (int i = 0; i < kSlots; ++i) {
        const int64_t v = group + groups * i;
        if (v >= NQ) break;
        const float c = rescale[v];
        acc[i].x *= c;
        acc[i].y *= c;
      }
      for (int j = 0; j < kKeyTile; ++j) {
        const float2 vv = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(vs + j * D + 2 * dp));
#pragma unroll
        for (int i = 0; i < kSlots; ++i) {
          const int64_t v = group + groups * i;
          if (v >= NQ) break;
          const float p = ps[v * kKeyTile + j];
          acc[i].x += p * vv.x;
          acc[i].y += p * vv.y;
        }
      }
    }
  }

  __syncthreads();
#pragma unroll
  for (int i = 0; i < kScoreSlots; ++i) {
    const int v = warp + kWarps * i;
    if (v < NQ && lane == 0) lsum[v] = l[i];
  }
  __syncthreads();
  if (pv) {
#pragma unroll
    for (int i = 0; i < kSlots; ++i) {
      const int64_t v = group + groups * i;
      if (v >= NQ) break;
      const int64_t r = v / G, g = v % G;
      const float inv = 1.f / lsum[v];
      *reinterpret_cast<__nv_bfloat162*>(out + ((first + r) * heads + kvh * G + g) * D + 2 * dp) =
          __floats2bfloat162_rn(acc[i].x * inv, acc[i].y * inv);
    }
  }
}

constexpr size_t kMaxAttentionSharedBytes = 96 * 1024;

size_t AttentionSharedBytes(int64_t vectors, int64_t D) {
  return sizeof(float) * static_cast<size_t>(vectors * D) + sizeof(bf16) * static_cast<size_t>(kKeyTile * (2 * D + 8)) +
         sizeof(float) * static_cast<size_t>(vectors * (kKeyTile + 2));
}

// The most query vectors a block of either kind can hold for head_dim D.
int64_t MaxVectors(int64_t vectors, int64_t slots, int64_t D) { return std::min(vectors, slots * (kThreads / (D / 2))); }

template <int kVectors, int kSlots>
void LaunchAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                     int64_t num_tiles, int64_t max_rows, int64_t heads, const PagedKv& kv, int64_t window,
                     float scale, bf16* out, cudaStream_t s) {
  const int64_t G = heads / kv.kv_heads;
  const size_t shared = AttentionSharedBytes(max_rows * G, kv.head_dim);
  // Raised once to what any head_dim <= 256 can need (not per launch: a launch may be captured
  // into a CUDA graph, where only stream work belongs).
  static const bool raised = [] {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(AttentionKernel<kVectors, kSlots>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(kMaxAttentionSharedBytes)));
    return true;
  }();
  (void)raised;
  if (shared > kMaxAttentionSharedBytes) throw std::invalid_argument("PagedAttention: tile too large");
  const dim3 grid(static_cast<unsigned>(num_tiles), static_cast<unsigned>(kv.kv_heads));
  Launch(AttentionKernel<kVectors, kSlots>, grid, kThreads, shared, s, q, row_seq, row_pos, tiles, heads, kv, window,
                                                                   scale, out);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace

int64_t AttentionTileRows(int64_t heads_per_kv, int64_t head_dim) {
  if (heads_per_kv <= 0 || head_dim <= 0) return 1;
  return std::max<int64_t>(1, MaxVectors(kWideVectors, kWideSlots, head_dim) / heads_per_kv);
}

void WriteKv(const bf16* k, const bf16* v, const int32_t* row_seq, const int32_t* row_pos, int64_t rows,
             const PagedKv& kv, cudaStream_t s) {
  if (rows == 0) return;
  Launch(WriteKvKernel, static_cast<unsigned>(rows), 128, 0, s, k, v, row_seq, row_pos, kv);
  MOE_CUDA_CHECK_LAUNCH();
}

void QkvRopeKv(const bf16* qkv, const int32_t* row_seq, const int32_t* row_pos, int64_t T, int64_t heads,
               const double* inv_freq, const PagedKv& kv, bf16* q_out, cudaStream_t s) {
  if (T == 0) return;
  if (kv.head_dim % 4 == 0 && kv.head_dim / 2 <= kRopeMaxHalf) {
    Launch(QkvRopeKvKernel, static_cast<unsigned>(T), kRopeThreads, 0, s, qkv, row_seq, row_pos,
           static_cast<int>(heads), inv_freq, kv, q_out);
  } else {
    const int threads = static_cast<int>(std::min<int64_t>(128, std::max<int64_t>(32, kv.head_dim / 2)));
    Launch(QkvRopeKvLoopKernel, static_cast<unsigned>(T), threads, 0, s, qkv, row_seq, row_pos, heads, inv_freq, kv,
           q_out);
  }
  MOE_CUDA_CHECK_LAUNCH();
}

void PagedAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                    int64_t num_tiles, int64_t max_rows, int64_t heads, const PagedKv& kv, int64_t window,
                    float scale, bf16* out, cudaStream_t s, const DecodeSplit* split) {
  if (num_tiles == 0) return;
  const int64_t G = heads / kv.kv_heads, D = kv.head_dim;
  if (heads % kv.kv_heads != 0 || G > kMaxGroup || D % 8 != 0 || D > 256) {
    throw std::invalid_argument(
        "PagedAttention: need heads % kv_heads == 0, heads/kv_heads <= 8, head_dim a multiple of 8 <= 256");
  }
  if (max_rows <= 1) {
    // Single rows: the tensor-core kernel (one-row tiles, its split-keys instance: the four warps
    // share a row's G <= 16 query vectors and divide the keys), split over blocks too. It reads
    // keys about twice as fast as the CUDA-core decode kernel at every batch and split count
    // (nvidia-h200, head_dim 128: batch 64 over 4,096 keys 342 us against 614-725 split; batch 16
    // 155 unsplit against 182-217), which serves the other head dims.
    if (!LaunchTensorCoreAttention(q, row_seq, row_pos, tiles, num_tiles, 1, heads, kv, window, scale, out, s,
                                   split)) {
      LaunchDecodeAttention(q, row_seq, row_pos, tiles, num_tiles, heads, kv, window, scale, out, split, s);
    }
    return;
  }
  if (max_rows > AttentionTileRows(G, D)) {
    throw std::invalid_argument("PagedAttention: a tile holds more rows than AttentionTileRows allows");
  }
  if (LaunchTensorCoreAttention(q, row_seq, row_pos, tiles, num_tiles, max_rows, heads, kv, window, scale, out, s)) {
    return;
  }
  LaunchAttention<kWideVectors, kWideSlots>(q, row_seq, row_pos, tiles, num_tiles, max_rows, heads, kv, window, scale,
                                            out, s);
}

bool DecodeRopeAttention(const bf16* qkv, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                         int64_t num_tiles, int64_t heads, const double* inv_freq, const PagedKv& kv, int64_t window,
                         float scale, bf16* out, cudaStream_t s, const DecodeSplit* split) {
  if (num_tiles == 0 || heads % kv.kv_heads != 0) return false;
  return LaunchTensorCoreRopeAttention(qkv, row_seq, row_pos, tiles, num_tiles, heads, inv_freq, kv, window, scale,
                                       out, s, split);
}

KeySplits PlanKeySplits(const DecodeSplit* split, int64_t window, int round) {
  KeySplits ks;
  if (split == nullptr || split->splits <= 1) return ks;
  if (split->partial == nullptr || split->counters == nullptr || split->max_keys <= 0) {
    throw std::invalid_argument("PagedAttention: a decode split needs partials, counters and max_keys");
  }
  const int64_t splits = std::min(split->splits, kMaxKeySplits);
  const int64_t keys = window > 0 ? std::min(split->max_keys, window) : split->max_keys;
  const int64_t per = ((keys + splits - 1) / splits + round - 1) / round * round;
  ks.keys = static_cast<int>(per);
  ks.count = static_cast<int>((keys + per - 1) / per);  // no split left without keys
  return ks;
}

int DecodeSplitCount(int64_t num_tiles, int64_t kv_heads, int64_t head_dim, int64_t max_keys, int64_t window) {
  if (window > 0) max_keys = std::min(max_keys, window);
  max_keys = std::max<int64_t>(1, max_keys);
  const int64_t blocks = std::max<int64_t>(1, num_tiles * kv_heads);
  const AttentionResidency r = TensorCoreAttentionResidency(head_dim, /*one_row=*/true);
  if (r.sms == 0) {
    // The decode kernel: about one block per multiprocessor, each with at least two rounds of its
    // warps' 32-key tiles (batch 1 over 512 keys: 27.3 us unsplit against 21.9 split in four).
    const int64_t by_sms = (DeviceSmCount() + blocks - 1) / blocks;
    const int64_t by_keys = (max_keys + 255) / 256;
    return static_cast<int>(std::clamp<int64_t>(std::min(by_sms, by_keys), 1, int64_t{kMaxKeySplits}));
  }
  // The tensor-core kernel (nvidia-h200, head_dim 128, 8 KV heads; benchmarks/NOTES.md, session
  // 20): a block's time is mostly fixed costs and a chain of key tiles, so split until the blocks
  // fill the device once, each keeping kMinSplitKeys of max_keys (a power-of-two bound of the
  // step's longest row: its rows have at least half that); batch 1 over 4,096 keys 146 us unsplit,
  // 23 split in 16 or 32; batch 4 over 4,096 best at 8 (256 blocks, 35.5 us); batch 16 at 2
  // (34.7 us over 1,024 keys against 46.4). Past one wave, split in two where that fills the last
  // wave better (batch 64 over 4,096 keys: 512 blocks, 342 us; 1,024 blocks 298 us).
  const int64_t resident = int64_t{r.sms} * r.blocks_per_sm;
  int64_t S = 1;
  while (2 * S <= kMaxDecodeSplits && blocks * 2 * S <= resident && max_keys / (2 * S) >= kMinSplitKeys) S *= 2;
  auto wave_fill = [&](int64_t n) {  // the share of the waves' block slots that n blocks use
    const int64_t waves = (n + resident - 1) / resident;
    return static_cast<double>(n) / static_cast<double>(waves * resident);
  };
  if (blocks * S > resident && max_keys / (2 * S) >= kMinWaveSplitKeys &&
      wave_fill(blocks * 2 * S) > wave_fill(blocks * S) + 0.1) {
    S *= 2;
  }
  return static_cast<int>(S);
}

void PlanAttentionTiles(const int64_t* chunk_rows, int64_t num_chunks, int64_t max_rows, std::vector<int32_t>& narrow,
                        std::vector<int32_t>& wide) {
  narrow.clear();
  wide.clear();
  int64_t row = 0;
  for (int64_t c = 0; c < num_chunks; ++c) {
    const int64_t n = chunk_rows[c];
    if (n == 1 || max_rows <= 1) {
      for (int64_t i = 0; i < n; ++i) narrow.insert(narrow.end(), {static_cast<int32_t>(row + i), 1});
    } else {
      // Equal tiles (up to max_rows each), so the last one is not a sliver.
      const int64_t tiles = (n + max_rows - 1) / max_rows, base = n / tiles, extra = n % tiles;
      int64_t r = row;
      for (int64_t t = 0; t < tiles; ++t) {
        const int64_t len = base + (t < extra ? 1 : 0);
        (len == 1 ? narrow : wide).insert((len == 1 ? narrow : wide).end(),
                                          {static_cast<int32_t>(r), static_cast<int32_t>(len)});
        r += len;
      }
    }
    row += n;
  }
}

void BalanceWideTiles(std::vector<int32_t>& wide, const int32_t* row_pos, int64_t window, int64_t kv_heads,
                      int64_t head_dim) {
  const size_t n = wide.size() / 2;
  if (n < 2 || kv_heads <= 0) return;  // decode steps: nothing to order
  const AttentionResidency r = TensorCoreAttentionResidency(head_dim);
  if (r.sms == 0) return;
  std::vector<int64_t> work(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t first = wide[2 * i], rows = wide[2 * i + 1];
    const int64_t pos0 = row_pos[first], last = row_pos[first + rows - 1];
    const int64_t lo = window > 0 ? std::max<int64_t>(0, pos0 - window + 1) : 0;
    work[i] = (last - lo) / kTensorCoreKeyTile + 1;
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return work[a] > work[b]; });
  // Tiles per round (one block on every SM) and tiles resident at once, kv_heads blocks a tile.
  const size_t round = static_cast<size_t>(std::max<int64_t>(1, r.sms / kv_heads));
  const size_t resident =
      std::min(n, static_cast<size_t>(std::max<int64_t>(1, int64_t{r.sms} * r.blocks_per_sm / kv_heads)));
  for (size_t start = round, k = 1; start < resident; start += round, ++k) {
    if (k % 2 == 1) std::reverse(order.begin() + start, order.begin() + std::min(start + round, resident));
  }
  std::vector<int32_t> sorted(wide.size());
  for (size_t i = 0; i < n; ++i) {
    sorted[2 * i] = wide[2 * order[i]];
    sorted[2 * i + 1] = wide[2 * order[i] + 1];
  }
  wide.swap(sorted);
}

}  // namespace moe::gpu
