#include "worker/gpu/gpu_engine.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "worker/gpu/gemm_warmup.h"
#include "worker/gpu/sample_row_params.h"
#include "worker/kv_budget.h"
#include "worker/model/rope.h"
#include "worker/model/safetensors.h"
#include "worker/sampler.h"

static_assert(moe::kMaxTopLogprobs == moe::gpu::kMaxSampleTop, "SampleRows keeps room for every top alternative");

namespace moe::gpu {
namespace {

// The limits of the CUDA kernels (attention: grouped-query heads <= 8 per KV head, head_dim a
// multiple of 8 up to 256; router: <= 256 experts), checked once at load so a step never fails on
// them.
absl::Status CheckKernelLimits(const ModelConfig& c) {
  if (c.num_kv_heads <= 0 || c.num_heads % c.num_kv_heads != 0 || c.heads_per_kv() > 8) {
    return absl::InvalidArgumentError(absl::StrCat("GPU engine: num_attention_heads ", c.num_heads,
                                                   " over num_key_value_heads ", c.num_kv_heads,
                                                   " must be a whole number of at most 8"));
  }
  if (c.head_dim > 256 || c.head_dim % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("GPU engine: head_dim ", c.head_dim, " must be a multiple of 8 and <= 256"));
  }
  if (c.num_experts > 256 || c.experts_per_token > c.num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("GPU engine: ", c.num_experts, " experts, top-",
                                                   c.experts_per_token, ": need k <= experts <= 256"));
  }
  return absl::OkStatus();
}

}  // namespace

GpuEngine::GpuEngine(const ModelConfig& c, Communicator& comm, const PlacementPlan& plan,
                     const GpuEngineOptions& opts)
    : config_(c),
      comm_(comm),
      plan_(plan),
      opts_(opts),
      kv_(opts.kv_block_size, (opts.kv_tokens + opts.kv_block_size - 1) / opts.kv_block_size),
      stats_(c.num_layers, c.num_experts, comm.size()),
      gemm_(stream_.get()) {}

GpuEngine::~GpuEngine() {
  cudaStreamSynchronize(stream_.get());
  DropGraphs();
}

void GpuEngine::DropGraphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

void GpuEngine::set_cuda_graphs(bool on) {
  opts_.cuda_graphs = on;
  if (!on) DropGraphs();
}

void GpuEngine::set_expert_tuning(const ExpertGemmTuning& t) {
  moe_->set_tuning(t);
  DropGraphs();  // which steps may be captured has changed
  // Padded experts beyond what the load prepared: their choices now, not inside a step's capture
  // (which takes the heuristic's first, untimed). The choices already made are kept.
  if (moe_->PaddedMaxTokens() > prepared_padded_tokens_) PrepareGemms();
}

