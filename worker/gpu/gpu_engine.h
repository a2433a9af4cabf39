// The GPU engine of one rank: the same contract as the CPU moe::Engine (Load, AddSequence,
// FreeSequence, a collective Step with the same validation and step header), running the forward
// on one CUDA device with bf16 weights and activations, float32 accumulation in every GEMM, a
// float32 residual stream, float32 router and final logits.
//
// Per step: the step's inputs (token ids, positions, block tables, the rows whose logits are
// wanted, the attention tiles) go to the device in one copy; per layer: fused RMSNorm, one QKV
// GEMM, RoPE with the keys and values written into the paged bf16 KV cache (one kernel), paged
// attention (tensor-core tiles for prefill chunks and for single rows, single rows with long
// contexts at small batches split over blocks by a decode kernel: kernels.h), the output GEMM
// accumulated into the residual, RMSNorm, the MoE layer (worker/gpu/moe_layer.h); at the end the
// final norm, the LM head on the wanted rows and one copy of their logits to the host. Dense GEMMs
// with few rows take the skinny weight-streaming kernel, the others cuBLAS (gemm.h).
//
// CUDA graphs: when a step needs no host synchronisation (one rank, few enough rows per expert
// for the skinny expert GEMMs: every decode step up to a batch of a few hundred) the whole step,
// from the input upload to the logits download, is captured once per shape (rows, sequences,
// block-table width, wanted rows, attention tiles) and replayed: the host enqueues one graph
// instead of hundreds of kernels. Buffers never move under a graph: the load sizes them for every
// step of up to max_step_tokens tokens (ReserveSteps), so such a step allocates nothing and a decode
// batch that grows keeps the graphs captured so far; a larger step grows them and drops the graphs.
//
// Expert parallelism uses the engine's Communicator exactly as the CPU engine does (step header,
// validation, load statistics). The MoE rows cross ranks device to device through NCCL when a
// NcclExchange is given (one rank per GPU): decode-sized steps in fixed-capacity blocks with no host
// synchronisation (CUDA graphs; with a PeerExchange the blocks' rows are written straight into the
// other GPUs instead), larger ones with their counts through the host; else through host staging
// over the Communicator (the fallback, and the only way when several ranks share one GPU). See
// moe_layer.h.
//
// CUDA and cuBLAS failures during a step throw (CudaError / CublasError): the device is then in
// an unknown state and the process should end. Load reports them as errors.
#pragma once

#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/placement.h"
#include "worker/comm/communicator.h"
#include "worker/gpu/cuda_stream.h"
#include "worker/gpu/device_buffer.h"
#include "worker/gpu/device_weights.h"
#include "worker/gpu/gemm.h"
#include "worker/gpu/moe_layer.h"
#include "worker/gpu/stage_profiler.h"
#include "worker/kv_blocks.h"
#include "worker/model/config.h"
#include "worker/moe/load_stats.h"
#include "worker/step_engine.h"

