// Prefill attention on the tensor cores (flash-attention 2 style), for head_dim 64 or 128: one
// block of 4 warps per (KV head, tile), the KV head varying fastest over the blocks (so that
// BalanceWideTiles's tile order is the order in which the blocks start). A tile's rows x the G
// query heads of the KV head make up to 64 query vectors; warp w owns vectors 16 w .. 16 w + 15
// (one m16 MMA tile) for the whole key range. Keys and values stream through shared memory 64 at a
// time, double-buffered with cp.async; per key tile each warp computes S = Q K^T (mma.sync
// m16n8k16, bf16 in, float32 accumulate), masks it (causal, sliding window; only key tiles not
// wholly visible to every row), updates its rows' online softmax (running max and sum, in the exp2
// domain), and adds P V with P taken straight from S's accumulator registers as the A operand.
// Shared tiles are XOR-swizzled so every ldmatrix phase hits 8 bank groups. Decode rows come here
// too, as one-row tiles (kernels.h, PagedAttention): tiles of at most 16 query vectors take the
// split-keys instance, where the four warps share one m16 tile of vectors and each takes a quarter
// of every key tile, with a smaller block (16 query rows in shared memory: 3 blocks per SM instead
// of 2 at head_dim 128). A small decode step comes with its QKV product's output instead of queries
// (kernels.h, DecodeRopeAttention): that instance does the RoPE and the cache write too, with three
// key tiles loaded before its PDL wait. The keys of earlier steps load before the wait in every
// instance where they can (a tile that starts its chunk).
#include <algorithm>

#include "kernels/attention_common.cuh"
#include "kernels/rope.cuh"
#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/ptx.cuh"

