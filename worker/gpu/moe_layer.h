// The MoE layer of one rank on the GPU, the same stages as the CPU layer (worker/moe/):
//
//   route     the layer's norm computes the router logits too (RmsNormRouter) -> softmax top-k
//   dispatch  rows grouped by (destination rank, expert), stably in slot order
//   exchange  counts all-to-all, then rows (several ranks only)
//   experts   each expert's rows contiguous: gate_up = x W13^T, act = silu(gate) * up, y = act W2^T,
//             as grouped GEMMs over all the rank's experts (one launch per matrix, never a host
//             loop of one GEMM per expert)
//   return    the reverse exchange brings the results back in send order
//   combine   residual += sum over the k slots, in slot order, of weight x result  (CombineAdd;
//             with the norm that follows the layer in the same kernel: CombineAddRmsNorm)
//
// Two ways through it:
//
// LOCAL (one rank, no forced staging: every expert is here). Routing and grouping happen on the
//   device in one kernel (RouteAndGroup: top-k fused with a stable counting sort), so the host never
//   waits. With few rows per expert (decode; DeviceOnly) the experts run as two skinny grouped
//   GEMMs that read the per-expert row ranges on the device, the first gathering its rows through
//   the grouping and applying SwiGLU in its epilogue: the whole layer is host-free and a step can be
//   captured in a CUDA graph. With more rows the per-expert row counts come to the host (one
//   synchronisation per layer) and the experts run through cuBLAS (ExpertGemmTuning::Blas: one
//   GEMM per expert on concurrent streams by default). Opt-in, host-free alternatives for those
//   batches: ExpertGemmTuning::padded_max_tokens (every expert padded to the step's T rows, one
//   strided-batched cuBLAS product per matrix) and ExpertGemmTuning::wgmma_grouped.
//
// EXCHANGE (several ranks, or forced host staging on one): the routing comes to the host once per
//   layer and the CPU BuildDispatchLayout plans the dispatch (replicas are chosen by
//   PlacementPlan::route); then
//     NCCL (one rank per GPU, a NcclExchange given): the counts go device to device through
//       NcclExchange::AllToAllCounts and back to the host (the sizes of the row transfers), the
//       bf16 rows go device to device with NcclExchange::AllToAllRows, there and back;
//     host staging (the fallback, and when several ranks share one GPU, where NCCL cannot run):
//       float32 rows through the host and Communicator::AllToAllRows.
//   Received rows come one block per (source, expert); the experts' grouped GEMMs read them in
//   expert order through an index, and the results are put back in received order.
//
// DEVICE EXCHANGE (several ranks over NCCL or the peer exchange, each expert on one rank, up to 256 rows per rank: decode).
//   With skinny experts no host synchronisation, so a step can be captured in a CUDA graph (with
//   cuBLAS experts the received per-expert counts come to the host once): RouteAndGroup groups the
//   rows by expert as on the local path; PackForExchange lays them out in fixed-capacity blocks,
//   one per destination (cap = the most rows any rank has this step x min(k, the most experts one
//   rank holds): no destination can get more), each block led by a header row with its per-expert
//   counts; the blocks cross by NCCL in one all-to-all (their sizes do not depend on the routing,
//   so the host never needs the counts); GroupReceived orders the received rows by expert on the
//   device; the experts run; ScatterRows puts the results back where the rows arrived, and the
//   same blocks return. Padding rows cross too: the price of a host-free step (at 64 tokens per rank on
//   two ranks the blocks are 1 MB each way per peer instead of about 0.5 MB).
//   With a PeerExchange (all ranks on one node, their GPUs peers) the same kernels write the rows
//   that exist straight into the destination's region instead (the layout the all-to-all would have
//   delivered), raise flags there, and WaitPeers stands where the NCCL calls stood: no padding
//   crosses and no NCCL kernel runs between the layer's kernels.
//
// Either way each expert sees the same rows, a row's expert output does not depend on the other
// rows (the skinny GEMM's sum order is fixed), and CombineAdd sums the k slots in slot order, so
// results do not depend on the path or on the number of ranks (bf16 rows cross ranks exactly).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "coordinator/placement.h"
#include "kernels/kernels.h"
#include "worker/comm/communicator.h"
#include "worker/gpu/cuda_stream.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/device_weights.h"
#include "worker/gpu/gemm.h"
#include "worker/gpu/nccl_exchange.h"
#include "worker/gpu/peer_exchange.h"
#include "worker/gpu/stage_profiler.h"
#include "worker/model/config.h"
#include "worker/moe/load_stats.h"
#include "worker/moe/moe_layer.h"

