#include "worker/server/batch_planner.h"

#include <algorithm>

#include "common/status.h"

namespace moe {

void BatchPlanner::Enqueue(uint64_t seq_id, int64_t worst_case_positions, int64_t positions_now, int32_t priority) {
  MOE_CHECK(demand_.count(seq_id) == 0, "sequence ", seq_id, " enqueued twice");
  MOE_CHECK(EverFits(worst_case_positions), "sequence ", seq_id, " can never fit the KV cache");
  demand_[seq_id] = Demand{BlocksFor(worst_case_positions), positions_now, priority};
  const auto after = std::upper_bound(waiting_.begin(), waiting_.end(), priority,
                                      [&](int32_t p, uint64_t w) { return p < demand_.at(w).priority; });
  waiting_.insert(after, seq_id);
}

std::optional<uint64_t> BatchPlanner::next_waiting() const {
  if (waiting_.empty()) return std::nullopt;
  return waiting_.front();
}

int64_t BatchPlanner::CommittedBlocks(const Demand& d) const {
  if (mode_ == KvAdmission::kReserve) return d.worst_blocks;
  return std::min(d.worst_blocks, BlocksFor(d.positions_now + 1));
}

int64_t BatchPlanner::watermark_blocks() const { return std::max<int64_t>(1, kv_.total_blocks() / 100); }

int64_t BatchPlanner::committed_blocks() const {
  int64_t committed = kv_.used_blocks();
  for (uint64_t id : running_) {
    const int64_t engine_id = static_cast<int64_t>(id);
    const int64_t held = kv_.HasSequence(engine_id) ? static_cast<int64_t>(kv_.blocks(engine_id).size()) : 0;
    committed += std::max<int64_t>(0, CommittedBlocks(demand_.at(id)) - held);
  }
  return committed;
}

bool BatchPlanner::AdmitNext(int64_t shared_blocks_in_use) {
  if (waiting_.empty()) return false;
  const uint64_t id = waiting_.front();
  const int64_t need = CommittedBlocks(demand_.at(id)) - std::max<int64_t>(0, shared_blocks_in_use);
  const int64_t committed = committed_blocks();
  const bool fits = mode_ == KvAdmission::kReserve
                        ? committed + need <= kv_.total_blocks()
                        : committed + need + (running_.empty() ? 0 : watermark_blocks()) <= kv_.total_blocks();
  if (!fits) return false;
  waiting_.pop_front();
  running_.push_back(id);
  return true;
}

uint64_t BatchPlanner::Victim() const {
  MOE_CHECK(!running_.empty(), "no running sequence to preempt");
  size_t victim = running_.size() - 1;
  for (size_t i = running_.size() - 1; i-- > 0;) {
    if (demand_.at(running_[i]).priority > demand_.at(running_[victim]).priority) victim = i;
  }
  return running_[victim];
}

void BatchPlanner::Preempt(uint64_t seq_id, int64_t positions_now) {
  const auto r = std::find(running_.begin(), running_.end(), seq_id);
  MOE_CHECK(r != running_.end(), "sequence ", seq_id, " is not running");
  running_.erase(r);
  Demand& d = demand_.at(seq_id);
  d.positions_now = positions_now;
  const auto before = std::lower_bound(waiting_.begin(), waiting_.end(), d.priority,
                                       [&](uint64_t w, int32_t p) { return demand_.at(w).priority < p; });
  waiting_.insert(before, seq_id);
}

int64_t BatchPlanner::StepBlocks(const std::vector<int64_t>& tokens) const {
  MOE_CHECK(tokens.size() == running_.size(), "StepBlocks: ", tokens.size(), " counts for ", running_.size(),
            " running sequences");
  int64_t blocks = 0;
  for (size_t i = 0; i < running_.size(); ++i) {
    if (tokens[i] == 0) continue;
    blocks += kv_.GrowthBlocks(static_cast<int64_t>(running_[i]), tokens[i]);
  }
  return blocks;
}

void BatchPlanner::Remove(uint64_t seq_id) {
  auto it = demand_.find(seq_id);
  if (it == demand_.end()) return;
  if (auto r = std::find(running_.begin(), running_.end(), seq_id); r != running_.end()) {
    running_.erase(r);
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq_id));
  }
  demand_.erase(it);
}

std::vector<int64_t> PlanStepTokens(const std::vector<int64_t>& prompt_remaining, int64_t max_batch_tokens) {
  std::vector<int64_t> tokens(prompt_remaining.size(), 0);
  int64_t budget = std::max<int64_t>(1, max_batch_tokens);
  // Decoding sequences first: one token each keeps their inter-token latency flat while long
  // prompts are prefilled in pieces.
  for (size_t i = 0; i < prompt_remaining.size() && budget > 0; ++i) {
    if (prompt_remaining[i] == 0) {
      tokens[i] = 1;
      --budget;
    }
  }
  for (size_t i = 0; i < prompt_remaining.size() && budget > 0; ++i) {
    if (prompt_remaining[i] > 0) {
      tokens[i] = std::min(prompt_remaining[i], budget);
      budget -= tokens[i];
    }
  }
  return tokens;
}

}  // namespace moe