namespace moe::gpu {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kVectors = 64;  // query vectors per block
// Query vectors of a split-keys block: the one m16 tile every warp shares.
constexpr int kSplitKeyVectors = 16;
// Query rows in shared memory: with split keys only that tile (a smaller block, so that more of
// them fit an SM).
constexpr int QueryRows(bool split_keys) { return split_keys ? kSplitKeyVectors : kVectors; }
constexpr int kKeys = kTensorCoreKeyTile;  // keys per shared tile
// Key (and value) tiles in shared memory: two (double-buffered); three with the fused RoPE, which
// runs for few rows (at most 64 blocks) and loads all its earlier keys before its wait: a context
// of up to 192 keys at 100 KB a block (head_dim 128), which still fits beside a CTA of the QKV
// product.
constexpr int KeyBuffers(bool rope) { return rope ? 3 : 2; }

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Element offset of 16-byte chunk c of row r in a swizzled [rows][D] tile.
template <int D>
__device__ __forceinline__ int Swizzle(int r, int c) {
  return r * D + ((c ^ (r & 7)) << 3);
}

// kRope's first step after the wait, for one row and KV head kvh: the G query heads kvh * G ..
// of the row's QKV product output (src) rotated into query vectors 0 .. G - 1 of qs (swizzled),
// and with write_kv (the block whose keys hold the row's own) its key rotated and its value copied
// into the cache at (seq, pos), and into row `row` of the shared key and value tiles ks / vs when
// those are given (the tile loaded before the wait, that row left out). Pairs as in QkvRopeKv
// (bf16x2, partners i and i + half), all of a thread's loads before any rotation.
template <int D>
__device__ __forceinline__ void RopeRowIntoCache(const bf16* src_row, int64_t heads, const PagedKv& kv, int seq,
                                                 int pos, int kvh, int G, const float* cos_s, const float* sin_s,
                                                 bool write_kv, bf16* qs, bf16* ks, bf16* vs, int row) {
  constexpr int kHalf = D / 2, kHalf2 = D / 4;   // elements, bf16x2 pairs of a half head
  constexpr int kMaxItems = (8 + 1) * kHalf2 + kHalf;  // G <= 8: rotated pairs, then the value's words
  constexpr int kRounds = (kMaxItems + kThreads - 1) / kThreads;
  const uint32_t* src = reinterpret_cast<const uint32_t*>(src_row);
  const int q_word = kvh * G * kHalf, k_word = (static_cast<int>(heads) + kvh) * kHalf;
  const int v_word = (static_cast<int>(heads + kv.kv_heads) + kvh) * kHalf;
  const int rope_items = (write_kv ? G + 1 : G) * kHalf2, items = rope_items + (write_kv ? kHalf : 0);
  const int64_t dst = CacheOffset(kv, seq, pos, kvh);
  uint32_t a[kRounds], b[kRounds];
#pragma unroll
  for (int u = 0; u < kRounds; ++u) {
    const int item = threadIdx.x + kThreads * u;
    if (item < rope_items) {
      const int h = item / kHalf2, j = item - h * kHalf2;
      const int w = (h < G ? q_word + h * kHalf : k_word) + j;
      a[u] = src[w];
      b[u] = src[w + kHalf2];
    } else if (item < items) {
      a[u] = src[v_word + item - rope_items];
    }
  }
#pragma unroll
  for (int u = 0; u < kRounds; ++u) {
    const int item = threadIdx.x + kThreads * u;
    if (item < rope_items) {
      const int h = item / kHalf2, j = item - h * kHalf2, i = 2 * j;
      __nv_bfloat162 lo, hi;
      RopeRotate(a[u], b[u], cos_s[i], sin_s[i], cos_s[i + 1], sin_s[i + 1], lo, hi);
      if (h < G) {
        *reinterpret_cast<__nv_bfloat162*>(qs + Swizzle<D>(h, i / 8) + i % 8) = lo;
        *reinterpret_cast<__nv_bfloat162*>(qs + Swizzle<D>(h, (i + kHalf) / 8) + (i + kHalf) % 8) = hi;
      } else {
        *reinterpret_cast<__nv_bfloat162*>(kv.keys + dst + i) = lo;
        *reinterpret_cast<__nv_bfloat162*>(kv.keys + dst + i + kHalf) = hi;
        if (ks != nullptr) {
          *reinterpret_cast<__nv_bfloat162*>(ks + Swizzle<D>(row, i / 8) + i % 8) = lo;
          *reinterpret_cast<__nv_bfloat162*>(ks + Swizzle<D>(row, (i + kHalf) / 8) + (i + kHalf) % 8) = hi;
        }
      }
    } else if (item < items) {
      const int w = item - rope_items, e = 2 * w;
      reinterpret_cast<uint32_t*>(kv.values + dst)[w] = a[u];
      if (vs != nullptr) *reinterpret_cast<uint32_t*>(vs + Swizzle<D>(row, e / 8) + e % 8) = a[u];
    }
  }
}

// kSplitKeys (decode rows: a tile's vectors fit one m16 tile): every warp takes the same 16 query
// vectors and its own quarter of each key tile; the four partial softmax states are merged at the
// end, in warp order, so no warp idles.
// kRope (with kSplitKeys; one-row tiles, each its sequence's only row in the step): the block also
// does QkvRopeKv's work for its row and KV head, straight after the QKV product: RoPE on the G
// query heads (into shared memory, not through q) and on the key, the key and value into the
// cache, then the attention. The same bits as QkvRopeKv then this kernel, one launch fewer, and
// the keys of earlier steps load while the QKV product still streams (its wait is this kernel's),
// into three key buffers (192 keys): the tile of the row's own key too, that key and value put
// into it from registers after the wait, so that a context of up to 192 keys needs no load from
// memory after the wait but the row's QKV output.
// Split over blocks (kBlocks, with kSplitKeys: one-row tiles; grid z = S > 1: DecodeSplit,
// attention_common.cuh; its own instances, so that the unsplit ones run the code they ran before):
// the row's visible keys in S runs of whole key tiles, as equal as that allows (so rows shorter
// than the step's longest split evenly too, and a block past the row's keys has none); block z
// takes run z and writes its partial state, the last block of the (tile, KV head) merges them.
// With kRope every block rotates the queries, and the one whose keys hold the row's own writes it.
template <int D, bool kSplitKeys, bool kRope, bool kBlocks>
__global__ void __launch_bounds__(kThreads) PrefillAttentionKernel(const bf16* q, const int32_t* row_seq,
                                                                   const int32_t* row_pos, const int32_t* tiles,
                                                                   int64_t heads, PagedKv kv, int64_t window,
                                                                   float scale_log2, bf16* out, const bf16* qkv,
                                                                   const double* inv_freq, DecodeSplit split) {
  static_assert(!kRope || kSplitKeys, "RoPE is fused for one-row tiles only");
  static_assert(!kBlocks || kSplitKeys, "keys split over blocks for one-row tiles only");
  constexpr int kBuffers = KeyBuffers(kRope);
  // Before the wait: the step's inputs (tiles, positions, block tables: copied from the host) and
  // the keys and values of earlier steps; after it: the queries and the keys the kernel before
  // this one just wrote (QkvRopeKv; with kRope the QKV product's rows).
  constexpr int kChunks = D / 8;                     // 16-byte chunks per row
  constexpr int kRowsPerPass = kThreads / kChunks;   // rows one pass of the block's loads covers
  const int64_t first = tiles[2 * blockIdx.y];
  const int rows = tiles[2 * blockIdx.y + 1];
  const int kvh = blockIdx.x, G = static_cast<int>(heads / kv.kv_heads), NQ = rows * G;
  const int seq = row_seq[first], pos0 = row_pos[first], pos_last = pos0 + rows - 1;
  const int lo = window > 0 ? max(0, pos0 - static_cast<int>(window) + 1) : 0;
  // This block's keys [begin, key_last] (all the tile's visible keys unless split).
  const int S = kBlocks ? static_cast<int>(gridDim.z) : 1;
  const int run = S > 1 ? ((pos_last - lo + S) / S + kKeys - 1) / kKeys * kKeys : 0;  // keys a split
  const int begin = S > 1 ? lo + static_cast<int>(blockIdx.z) * run : lo;
  const int key_last = S > 1 ? min(pos_last, begin + run - 1) : pos_last;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, fr = lane >> 2, quad = lane & 3;
  // This warp's query vectors and its keys of each tile.
  constexpr int kWarpKeys = kSplitKeys ? kKeys / kWarps : kKeys;
  const int vec0 = kSplitKeys ? 0 : 16 * warp, key0 = kSplitKeys ? kWarpKeys * warp : 0;
  constexpr int kQueryRows = QueryRows(kSplitKeys);

  extern __shared__ __align__(128) unsigned char smem[];
  bf16* qs = reinterpret_cast<bf16*>(smem);  // [kQueryRows][D]
  bf16* ks = qs + kQueryRows * D;            // [kBuffers][64][D]
  bf16* vs = ks + kBuffers * kKeys * D;      // [kBuffers][64][D]

  // This thread's chunk column and first row in every load pass.
  const int lc = tid % kChunks, lr = tid / kChunks;
  // Keys k0 .. k0 + 63 into buffer buf, those past `last` zero but key `own`, left alone (kRope
  // writes it after the wait; a zero fill in flight could land after it).
  auto load_keys = [&](int buf, int k0, int last, int own) {
    constexpr int kPasses = kKeys / kRowsPerPass;
    int64_t off[kPasses];  // the block-table lookups first, all in flight together
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      const int key = k0 + lr + kRowsPerPass * i;
      off[i] = key <= last ? CacheOffset(kv, seq, key, kvh) + 8 * lc : kRope && key == own ? -2 : -1;
    }
#pragma unroll
    for (int i = 0; i < kPasses; ++i) {
      if (kRope && off[i] == -2) continue;
      const int r = lr + kRowsPerPass * i;
      const bool ok = off[i] >= 0;
      CopyAsync(SharedAddress(ks + buf * kKeys * D + Swizzle<D>(r, lc)), kv.keys + (ok ? off[i] : 0), ok ? 16 : 0);
      CopyAsync(SharedAddress(vs + buf * kKeys * D + Swizzle<D>(r, lc)), kv.values + (ok ? off[i] : 0), ok ? 16 : 0);
    }
  };
  // The row's RoPE angles, and zero query vectors past the row's G (this block writes the others).
  __shared__ float rope_cos[kRope ? D / 2 : 1], rope_sin[kRope ? D / 2 : 1];
  if constexpr (kRope) {
    for (int i = tid; i < D / 2; i += kThreads) RopeAngle(pos0, inv_freq[i], rope_cos[i], rope_sin[i]);
    for (int r = NQ + lr; r < kQueryRows; r += kRowsPerPass) {
      *reinterpret_cast<uint4*>(qs + Swizzle<D>(r, lc)) = make_uint4(0, 0, 0, 0);
    }
  }
  // The keys before the first row of the tile's chunk were written by earlier steps (a step holds
  // one chunk of a sequence, its rows together: StepEngine refuses a sequence twice), so a tile
  // that starts its chunk streams its leading key tiles that end before pos0 while the kernel
  // before it still runs, as many as it has buffers (a decode row at 128-191 keys: 2 of its 3).
  // With kRope the tile of the row's own key too (past the others: the block writes that key).
  const bool chunk_start = kRope || first == 0 || row_seq[first - 1] != seq;
  const int earlier_end = chunk_start ? pos0 : lo;  // keys [lo, earlier_end) are of earlier steps
  const int preload_end = kRope ? pos0 + 1 : earlier_end;
  int preloaded = 0;
  while (preloaded < kBuffers) {
    const int k0 = begin + kKeys * preloaded;
    if (k0 > key_last || min(k0 + kKeys - 1, key_last) >= preload_end) break;
    // (A split's runs are whole key tiles, so its tiles hold no key past its last but in the last
    // split, whose last key is the row's own: earlier_end - 1 bounds the tile's keys in either case.)
    load_keys(preloaded, k0, earlier_end - 1, kRope ? pos0 : -1);
    CommitAsync();
    ++preloaded;
  }
  PdlGate();
  if constexpr (kRope) {
    // This block's keys hold the row's own (so it writes it), and its tile.
    const bool owns = !kBlocks || (begin <= pos0 && pos0 <= key_last);
    const int own = (pos0 - begin) / kKeys;
    const bool own_in = owns && own < preloaded;
    RopeRowIntoCache<D>(qkv + first * (heads + 2 * kv.kv_heads) * D, heads, kv, seq, pos0, kvh, G, rope_cos, rope_sin,
                        owns, qs, own_in ? ks + own * kKeys * D : nullptr, own_in ? vs + own * kKeys * D : nullptr,
                        pos0 - begin - own * kKeys);
    __syncthreads();  // the queries are in shared memory, the key and value in the cache (and tile)
  } else {
    // Query vectors (vector v: row v / G, head kvh * G + v % G; the G heads of a row are contiguous).
    for (int r = lr; r < kQueryRows; r += kRowsPerPass) {
      const bool ok = r < NQ;
      const bf16* src = ok ? q + ((first + r / G) * heads + static_cast<int64_t>(kvh) * G + r % G) * D + 8 * lc : q;
      CopyAsync(SharedAddress(qs + Swizzle<D>(r, lc)), src, ok ? 16 : 0);
    }
  }
  CommitAsync();
  if (preloaded == 0) load_keys(0, begin, key_last, -1);
  CommitAsync();
  WaitAsync<1>();  // the queries (and the key tiles loaded before the wait)
  __syncthreads();
  TraceMark(1);  // the queries are in (measurement builds)