namespace moe::gpu {

// How the experts' GEMMs are chosen (benchmarks compare the choices).
struct ExpertGemmTuning {
  // The skinny grouped kernel while the routed rows per local expert average at most this; above
  // it cuBLAS. 0: always cuBLAS. The skinny kernel needs no host synchronisation (the step can be a
  // CUDA graph) but streams the weights slower than cuBLAS from a few rows per expert on: on one
  // H200 at Mixtral-8x7B shape cuBLAS, with its one synchronisation per layer, wins from batch 8-16
  // on (2 rows per expert; benchmarks/NOTES.md).
  int64_t skinny_max_rows_per_expert = 2;
  // The same choice on the device exchange (expert-parallel decode), where cuBLAS also costs the
  // CUDA graph and one synchronisation per layer: kept at the limit measured when the exchange was
  // built, against the host-count exchange; cuBLAS behind the device exchange is not measured yet.
  int64_t device_exchange_skinny_max_rows_per_expert = 48;
  // Above that limit on the device exchange, the grouped wgmma kernel (GroupedGemm, compute
  // capability 9.0 only) instead of cuBLAS: it reads the received counts on the device, so such a
  // step needs no host synchronisation and is a CUDA graph too. The rows of an expert-parallel rank
  // at these batches (64 per expert at batch 256 on four ranks) are where it matched or beat cuBLAS
  // on one layer's experts (benchmarks/NOTES.md, session 15); ep_rank_experts times it against
  // cuBLAS with the counts' trip to the host, at a rank's share of the experts.
  bool device_exchange_wgmma = false;
  // Above it, how cuBLAS runs the experts (with many rows per expert: prefill):
  enum class Blas {
    kConcurrent,  // one GEMM per expert, the experts on separate streams so their grids overlap
    kGrouped,     // one cublasGemmGroupedBatchedEx call per matrix
    kSequential,  // one GEMM per expert, back to back on the main stream
  };
  Blas blas = Blas::kConcurrent;
  int concurrent_streams = 8;  // kConcurrent: side streams the experts take turns on
  // Above the skinny limit on the local path, the grouped wgmma kernel (GroupedGemm, compute
  // capability 9.0 only; elsewhere cuBLAS as above) instead of cuBLAS: no host synchronisation, so
  // such steps can be CUDA graphs too. Off by default: on one H200 it is slower than cuBLAS at
  // prefill and from batch 16 (benchmarks/NOTES.md, session 15).
  bool wgmma_grouped = false;
  // Its tile shape (kTma shapes: the rows gathered first); kAuto: 128x128 on the local path, the
  // warp-specialised TMA 128x128 behind the device exchange (the fastest at a rank's rows there).
  GroupedTile wgmma_tile = GroupedTile::kAuto;
  // Above the skinny limit on the local path, up to this many tokens a step: every expert runs on T
  // rows (no expert can get more: a token picks an expert once), its own first and padding after,
  // as one strided-batched cuBLAS product per matrix. The sizes need no host, so such steps are
  // CUDA graphs with no synchronisation. Above it the per-expert products of `blas`. 0 (the
  // default): never. On one H200 at Mixtral-8x7B shape it lost 1-2% at batch 16-64 to the
  // per-expert products on streams with their host synchronisation (benchmarks/NOTES.md,
  // session 16): the strided product on T rows an expert streams the weights a little slower.
  int64_t padded_max_tokens = 0;
  // The skinny experts' split-K counts (gate/up, down); 0: SkinnySplits' wave model. For benchmarks
  // that time split counts inside decode steps, where the next product's prefetch changes what
  // pays (the isolated skinny_splits figure ranks them differently: benchmarks/NOTES.md, session 16).
  int skinny_splits_up = 0, skinny_splits_down = 0;
};

// The norm that follows a MoE layer (the next layer's attention norm, or the final norm): the
// combine kernel applies it to the updated residual, one launch instead of two.
struct NextNorm {
  const bf16* weight = nullptr;  // null: no norm
  float eps = 0.f;
  bf16* out = nullptr;           // [T, H] bf16
};

// The rows of one step over the job, from the step header: every rank knows them alike, so every
// rank picks the same exchange (the transfers must agree).
struct StepRows {
  int64_t local = 0;  // this rank's rows (T)
  int64_t peak = 0;   // the most rows any rank has
  int64_t total = 0;  // the rows of all ranks
};

// How the skinny expert GEMMs run for R rows (buffers, workspace) sized for plan_rows (0: R) over
// `local` experts (GpuMoeLayer's plan; also the skinny_splits kernel figure's, so that it marks the
// engine's choice).
struct SkinnyPlan {
  int64_t expected = 1;  // rows per expert the register tiles hold
  int splits_up = 1, splits_down = 1;
  size_t workspace = 0;  // floats of split-K partial sums
};
// forced_up / forced_down (> 0): those split counts instead of SkinnySplits' model
// (ExpertGemmTuning::skinny_splits_up / _down).
SkinnyPlan PlanSkinny(const ModelConfig& c, int64_t R, int64_t local, int64_t plan_rows = 0, int forced_up = 0,
                      int forced_down = 0);

class GpuMoeLayer {
 public:
  // `weights`: the rank's device weights (the experts' pointer tables are built from them once).
  // `force_host_staging`: exchange rows through the host and the Communicator even with one rank
  // (tests use it to check the staging path on one GPU); it also wins over `nccl`.
  // `nccl` (optional, not owned, same ranks as `comm`): the device-to-device exchange.
  // `peers` (optional, not owned, same ranks): the device exchange's blocks written straight into the
  // other ranks' memory instead of through NCCL (the steps above the device exchange's rows still
  // take NCCL, or the host without it).
  GpuMoeLayer(const ModelConfig& c, const PlacementPlan& plan, Communicator& comm, LoadStats& stats, Gemm& gemm,
              cudaStream_t stream, const DeviceWeights& weights, bool force_host_staging, NcclExchange* nccl = nullptr,
              PeerExchange* peers = nullptr);