namespace moe::gpu {

struct GpuEngineOptions {
  int64_t kv_block_size = 16;
  int64_t kv_tokens = 16384;  // KV cache capacity in token positions (rounded up to whole blocks)
  // With kv_tokens 0: the capacity is what this fraction of the device's memory holds besides the
  // weights and the buffers of steps of up to max_step_tokens (worker/kv_budget.h).
  double memory_fraction = 0.0;
  // The most tokens a step is expected to have (the serving loop's --max-batch-tokens): the load
  // allocates every step buffer for steps up to this size, so a failure to allocate comes at load.
  int64_t max_step_tokens = 2048;
  bool collect_load_stats = true;
  bool verbose = false;     // print load progress to stderr
  // Asked after each layer of Load; an error ends the load with it (as EngineOptions::keep_loading).
  std::function<absl::Status()> keep_loading;
  int device = -1;          // CUDA device to use; -1: the current one
  bool force_host_staging = false;  // MoE rows through the host and the Communicator even on one rank
  bool profile_stages = false;      // per-stage CUDA event timings (see stage_profiler.h)
  bool record_routing = false;      // keep the last step's router logits and routing per layer (tests)
  bool cuda_graphs = true;          // capture and replay host-free steps (see above)
  // Choose the cuBLASLt algorithms of every product up to max_step_tokens at load (gemm_warmup.h)
  // rather than on the first steps that need them.
  bool prepare_gemm_algorithms = true;
  // The MoE token exchange over NCCL (not owned; must outlive the engine; its ranks must be the
  // Communicator's). With device -1 the engine runs on the exchange's GPU; a different device is
  // an error. Null, or force_host_staging: rows go through the host and the Communicator.
  NcclExchange* nccl = nullptr;
  // The decode steps' MoE exchange written straight into the other ranks' GPU memory (not owned;
  // made for these ranks on the engine's GPU with at least GpuMoeLayer::PeerBlockBytes): on one
  // node with peer access it moves only the rows that exist, where NCCL moves fixed blocks.
  // Steps too large for the device exchange still take NCCL (or the host without it).
  PeerExchange* peers = nullptr;
};

class GpuEngine final : public StepEngine {
 public:
  // Loads config.json and, from the checkpoint, the replicated tensors and the experts `plan` gives
  // comm.rank(). The plan must match the config and comm.size().
  static absl::StatusOr<std::unique_ptr<GpuEngine>> Load(const std::string& model_dir, Communicator& comm,
                                                         const PlacementPlan& plan, const GpuEngineOptions& opts);
  // The same with seeded random weights generated on the device (no checkpoint): any config runs.
  static absl::StatusOr<std::unique_ptr<GpuEngine>> LoadSynthetic(const ModelConfig& c, Communicator& comm,
                                                                  const PlacementPlan& plan,
                                                                  const GpuEngineOptions& opts, uint64_t seed);
  ~GpuEngine() override;

  absl::Status AddSequence(int64_t seq_id) override { return kv_.AddSequence(seq_id); }
  void FreeSequence(int64_t seq_id) override { kv_.FreeSequence(seq_id); }
  bool HasSequence(int64_t seq_id) const override { return kv_.HasSequence(seq_id); }
  int64_t SequenceLength(int64_t seq_id) const override { return kv_.length(seq_id); }
  void EnablePrefixCache() override { kv_.EnablePrefixCache(); }
  int64_t AttachCachedPrefix(int64_t seq_id, std::span<const int32_t> prompt, uint64_t root) override {
    return kv_.AttachCachedPrefix(seq_id, prompt, root);
  }

  // The collective forward step. On error nothing is changed on any rank.
  absl::StatusOr<StepOutput> Step(const std::vector<SequenceChunk>& chunks) override;

  const ModelConfig& config() const override { return config_; }
  const PlacementPlan& plan() const { return plan_; }
  Communicator& comm() override { return comm_; }
  const KvBlockAllocator& kv_blocks() const override { return kv_; }
  std::vector<uint64_t> TakeEvictedPrefixHashes() override { return kv_.TakeEvictedHashes(); }
  const LoadStats& load_stats() const override { return stats_; }
  LoadStats& load_stats() { return stats_; }
  int64_t weight_bytes() const override { return weights_->bytes(); }
  int64_t expert_weight_bytes() const { return weights_->expert_bytes(); }
  int64_t kv_cache_bytes() const { return static_cast<int64_t>(2 * keys_.size() * sizeof(bf16)); }
  // Device memory the load's ReserveSteps took (cudaMemGetInfo before and after): what the step
  // buffers of max_step_tokens tokens hold, to compare with kv_budget's StepBufferBytes.
  int64_t reserved_step_bytes() const { return reserved_step_bytes_; }
  cudaStream_t stream() const { return stream_.get(); }

  // Per layer, for the last step's local rows (only with record_routing).
  const std::vector<MoeLayer::Record>& last_routing() const { return routing_; }