  uint32_t qf[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    LoadMatrixX4(qf[kk], SharedAddress(qs + Swizzle<D>(vec0 + (lane & 15), 2 * kk + (lane >> 4))));
  }
  // The positions of this lane's two query rows (fr and fr + 8 of the warp's 16 vectors).
  int vpos[2];
  bool vok[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int v = vec0 + fr + 8 * h;
    vok[h] = v < NQ;
    vpos[h] = pos0 + v / G;
  }
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[n][e] = 0.f;

  for (int k0 = begin, tile = 0; k0 <= key_last; k0 += kKeys, ++tile) {
    const int buf = tile % kBuffers;
    // The next tile into the buffer whose tile the iteration before this one finished.
    if (k0 + kKeys <= key_last && tile + 1 >= preloaded) load_keys((tile + 1) % kBuffers, k0 + kKeys, key_last, -1);
    CommitAsync();
    WaitAsync<1>();
    __syncthreads();
    const bf16* kb = ks + buf * kKeys * D;
    const bf16* vb = vs + buf * kKeys * D;

    float s[kWarpKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kWarpKeys / 8; ++n)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[n][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int n = 0; n < kWarpKeys / 8; n += 2) {
        uint32_t b[4];
        const int key = key0 + 8 * n + 8 * (lane >> 4) + (lane & 7);
        LoadMatrixX4(b, SharedAddress(kb + Swizzle<D>(key, 2 * kk + ((lane >> 3) & 1))));
        Mma(s[n], qf[kk], b[0], b[1]);
        Mma(s[n + 1], qf[kk], b[2], b[3]);
      }
    }