  void set_tuning(const ExpertGemmTuning& t) {
    if (t.concurrent_streams != tuning_.concurrent_streams) fanout_.reset();  // made again at its next use
    tuning_ = t;
  }
  const ExpertGemmTuning& tuning() const { return tuning_; }

  // True when the device exchange can serve this plan (NCCL or the peer exchange, no host staging,
  // one rank per expert): the engine then finds the step's peak rows (StepRows::peak) for it.
  bool ExchangesOnDevice() const { return (nccl_ != nullptr || peers_ != nullptr) && !staging_ && single_owner_; }
  // True when a step runs the layer with no host synchronisation (and so can be captured in a CUDA
  // graph): the local path or the device exchange, with skinny or wgmma experts.
  bool DeviceOnly(const StepRows& rows) const;
  // True when a step's exchange runs on the device (fixed-capacity blocks): with NCCL, one rank per
  // expert, and at most kDeviceExchangeMaxRows rows on any rank. The expert counts of such a step
  // are counted on the device as on the local path (the engine folds them into the LoadStats).
  bool DeviceExchange(const StepRows& rows) const {
    return ExchangesOnDevice() && rows.peak <= kDeviceExchangeMaxRows;
  }
  // Above it (prefill) the fixed blocks' padding (at two ranks they carry twice the rows) is taken
  // to cost more than the host round trips of the exact-size exchange (not measured yet).
  static constexpr int64_t kDeviceExchangeMaxRows = 256;
  // The bytes of a rank's receiving blocks per direction the largest device-exchange step of W ranks
  // needs (PeerExchange::Make's block_bytes).
  static size_t PeerBlockBytes(const ModelConfig& c, int W) {
    return sizeof(bf16) * static_cast<size_t>(W) *
           static_cast<size_t>(kDeviceExchangeMaxRows * c.experts_per_token + 1) * static_cast<size_t>(c.hidden_size);
  }
  // The most tokens a step may have for its experts to run padded (0: this rank never does).
  int64_t PaddedMaxTokens() const { return Local() && evenly_spaced_ ? tuning_.padded_max_tokens : 0; }
  // Sizes the buffers of a step, so that a DeviceOnly step allocates nothing (a graph capture may
  // not), and keeps `rows` for the step's Forward calls. The engine calls it before every step.
  // Returns true when a buffer was reallocated.
  bool Reserve(const StepRows& rows);

  // A collective: every rank calls it for every layer, with T = 0 when it has no rows.
  // residual [T, H] (float32): the layer's input, normalised (w.norm) into h [T, H] (bf16) in the
  // kernel that also computes the router logits (RmsNormRouter); then the layer's output is added.
  // When `record` is given, the router logits [T, E] and the routing are copied there (as on the CPU).
  // Load statistics: on the local path and the device exchange the rows routed to each expert are
  // added on the device to `expert_counts` [E] when it is given (the engine folds them into the
  // LoadStats after the step, with no synchronisation here); the host-count exchange adds its
  // counts to the LoadStats itself.
  // `next`: normalise the updated residual into next.out (it may be h's buffer).
  void Forward(int64_t layer, const DeviceMoeWeights& w, float* residual, bf16* h, int64_t T, StageProfiler& prof,
               MoeLayer::Record* record = nullptr, int32_t* expert_counts = nullptr,
               const NextNorm& next = {});

