#include "coordinator/scheduler.h"

#include <algorithm>

#include "common/prefix_hash.h"

namespace moe {

Scheduler::Scheduler(SchedulerLimits limits, int world_size) : limits_(limits) { Reset(world_size); }

absl::Status Scheduler::Enqueue(const std::vector<SequenceDemand>& seqs) {
  if (waiting() + static_cast<int64_t>(seqs.size()) > limits_.max_waiting) {
    return absl::ResourceExhaustedError(absl::StrCat("queue full (", waiting(), " waiting)"));
  }
  Readmit(seqs);
  return absl::OkStatus();
}

void Scheduler::Readmit(const std::vector<SequenceDemand>& seqs) {
  for (const SequenceDemand& d : seqs) {
    const auto after = std::upper_bound(waiting_.begin(), waiting_.end(), d.priority,
                                        [](int32_t p, const SequenceDemand& w) { return p < w.priority; });
    waiting_.insert(after, d);
  }
}

std::vector<uint64_t> PrefixKeys(std::span<const int32_t> tokens, uint64_t root) {
  std::vector<uint64_t> keys;
  ExtendPrefixKeys(keys, tokens, root);
  return keys;
}

void ExtendPrefixKeys(std::vector<uint64_t>& keys, std::span<const int32_t> tokens, uint64_t root) {
  uint64_t h = keys.empty() ? root : keys.back();
  for (size_t end = (keys.size() + 1) * kPrefixKeyTokens; end <= tokens.size(); end += kPrefixKeyTokens) {
    h = PrefixChainHash(h, tokens.subspan(end - kPrefixKeyTokens, kPrefixKeyTokens));
    keys.push_back(h);
  }
}

void Scheduler::SetCapacity(int rank, int64_t positions) {
  if (rank < 0 || rank >= static_cast<int>(ranks_.size())) return;
  ranks_[rank].capacity = std::max<int64_t>(positions, 0);
  by_share_ = std::all_of(ranks_.begin(), ranks_.end(), [](const RankLoad& r) { return r.capacity > 0; });
}

bool Scheduler::LessLoaded(int a, int b) const {
  const RankLoad& x = ranks_[a];
  const RankLoad& y = ranks_[b];
  if (by_share_) {  // x.reserved / x.capacity against y's, exactly
    const __int128 lhs = static_cast<__int128>(x.reserved_positions) * y.capacity;
    const __int128 rhs = static_cast<__int128>(y.reserved_positions) * x.capacity;
    return lhs < rhs || (lhs == rhs && x.running < y.running);
  }
  return x.reserved_positions < y.reserved_positions ||
         (x.reserved_positions == y.reserved_positions && x.running < y.running);
}

bool Scheduler::BeyondSlack(int r, int least) const {
  const RankLoad& x = ranks_[r];
  const RankLoad& y = ranks_[least];
  if (!by_share_) return x.reserved_positions > y.reserved_positions + limits_.prefix_affinity_slack;
  // x.reserved > y's share of x's cache + the slack, multiplied through by y.capacity.
  return static_cast<__int128>(x.reserved_positions) * y.capacity >
         static_cast<__int128>(y.reserved_positions) * x.capacity +
             static_cast<__int128>(limits_.prefix_affinity_slack) * y.capacity;
}

bool Scheduler::CanTake(int rank, const SequenceDemand& d) const {
  const RankLoad& r = ranks_[rank];
  return r.running < limits_.max_running_per_rank && (r.capacity == 0 || d.reserve_positions <= r.capacity);
}

int64_t Scheduler::CachedRun(int rank, const std::vector<uint64_t>& keys) const {
  const SeenKeys& seen = seen_[rank];
  int64_t run = 0;
  while (run < static_cast<int64_t>(keys.size()) && seen.where.count(keys[run])) ++run;
  return run;
}

void Scheduler::NoteCached(int rank, const std::vector<uint64_t>& keys) {
  if (rank < 0 || rank >= static_cast<int>(seen_.size())) return;
  SeenKeys& seen = seen_[rank];
  for (uint64_t k : keys) {
    if (auto it = seen.where.find(k); it != seen.where.end()) seen.order.erase(it->second);
    seen.where[k] = seen.order.insert(seen.order.end(), k);
    if (seen.order.size() > kMaxKeysPerRank) {
      seen.where.erase(seen.order.front());
      seen.order.pop_front();
    }
  }
}

void Scheduler::Forget(int rank, std::span<const uint64_t> keys) {
  if (rank < 0 || rank >= static_cast<int>(seen_.size())) return;
  SeenKeys& seen = seen_[rank];
  for (uint64_t k : keys) {
    if (auto it = seen.where.find(k); it != seen.where.end()) {
      seen.order.erase(it->second);
      seen.where.erase(it);
    }
  }
}

int Scheduler::PickRank(const SequenceDemand& d) const {
  int least = -1;
  for (int r = 0; r < static_cast<int>(ranks_.size()); ++r) {
    if (!CanTake(r, d)) continue;
    if (least < 0 || LessLoaded(r, least)) least = r;
  }
  if (least < 0 || !affinity_ || d.prefix_keys.empty()) return least;
  int best = -1;
  int64_t best_run = 0;
  for (int r = 0; r < static_cast<int>(ranks_.size()); ++r) {
    if (!CanTake(r, d)) continue;
    if (BeyondSlack(r, least)) continue;
    const int64_t run = CachedRun(r, d.prefix_keys);
    if (run > best_run || (run == best_run && run > 0 && LessLoaded(r, best))) {
      best = r;
      best_run = run;
    }
  }
  return best >= 0 ? best : least;
}

int64_t Scheduler::LargestCapacity() const {
  int64_t largest = 0;
  for (const RankLoad& r : ranks_) {
    if (r.capacity == 0) return 0;
    largest = std::max(largest, r.capacity);
  }
  return largest;
}

std::vector<SequencePlacement> Scheduler::Dispatch(std::vector<SequenceDemand>* too_large) {
  std::vector<SequencePlacement> placed;
  while (!waiting_.empty()) {
    const int rank = PickRank(waiting_.front());
    const int64_t largest = LargestCapacity();
    if (rank < 0 && too_large != nullptr && largest > 0 && waiting_.front().reserve_positions > largest) {
      too_large->push_back(std::move(waiting_.front()));
      waiting_.pop_front();
      continue;
    }
    if (rank < 0) break;
    const SequenceDemand d = std::move(waiting_.front());
    waiting_.pop_front();
    if (affinity_) NoteCached(rank, d.prefix_keys);
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
  seen_.assign(static_cast<size_t>(std::max(world_size, 0)), SeenKeys{});
  affinity_ = false;
  by_share_ = false;
  waiting_.clear();
  running_.clear();
  reserve_of_.clear();
}

}  // namespace moe