absl::StatusOr<std::unique_ptr<GpuEngine>> GpuEngine::Create(const ModelConfig& c, Communicator& comm,
                                                             const PlacementPlan& plan,
                                                             const GpuEngineOptions& opts) {
  MOE_RETURN_IF_ERROR(CheckEngineSetup(c, plan, comm, opts.kv_block_size, opts.kv_tokens));
  MOE_RETURN_IF_ERROR(CheckKernelLimits(c));
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    return absl::FailedPreconditionError("GPU engine: no CUDA device");
  }
  if (opts.device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("GPU engine: device ", opts.device, " of ", count));
  }
  if (opts.nccl != nullptr) {
    if (opts.nccl->size() != comm.size() || opts.nccl->rank() != comm.rank()) {
      return absl::InvalidArgumentError(absl::StrCat("GPU engine: NCCL rank ", opts.nccl->rank(), " of ",
                                                     opts.nccl->size(), " but Communicator rank ", comm.rank(),
                                                     " of ", comm.size()));
    }
    if (opts.device >= 0 && opts.device != opts.nccl->device()) {
      return absl::InvalidArgumentError(absl::StrCat("GPU engine: device ", opts.device,
                                                     " but the NCCL exchange runs on device ", opts.nccl->device()));
    }
  }
  if (opts.peers != nullptr) {
    if (opts.peers->size() != comm.size() || opts.peers->rank() != comm.rank()) {
      return absl::InvalidArgumentError(absl::StrCat("GPU engine: peer exchange rank ", opts.peers->rank(), " of ",
                                                     opts.peers->size(), " but Communicator rank ", comm.rank(),
                                                     " of ", comm.size()));
    }
    const int device = opts.nccl != nullptr ? opts.nccl->device() : opts.device;
    if (device >= 0 && device != opts.peers->device()) {
      return absl::InvalidArgumentError(absl::StrCat("GPU engine: device ", device,
                                                     " but the peer exchange's memory is on device ",
                                                     opts.peers->device()));
    }
    if (opts.peers->block_bytes() < GpuMoeLayer::PeerBlockBytes(c, comm.size())) {
      return absl::InvalidArgumentError(absl::StrCat("GPU engine: the peer exchange holds ", opts.peers->block_bytes(),
                                                     " bytes of blocks; this model needs ",
                                                     GpuMoeLayer::PeerBlockBytes(c, comm.size())));
    }
  }
  try {
    if (opts.device >= 0) MOE_CUDA_CHECK(cudaSetDevice(opts.device));
    if (opts.nccl != nullptr) MOE_CUDA_CHECK(cudaSetDevice(opts.nccl->device()));
    if (opts.peers != nullptr) MOE_CUDA_CHECK(cudaSetDevice(opts.peers->device()));
    GpuEngineOptions sized = opts;
    if (opts.kv_tokens == 0 && opts.memory_fraction > 0) {  // the KV cache takes what memory is left
      size_t free = 0, total = 0;
      MOE_CUDA_CHECK(cudaMemGetInfo(&free, &total));
      MOE_ASSIGN_OR_RETURN(sized.kv_tokens, KvTokensForMemory(c, static_cast<int64_t>(total), opts.memory_fraction,
                                                              RankWeightBytes(c, plan, comm.rank()),
                                                              StepBufferBytes(c, opts.max_step_tokens),
                                                              opts.kv_block_size));
    }
    std::unique_ptr<GpuEngine> e(new GpuEngine(c, comm, plan, sized));
    const size_t kv_elems = static_cast<size_t>(c.num_layers * e->kv_.total_blocks() * opts.kv_block_size * c.kv_dim());
    try {
      e->keys_ = DeviceBuffer<bf16>(kv_elems);
      e->values_ = DeviceBuffer<bf16>(kv_elems);
    } catch (const CudaError& err) {
      (void)cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("GPU engine: cannot allocate the KV cache (",
                                                       2 * kv_elems * sizeof(bf16), " bytes for ", sized.kv_tokens,
                                                       " positions): ", err.what()));
    }
    const std::vector<double> inv = ComputeRopeFrequencies(c).inv_freq;
    e->inv_freq_ = DeviceBuffer<double>(inv.size());
    MOE_CUDA_CHECK(cudaMemcpy(e->inv_freq_.get(), inv.data(), sizeof(double) * inv.size(), cudaMemcpyHostToDevice));
    e->tile_rows_ = AttentionTileRows(c.heads_per_kv(), c.head_dim);
    e->step_counts_ = DeviceBuffer<int32_t>(static_cast<size_t>(c.num_layers * c.num_experts));
    e->h_step_counts_.EnsureSize(static_cast<size_t>(c.num_layers * c.num_experts));
    e->profiler_.Enable(opts.profile_stages, c.num_layers);
    return e;
  } catch (const std::exception& err) {
    return absl::InternalError(absl::StrCat("GPU engine: ", err.what()));
  }
}

absl::StatusOr<std::unique_ptr<GpuEngine>> GpuEngine::Load(const std::string& model_dir, Communicator& comm,
                                                           const PlacementPlan& plan, const GpuEngineOptions& opts) {
  MOE_ASSIGN_OR_RETURN(ModelConfig c, ModelConfig::FromModelDir(model_dir));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(model_dir));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<GpuEngine> e, Create(c, comm, plan, opts));
  const int rank = comm.rank();
  auto progress = [&](int64_t done, int64_t total) {
    if (opts.verbose) std::fprintf(stderr, "[rank %d] loading %s to the GPU: layer %lld/%lld\n", rank,
                                   model_dir.c_str(), static_cast<long long>(done), static_cast<long long>(total));
    return opts.keep_loading ? opts.keep_loading() : absl::OkStatus();
  };
  try {
    MOE_ASSIGN_OR_RETURN(e->weights_,
                         DeviceWeights::Upload(c, *ckpt, [&](int64_t l, int64_t x) { return plan.holds(l, x, rank); },
                                               progress));
    e->moe_ = std::make_unique<GpuMoeLayer>(e->config_, e->plan_, comm, e->stats_, e->gemm_, e->stream_.get(),
                                            *e->weights_, opts.force_host_staging, opts.nccl, opts.peers);
    e->PrepareGemms();
  } catch (const std::exception& err) {
    return absl::InternalError(absl::StrCat("GPU engine: loading ", model_dir, ": ", err.what()));
  }
  MOE_RETURN_IF_ERROR(e->ReserveSteps());
  return e;
}