 private:
  bool Local() const { return comm_.size() == 1 && !staging_; }
  // Whether `rows` routed rows over `experts` experts take the skinny kernel (ExpertGemmTuning), on
  // the device exchange or on another path.
  bool SkinnyExperts(int64_t rows, int64_t experts, bool device_exchange) const {
    const int64_t limit = device_exchange ? tuning_.device_exchange_skinny_max_rows_per_expert
                                          : tuning_.skinny_max_rows_per_expert;
    return c_.hidden_size % 8 == 0 && c_.intermediate_size % 8 == 0 &&
           rows <= limit * std::max<int64_t>(1, experts);
  }
  // The weights' TMA descriptors (maps13_, maps2_) for the grouped wgmma kernel.
  void BuildTensorMaps();
  // Whether the local path (device_exchange false) or the device exchange runs its experts through
  // the grouped wgmma kernel when they are not skinny (ExpertGemmTuning::wgmma_grouped,
  // ::device_exchange_wgmma).
  bool WgmmaExperts(bool device_exchange) const {
    const bool wanted = device_exchange ? tuning_.device_exchange_wgmma : tuning_.wgmma_grouped && Local();
    return wanted && c_.hidden_size % 8 == 0 && c_.intermediate_size % 8 == 0 && c_.num_experts <= 256 &&
           GroupedGemmSupported();
  }
  // Whether the local path runs the experts of a T-token step on padded rows (when neither skinny
  // nor wgmma): ExpertGemmTuning::padded_max_tokens, every expert held and evenly spaced.
  bool PaddedExperts(int64_t T) const {
    return Local() && evenly_spaced_ && T > 0 && T <= tuning_.padded_max_tokens &&
           !SkinnyExperts(T * c_.experts_per_token, c_.num_experts, false) && !WgmmaExperts(false);
  }
  // How Experts runs the products: the skinny kernel, the grouped wgmma kernel (both read the
  // counts on the device) or cuBLAS (the counts on the host). The caller chooses.
  enum class ExpertKernel { kSkinny, kWgmma, kBlas };
  // The fixed-capacity exchange: rows per (source, destination) block, and the bound on the rows
  // a rank receives.
  int64_t ExchangeCap(const StepRows& rows) const { return rows.peak * exchange_rows_per_token_; }
  int64_t ReceiveBound(const StepRows& rows) const {
    return std::min(comm_.size() * ExchangeCap(rows), rows.total * c_.experts_per_token);
  }
  // The rows `local` experts expect on average: the job's routed rows times their share.
  int64_t ExpectedRows(const StepRows& rows, int64_t local) const {
    const int64_t routed = rows.total * c_.experts_per_token;
    return std::max<int64_t>(1, (routed * local + c_.num_experts - 1) / c_.num_experts);
  }
  // PlanSkinny for the rank's experts, with the tuning's forced split counts.
  SkinnyPlan PlanExperts(int64_t R, int64_t local, int64_t plan_rows = 0) const {
    return PlanSkinny(c_, R, local, plan_rows, tuning_.skinny_splits_up, tuning_.skinny_splits_down);
  }
  // RouteAndGroup of this rank's T rows (from logits_) into offsets_ (and src_row, position, the
  // optional active list and load counts).
  void RouteOnDevice(int64_t T, int32_t* src_row, int32_t* position, int32_t* active, int32_t* expert_counts);
  void ForwardLocal(int64_t layer, const bf16* h, int64_t T, float* residual,
                    StageProfiler& prof, MoeLayer::Record* record, int32_t* expert_counts, const NextNorm& next);
  void ForwardExchange(int64_t layer, const DeviceMoeWeights& w, const bf16* h, int64_t T, float* residual,
                       StageProfiler& prof, MoeLayer::Record* record, const NextNorm& next);
  void ForwardDeviceExchange(int64_t layer, const bf16* h, int64_t T, float* residual,
                             StageProfiler& prof, int32_t* expert_counts, const NextNorm& next);
  // residual += the weighted slots of y; then the next norm when given.
  void Combine(const bf16* y, const int32_t* position, int64_t T, float* residual, const NextNorm& next);
  // Copies the router logits and the routing of T rows to `record` (synchronises; tests only).
  void RecordRouting(int64_t T, MoeLayer::Record& record, std::vector<int32_t>* experts_out);
  // The experts of `layer` on R rows grouped by expert, through `kernel`: row r of the output is
  // expert e's result for input row row_index[r] (null: r) of x, for r in [offsets[e], offsets[e+1]).
  // d_offsets [E+1] on the device; h_offsets [E+1] on the host or null (kBlas then fetches them).
  // out: [R, H] bf16. `active` (device, optional): the experts with rows, then -1 (RouteAndGroup's
  // list), so the skinny GEMMs launch CTAs for those alone.
  // plan_rows (0: R): when R is only a bound on the rows (the device exchange, where the rows are
  // known on the device alone), the rows the skinny kernels are sized for (the expected rows); the
  // wgmma kernel's down product picks its tile from them.
  void Experts(ExpertKernel kernel, int64_t layer, const bf16* x, const int32_t* row_index, int64_t R,
               const int32_t* d_offsets, const int32_t* h_offsets, bf16* out, const int32_t* active = nullptr,
               int64_t plan_rows = 0);
  // The experts of `layer` on the local path's T tokens, padded (PaddedExperts): every expert's rows
  // gathered into a block of T rows, one strided-batched product per matrix. Leaves the results in
  // result_ [E * T, H] and each slot's row there in padded_position_ [T * k].
  void ExpertsPadded(int64_t layer, const bf16* h, int64_t T, const int32_t* position);
  // Rows exchange through the host: bf16 rows -> float32 -> host -> AllToAllRows -> device -> bf16.
  void ExchangeRows(const bf16* send, std::span<const int64_t> send_rows, bf16* recv,
                    std::span<const int64_t> recv_rows);
  // The counts all-to-all through NCCL: to the device, exchanged, back to the host (synchronises).
  void ExchangeCountsNccl(std::span<const int64_t> send, std::span<int64_t> recv, int64_t count);