    // Mask where the tile is not wholly visible: a key past a row's position (causal, or past the
    // tile's last row), outside its sliding window, or a vector past the tile's rows.
    const bool whole = k0 + kKeys - 1 <= pos0 && (window <= 0 || k0 > pos_last - window);
    if (!whole) {
#pragma unroll
      for (int n = 0; n < kWarpKeys / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e >> 1, key = k0 + key0 + 8 * n + 2 * quad + (e & 1);
          const bool visible = vok[h] && key <= vpos[h] && (window <= 0 || key > vpos[h] - window);
          if (!visible) s[n][e] = -INFINITY;
        }
    }
    // Online softmax of this lane's two rows in the exp2 domain (the scale folded into the
    // exponent's FMA). A row that has seen no visible key yet keeps m = -inf: exponents are then
    // taken against 0, so its weights and its rescale factor are 0.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < kWarpKeys / 8; ++n) mx = fmaxf(mx, fmaxf(s[n][2 * h], s[n][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[h], mx * scale_log2);
      const float base = m_new == -INFINITY ? 0.f : m_new;
      const float c = Exp2(m[h] - base);
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < kWarpKeys / 8; ++n)
#pragma unroll
        for (int e = 2 * h; e < 2 * h + 2; ++e) {
          s[n][e] = Exp2(fmaf(s[n][e], scale_log2, -base));
          sum += s[n][e];
        }
      l[h] = l[h] * c + sum;  // this lane's share; the quad's shares are added at the end
      m[h] = m_new;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * h] *= c;
        o[n][2 * h + 1] *= c;
      }
    }

    // O += P V: P's accumulator layout is the A operand's, 16 keys at a time.
