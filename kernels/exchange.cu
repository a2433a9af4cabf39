// The device side of the fixed-capacity MoE exchange (kernels.h: PackForExchange, GroupReceived,
// ScatterRows): every rank sends each rank a block of a header row (the block's per-expert counts)
// and `cap` rows whatever the routing, so the transfer sizes are known on the host without looking
// at the routing, the counts travel with the rows, and the layer runs with no host
// synchronisation. With PeerTargets the same kernels write the rows that exist straight into the
// other ranks' regions and raise flags there (WaitPeers waits for them).
#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"
#include "kernels/rows.cuh"

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace moe::gpu {
namespace {

constexpr int kMaxExperts = 256;

// The expert of grouped row g: the last e with offsets[e] <= g (offsets ascending, g < offsets[E]).
__device__ int ExpertOf(const int32_t* offsets, int E, int32_t g) {
  int lo = 0, hi = E - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (offsets[mid] <= g) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Where row r of a block layout goes: locally (rows of cap + 1 per destination, from `local`) or,
// with peers, into the region of the rank whose block holds it, at this rank's block there.
__device__ __forceinline__ bf16* BlockRow(bf16* local, const PeerTargets& peers, int64_t r, int64_t H) {
  if (peers.blocks == nullptr) return local + r * H;
  const int64_t d = r / peers.block_rows, o = r % peers.block_rows;
  return peers.blocks[d] + (static_cast<int64_t>(peers.rank) * peers.block_rows + o) * H;
}

__device__ __forceinline__ void StoreRelease(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t LoadAcquire(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t GlobalTimerNs() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// After a CTA's writes into the peers' regions: every thread's writes made visible to the whole
// system, then this CTA's flag raised on every rank (the release covers the CTA's writes: they
// happen before it through the barrier). `next` = the exchange's epoch + 1.
__device__ __forceinline__ void SignalPeers(const PeerTargets& peers, uint64_t next) {
  __threadfence_system();
  __syncthreads();
  for (int d = threadIdx.x; d < peers.ranks; d += blockDim.x) {
    StoreRelease(peers.flags[d] + peers.rank * kPeerCtas + blockIdx.x, next);
  }
}

// Block b takes rows b, b + grid, ... (one row each through NCCL, whose grid is n). Every block
// first computes where each expert's rows start in the send buffer (E <= 256: one pass of thread
// 0); block 0 also writes the counts.
__global__ void PackForExchangeKernel(const bf16* h, const int32_t* src_row, const int32_t* position,
                                      const int32_t* offsets, const int32_t* owner, int E, int W, int64_t n,
                                      int64_t cap, int64_t H, bf16* send, int32_t* combine_pos, PeerTargets peers) {
  __shared__ int32_t base[kMaxExperts];
  __shared__ int32_t offs[kMaxExperts + 1];
  PdlGate();
  for (int e = threadIdx.x; e <= E; e += blockDim.x) offs[e] = offsets[e];
  __syncthreads();
  if (threadIdx.x == 0) {
    // Each destination's rows in expert order: the receiver groups them by expert without moving them.
    int32_t fill[kMaxExperts];  // rows so far per destination (W <= E <= 256 on this path)
    for (int d = 0; d < W; ++d) fill[d] = 0;
    for (int e = 0; e < E; ++e) {
      const int d = owner[e];
      base[e] = static_cast<int32_t>(d * (cap + 1) + 1) + fill[d];  // after the block's header row
      fill[d] += offs[e + 1] - offs[e];
    }
  }
  __syncthreads();
  if (blockIdx.x == 0) {
    for (int i = threadIdx.x; i < W * E; i += blockDim.x) {
      const int d = i / E, e = i % E;
      int64_t* header = reinterpret_cast<int64_t*>(BlockRow(send, peers, d * (cap + 1), H));
      header[e] = owner[e] == d ? offs[e + 1] - offs[e] : 0;
    }
  }
  for (int64_t g = blockIdx.x; g < n; g += gridDim.x) {
    const int32_t gg = static_cast<int32_t>(g);
    const int e = ExpertOf(offs, E, gg);
    CopyRow(h + static_cast<int64_t>(src_row[g]) * H, BlockRow(send, peers, base[e] + gg - offs[e], H), H);
    // Slot g's result comes back where its row went out (the return mirrors the dispatch).
    if (threadIdx.x == 0) {
      const int32_t p = position[g];
      const int ep = ExpertOf(offs, E, p);
      combine_pos[g] = base[ep] + p - offs[ep];
    }
  }
  if (peers.blocks != nullptr) SignalPeers(peers, *peers.epoch + 1);
}

// One block. Received block s (rows [s*(cap+1), (s+1)*(cap+1))) holds source s's counts in its
// header row, then its rows for this rank's experts in expert order; grouped rows go
// expert-major, then source.
__global__ void GroupReceivedKernel(const bf16* recv, int W, int E, int64_t cap, int64_t H, int32_t* offsets,
                                    int32_t* group_src, int32_t* active) {
  __shared__ int32_t start[kMaxExperts + 1];
  __shared__ int32_t counts[kMaxExperts * 8];  // [W][E], W <= E; larger jobs read the headers directly
  PdlGate();
  const bool cached = W * E <= kMaxExperts * 8;
  auto count = [&](int s, int e) -> int32_t {
    return cached ? counts[s * E + e]
                  : static_cast<int32_t>(reinterpret_cast<const int64_t*>(recv + s * (cap + 1) * H)[e]);
  };
  if (cached) {
    for (int i = threadIdx.x; i < W * E; i += blockDim.x) {
      counts[i] = static_cast<int32_t>(reinterpret_cast<const int64_t*>(recv + (i / E) * (cap + 1) * H)[i % E]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    int32_t g = 0, a = 0;
    for (int e = 0; e < E; ++e) {
      start[e] = g;
      int32_t rows = 0;
      for (int s = 0; s < W; ++s) rows += count(s, e);
      g += rows;
      if (active != nullptr && rows > 0) active[a++] = e;
    }
    start[E] = g;
    if (active != nullptr) {
      for (; a < E; ++a) active[a] = -1;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e <= E; e += blockDim.x) offsets[e] = start[e];
  // Warp w handles (expert, source) pairs w, w + warps, ...: the rows of one pair are contiguous on
  // both sides.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int pair = warp; pair < E * W; pair += warps) {
    const int e = pair / W, s = pair % W;
    int32_t before = 0, in_block = 0;  // rows of source s for experts < e; of expert e before source s
    for (int x = 0; x < e; ++x) before += count(s, x);
    for (int x = 0; x < s; ++x) in_block += count(x, e);
    const int32_t rows = count(s, e);
    const int32_t from = static_cast<int32_t>(s * (cap + 1) + 1) + before, to = start[e] + in_block;
    for (int32_t i = lane; i < rows; i += 32) group_src[to + i] = from + i;
  }
}

// out[dst_row[r]] = x[r] for r < *count (the rows the previous kernel produced); with peers back
// into the region of the row's source (BlockRow), then the CTA's flag on every rank.
__global__ void ScatterRowsKernel(const bf16* x, const int32_t* dst_row, const int32_t* count, int64_t H, bf16* out,
                                  PeerTargets peers) {
  PdlGate();
  const int64_t rows = *count;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) CopyRow(x + r * H, BlockRow(out, peers, dst_row[r], H), H);
  if (peers.blocks != nullptr) SignalPeers(peers, *peers.epoch + 1);
}

// One CTA, a thread per (source, CTA) flag: each spins (acquire) until its flag reaches the epoch
// this rank expects next; then thread 0 advances the epoch for the next exchange in this direction.
__global__ void WaitPeersKernel(const uint64_t* flags, int count, uint64_t* epoch, uint64_t timeout_ns) {
  PdlGate();
  const uint64_t next = *epoch + 1;
  const uint64_t start = GlobalTimerNs();
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    while (LoadAcquire(flags + i) < next) {
      __nanosleep(100);
      if (GlobalTimerNs() - start > timeout_ns) {
        printf("WaitPeers: source %d (CTA %d) did not arrive at exchange %llu within %.0f s: a rank left the step\n",
               i / kPeerCtas, i % kPeerCtas, static_cast<unsigned long long>(next), timeout_ns * 1e-9);
        __trap();
      }
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) *epoch = next;
}

}  // namespace

bool ExchangeHeaderFits(int64_t E, int64_t H) { return H % 4 == 0 && 2 * H >= 8 * E; }

void PackForExchange(const bf16* h, const int32_t* src_row, const int32_t* position, const int32_t* offsets,
                     const int32_t* owner, int64_t E, int W, int64_t n, int64_t cap, int64_t H, bf16* send,
                     int32_t* combine_pos, cudaStream_t s, const PeerTargets& peers) {
  if (E > kMaxExperts || W > E || W < 1) throw std::invalid_argument("PackForExchange: needs 1 <= ranks <= experts <= 256");
  if (!ExchangeHeaderFits(E, H)) throw std::invalid_argument("PackForExchange: the counts do not fit a header row");
  if (peers.on() && (peers.block_rows != cap + 1 || peers.ranks != W)) {
    throw std::invalid_argument("PackForExchange: the peers' blocks are not cap + 1 rows for every rank");
  }
  // Through NCCL a block per row; into the peers a fixed grid, whose CTAs each raise a flag.
  const unsigned grid = peers.on() ? kPeerCtas : static_cast<unsigned>(std::max<int64_t>(n, 1));
  Launch(PackForExchangeKernel, grid, 128, 0, s, h, src_row, position, offsets, owner, static_cast<int>(E), W, n,
         cap, H, send, combine_pos, peers);
  MOE_CUDA_CHECK_LAUNCH();
}

void GroupReceived(const bf16* recv, int W, int64_t E, int64_t cap, int64_t H, int32_t* offsets, int32_t* group_src,
                   int32_t* active, cudaStream_t s) {
  if (E > kMaxExperts || W > E) throw std::invalid_argument("GroupReceived: needs ranks <= experts <= 256");
  if (!ExchangeHeaderFits(E, H)) throw std::invalid_argument("GroupReceived: the counts do not fit a header row");
  Launch(GroupReceivedKernel, 1, 256, 0, s, recv, W, static_cast<int>(E), cap, H, offsets, group_src, active);
  MOE_CUDA_CHECK_LAUNCH();
}

void ScatterRows(const bf16* x, const int32_t* dst_row, const int32_t* count, int64_t max_rows, int64_t H, bf16* out,
                 cudaStream_t s, const PeerTargets& peers) {
  if (peers.on()) {  // every CTA runs, rows or not: the sources wait for all their flags
    Launch(ScatterRowsKernel, kPeerCtas, 128, 0, s, x, dst_row, count, H, out, peers);
  } else {
    if (max_rows == 0) return;
    Launch(ScatterRowsKernel, static_cast<unsigned>(max_rows), 128, 0, s, x, dst_row, count, H, out, peers);
  }
  MOE_CUDA_CHECK_LAUNCH();
}

void WaitPeers(const uint64_t* flags, int W, uint64_t* epoch, double timeout_s, cudaStream_t s) {
  if (W < 1) throw std::invalid_argument("WaitPeers: needs at least one rank");
  const uint64_t timeout_ns = static_cast<uint64_t>(std::max(timeout_s, 0.0) * 1e9);
  Launch(WaitPeersKernel, 1, 256, 0, s, flags, W * kPeerCtas, epoch, timeout_ns);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
