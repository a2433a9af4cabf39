#include "coordinator/scheduler.h"

#include <algorithm>

namespace moe {

Scheduler::Scheduler(SchedulerLimits limits, int world_size) : limits_(limits) { Reset(world_size); }

absl::Status Scheduler::Enqueue(const std::vector<SequenceDemand>& seqs) {
  if (waiting() + static_cast<int64_t>(seqs.size()) > limits_.max_waiting) {
    return absl::ResourceExhaustedError(absl::StrCat("queue full (", waiting(), " waiting)"));
  }
  waiting_.insert(waiting_.end(), seqs.begin(), seqs.end());
  return absl::OkStatus();
}

int Scheduler::PickRank() const {
  int best = -1;
  for (int r = 0; r < static_cast<int>(ranks_.size()); ++r) {
    const RankLoad& c = ranks_[r];
    if (c.running >= limits_.max_running_per_rank) continue;
    if (best < 0) {
      best = r;
      continue;
    }
    const RankLoad& b = ranks_[best];
    if (c.reserved_positions < b.reserved_positions ||
        (c.reserved_positions == b.reserved_positions && c.running < b.running)) {
      best = r;
    }
  }
  return best;
}

std::vector<SequencePlacement> Scheduler::Dispatch() {
  std::vector<SequencePlacement> placed;
  while (!waiting_.empty()) {
    const int rank = PickRank();
    if (rank < 0) break;
    const SequenceDemand d = waiting_.front();
    waiting_.pop_front();
    ranks_[rank].running += 1;
    ranks_[rank].reserved_positions += d.reserve_positions;
    running_[d.seq_id] = {d.seq_id, rank};
    reserve_of_[d.seq_id] = d.reserve_positions;
    placed.push_back({d.seq_id, rank});
  }
  return placed;
}

bool Scheduler::RemoveWaiting(uint64_t seq_id) {
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [&](const SequenceDemand& d) { return d.seq_id == seq_id; });
  if (it == waiting_.end()) return false;
  waiting_.erase(it);
  return true;
}

void Scheduler::Finish(uint64_t seq_id) {
  auto it = running_.find(seq_id);
  if (it == running_.end()) return;
  RankLoad& load = ranks_[it->second.rank];
  load.running -= 1;
  load.reserved_positions -= reserve_of_[seq_id];
  reserve_of_.erase(seq_id);
  running_.erase(it);
}

void Scheduler::Reset(int world_size) {
  ranks_.assign(static_cast<size_t>(std::max(world_size, 0)), RankLoad{});
  waiting_.clear();
  running_.clear();
  reserve_of_.clear();
}

}  // namespace moe