  const ModelConfig& c_;
  const PlacementPlan& plan_;
  Communicator& comm_;
  LoadStats& stats_;
  Gemm& gemm_;
  cudaStream_t stream_;
  bool staging_;
  NcclExchange* nccl_;  // null: no NCCL (host staging between ranks)
  PeerExchange* peers_;  // null: the device exchange (if any) through NCCL
  ExpertGemmTuning tuning_;
  std::vector<int64_t> local_experts_;  // per layer: experts this rank holds
  bool single_owner_ = false;  // every expert of every layer on one rank, E <= 256, the counts fit a row
  int64_t exchange_rows_per_token_ = 1;  // min(k, the most experts of a layer one rank holds)
  DeviceBuffer<int32_t> owner_;          // [L, E]: the rank of each expert (single_owner_ only)
  StepRows step_;                        // the current step's (Reserve)

  std::vector<const bf16*> host_w13_, host_w2_;  // [L, E] expert weight pointers (null where not held)
  int64_t expert_stride_ = 0;  // elements between consecutive experts' weights (DeviceWeights::expert_stride)
  bool evenly_spaced_ = false;  // every expert of every layer held, expert_stride_ apart (padded experts)
  DeviceBuffer<const bf16*> w13_, w2_;            // the same on the device
  DeviceBuffer<WeightTensorMap> maps13_, maps2_;  // their TMA descriptors (grouped wgmma kernel; built at its first use)
  DeviceBuffer<void*> group_ptrs_;      // cuBLAS grouped GEMM pointer arrays: w, x, y for w13 then w2
  std::unique_ptr<GemmFanout> fanout_;  // made at the first concurrent expert step
  CudaEvent sizes_copied_;              // the cuBLAS experts' row counts reached the host (Experts)
  DeviceBuffer<float> logits_, weights_, stage_, split_;
  DeviceBuffer<int32_t> experts_, index_, offsets_, active_, recv_offsets_, padded_position_;
  DeviceBuffer<int32_t> counters_;  // the skinny GEMMs' split-K arrival counters (kept zeroed)
  DeviceBuffer<bf16> send_, recv_, grouped_, gate_up_, act_, result_, computed_, returned_;
  PinnedBuffer<int32_t> h_experts_, h_index_, h_offsets_;
  PinnedBuffer<float> h_send_, h_recv_;
  DeviceBuffer<int64_t> d_counts_;  // NCCL counts: send [W*E] then recv [W*E]
  PinnedBuffer<int64_t> h_counts_;
  std::vector<int64_t> recv_counts_, recv_rows_;
};

}  // namespace moe::gpu