absl::StatusOr<std::unique_ptr<GpuEngine>> GpuEngine::LoadSynthetic(const ModelConfig& c, Communicator& comm,
                                                                    const PlacementPlan& plan,
                                                                    const GpuEngineOptions& opts, uint64_t seed) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<GpuEngine> e, Create(c, comm, plan, opts));
  const int rank = comm.rank();
  try {
    MOE_ASSIGN_OR_RETURN(e->weights_, DeviceWeights::Synthetic(
                                          c, [&](int64_t l, int64_t x) { return plan.holds(l, x, rank); }, seed));
    e->moe_ = std::make_unique<GpuMoeLayer>(e->config_, e->plan_, comm, e->stats_, e->gemm_, e->stream_.get(),
                                            *e->weights_, opts.force_host_staging, opts.nccl, opts.peers);
    e->PrepareGemms();
  } catch (const std::exception& err) {
    return absl::InternalError(absl::StrCat("GPU engine: synthetic weights: ", err.what()));
  }
  MOE_RETURN_IF_ERROR(e->ReserveSteps());
  if (opts.verbose) {
    std::fprintf(stderr, "[rank %d] synthetic weights (seed %llu): %.2f GB on the GPU\n", rank,
                 static_cast<unsigned long long>(seed), static_cast<double>(e->weights_->bytes()) / 1e9);
  }
  return e;
}

void GpuEngine::PrepareGemms() {
  if (!opts_.prepare_gemm_algorithms) return;
  prepared_padded_tokens_ = moe_->PaddedMaxTokens();
  const auto t0 = HostClock::now();
  const int64_t chosen =
      PrepareGemmAlgorithms(config_, *weights_, opts_.max_step_tokens, prepared_padded_tokens_, gemm_);
  if (chosen < 0) {
    std::fprintf(stderr, "[rank %d] no GPU memory for choosing the cuBLASLt algorithms at load: the first steps "
                 "that need them choose them\n", comm_.rank());
  } else if (opts_.verbose) {
    std::fprintf(stderr, "[rank %d] %lld cuBLASLt algorithms chosen in %.0f ms\n", comm_.rank(),
                 static_cast<long long>(chosen),
                 std::chrono::duration<double, std::milli>(HostClock::now() - t0).count());
  }
}

absl::StatusOr<StepOutput> GpuEngine::Step(const std::vector<SequenceChunk>& chunks) {
  host_clock_ = HostClock::now();
  StepOutput out;
  MOE_ASSIGN_OR_RETURN(out.global_rows, BeginStep(config_, comm_, kv_, chunks));
  if (out.global_rows == 0) return out;
  Forward(chunks, out);
  AdvanceLengths(kv_, chunks);
  if (opts_.collect_load_stats) stats_.FinishStep(comm_);
  host_times_.finish_ms += LapMs();
  ++host_times_.steps;
  return out;
}

double GpuEngine::LapMs() {
  const HostClock::time_point now = HostClock::now();
  const double ms = std::chrono::duration<double, std::milli>(now - host_clock_).count();
  host_clock_ = now;
  return ms;
}

