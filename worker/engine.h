// The model engine of one rank: weights (replicated parts + this rank's experts), the paged KV
// cache of this rank's sequences, and one forward step that carries several sequences at different
// positions at once (some prefilling, some decoding).
//
// Step() is a collective over the engine's Communicator: all ranks call it in lock step, each with
// its own sequences (possibly none). It starts with a small all-reduce (the step header) so that
// every rank agrees whether there is work and whether any rank rejected its input; input is
// checked before that, so a bad request on one rank fails the step everywhere instead of hanging.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "coordinator/placement.h"
#include "worker/comm/communicator.h"
#include "worker/kv_cache.h"
#include "worker/model/config.h"
#include "worker/model/weights.h"
#include "worker/moe/load_stats.h"
#include "worker/moe/moe_layer.h"
#include "worker/step_engine.h"

namespace moe {

struct EngineOptions {
  int64_t kv_block_size = 16;
  int64_t kv_tokens = 16384;   // KV cache capacity in token positions (rounded up to whole blocks)
  bool record_routing = false;  // keep the last step's router logits and routing per layer
  bool collect_load_stats = true;
  bool verbose = false;  // print a load progress line to stderr
  // Asked after each layer of the load; an error ends the load with it (moe-worker: the job ended
  // meanwhile, worker/server/load_watch.h). Unset: the load always goes on.
  std::function<absl::Status()> keep_loading;
};

class Engine final : public StepEngine {
 public:
  // Loads config.json and, from the checkpoint, the replicated tensors and the experts `plan` gives
  // to comm.rank(). The plan must match the config and comm.size().
  static absl::StatusOr<std::unique_ptr<Engine>> Load(const std::string& model_dir, Communicator& comm,
                                                      const PlacementPlan& plan, const EngineOptions& opts);

  absl::Status AddSequence(int64_t seq_id) override;
  void FreeSequence(int64_t seq_id) override;
  bool HasSequence(int64_t seq_id) const override { return kv_->HasSequence(seq_id); }
  int64_t SequenceLength(int64_t seq_id) const override { return kv_->length(seq_id); }
  void EnablePrefixCache() override { kv_->allocator().EnablePrefixCache(); }
  int64_t AttachCachedPrefix(int64_t seq_id, std::span<const int32_t> prompt, uint64_t root) override {
    return kv_->allocator().AttachCachedPrefix(seq_id, prompt, root);
  }

  // The collective forward step (see above). On error nothing is changed on any rank.
  absl::StatusOr<StepOutput> Step(const std::vector<SequenceChunk>& chunks) override;

  const ModelConfig& config() const override { return config_; }
  const PlacementPlan& plan() const { return plan_; }
  Communicator& comm() override { return comm_; }
  const KvCache& kv_cache() const { return *kv_; }
  const KvBlockAllocator& kv_blocks() const override { return kv_->allocator(); }
  std::vector<uint64_t> TakeEvictedPrefixHashes() override { return kv_->allocator().TakeEvictedHashes(); }
  const LoadStats& load_stats() const override { return stats_; }
  LoadStats& load_stats() { return stats_; }
  int64_t weight_bytes() const override { return weights_.bytes(); }
  // Per layer, for the last step's local rows (only with record_routing).
  const std::vector<MoeLayer::Record>& last_routing() const { return routing_; }

 private:
  Engine(const ModelConfig& c, Communicator& comm, const PlacementPlan& plan, const EngineOptions& opts);
  void Forward(const std::vector<SequenceChunk>& chunks, StepOutput& out);
  void Attention(int64_t layer, const std::vector<SequenceChunk>& chunks, const std::vector<int64_t>& starts);

  ModelConfig config_;
  Communicator& comm_;
  PlacementPlan plan_;
  EngineOptions opts_;
  ModelWeights weights_;
  std::unique_ptr<KvCache> kv_;
  LoadStats stats_;
  std::unique_ptr<MoeLayer> moe_;
  std::vector<double> inv_freq_;
  std::vector<MoeLayer::Record> routing_;
  // Activations, reused across steps.
  std::vector<float> x_, hn_, q_, k_, v_, attn_, moe_out_, scratch_;
  std::vector<int64_t> positions_;
};

}  // namespace moe
