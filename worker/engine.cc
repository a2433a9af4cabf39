#include "worker/engine.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "worker/cpu/ops.h"
#include "worker/model/rope.h"
#include "worker/model/safetensors.h"
#include "worker/sampler.h"

namespace moe {

Engine::Engine(const ModelConfig& c, Communicator& comm, const PlacementPlan& plan, const EngineOptions& opts)
    : config_(c), comm_(comm), plan_(plan), opts_(opts), stats_(c.num_layers, c.num_experts, comm.size()) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Load(const std::string& model_dir, Communicator& comm,
                                                     const PlacementPlan& plan, const EngineOptions& opts) {
  MOE_ASSIGN_OR_RETURN(ModelConfig c, ModelConfig::FromModelDir(model_dir));
  MOE_RETURN_IF_ERROR(CheckEngineSetup(c, plan, comm, opts.kv_block_size, opts.kv_tokens));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(model_dir));
  std::unique_ptr<Engine> e(new Engine(c, comm, plan, opts));
  const int rank = comm.rank();
  auto progress = [&](int64_t done, int64_t total) {
    if (opts.verbose) std::fprintf(stderr, "[rank %d] loading %s: layer %lld/%lld\n", rank, model_dir.c_str(),
                                   static_cast<long long>(done), static_cast<long long>(total));
    return opts.keep_loading ? opts.keep_loading() : absl::OkStatus();
  };
  MOE_ASSIGN_OR_RETURN(e->weights_,
                       LoadWeights(c, *ckpt, [&](int64_t l, int64_t x) { return plan.holds(l, x, rank); }, progress));
  const int64_t blocks = (opts.kv_tokens + opts.kv_block_size - 1) / opts.kv_block_size;
  e->kv_ = std::make_unique<KvCache>(c, opts.kv_block_size, blocks);
  e->moe_ = std::make_unique<MoeLayer>(e->config_, e->plan_, comm, e->stats_);
  e->inv_freq_ = ComputeRopeFrequencies(c).inv_freq;
  return e;
}

absl::Status Engine::AddSequence(int64_t seq_id) { return kv_->AddSequence(seq_id); }
void Engine::FreeSequence(int64_t seq_id) { kv_->FreeSequence(seq_id); }

absl::StatusOr<StepOutput> Engine::Step(const std::vector<SequenceChunk>& chunks) {
  StepOutput out;
  MOE_ASSIGN_OR_RETURN(out.global_rows, BeginStep(config_, comm_, kv_->allocator(), chunks));
  if (out.global_rows == 0) return out;
  Forward(chunks, out);
  AdvanceLengths(kv_->allocator(), chunks);
  if (opts_.collect_load_stats) stats_.FinishStep(comm_);
  return out;
}

void Engine::Attention(int64_t layer, const std::vector<SequenceChunk>& chunks, const std::vector<int64_t>& starts) {
  const ModelConfig& c = config_;
  const int64_t hd = c.head_dim, kvd = c.kv_dim(), qd = c.q_dim(), hpk = c.heads_per_kv();
  const float scale = AttentionScale(c);
  int64_t row = 0;
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const SequenceChunk& ch = chunks[ci];
    const int64_t n = static_cast<int64_t>(ch.tokens.size()), start = starts[ci];
    // Write this chunk's keys and values first: its queries attend to them.
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(kv_->key(layer, ch.seq_id, start + i), k_.data() + (row + i) * kvd, sizeof(float) * kvd);
      std::memcpy(kv_->value(layer, ch.seq_id, start + i), v_.data() + (row + i) * kvd, sizeof(float) * kvd);
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t pos = start + i;
      // Visible keys: lo <= j <= pos, where a sliding window w keeps j > pos - w.
      const int64_t lo = c.sliding_window ? std::max<int64_t>(0, pos - *c.sliding_window + 1) : 0;
      const int64_t n_keys = pos - lo + 1;
      scratch_.resize(static_cast<size_t>(n_keys));
      for (int64_t h = 0; h < c.num_heads; ++h) {
        const int64_t g = h / hpk;
        cpu::AttendOne(
            q_.data() + (row + i) * qd + h * hd, hd, n_keys,
            [&](int64_t j) { return kv_->key(layer, ch.seq_id, lo + j) + g * hd; },
            [&](int64_t j) { return kv_->value(layer, ch.seq_id, lo + j) + g * hd; }, scale, scratch_.data(),
            attn_.data() + (row + i) * qd + h * hd);
      }
    }
    row += n;
  }
}