namespace {

// The most rows of a decode step whose RoPE and attention run as one kernel (DecodeRopeAttention;
// the QKV product then runs one token tile, SkinnyTileCount). Measured (nvidia-h200, trace build,
// four rounds): batch 1 +1.2%, batch 4 +0.7%; batch 16 -0.8% with its attention 7 us slower.
constexpr int64_t kFusedRopeRows = 8;

int64_t RoundUpPow2(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

}  // namespace

bool GpuEngine::Reserve(const StepShape& sh) {
  const ModelConfig& c = config_;
  const int64_t T = sh.T, H = c.hidden_size, qd = c.q_dim(), qkvd = qd + 2 * c.kv_dim();
  bool grew = false;
  grew |= x_.EnsureSize(static_cast<size_t>(T * H));
  grew |= hn_.EnsureSize(static_cast<size_t>(T * H));
  grew |= qkv_.EnsureSize(static_cast<size_t>(T * qkvd));
  grew |= q_.EnsureSize(static_cast<size_t>(T * qd));
  grew |= attn_.EnsureSize(static_cast<size_t>(T * qd));
  grew |= wanted_.EnsureSize(static_cast<size_t>(sh.wanted * H));
  grew |= logits_.EnsureSize(static_cast<size_t>(sh.wanted * c.vocab_size));
  grew |= adjusted_.EnsureSize(static_cast<size_t>(sh.adjusted * c.vocab_size));
  if (static_cast<size_t>(sh.adjust_entries) > adjustments_.size()) {  // room to grow into: outputs add entries every step
    const auto room = static_cast<size_t>(RoundUpPow2(std::max<int64_t>(sh.adjust_entries, 4096)));
    grew |= adjustments_.EnsureSize(room);
    h_adjustments_.EnsureSize(room);  // not read by a graph
  }
  grew |= h_logits_.EnsureSize(static_cast<size_t>((sh.wanted - sh.picks) * c.vocab_size));
  grew |= picks_.EnsureSize(static_cast<size_t>(sh.pick_words()));
  grew |= h_picks_.EnsureSize(static_cast<size_t>(sh.pick_words()));
  grew |= moe_->Reserve(sh.rows());
  grew |= attn_partial_.EnsureSize(DecodeSplitFloats(sh.narrow, c.num_heads, c.head_dim, sh.decode_splits));
  if (attn_counters_.EnsureSize(static_cast<size_t>(sh.narrow * c.num_kv_heads))) {
    MOE_CUDA_CHECK(cudaMemset(attn_counters_.get(), 0, sizeof(int32_t) * attn_counters_.size()));
    grew = true;
  }
  // The dense products' split-K workspace (one buffer for all: they run one after another).
  grew |= gemm_.Reserve(T, H, qkvd, SkinnyEpilogue::kStoreBf16);
  grew |= gemm_.Reserve(T, qd, H, SkinnyEpilogue::kAddF32);
  grew |= gemm_.Reserve(T, H, c.num_experts, SkinnyEpilogue::kStoreF32);
  grew |= gemm_.Reserve(sh.wanted, H, c.vocab_size, SkinnyEpilogue::kStoreF32);
  // The inputs grow by powers of two: the block tables widen with the contexts, past what the load
  // reserved (LargestStep counts one block a sequence).
  if (static_cast<size_t>(sh.inputs()) > inputs_.size()) {
    const auto room = static_cast<size_t>(RoundUpPow2(sh.inputs()));
    grew |= h_inputs_.EnsureSize(room);  // the last step ended with a synchronisation
    grew |= inputs_.EnsureSize(room);
  }
  return grew;
}

GpuEngine::StepShape GpuEngine::LargestStep(int64_t T) const {
  const ModelConfig& c = config_;
  StepShape sh;
  sh.T = sh.S = sh.wanted = sh.picks = sh.allowed = sh.adjusted = sh.narrow = T;
  sh.pitch = 1;
  sh.allowed_words = AllowedRowWords(c.vocab_size);
  sh.adjust_entries = T;  // one at least for each penalised row; more grow their room by powers of two
  sh.top = kMaxTopLogprobs;
  sh.decode_splits = DecodeSplitCount(T, c.num_kv_heads, c.head_dim, RoundUpPow2(kv_.total_blocks()) * kv_.block_size(),
                                      c.sliding_window ? *c.sliding_window : 0);
  sh.peak = T;
  sh.total = T * comm_.size();
  return sh;
}

absl::Status GpuEngine::ReserveSteps() {
  const int64_t max_tokens = std::max<int64_t>(1, opts_.max_step_tokens);
  size_t free_before = 0, free_after = 0, total = 0;
  try {
    MOE_CUDA_CHECK(cudaDeviceSynchronize());
    MOE_CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
    for (int64_t T = max_tokens; T >= 1; --T) Reserve(LargestStep(T));
    MOE_CUDA_CHECK(cudaDeviceSynchronize());
    MOE_CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  } catch (const CudaError& err) {
    (void)cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrCat(
        "GPU engine: cannot allocate the buffers of steps of up to ", max_tokens,
        " tokens (max_step_tokens; moe-worker --max-batch-tokens) beside the weights and the KV cache: ", err.what()));
  } catch (const std::exception& err) {
    return absl::InternalError(absl::StrCat("GPU engine: sizing the step buffers: ", err.what()));
  }
  reserved_step_bytes_ = static_cast<int64_t>(free_before) - static_cast<int64_t>(free_after);
  if (opts_.verbose) {
    std::fprintf(stderr, "[rank %d] step buffers for up to %lld tokens: %.2f GB\n", comm_.rank(),
                 static_cast<long long>(max_tokens), static_cast<double>(reserved_step_bytes_) / 1e9);
  }
  return absl::OkStatus();
}