  // Tuning, between steps (benchmarks compare the choices; the defaults are the measured best).
  void set_cuda_graphs(bool on);
  void set_dense_skinny_max_rows(int64_t rows) {
    gemm_.set_skinny_max_rows(rows);
    DropGraphs();  // the captured steps hold the old choice
  }
  void set_expert_tuning(const ExpertGemmTuning& t);
  const ExpertGemmTuning& expert_tuning() const { return moe_->tuning(); }
  // Programmatic dependent launches (kernels/launch.cuh) for every kernel of the process.
  void set_programmatic_launch(bool on) {
    SetProgrammaticLaunch(on);
    DropGraphs();
  }
  // Where a step's wall-clock time goes on the host, summed over steps: validation, KV
  // reservation and input assembly; enqueueing (or launching the graph); waiting for the device;
  // after it (logits into the output, load statistics, KV lengths).
  struct HostTimes {
    double prepare_ms = 0, enqueue_ms = 0, wait_ms = 0, finish_ms = 0;
    int64_t steps = 0;
  };
  const HostTimes& host_times() const { return host_times_; }
  void reset_host_times() { host_times_ = HostTimes{}; }
  // Graphs captured so far (tests check that decode replays them).
  int64_t graphs_captured() const { return graphs_captured_; }
  int64_t graph_launches() const { return graph_launches_; }

  // Stage timings (profiling mode): switched on and off between steps.
  void set_profile_stages(bool on) { profiler_.Enable(on, config_.num_layers); }
  const StageTimes& stage_times() const { return profiler_.times(); }
  void reset_stage_times() { profiler_.Reset(); }

 private:
  GpuEngine(const ModelConfig& c, Communicator& comm, const PlacementPlan& plan, const GpuEngineOptions& opts);
  // Checks the config against the kernels' limits, selects the device, allocates the KV cache.
  static absl::StatusOr<std::unique_ptr<GpuEngine>> Create(const ModelConfig& c, Communicator& comm,
                                                           const PlacementPlan& plan, const GpuEngineOptions& opts);
  void Forward(const std::vector<SequenceChunk>& chunks, StepOutput& out);  // out.global_rows set
  // A sampled row's parameters in the step's input buffer.
  static constexpr int64_t kPickParamWords = sizeof(SampleRowParams) / sizeof(int32_t);
  // The shape of one step's device work: what a captured graph is specialised to.
  struct StepShape {
    int64_t T = 0, S = 0, pitch = 0, wanted = 0, narrow = 0, wide = 0;
    int64_t peak = 0, total = 0;  // the job's rows (StepRows): they size the device exchange
    int64_t picks = 0;            // wanted rows sampled on the device (sample_next), after the others
    int64_t allowed = 0;          // of those, the ones drawn under allowed-id bits (SampleNext::allowed)
    int64_t allowed_words = 0;    // 32-bit words of one row of those bits (AllowedRowWords)
    int64_t adjusted = 0;         // of the picks, the ones with penalties (SampleNext::adjust)
    int64_t top = 0;              // the most top alternatives a pick asks for (each gets room for as many)
    // Their adjustments, all rows together: uploaded before the step's graph (adjustments_), so a
    // growing output changes no shape.
    int64_t adjust_entries = 0;
    // The picks' results, in 32-bit words, where each part starts: tokens [picks], their logprobs
    // [picks], top ids [picks, top], top logprobs [picks, top], target logprobs [picks], target
    // ranks [picks].
    int64_t pick_logprobs_at() const { return picks; }
    int64_t top_ids_at() const { return 2 * picks; }
    int64_t top_logprobs_at() const { return 2 * picks + picks * top; }
    int64_t target_logprobs_at() const { return 2 * picks * (1 + top); }
    int64_t target_ranks_at() const { return target_logprobs_at() + picks; }
    int64_t pick_words() const { return target_ranks_at() + picks; }
    int64_t inputs() const {
      return 3 * T + S * pitch + wanted + 2 * narrow + 2 * wide + picks * kPickParamWords + allowed * allowed_words +
             3 * adjusted;
    }
    int decode_splits = 1;  // of the decode attention (a function of narrow and pitch)
    StepRows rows() const { return StepRows{T, peak, total}; }
    auto key() const {
      return std::vector<int64_t>{T, S, pitch, wanted, narrow, wide, peak, total, picks, allowed, adjusted, top};
    }
  };
  // Sizes every per-step buffer for `shape`; true when one was reallocated.
  bool Reserve(const StepShape& shape);
  // The shape whose buffers bound those of any step of T tokens: T one-token sequences, each row
  // sampled with everything a pick may ask for (allowed ids, penalties, kMaxTopLogprobs
  // alternatives), attention split as over the longest context the KV cache holds. A step with
  // prefill chunks needs no more: fewer picks, and its wide tiles take no more room than narrow ones.
  StepShape LargestStep(int64_t T) const;
  // At load: Reserve(LargestStep(T)) for every T up to max_step_tokens (largest first; some
  // buffers are not monotone in T: split-K workspaces, padded experts), so that no step within the
  // bound allocates. ResourceExhausted, naming the bound, when the device cannot hold them.
  absl::Status ReserveSteps();
  int64_t reserved_step_bytes_ = 0;
  // Enqueues the step's device work: input upload, forward, logits (and expert counts) download.
  void Enqueue(const StepShape& shape, bool count_experts);
  void DropGraphs();
  // PrepareGemmAlgorithms (gemm_warmup.h) at load, unless the options say not to.
  void PrepareGemms();
  int64_t prepared_padded_tokens_ = 0;  // the padded experts' tokens PrepareGemms chose algorithms up to
  using HostClock = std::chrono::steady_clock;
  double LapMs();  // ms since the last lap (or the step's start), and starts the next