#pragma unroll
    for (int kk = 0; kk < kWarpKeys / 16; ++kk) {
      const uint32_t pa[4] = {PackBf16(s[2 * kk][0], s[2 * kk][1]), PackBf16(s[2 * kk][2], s[2 * kk][3]),
                              PackBf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              PackBf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int n = 0; n < D / 8; n += 2) {
        uint32_t b[4];
        const int key = key0 + 16 * kk + (lane & 7) + 8 * ((lane >> 3) & 1);
        LoadMatrixX4Trans(b, SharedAddress(vb + Swizzle<D>(key, n + (lane >> 4))));
        Mma(o[n], pa, b[0], b[1]);
        Mma(o[n + 1], pa, b[2], b[3]);
      }
    }
    __syncthreads();  // everyone is done with this buffer before the next iteration refills it
  }
  WaitAsync<0>();
  TraceMark(2);  // the keys are done

#pragma unroll
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
  if constexpr (kSplitKeys) {
    // Merge the warps' states of vector v: M = max over warps of m_w, L = sum of l_w 2^(m_w - M),
    // O = sum of o_w 2^(m_w - M), in warp order. The key tiles are done with: the state goes
    // where they were ([kWarps][kSplitKeyVectors][D] floats, then m and l).
    // A vector's row of o is D + 8 floats apart, so that the float2 stores of a warp's eight rows
    // (lanes fr) land on distinct bank pairs: two wavefronts a store (a D-float row stride put all
    // eight rows on the same banks, eight-way conflicts: the merge 0.2-0.3 us slower at batch 1).
    constexpr int V = kSplitKeyVectors, kRow = D + 8;
    static_assert(sizeof(float) * kWarps * V * (kRow + 2) <= sizeof(bf16) * 2 * kBuffers * kKeys * D);
    __syncthreads();
    float* so = reinterpret_cast<float*>(ks);
    float* sm = so + kWarps * V * kRow;
    float* sl = sm + kWarps * V;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int v = fr + 8 * h;
      if (quad == 0) {
        sm[warp * V + v] = m[h];
        sl[warp * V + v] = l[h];
      }
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        *reinterpret_cast<float2*>(so + (warp * V + v) * kRow + 8 * n + 2 * quad) =
            make_float2(o[n][2 * h], o[n][2 * h + 1]);
      }
    }
    __syncthreads();
    // Split: this block's (M, L, unnormalised O) per query vector (one row: NQ = G) into its
    // partial; a block with no keys has M = -inf.
    float* part = S > 1 ? SplitPartial(split, blockIdx.y, kv.kv_heads, kvh, S, 0, G, D) : nullptr;
    for (int i = tid; i < NQ * D; i += kThreads) {
      const int v = i / D, d = i % D;
      float mx = -INFINITY;
      for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, sm[w * V + v]);
      float num = 0.f, den = 0.f;
      for (int w = 0; w < kWarps; ++w) {
        const float mw = sm[w * V + v];
        const float c = mw == -INFINITY ? 0.f : Exp2(mw - mx);
        num += so[(w * V + v) * kRow + d] * c;
        den += sl[w * V + v] * c;
      }
      if (S == 1) {
        out[((first + v / G) * heads + static_cast<int64_t>(kvh) * G + v % G) * D + d] = __float2bfloat16(num / den);
      } else {
        StoreSplitPartial(part, blockIdx.z, G, D, i, v, d, num, mx, den);
      }
    }
    if (S > 1 && LastSplitBlock(split.counters + static_cast<int64_t>(blockIdx.y) * kv.kv_heads + kvh, S)) {
      MergeKeySplits<true>(part, S, G, D, out + (first * heads + static_cast<int64_t>(kvh) * G) * D, so);
    }
  } else {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (!vok[h]) continue;
      const int v = 16 * warp + fr + 8 * h;
      const float inv = 1.f / l[h];
      bf16* dst = out + ((first + v / G) * heads + static_cast<int64_t>(kvh) * G + v % G) * D;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        *reinterpret_cast<__nv_bfloat162*>(dst + 8 * n + 2 * quad) =
            __floats2bfloat162_rn(o[n][2 * h] * inv, o[n][2 * h + 1] * inv);
      }
    }
  }
  TraceMark(3);  // the outputs are written
}