void GpuEngine::Forward(const std::vector<SequenceChunk>& chunks, StepOutput& out) {
  const ModelConfig& c = config_;
  const int64_t V = c.vocab_size, L = c.num_layers, E = c.num_experts;
  const cudaStream_t s = stream_.get();
  StepShape sh;
  sh.S = static_cast<int64_t>(chunks.size());
  sh.allowed_words = AllowedRowWords(V);
  int64_t max_blocks = 1;
  std::vector<int64_t> chunk_rows;
  for (const SequenceChunk& ch : chunks) {
    const int64_t n = static_cast<int64_t>(ch.tokens.size());
    chunk_rows.push_back(n);
    sh.T += n;
    sh.wanted += WantedRows(ch, 0).rows;
    sh.picks += ch.sample_next ? 1 : 0;
    sh.allowed += ch.sample_next && !ch.sample_next->allowed.empty() ? 1 : 0;
    if (ch.sample_next) sh.top = std::max<int64_t>(sh.top, ch.sample_next->top_logprobs);
    if (ch.score) {  // every row scored by the sampling kernel: a greedy pick with a target
      sh.picks += n;
      sh.top = std::max<int64_t>(sh.top, ch.score->top);
    }
    if (ch.sample_next && !ch.sample_next->adjust.empty()) {
      ++sh.adjusted;
      sh.adjust_entries += static_cast<int64_t>(ch.sample_next->adjust.size());
    }
    max_blocks = std::max<int64_t>(max_blocks, static_cast<int64_t>(kv_.blocks(ch.seq_id).size()));
  }
  // Block tables one power of two wide: a decode batch keeps its graph for many steps as it grows.
  sh.pitch = RoundUpPow2(max_blocks);
  PlanAttentionTiles(chunk_rows.data(), sh.S, tile_rows_, narrow_tiles_, wide_tiles_);
  sh.narrow = static_cast<int64_t>(narrow_tiles_.size() / 2);
  sh.wide = static_cast<int64_t>(wide_tiles_.size() / 2);
  sh.decode_splits = DecodeSplitCount(sh.narrow, c.num_kv_heads, c.head_dim, sh.pitch * kv_.block_size(),
                                      c.sliding_window ? *c.sliding_window : 0);
  sh.peak = sh.total = sh.T;
  if (comm_.size() > 1) {
    sh.total = out.global_rows;
    if (moe_->ExchangesOnDevice()) {  // the device exchange's blocks hold the largest rank's rows
      std::vector<int64_t> peak = {sh.T};
      comm_.AllReduceMax(peak);
      sh.peak = peak[0];
    }
  }
  if (Reserve(sh)) DropGraphs();

  // The step's inputs, one host-to-device copy: ids [T], positions [T], row -> chunk [T],
  // block tables [S, pitch], wanted rows [wanted] (the host's, then the sampled ones), attention
  // tiles (narrow, wide) [2 each], sampling parameters [picks], allowed-id bits [allowed, words],
  // penalised rows [adjusted, 3]; their adjustments in h_adjustments_.
  const int64_t T = sh.T, S = sh.S;
  int32_t* ids = h_inputs_.get();
  int32_t* pos = ids + T;
  int32_t* row_seq = pos + T;
  int32_t* tables = row_seq + T;
  int32_t* wanted_rows = tables + S * sh.pitch;
  int32_t* tiles = wanted_rows + sh.wanted;
  auto* pick_params = reinterpret_cast<SampleRowParams*>(tiles + 2 * sh.narrow + 2 * sh.wide);
  int32_t* allowed_bits = reinterpret_cast<int32_t*>(pick_params + sh.picks);
  int32_t* adjust_rows = allowed_bits + sh.allowed * sh.allowed_words;
  LogitAdjustment* adjustments = h_adjustments_.get();
  std::vector<int64_t> starts(static_cast<size_t>(S));
  int64_t row = 0, w = 0, p = 0, a = 0, ar = 0, entries = 0;
  for (int64_t ci = 0; ci < S; ++ci) {
    const SequenceChunk& ch = chunks[ci];
    const int64_t n = static_cast<int64_t>(ch.tokens.size());
    starts[ci] = kv_.length(ch.seq_id);
    for (int64_t i = 0; i < n; ++i) {
      ids[row + i] = ch.tokens[i];
      pos[row + i] = static_cast<int32_t>(starts[ci] + i);
      row_seq[row + i] = static_cast<int32_t>(ci);
    }
    const std::vector<int32_t>& blocks = kv_.blocks(ch.seq_id);
    std::fill(tables + ci * sh.pitch, tables + (ci + 1) * sh.pitch, 0);
    std::copy(blocks.begin(), blocks.end(), tables + ci * sh.pitch);
    if (const auto& next = ch.sample_next) {
      wanted_rows[sh.wanted - sh.picks + p] = static_cast<int32_t>(row + n - 1);
      int32_t allowed_row = -1;
      if (!next->allowed.empty()) {  // TokenMask's 64-bit words are the kernel's 32-bit words in pairs
        static_assert(std::endian::native == std::endian::little);
        std::memcpy(allowed_bits + a * sh.allowed_words, next->allowed.data(), sizeof(int32_t) * sh.allowed_words);
        allowed_row = static_cast<int32_t>(a++);
      }
      int32_t adjusted_row = -1;
      if (!next->adjust.empty()) {
        const int64_t n_adjust = static_cast<int64_t>(next->adjust.size());
        adjust_rows[3 * ar] = static_cast<int32_t>(p);
        adjust_rows[3 * ar + 1] = static_cast<int32_t>(entries);
        adjust_rows[3 * ar + 2] = static_cast<int32_t>(n_adjust);
        std::copy(next->adjust.begin(), next->adjust.end(), adjustments + entries);
        entries += n_adjust;
        adjusted_row = static_cast<int32_t>(ar++);
      }
      pick_params[p++] =
          ToSampleRowParams(next->params, next->step, allowed_row, adjusted_row, static_cast<int32_t>(next->top_logprobs));
    } else if (const auto& score = ch.score) {
      static const SamplingParams kGreedy{.temperature = 0.0f};
      for (int64_t i = 0; i < n; ++i) {
        wanted_rows[sh.wanted - sh.picks + p] = static_cast<int32_t>(row + i);
        pick_params[p++] = ToSampleRowParams(kGreedy, 0, -1, -1, static_cast<int32_t>(score->top), score->targets[i]);
      }
    } else {
      for (int64_t i = n - WantedRows(ch, 0).rows; i < n; ++i) wanted_rows[w++] = static_cast<int32_t>(row + i);
    }
    row += n;
  }
  // Causal prefill tiles in their natural order put heavy blocks together on the same SMs.
  BalanceWideTiles(wide_tiles_, pos, c.sliding_window ? *c.sliding_window : 0, c.num_kv_heads, c.head_dim);
  std::copy(narrow_tiles_.begin(), narrow_tiles_.end(), tiles);
  std::copy(wide_tiles_.begin(), wide_tiles_.end(), tiles + narrow_tiles_.size());

  routing_.assign(opts_.record_routing ? static_cast<size_t>(L) : 0, {});
  const bool local = comm_.size() == 1 && !opts_.force_host_staging;
  // Recording the routing takes the host-count exchange (and syncs on every path).
  const bool device_only = moe_->DeviceOnly(sh.rows()) && !opts_.record_routing;
  const bool device_exchange = moe_->DeviceExchange(sh.rows()) && !opts_.record_routing;
  // The local path and the device exchange count the routed rows on the device.
  const bool count_experts = opts_.collect_load_stats && (local || device_exchange);
  const bool graph = opts_.cuda_graphs && device_only && !profiler_.enabled();
  if (sh.adjust_entries > 0) {  // before the step's work, graph or not
    MOE_CUDA_CHECK(cudaMemcpyAsync(adjustments_.get(), h_adjustments_.get(), sizeof(LogitAdjustment) * sh.adjust_entries,
                                   cudaMemcpyHostToDevice, s));
  }
  host_times_.prepare_ms += LapMs();
  if (graph) {
    auto it = graphs_.find(sh.key());
    if (it == graphs_.end()) {
      if (graphs_.size() >= 256) DropGraphs();  // a bound on what shapes a long run can collect
      cudaGraph_t g = nullptr;
      MOE_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
      try {
        Enqueue(sh, count_experts);
      } catch (...) {
        cudaStreamEndCapture(s, &g);  // leave the stream usable
        if (g != nullptr) cudaGraphDestroy(g);
        throw;
      }
      MOE_CUDA_CHECK(cudaStreamEndCapture(s, &g));
      cudaGraphExec_t exec = nullptr;
      const cudaError_t err = cudaGraphInstantiate(&exec, g, 0);
      cudaGraphDestroy(g);
      MOE_CUDA_CHECK(err);
      it = graphs_.emplace(sh.key(), exec).first;
      ++graphs_captured_;
    }
    MOE_CUDA_CHECK(cudaGraphLaunch(it->second, s));
    ++graph_launches_;
  } else {
    Enqueue(sh, count_experts);
  }
  // The output rows are allocated while the device works: first touching fresh pages costs more
  // than copying into them (about 3 ms for the 8 MB of a batch of 64).
  for (int64_t ci = 0; ci < S; ++ci) {
    out.chunks.push_back(WantedRows(chunks[ci], starts[ci]));
    if (!chunks[ci].sample_next && !chunks[ci].score) {
      out.chunks.back().logits.resize(static_cast<size_t>(out.chunks.back().rows * V));
    }
  }
  host_times_.enqueue_ms += LapMs();
  MOE_CUDA_CHECK(cudaStreamSynchronize(s));
  host_times_.wait_ms += LapMs();

  if (count_experts) {
    std::vector<int64_t> counts(static_cast<size_t>(E));
    std::vector<int64_t> rank_rows(static_cast<size_t>(comm_.size()));
    for (int64_t l = 0; l < L; ++l) {
      std::fill(rank_rows.begin(), rank_rows.end(), 0);
      for (int64_t e = 0; e < E; ++e) {
        counts[e] = h_step_counts_.get()[l * E + e];
        rank_rows[plan_.replicas(l, e)[0]] += counts[e];  // one rank per expert on these paths
      }
      stats_.AddLocalCounts(l, counts, rank_rows);
    }
  }
  w = 0;
  p = 0;
  const int32_t* picks = h_picks_.get();  // laid out as StepShape's *_at() say
  auto top_of = [&](int64_t pick, int64_t n_top) {
    std::vector<TokenPick> top;
    for (int64_t j = 0; j < std::min<int64_t>(n_top, V); ++j) {
      top.push_back({picks[sh.top_ids_at() + pick * sh.top + j],
                     std::bit_cast<float>(picks[sh.top_logprobs_at() + pick * sh.top + j])});
    }
    return top;
  };
  for (size_t ci = 0; ci < out.chunks.size(); ++ci) {
    ChunkLogits& cl = out.chunks[ci];
    if (chunks[ci].sample_next) {
      cl.token = picks[p];
      cl.token_logprob = std::bit_cast<float>(picks[sh.pick_logprobs_at() + p]);
      cl.top = top_of(p, chunks[ci].sample_next->top_logprobs);
      cl.rows = 0;
      ++p;
      continue;
    }
    if (const auto& score = chunks[ci].score) {
      for (int64_t r = 0; r < cl.rows; ++r, ++p) {
        RowScore& rs = cl.scores.emplace_back();
        rs.top = top_of(p, score->top);
        if (score->targets[static_cast<size_t>(r)] < 0) continue;
        rs.logprob = std::bit_cast<float>(picks[sh.target_logprobs_at() + p]);
        rs.rank = static_cast<uint32_t>(picks[sh.target_ranks_at() + p]);
      }
      continue;
    }
    std::copy(h_logits_.get() + w * V, h_logits_.get() + (w + cl.rows) * V, cl.logits.begin());
    w += cl.rows;
  }
}