  ModelConfig config_;
  Communicator& comm_;
  PlacementPlan plan_;
  GpuEngineOptions opts_;
  KvBlockAllocator kv_;
  LoadStats stats_;
  CudaStream stream_;  // before every member that enqueues work on it
  Gemm gemm_;
  StageProfiler profiler_;
  std::unique_ptr<DeviceWeights> weights_;
  std::unique_ptr<GpuMoeLayer> moe_;
  std::vector<MoeLayer::Record> routing_;

  DeviceBuffer<bf16> keys_, values_;  // [layers, blocks, block_size, kv_heads, head_dim]
  DeviceBuffer<double> inv_freq_;     // RoPE [head_dim / 2]
  int64_t tile_rows_ = 1;             // query rows per multi-row attention tile
  // Per-step inputs: ids, positions, row -> chunk, block tables, wanted rows (those whose logits
  // go to the host, then those sampled here), attention tiles (narrow, then wide), the sampling
  // parameters of the sampled rows, the allowed-id bits of those that have them, the penalised ones'
  // (row, first adjustment, count), in one int32 buffer. The adjustments themselves are copied on
  // their own, before the step's work (a graph reads them through a fixed pointer).
  PinnedBuffer<int32_t> h_inputs_;
  DeviceBuffer<int32_t> inputs_;
  std::vector<int32_t> narrow_tiles_, wide_tiles_;
  // Activations, grown as steps need.
  DeviceBuffer<float> x_, logits_;  // residual stream [T, H]; final logits [rows wanted, V]
  DeviceBuffer<float> adjusted_;    // penalised copies of sampled rows [adjusted, V]
  DeviceBuffer<LogitAdjustment> adjustments_;  // the step's penalties (StepShape::adjust_entries)
  PinnedBuffer<LogitAdjustment> h_adjustments_;
  DeviceBuffer<bf16> hn_, qkv_, q_, attn_, wanted_;
  // Decode attention split over the keys (DecodeSplit): partial results and per-(row, KV head)
  // counters (zeroed when allocated; the kernel leaves them zero).
  DeviceBuffer<float> attn_partial_;
  DeviceBuffer<int32_t> attn_counters_;
  PinnedBuffer<float> h_logits_;
  // The rows sampled on the device: tokens [picks], then their log-probabilities' bits [picks], then
  // the top alternatives' ids [picks, top] and log-probabilities' bits [picks, top].
  DeviceBuffer<int32_t> picks_;
  PinnedBuffer<int32_t> h_picks_;
  // Rows routed to each expert of each layer in this step (local path), for the load statistics.
  DeviceBuffer<int32_t> step_counts_;
  PinnedBuffer<int32_t> h_step_counts_;
  // Captured steps by shape.
  std::map<std::vector<int64_t>, cudaGraphExec_t> graphs_;
  int64_t graphs_captured_ = 0, graph_launches_ = 0;
  HostTimes host_times_;
  HostClock::time_point host_clock_;
};

}  // namespace moe::gpu