void Engine::Forward(const std::vector<SequenceChunk>& chunks, StepOutput& out) {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden_size, V = c.vocab_size;
  int64_t T = 0;
  std::vector<int64_t> starts;
  positions_.clear();
  for (const SequenceChunk& ch : chunks) {
    starts.push_back(kv_->length(ch.seq_id));
    for (size_t i = 0; i < ch.tokens.size(); ++i) positions_.push_back(starts.back() + static_cast<int64_t>(i));
    T += static_cast<int64_t>(ch.tokens.size());
  }
  x_.resize(static_cast<size_t>(T * H));
  hn_.resize(x_.size());
  moe_out_.resize(x_.size());
  q_.resize(static_cast<size_t>(T * c.q_dim()));
  attn_.resize(q_.size());
  k_.resize(static_cast<size_t>(T * c.kv_dim()));
  v_.resize(k_.size());

  int64_t row = 0;
  for (const SequenceChunk& ch : chunks) {
    for (int32_t tok : ch.tokens) std::memcpy(x_.data() + (row++) * H, weights_.embed.data() + tok * H, sizeof(float) * H);
  }
  routing_.assign(opts_.record_routing ? static_cast<size_t>(c.num_layers) : 0, {});

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const AttentionWeights& a = weights_.attention[l];
    cpu::RmsNorm(x_.data(), T, H, a.norm.data(), c.rms_norm_eps, hn_.data());
    cpu::Linear(hn_.data(), T, H, a.wq.data(), c.q_dim(), q_.data());
    cpu::Linear(hn_.data(), T, H, a.wk.data(), c.kv_dim(), k_.data());
    cpu::Linear(hn_.data(), T, H, a.wv.data(), c.kv_dim(), v_.data());
    cpu::ApplyRope(q_.data(), T, c.num_heads, c.head_dim, positions_.data(), inv_freq_);
    cpu::ApplyRope(k_.data(), T, c.num_kv_heads, c.head_dim, positions_.data(), inv_freq_);
    Attention(l, chunks, starts);
    cpu::Linear(attn_.data(), T, c.q_dim(), a.wo.data(), H, x_.data(), /*accumulate=*/true);

    const MoeWeights& m = weights_.moe[l];
    cpu::RmsNorm(x_.data(), T, H, m.norm.data(), c.rms_norm_eps, hn_.data());
    moe_->Forward(l, m, hn_.data(), T, moe_out_.data(), opts_.record_routing ? &routing_[l] : nullptr);
    for (int64_t i = 0; i < T * H; ++i) x_[i] += moe_out_[i];
  }

  // Final norm and LM head on the rows whose logits are wanted.
  row = 0;
  for (size_t ci = 0; ci < chunks.size(); ++ci) {
    const int64_t n = static_cast<int64_t>(chunks[ci].tokens.size());
    ChunkLogits cl = WantedRows(chunks[ci], starts[ci]);
    const int64_t first = n - cl.rows;
    cpu::RmsNorm(x_.data() + (row + first) * H, cl.rows, H, weights_.final_norm.data(), c.rms_norm_eps,
                 hn_.data());
    cl.logits.resize(static_cast<size_t>(cl.rows * V));
    cpu::Linear(hn_.data(), cl.rows, H, weights_.lm_head_data(), V, cl.logits.data());
    if (const auto& next = chunks[ci].sample_next) {  // the pick instead of the row
      const TokenPick pick = PickToken(cl.logits, next->params, next->step, next->allowed, next->adjust);
      cl.token = pick.token;
      cl.token_logprob = pick.logprob;
      if (next->top_logprobs > 0) cl.top = TopTokens(cl.logits, next->top_logprobs);
      cl.logits.clear();
      cl.rows = 0;
    } else if (const auto& score = chunks[ci].score) {  // the rows' scores instead of the rows
      for (int64_t r = 0; r < cl.rows; ++r) {
        cl.scores.push_back(ScoreRow(std::span<const float>(cl.logits.data() + r * V, static_cast<size_t>(V)),
                                     score->targets[static_cast<size_t>(first + r)], score->top));
      }
      cl.logits.clear();
    }
    out.chunks.push_back(std::move(cl));
    row += n;
  }
}

}  // namespace moe
