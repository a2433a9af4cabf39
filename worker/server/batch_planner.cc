#include "worker/server/batch_planner.h"

#include <algorithm>

#include "common/status.h"

namespace moe {

void BatchPlanner::Enqueue(uint64_t seq_id, int64_t worst_case_positions) {
  MOE_CHECK(blocks_.count(seq_id) == 0, "sequence ", seq_id, " enqueued twice");
  MOE_CHECK(EverFits(worst_case_positions), "sequence ", seq_id, " can never fit the KV cache");
  blocks_[seq_id] = BlocksFor(worst_case_positions);
  waiting_.push_back(seq_id);
}

std::optional<uint64_t> BatchPlanner::next_waiting() const {
  if (waiting_.empty()) return std::nullopt;
  return waiting_.front();
}

int64_t BatchPlanner::committed_blocks() const {
  int64_t committed = kv_.used_blocks();
  for (uint64_t id : running_) {
    const int64_t engine_id = static_cast<int64_t>(id);
    const int64_t held = kv_.HasSequence(engine_id) ? static_cast<int64_t>(kv_.blocks(engine_id).size()) : 0;
    committed += std::max<int64_t>(0, blocks_.at(id) - held);
  }
  return committed;
}

bool BatchPlanner::AdmitNext(int64_t shared_blocks_in_use) {
  if (waiting_.empty()) return false;
  const uint64_t id = waiting_.front();
  const int64_t need = blocks_.at(id) - std::max<int64_t>(0, shared_blocks_in_use);
  if (committed_blocks() + need > kv_.total_blocks()) return false;
  waiting_.pop_front();
  running_.push_back(id);
  return true;
}

void BatchPlanner::Remove(uint64_t seq_id) {
  auto it = blocks_.find(seq_id);
  if (it == blocks_.end()) return;
  if (auto r = std::find(running_.begin(), running_.end(), seq_id); r != running_.end()) {
    running_.erase(r);
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq_id));
  }
  blocks_.erase(it);
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