template <int D, bool kSplitKeys, bool kRope = false>
constexpr size_t SharedBytes() {
  return sizeof(bf16) * (QueryRows(kSplitKeys) + 2 * KeyBuffers(kRope) * kKeys) * D;
}

// Raises the kernel's shared memory limit (once) and returns how many of its blocks the device
// holds at once.
template <int D, bool kSplitKeys, bool kRope = false, bool kBlocks = false>
AttentionResidency PreparePrefill() {
  static const AttentionResidency r = [] {
    auto kernel = PrefillAttentionKernel<D, kSplitKeys, kRope, kBlocks>;
    MOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(SharedBytes<D, kSplitKeys, kRope>())));
    int device = 0, sms = 0, per_sm = 0;
    MOE_CUDA_CHECK(cudaGetDevice(&device));
    MOE_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    MOE_CUDA_CHECK(
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, SharedBytes<D, kSplitKeys, kRope>()));
    return AttentionResidency{sms, std::max(1, per_sm)};
  }();
  return r;
}

// split: one-row tiles only (kSplitKeys), optional.
template <int D, bool kSplitKeys, bool kRope = false>
void LaunchPrefill(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                   int64_t num_tiles, int64_t heads, const PagedKv& kv, int64_t window, float scale, bf16* out,
                   cudaStream_t s, const DecodeSplit* split, const bf16* qkv = nullptr,
                   const double* inv_freq = nullptr) {
  const KeySplits ks = kSplitKeys ? PlanKeySplits(split, window, kKeys) : KeySplits{};
  const dim3 grid(static_cast<unsigned>(kv.kv_heads), static_cast<unsigned>(num_tiles),
                  static_cast<unsigned>(ks.count));
  const float scale_log2 = scale * 1.4426950408889634f;
  if constexpr (kSplitKeys) {
    if (ks.count > 1) {
      PreparePrefill<D, true, kRope, true>();
      Launch(PrefillAttentionKernel<D, true, kRope, true>, grid, kThreads, SharedBytes<D, true, kRope>(), s, q,
             row_seq, row_pos, tiles, heads, kv, window, scale_log2, out, qkv, inv_freq, *split);
      MOE_CUDA_CHECK_LAUNCH();
      return;
    }
  }
  PreparePrefill<D, kSplitKeys, kRope>();
  Launch(PrefillAttentionKernel<D, kSplitKeys, kRope, false>, grid, kThreads, SharedBytes<D, kSplitKeys, kRope>(), s,
         q, row_seq, row_pos, tiles, heads, kv, window, scale_log2, out, qkv, inv_freq, DecodeSplit{});
  MOE_CUDA_CHECK_LAUNCH();
}

