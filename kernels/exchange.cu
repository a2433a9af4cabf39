// The device side of the fixed-capacity MoE exchange (kernels.h: PackForExchange, GroupReceived,
// ScatterRows): every rank sends each rank a block of a header row (the block's per-expert counts)
// and `cap` rows whatever the routing, so the transfer sizes are known on the host without looking
// at the routing, the counts travel with the rows, and the layer runs with no host
// synchronisation.
#include "kernels/cuda_check.h"
#include "kernels/launch.cuh"
#include "kernels/kernels.h"
#include "kernels/rows.cuh"

#include <algorithm>
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

// Block b < n: row b. Every block first computes where each expert's rows start in the send
// buffer (E <= 256: one pass of thread 0); block 0 also writes the counts.
__global__ void PackForExchangeKernel(const bf16* h, const int32_t* src_row, const int32_t* position,
                                      const int32_t* offsets, const int32_t* owner, int E, int W, int64_t n,
                                      int64_t cap, int64_t H, bf16* send, int32_t* combine_pos) {
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
      int64_t* header = reinterpret_cast<int64_t*>(send + d * (cap + 1) * H);
      header[e] = owner[e] == d ? offs[e + 1] - offs[e] : 0;
    }
  }
  const int64_t g = blockIdx.x;
  if (g >= n) return;
  const int32_t gg = static_cast<int32_t>(g);
  const int e = ExpertOf(offs, E, gg);
  CopyRow(h + static_cast<int64_t>(src_row[g]) * H, send + (static_cast<int64_t>(base[e]) + gg - offs[e]) * H, H);
  // Slot g's result comes back where its row went out (the return mirrors the dispatch).
  if (threadIdx.x == 0) {
    const int32_t p = position[g];
    const int ep = ExpertOf(offs, E, p);
    combine_pos[g] = base[ep] + p - offs[ep];
  }
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

// out[dst_row[r]] = x[r] for r < offsets[E] (the rows the previous kernel produced).
__global__ void ScatterRowsKernel(const bf16* x, const int32_t* dst_row, const int32_t* count, int64_t H, bf16* out) {
  PdlGate();
  const int64_t r = blockIdx.x;
  if (r >= *count) return;
  CopyRow(x + r * H, out + static_cast<int64_t>(dst_row[r]) * H, H);
}

}  // namespace

bool ExchangeHeaderFits(int64_t E, int64_t H) { return H % 4 == 0 && 2 * H >= 8 * E; }

void PackForExchange(const bf16* h, const int32_t* src_row, const int32_t* position, const int32_t* offsets,
                     const int32_t* owner, int64_t E, int W, int64_t n, int64_t cap, int64_t H, bf16* send,
                     int32_t* combine_pos, cudaStream_t s) {
  if (E > kMaxExperts || W > E || W < 1) throw std::invalid_argument("PackForExchange: needs 1 <= ranks <= experts <= 256");
  if (!ExchangeHeaderFits(E, H)) throw std::invalid_argument("PackForExchange: the counts do not fit a header row");
  Launch(PackForExchangeKernel, static_cast<unsigned>(std::max<int64_t>(n, 1)), 128, 0, s, h, src_row, position,
         offsets, owner, static_cast<int>(E), W, n, cap, H, send, combine_pos);
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
                 cudaStream_t s) {
  if (max_rows == 0) return;
  Launch(ScatterRowsKernel, static_cast<unsigned>(max_rows), 128, 0, s, x, dst_row, count, H, out);
  MOE_CUDA_CHECK_LAUNCH();
}

}  // namespace moe::gpu
