// CUDA kernels of the forward, bf16 storage with float32 arithmetic. Every launcher takes raw
// device pointers and a stream and returns after enqueueing (errors are checked at launch).
// Shapes are row-major; weight matrices are [out, in] as in the checkpoint. This header is plain
// C++ so host code compiled by the C++ compiler can call the launchers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "common/logit_adjustment.h"

namespace moe::gpu {

using bf16 = __nv_bfloat16;

// Whether kernels launch with programmatic dependent launch (kernels/launch.cuh; default on).
bool ProgrammaticLaunch();
void SetProgrammaticLaunch(bool on);

// Kernel timeline, for measurements: in a build configured with -DMOE_KERNEL_TRACE=ON every kernel
// records the global timer (ns) when it passes its wait for the kernel before it, and every launch
// through kernels/launch.cuh notes the kernel's name on the host (launches captured into a CUDA
// graph are noted at capture, once; its replays record times). Kernels may add phase marks
// (launch.cuh: TraceMark(id), recorded as thread 0 of block 0 passes them). Elsewhere
// KernelTraceAvailable() is false and Start/Stop throw.
struct KernelTrace {
  struct Mark {
    int id;
    uint64_t time_ns;
  };
  std::vector<std::string> names;   // launches noted since StartKernelTrace, in order
  std::vector<uint64_t> times_ns;   // records since StartKernelTrace, in order (up to the capacity)
  uint64_t dropped = 0;             // records beyond the capacity
  std::vector<Mark> marks;          // phase marks, in the order they were taken (up to the capacity)
  uint64_t marks_dropped = 0;
};
bool KernelTraceAvailable();
void StartKernelTrace(size_t capacity);
KernelTrace StopKernelTrace();  // synchronises the device

// *first = the lowest index i < n with x[i] NaN or infinite, or ~0ull when there is none (the
// load-time check of a checkpoint's weights). `first` is device memory.
void FirstNonFinite(const bf16* x, int64_t n, unsigned long long* first, cudaStream_t s);

// out[t, :] = float(table[ids[t], :]). table: [V, H].
void EmbeddingGather(const bf16* table, const int32_t* ids, int64_t T, int64_t H, float* out, cudaStream_t s);

// The residual stream stays float32: residual[t] += delta[t] (when delta is not null), then
// out[t] = bf16(residual[t] / rms(residual[t]) * weight). One pass fuses the add and the norm.
void AddRmsNorm(float* residual, const float* delta, const bf16* weight, int64_t T, int64_t H, float eps,
                bf16* out, cudaStream_t s);
// The norm before a MoE layer: out = AddRmsNorm's (no delta), and in the same kernel the router
// logits of the normed rows, logits[t, e] = out[t, :] . router[e, :] (router [E, H] bf16, float32
// sums in a fixed order). 0 < E <= 256.
void RmsNormRouter(float* residual, const bf16* weight, int64_t T, int64_t H, float eps, bf16* out,
                   const bf16* router, int64_t E, float* logits, cudaStream_t s);

// Rotary embedding (rotate-half form) in place on x[T, heads, head_dim] at positions[t];
// inv_freq: [head_dim / 2]. Angles are computed in double (long contexts).
void Rope(bf16* x, const int32_t* positions, int64_t T, int64_t heads, int64_t head_dim, const double* inv_freq,
          cudaStream_t s);

// out[m, i] = silu(gate_up[m, i]) * gate_up[m, I + i]. gate_up: [M, 2I] (w1 x | w3 x).
void SwiGlu(const bf16* gate_up, int64_t M, int64_t I, bf16* out, cudaStream_t s);
// The same on the padded experts' rows (GatherPadded): E blocks of P rows, of which expert e's
// first offsets[e + 1] - offsets[e] are computed; the others keep what they held.
void SwiGluPadded(const bf16* gate_up, const int32_t* offsets, int64_t E, int64_t P, int64_t I, bf16* out,
                  cudaStream_t s);

// Mixtral routing per token: softmax over E experts, top-k (ties to the lower id), renormalised.
// logits: [T, E] float32; experts/weights: [T, k]. E <= 256.
void RouterTopK(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts, float* weights,
                cudaStream_t s);

// RouterTopK fused with the dispatch layout of a rank that holds every expert, in one block with
// no host round trip: the T*k routed slots (slot t*k + s) are grouped by expert, stably (expert,
// then slot index: the CPU's BuildDispatchLayout order for one rank).
//   logits [T, E]: the router logits (RmsNormRouter computes them with the norm before the layer);
//   experts, weights [T*k]: the routing, as RouterTopK;
//   offsets [E+1]: expert e owns grouped rows [offsets[e], offsets[e+1]);
//   active (optional) [E]: the experts with rows, ascending, then -1 (SkinnyGroups::active);
//   src_row [T*k]: the token row of each grouped row; position [T*k]: the grouped row of each slot;
//   count_accum (optional) [E]: += the rows of each expert (load statistics).
// T may be 0 (the offsets are then all zero).
void RouteAndGroup(const float* logits, int64_t T, int64_t E, int64_t k, int32_t* experts, float* weights,
                   int32_t* src_row, int32_t* position, int32_t* offsets, int32_t* active, int32_t* count_accum,
                   cudaStream_t s);

// The grouped skinny GEMM: for each group g, y[r, :] = epilogue(x[src(r), :] W_g^T) for the rows r
// of the group, with W_g [N, K] row-major bf16 (as in the checkpoint), x [*, K] bf16, float32
// accumulation. Built for few rows per group (decode): every weight is read once from memory with
// 16-byte loads, the rows ride along in tensor-core MMAs. Rows and their groups are read on the
// device, so a launch needs no host knowledge of the split and can be captured in a CUDA graph.
// A row's result never depends on the other rows or the grouping (the sum order is fixed).
struct WeightTensorMap;  // GroupedGemm's TMA descriptor of a weight (below)
struct SkinnyGroups {
  int64_t count = 1;                  // groups
  const int32_t* offsets = nullptr;   // device [count + 1]: group g owns rows [offsets[g], offsets[g+1])
  int64_t rows = 0;                   // without offsets: one group of `rows` rows
  const bf16* weight = nullptr;       // the weight of every group, or
  const bf16* const* weights = nullptr;  // device [count]: each group's (null: the group must be empty)
  const int32_t* row_index = nullptr;    // device: x row of output row r (null: r)
  // Optional, device [slots]: the groups to run, one per launch slot (-1: none), e.g. the experts
  // that received rows (RouteAndGroup's `active`), so that a decode step with 2 of 8 experts busy
  // launches 2 groups' CTAs, not 8. Without it every group gets a slot.
  const int32_t* active = nullptr;
  int64_t slots = 0;
  // Optional, device [count]: TMA descriptors of the weights (BuildWeightTensorMaps): GroupedGemm
  // then streams them through the tensor-memory accelerator. Not used by SkinnyGemm.
  const WeightTensorMap* weight_maps = nullptr;
  // The offsets, weights table and active list were written before the previous kernel on the
  // stream started (e.g. the down projection after the gate/up product): the kernel may read them,
  // and start streaming its weights, before it waits for that kernel (kernels/launch.cuh).
  bool ready = false;
};
enum class SkinnyEpilogue {
  kStoreBf16,   // y [rows, N] = bf16(acc)
  kStoreF32,    // y [rows, N] = acc
  kAddF32,      // y [rows, N] += acc (the float32 residual stream)
  kSwiGluBf16,  // W_g is [2N, K] (w1 then w3): y [rows, N] = bf16(silu(acc_w1) * acc_w3)
};
// K must be a multiple of 8 and the pointers 16-byte aligned. `expected_rows` (rows per group the
// caller expects) sizes the register tiles: groups with more rows take several passes over their
// weights. `splits` > 1 splits K over that many CTAs (when the weights alone would leave SMs
// idle, see SkinnySplits): partial sums go to `workspace` (SkinnyWorkspaceFloats floats for
// `workspace_rows` >= the rows of all groups) and are added in split order, either by the last
// CTA of each output tile (with `counters`: SkinnyCounters zeroed ints, left zeroed; only when no
// group has more rows than one pass holds, 8 * SkinnyTileCount(expected_rows)) or by a second
// launch (counters null).
void SkinnyGemm(const bf16* x, int64_t K, const SkinnyGroups& groups, int64_t N, SkinnyEpilogue epi, void* out,
                int64_t expected_rows, int splits, float* workspace, int64_t workspace_rows, int32_t* counters,
                cudaStream_t s);
size_t SkinnyCounters(int64_t N, SkinnyEpilogue epi, int64_t slots);
// The 8-row tiles one pass of SkinnyGemm holds for `expected_rows` (1, 2, 4 or 8).
int SkinnyTileCount(int64_t expected_rows);
// The split count that streams the weights fastest on the current device when `active_groups`
// groups have rows, about `expected_rows` each: enough CTAs in flight, and no short last wave
// of CTAs (skinny_gemm.cu has the model); 1 when the output tiles alone do.
int SkinnySplits(int64_t N, int64_t K, SkinnyEpilogue epi, int64_t active_groups, int64_t expected_rows);
// SkinnyGemm's CTAs for `expected_rows` that one SM of the current device holds at once.
int SkinnyResidentPerSm(int64_t expected_rows);
size_t SkinnyWorkspaceFloats(int64_t rows, int64_t N, SkinnyEpilogue epi, int splits);
// The multiprocessors of the current device (cached).
int DeviceSmCount();
// The grouped GEMM on Hopper's warpgroup MMA (grouped_gemm.cu) for many rows per group (prefill,
// wide decode batches), where SkinnyGemm's register tiles fall behind cuBLAS: SkinnyGroups's
// offsets and weights table (and the optional row_index; not `rows`/`weight`/`active`/`ready`),
// with the kStoreBf16 or kSwiGluBf16 epilogue, every group in one launch whose tiles are planned
// on the device, so no host synchronisation. K and N multiples of 8, at most 256 groups;
// max_rows: a bound on the rows of all groups (it sizes the grid). Compute capability 9.0 only:
// GroupedGemmSupported says whether the current device runs it.
// `tile` (benchmarks compare them): rows x columns of a CTA's output tile (with SwiGLU the columns
// are half gate, half up rows of W_g); kAuto: k128x128.
// The kTma shapes are warp-specialised on the TMA (x rows too: they need weight_maps and
// contiguous rows, no row_index). kTma128x64: the kStoreBf16 epilogue only (a down product whose
// 128-column tiles leave SMs idle: GroupedStoreTile).
enum class GroupedTile { kAuto, k128x128, k128x256, k192x128, kTma128x128, kTma128x256, kTma256x128, kTma128x64 };
// Whether `tile` is one of the kTma shapes (its x rows must be contiguous, in group order).
inline bool GroupedTileReadsRowsInOrder(GroupedTile tile) {
  return tile == GroupedTile::kTma128x128 || tile == GroupedTile::kTma128x256 || tile == GroupedTile::kTma256x128 ||
         tile == GroupedTile::kTma128x64;
}
// The warp-specialised tile of a kStoreBf16 product of `groups` groups and N columns, about
// `expected_rows` rows over all groups (an expert-parallel rank's few experts at decode): 128x64
// where each group fits one m-tile with room to spare (at most 96 rows on average: at a mean of a
// whole m-tile half the groups take a second one and the narrow tiles make two waves) and 128-column
// tiles would leave half the device's `sms` multiprocessors or more without a tile (each CTA of the
// narrower tile streams half the weight rows); else 128x128. Each output element is summed in the
// same k order either way.
inline GroupedTile GroupedStoreTile(int64_t groups, int64_t N, int64_t expected_rows, int sms) {
  const bool one_m_tile = expected_rows <= 96 * groups;
  return one_m_tile && 2 * groups * ((N + 127) / 128) <= sms ? GroupedTile::kTma128x64 : GroupedTile::kTma128x128;
}
void GroupedGemm(const bf16* x, int64_t K, const SkinnyGroups& groups, int64_t N, SkinnyEpilogue epi, bf16* out,
                 int64_t max_rows, cudaStream_t s, GroupedTile tile = GroupedTile::kAuto);
bool GroupedGemmSupported();
// A CUtensorMap (opaque here): how the TMA reads one weight matrix.
struct alignas(64) WeightTensorMap {
  unsigned char bytes[128];
};
// The TMA descriptors of `count` row-major bf16 weights [rows, K] (host pointers to device memory;
// null: a zeroed descriptor, for a group that must stay empty) into host `out`, for
// SkinnyGroups::weight_maps (copied to the device). K a multiple of 8.
void BuildWeightTensorMaps(const bf16* const* weights, int64_t count, int64_t rows, int64_t K, WeightTensorMap* out);

// out[r, :] = x[src_row[r], :]: the dispatch permutation (and any row gather). x, out: [*, H].
// With `count` (device) only the rows r < *count, R then a bound on it (the device exchange's
// received rows, whose number the host does not know).
void GatherRows(const bf16* x, const int32_t* src_row, int64_t R, int64_t H, bf16* out, cudaStream_t s,
                const int32_t* count = nullptr);

// The rows grouped by expert into fixed-capacity blocks of P rows (the padded experts: one
// strided-batched product per matrix, sizes known without the host). For the layout of
// RouteAndGroup (offsets [E + 1], experts and position: slot -> expert and grouped row, n slots),
// with every expert's rows <= P, the slot i of token t = i / k goes to its padded row
//   padded_position[i] = experts[i] * P + position[i] - offsets[experts[i]],  out[that row, :] = x[t, :].
// Rows past an expert's count are not written: they keep what they held (the products of such a
// row are never read, and rows do not mix in a product).
void GatherPadded(const bf16* x, const int32_t* offsets, const int32_t* experts, const int32_t* position, int64_t n,
                  int64_t k, int64_t P, int64_t H, bf16* out, int32_t* padded_position, cudaStream_t s);

// The fixed-capacity MoE exchange between W ranks (kernels/exchange.cu): every rank sends every
// rank (itself included) one block of cap + 1 rows, whatever the routing, so the transfers' sizes
// are known without the host seeing the routing: a header row whose first E int64 are the block's
// rows per expert, then `cap` rows. Each expert lives on one rank: owner [E].
//
// Two ways to move the blocks. Through NCCL: the kernels fill local buffers (send, computed) and
// all-to-alls carry whole blocks. Straight into the other ranks' memory (PeerTargets given; CUDA
// IPC within one node, worker/gpu/peer_exchange.h): the kernels write only the rows that exist
// into each destination's receiving region, where the all-to-all would have put them, and each of
// their kPeerCtas CTAs then raises a flag on every rank; WaitPeers on the receiving rank returns
// once every source's CTAs have raised theirs. Flags and epochs only grow: a phase's flags reach
// the epoch the waiting rank expects next, so nothing is ever reset.
constexpr int kPeerCtas = 64;
struct PeerTargets {
  bf16* const* blocks = nullptr;     // [W] (device): each rank's receiving region of this direction
  uint64_t* const* flags = nullptr;  // [W] (device): each rank's flags of this direction [W * kPeerCtas]
  const uint64_t* epoch = nullptr;   // (device) this rank's completed exchanges in this direction
  int rank = 0;                      // this rank: its block on rank d is at blocks[d] + rank * block_rows * H
  int ranks = 0;                     // W
  int64_t block_rows = 0;            // cap + 1
  bool on() const { return blocks != nullptr; }
};
// PackForExchange, after RouteAndGroup (its src_row, position, offsets for the n = T*k slots):
//   send [W*(cap+1), H]: destination d's block at row d*(cap+1): header, then its rows in expert
//     order (grouped order); with `peers` those rows go to destination d's region instead, and send
//     is not used (may be null);
//   combine_pos [n]: the send row of each slot, where its result comes back (CombineAdd's position).
// Needs 1 <= W <= E <= 256, ExchangeHeaderFits(E, H), and cap >= the rows any destination gets.
bool ExchangeHeaderFits(int64_t E, int64_t H);  // E int64 counts fit a row of H bf16, aligned
void PackForExchange(const bf16* h, const int32_t* src_row, const int32_t* position, const int32_t* offsets,
                     const int32_t* owner, int64_t E, int W, int64_t n, int64_t cap, int64_t H, bf16* send,
                     int32_t* combine_pos, cudaStream_t s, const PeerTargets& peers = {});
// On the receiving rank, from the received blocks recv [W*(cap+1), H] (source s's at s*(cap+1)):
// the grouped order of the received rows (expert-major, then source): offsets [E+1], group_src
// [rows]: the received row of each grouped row, active (optional) [E]: the experts with rows,
// then -1.
void GroupReceived(const bf16* recv, int W, int64_t E, int64_t cap, int64_t H, int32_t* offsets, int32_t* group_src,
                   int32_t* active, cudaStream_t s);
// out[dst_row[r], :] = x[r, :] for r < *count (device), max_rows >= *count. With `peers`, dst_row
// is a row of the received blocks (source s's block at s * block_rows) and the row goes back to
// where it came from: s's region, this rank's block, the same row of it (out is not used).
void ScatterRows(const bf16* x, const int32_t* dst_row, const int32_t* count, int64_t max_rows, int64_t H, bf16* out,
                 cudaStream_t s, const PeerTargets& peers = {});
// Waits (one CTA) until every source's kPeerCtas flags in `flags` [W * kPeerCtas] (this rank's
// own, of one direction) have reached *epoch + 1, then advances *epoch. A wait that lasts
// timeout_s seconds (a rank that never came: an error elsewhere) ends the kernel with a trap, so
// the step fails with a CUDA error instead of hanging.
void WaitPeers(const uint64_t* flags, int W, uint64_t* epoch, double timeout_s, cudaStream_t s);

// The pointer arrays of a grouped cuBLAS product over the NON-EMPTY groups of `offsets` [G+1]
// (in group order): weight = weights[g], input = x + offsets[g] * x_ld, output = y + offsets[g] * y_ld.
void GroupPointers(const int32_t* offsets, int64_t G, const bf16* const* weights, const bf16* x, int64_t x_ld, bf16* y,
                   int64_t y_ld, const bf16** w_out, const bf16** x_out, bf16** y_out, cudaStream_t s);

// One row's sampling parameters (worker/sampler.h: SamplingParams and the step), in 32-bit words so
// that they travel in a step's int32 input buffer.
struct SampleRowParams {
  float temperature;  // 0: greedy
  int32_t top_k;      // 0: no limit
  float top_p;        // 1: no nucleus
  uint32_t seed_lo, seed_hi, step_lo, step_hi;
  int32_t allowed_row;  // -1: every id may be drawn; else the row of SampleRows' `allowed` bits
  float min_p;          // 0: off
  int32_t adjusted_row;  // -1: drawn from the logits row; else from this row of SampleRows' `adjusted`
  int32_t top_n;         // also the row's top_n most probable tokens (0 to kMaxSampleTop)
  int32_t target;        // -1: none; else also this id's log-probability and rank (ScoreRow's)
};
static_assert(sizeof(SampleRowParams) == 12 * sizeof(int32_t));
constexpr int kMaxSampleTop = 20;

// Penalised copies of logits rows (common/logit_adjustment.h): for r < rows, with adjust_rows[r] =
// (row, first, count), adjusted[r, :] = logits[row, :] with logits' id of each entry of
// entries[first, first + count) Adjusted (each id at most once a row).
void AdjustRows(const float* logits, int64_t V, const int32_t* adjust_rows, int64_t rows,
                const LogitAdjustment* entries, float* adjusted, cudaStream_t s);

// 32-bit words of one row of allowed-id bits for a vocabulary of V ids (id i: bit i % 32 of word
// i / 32), rounded up to whole 64-bit words (worker/token_mask.h: TokenMask's layout).
inline int64_t AllowedRowWords(int64_t V) { return 2 * ((V + 63) / 64); }

// The next token of each of `rows` logits rows [rows, V] (float32), by SampleToken's rule
// (worker/sampler.h) with params[r], and its log-probability under the raw logits (PickToken's):
// the same tokens as the host (the masses are summed in fixed point, which moves the boundaries
// between tokens by about 1e-14 of the mass; kernels/sample.cu) and log-probabilities to the last
// bits of a float. Deterministic: a row's pick depends on the row and its parameters only. A row
// whose params name an adjusted row (`adjusted` + adjusted_row * V, AdjustRows') draws from it; one
// that names an allowed row (`allowed` + allowed_row * AllowedRowWords(V)) draws as if every id
// with a clear bit had a -inf logit (PickToken with `adjust` and `allowed`); its log-probability
// stays the raw row's. `allowed` and `adjusted` may be null when no row names one. A row with top_n
// also writes the min(top_n, V) tokens of the largest raw logits, in that order (ties to the lower
// id), and their log-probabilities (TopTokens) at top_ids / top_logprobs + r * top_stride. A row
// with a target writes its log-probability and rank (ScoreRow: ids whose raw logit is at least the
// target's, NaN as -inf) at target_logprobs / target_ranks + r (a scored row: greedy params, the
// pick then the argmax); both pointers must be given when any row has a target.
void SampleRows(const float* logits, int64_t rows, int64_t V, const SampleRowParams* params, const uint32_t* allowed,
                const float* adjusted, int32_t* tokens, float* logprobs, cudaStream_t s, int32_t* top_ids = nullptr,
                float* top_logprobs = nullptr, int64_t top_stride = 0, float* target_logprobs = nullptr,
                int32_t* target_ranks = nullptr);

// residual[t, :] += sum over s = 0..k-1 of weight[t*k+s] * y[position[t*k+s], :], slots in order.
// The residual, positions and weights are read before waiting for the kernel before this one (the
// experts' last, which writes y): they must have been written before that kernel started, as the
// routing and the residual's last update are in a MoE layer (kernels/launch.cuh).
void CombineAdd(const bf16* y, const int32_t* position, const float* weight, int64_t T, int64_t k, int64_t H,
                float* residual, cudaStream_t s);
// CombineAdd, then out = RMSNorm(residual) as AddRmsNorm: the next layer's (or the final) norm in
// the same kernel.
void CombineAddRmsNorm(const bf16* y, const int32_t* position, const float* weight, int64_t T, int64_t k, int64_t H,
                       float* residual, const bf16* norm_weight, float eps, bf16* out, cudaStream_t s);

// The paged KV cache of one layer: [num_blocks, block_size, kv_heads, head_dim] for keys and values.
struct PagedKv {
  bf16* keys = nullptr;
  bf16* values = nullptr;
  const int32_t* block_tables = nullptr;  // [num_seqs, max_blocks_per_seq]
  int64_t max_blocks_per_seq = 0;
  int64_t block_size = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

// Writes k, v ([rows, kv_heads, head_dim]) of each row at (row_seq[r], row_pos[r]).
void WriteKv(const bf16* k, const bf16* v, const int32_t* row_seq, const int32_t* row_pos, int64_t rows,
             const PagedKv& kv, cudaStream_t s);

// The attention block's input step in one launch: qkv [T, (heads + 2 kv_heads) * head_dim] (the
// stacked QKV GEMM output) -> RoPE on q into q_out [T, heads, head_dim]; RoPE on k, and v as is,
// written into the paged cache at (row_seq[t], row_pos[t]).
void QkvRopeKv(const bf16* qkv, const int32_t* row_seq, const int32_t* row_pos, int64_t T, int64_t heads,
               const double* inv_freq, const PagedKv& kv, bf16* q_out, cudaStream_t s);

// Decode attention split over the keys (flash-decoding), for when there are too few (row, KV head)
// blocks to fill the GPU: each row's keys are spread over `splits` blocks, whose partial results the
// last of them to finish merges in split order (deterministic). The keys any row attends to must be
// at most max_keys (e.g. the block tables' width in positions). Splits past kMaxKeySplits are
// made kMaxKeySplits.
constexpr int kMaxKeySplits = 64;
struct DecodeSplit {
  int splits = 1;
  int64_t max_keys = 0;
  float* partial = nullptr;    // DecodeSplitFloats floats
  int32_t* counters = nullptr; // num_tiles * kv_heads, zero before the first launch (left zero)
};
// The splits worth making for num_tiles decode rows over at most max_keys keys (window: the
// sliding window, 0 for none) of head_dim, and the partials' floats they need.
int DecodeSplitCount(int64_t num_tiles, int64_t kv_heads, int64_t head_dim, int64_t max_keys, int64_t window);
size_t DecodeSplitFloats(int64_t num_tiles, int64_t heads, int64_t head_dim, int splits);

// Attention of query rows over their sequences' cached keys: row r (of sequence row_seq[r] at
// position row_pos[r]) sees keys j <= row_pos[r], and j > row_pos[r] - window when window > 0.
// q, out: [rows, heads, head_dim]; head_dim a multiple of 8, <= 256; heads / kv_heads <= 8.
// The rows come in TILES, pairs (first row, row count) in device memory: a tile's rows belong to
// one sequence at consecutive positions, and one block per (tile, KV head) serves all of them and
// the query heads of that KV head (GQA), so keys and values are read once per tile. `max_rows`:
// the most rows in any of the tiles, at most AttentionTileRows; single rows (1) take the
// tensor-core kernel as one-row tiles (head_dim 64 or 128; the decode kernel for others), their
// keys split over blocks when `split` says so.
// The tiles, rows, positions and block tables are step inputs copied from the host: kernels read
// them before waiting for the kernel before them (kernels/launch.cuh), so no kernel may write them.
// The keys and values before a chunk's first row (of earlier steps) may be read before that wait
// too: only the step's own rows may be written by the kernel before (one chunk per sequence).
// `split` (decode tiles only, optional): see DecodeSplit.
void PagedAttention(const bf16* q, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                    int64_t num_tiles, int64_t max_rows, int64_t heads, const PagedKv& kv, int64_t window,
                    float scale, bf16* out, cudaStream_t s, const DecodeSplit* split = nullptr);
// QkvRopeKv then PagedAttention of one-row tiles in one kernel, where it can: a decode step's
// rows, each its sequence's only row in the step (tiles as PagedAttention's with max_rows 1), head
// dim 64 or 128, the keys split over blocks as `split` says. The same bits as the two (the queries
// do not go through memory; q_out is not written). Returns false, launching nothing, otherwise.
bool DecodeRopeAttention(const bf16* qkv, const int32_t* row_seq, const int32_t* row_pos, const int32_t* tiles,
                         int64_t num_tiles, int64_t heads, const double* inv_freq, const PagedKv& kv, int64_t window,
                         float scale, bf16* out, cudaStream_t s, const DecodeSplit* split = nullptr);
// The most rows a multi-row attention tile may hold.
int64_t AttentionTileRows(int64_t heads_per_kv, int64_t head_dim);
// Host side: the tiles of a step whose chunks have chunk_rows[c] rows each, laid out one after the
// other (rows of a chunk: one sequence, consecutive positions). Single-row tiles go to `narrow`
// (max_rows 1), the others, up to max_rows rows each, to `wide`.
void PlanAttentionTiles(const int64_t* chunk_rows, int64_t num_chunks, int64_t max_rows, std::vector<int32_t>& narrow,
                        std::vector<int32_t>& wide);
// Host side: reorders the wide tiles (PlanAttentionTiles) so that the tensor-core kernel's blocks,
// which start in tile order, spread their work evenly over the SMs. A tile's work is its number of
// key tiles (from the first key its window reaches to its last row's position, at `row_pos`).
// The heaviest tiles go first, and while every block fits on the device at once the rounds of
// blocks the SMs take alternate in direction, so the SM that takes one of the heaviest blocks in
// the first round takes one of the lightest in the second (a causal prefill in tile order paired
// heavy with heavy). The results do not depend on the order. No-op for other head dims.
void BalanceWideTiles(std::vector<int32_t>& wide, const int32_t* row_pos, int64_t window, int64_t kv_heads,
                      int64_t head_dim);

// float32 <-> bf16 conversions of n values.
void ToBf16(const float* in, int64_t n, bf16* out, cudaStream_t s);
void ToF32(const bf16* in, int64_t n, float* out, cudaStream_t s);

}  // namespace moe::gpu