template <int D>
void LaunchPrefill(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                   int64_t num_tiles, int64_t max_rows, int64_t heads, const PagedKv& kv, int64_t window, float scale,
                   bf16* out, cudaStream_t s, const DecodeSplit* split) {
  if (max_rows * (heads / kv.kv_heads) <= kSplitKeyVectors) {
    LaunchPrefill<D, true>(q, row_seq, row_pos, tiles, num_tiles, heads, kv, window, scale, out, s,
                           max_rows == 1 ? split : nullptr);
  } else {
    LaunchPrefill<D, false>(q, row_seq, row_pos, tiles, num_tiles, heads, kv, window, scale, out, s, nullptr);
  }
}

}  // namespace

AttentionResidency TensorCoreAttentionResidency(int64_t head_dim, bool one_row) {
  if (head_dim == 128) return one_row ? PreparePrefill<128, true>() : PreparePrefill<128, false>();
  if (head_dim == 64) return one_row ? PreparePrefill<64, true>() : PreparePrefill<64, false>();
  return {};
}

bool LaunchTensorCoreAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                               int64_t num_tiles, int64_t max_rows, int64_t heads, const PagedKv& kv, int64_t window,
                               float scale, bf16* out, cudaStream_t s, const DecodeSplit* split) {
  const int64_t G = heads / kv.kv_heads;
  // The tiles are the grid's y dimension (at most 65535): a larger step takes the other kernels.
  if (max_rows * G > kVectors || num_tiles > 65535) return false;
  if (kv.head_dim == 128) {
    LaunchPrefill<128>(q, row_seq, row_pos, tiles, num_tiles, max_rows, heads, kv, window, scale, out, s, split);
    return true;
  }
  if (kv.head_dim == 64) {
    LaunchPrefill<64>(q, row_seq, row_pos, tiles, num_tiles, max_rows, heads, kv, window, scale, out, s, split);
    return true;
  }
  return false;
}

bool LaunchTensorCoreRopeAttention(const bf16* qkv, const int32_t* row_seq, const int32_t* row_pos,
                                   const int32_t* tiles, int64_t num_tiles, int64_t heads, const double* inv_freq,
                                   const PagedKv& kv, int64_t window, float scale, bf16* out, cudaStream_t s,
                                   const DecodeSplit* split) {
  const int64_t G = heads / kv.kv_heads;
  if (G > 8 || num_tiles > 65535) return false;
  if (kv.head_dim == 128) {
    LaunchPrefill<128, true, true>(nullptr, row_seq, row_pos, tiles, num_tiles, heads, kv, window, scale, out, s, split,
                                   qkv, inv_freq);
    return true;
  }
  if (kv.head_dim == 64) {
    LaunchPrefill<64, true, true>(nullptr, row_seq, row_pos, tiles, num_tiles, heads, kv, window, scale, out, s, split,
                                  qkv, inv_freq);
    return true;
  }
  return false;
}

}  // namespace moe::gpu