void GpuEngine::Enqueue(const StepShape& sh, bool count_experts) {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, V = c.vocab_size, qd = c.q_dim(), qkvd = qd + 2 * c.kv_dim();
  const int64_t T = sh.T, L = c.num_layers, E = c.num_experts;
  const cudaStream_t s = stream_.get();
  MOE_CUDA_CHECK(cudaMemcpyAsync(inputs_.get(), h_inputs_.get(), sizeof(int32_t) * sh.inputs(),
                                 cudaMemcpyHostToDevice, s));
  const int32_t* d_ids = inputs_.get();
  const int32_t* d_pos = d_ids + T;
  const int32_t* d_row_seq = d_pos + T;
  const int32_t* d_tables = d_row_seq + T;
  const int32_t* d_wanted = d_tables + sh.S * sh.pitch;
  const int32_t* d_narrow = d_wanted + sh.wanted;
  const int32_t* d_wide = d_narrow + 2 * sh.narrow;
  const auto* d_pick_params = reinterpret_cast<const SampleRowParams*>(d_wide + 2 * sh.wide);
  const auto* d_allowed = reinterpret_cast<const uint32_t*>(d_pick_params + sh.picks);
  const auto* d_adjust_rows = reinterpret_cast<const int32_t*>(d_allowed + sh.allowed * sh.allowed_words);
  if (count_experts) MOE_CUDA_CHECK(cudaMemsetAsync(step_counts_.get(), 0, sizeof(int32_t) * L * E, s));
  profiler_.StepStart(s);

  EmbeddingGather(weights_->embed, d_ids, T, H, x_.get(), s);
  const int64_t layer_elems = kv_.total_blocks() * kv_.block_size() * c.kv_dim();
  const float scale = AttentionScale(c);
  const int64_t window = c.sliding_window ? *c.sliding_window : 0;
  const float eps = static_cast<float>(c.rms_norm_eps);
  // The attention norm of layer 0 here; every later one, and the final norm, in the combine kernel
  // of the MoE layer before it. Each MoE layer's own norm runs inside it (with its router logits).
  AddRmsNorm(x_.get(), nullptr, weights_->attention[0].norm, T, H, eps, hn_.get(), s);
  for (int64_t l = 0; l < L; ++l) {
    const DeviceAttentionWeights& a = weights_->attention[l];
    profiler_.Mark(l, Boundary::kLayerStart, s);
    gemm_.Linear(hn_.get(), T, H, a.wqkv, qkvd, qkv_.get());
    PagedKv kv{keys_.get() + l * layer_elems, values_.get() + l * layer_elems, d_tables, sh.pitch,
               kv_.block_size(), c.num_kv_heads, c.head_dim};
    // This step's keys and values go into the cache first: its queries attend to them. A decode
    // step of up to kFusedRopeRows rows (one-row tiles only) does both in one kernel where the head
    // dim allows: its blocks load their earlier keys while the QKV product streams, beside its
    // CTAs (one token tile: two an SM leave room). With more rows the product's CTAs fill the SMs,
    // the blocks start when it ends, and the separate RoPE kernel hides their address loads better.
    const DecodeSplit split{sh.decode_splits, sh.pitch * kv_.block_size(), attn_partial_.get(), attn_counters_.get()};
    if (sh.wide > 0 || T > kFusedRopeRows ||
        !DecodeRopeAttention(qkv_.get(), d_row_seq, d_pos, d_narrow, sh.narrow, c.num_heads,
                             inv_freq_.get(), kv, window, scale, attn_.get(), s, &split)) {
      QkvRopeKv(qkv_.get(), d_row_seq, d_pos, T, c.num_heads, inv_freq_.get(), kv, q_.get(), s);
      PagedAttention(q_.get(), d_row_seq, d_pos, d_narrow, sh.narrow, 1, c.num_heads, kv, window, scale, attn_.get(),
                     s, &split);
      PagedAttention(q_.get(), d_row_seq, d_pos, d_wide, sh.wide, tile_rows_, c.num_heads, kv, window, scale,
                     attn_.get(), s);
    }
    gemm_.LinearF32(attn_.get(), T, qd, a.wo, H, x_.get(), /*accumulate=*/true);
    profiler_.Mark(l, Boundary::kAttentionEnd, s);

    const NextNorm next{l + 1 < L ? weights_->attention[l + 1].norm : weights_->final_norm, eps, hn_.get()};
    moe_->Forward(l, weights_->moe[l], x_.get(), hn_.get(), T, profiler_,
                  opts_.record_routing ? &routing_[l] : nullptr, count_experts ? step_counts_.get() + l * E : nullptr,
                  next);
  }

  // The final norm ran on all rows with the last combine (cheap next to the LM head); the LM head
  // on the wanted rows.
  GatherRows(hn_.get(), d_wanted, sh.wanted, H, wanted_.get(), s);
  gemm_.LinearF32(wanted_.get(), sh.wanted, H, weights_->lm_head, V, logits_.get());
  // The rows the host wants whole, then only the picks of the sampled ones.
  const int64_t whole = sh.wanted - sh.picks;
  if (whole > 0) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(h_logits_.get(), logits_.get(), sizeof(float) * whole * V,
                                   cudaMemcpyDeviceToHost, s));
  }
  if (sh.picks > 0) {
    AdjustRows(logits_.get() + whole * V, V, d_adjust_rows, sh.adjusted, adjustments_.get(), adjusted_.get(), s);
    SampleRows(logits_.get() + whole * V, sh.picks, V, d_pick_params, sh.allowed > 0 ? d_allowed : nullptr,
               sh.adjusted > 0 ? adjusted_.get() : nullptr, picks_.get(),
               reinterpret_cast<float*>(picks_.get() + sh.pick_logprobs_at()), s, picks_.get() + sh.top_ids_at(),
               reinterpret_cast<float*>(picks_.get() + sh.top_logprobs_at()), sh.top,
               reinterpret_cast<float*>(picks_.get() + sh.target_logprobs_at()), picks_.get() + sh.target_ranks_at());
    MOE_CUDA_CHECK(cudaMemcpyAsync(h_picks_.get(), picks_.get(), sizeof(int32_t) * sh.pick_words(),
                                   cudaMemcpyDeviceToHost, s));
  }
  if (count_experts) {
    MOE_CUDA_CHECK(cudaMemcpyAsync(h_step_counts_.get(), step_counts_.get(), sizeof(int32_t) * L * E,
                                   cudaMemcpyDeviceToHost, s));
  }
  profiler_.StepEnd(s, L);
}

}  // namespace moe::gpu
