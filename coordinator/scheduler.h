// Admission and placement of sequences onto worker ranks (continuous batching at iteration level).
//
// Sequences enter a bounded FIFO; Dispatch() moves them, in arrival order, to ranks that have a
// free slot (at most max_running_per_rank each), choosing the rank with the least reserved KV
// positions (prompt + max_tokens of every sequence it runs, the worst case the worker reserves),
// ties to the rank running fewer sequences, then to the lower rank. Finish() frees the slot and the
// next Dispatch() refills it. Pure bookkeeping: no threads, no I/O; the caller serialises access.
#pragma once

#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace moe {

struct SchedulerLimits {
  int64_t max_waiting = 256;          // sequences queued in the coordinator
  int64_t max_running_per_rank = 64;  // sequences a rank runs (or queues locally) at once
};

struct SequenceDemand {
  uint64_t seq_id = 0;
  int64_t reserve_positions = 0;  // KV positions the worker reserves: prompt + max_tokens
};

struct SequencePlacement {
  uint64_t seq_id = 0;
  int rank = 0;
};

class Scheduler {
 public:
  Scheduler(SchedulerLimits limits, int world_size);

  // Adds all `seqs` to the end of the FIFO, or none: RESOURCE_EXHAUSTED "queue full (N waiting)"
  // when they do not all fit. Several sequences come from one request (Score items), which should
  // not be half admitted.
  absl::Status Enqueue(const std::vector<SequenceDemand>& seqs);

  // Moves waiting sequences, FIFO, onto ranks with free slots; returns the placements made.
  std::vector<SequencePlacement> Dispatch();

  // Removes a sequence still waiting (a cancelled request); false when it is not waiting.
  bool RemoveWaiting(uint64_t seq_id);
  // Frees the slot of a dispatched sequence; unknown ids are ignored.
  void Finish(uint64_t seq_id);
  // Forgets everything (the cluster was lost or re-formed) and takes `world_size` ranks.
  void Reset(int world_size);

  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t running_on(int rank) const { return ranks_[rank].running; }
  int64_t reserved_on(int rank) const { return ranks_[rank].reserved_positions; }
  const SchedulerLimits& limits() const { return limits_; }

 private:
  struct RankLoad {
    int64_t running = 0;
    int64_t reserved_positions = 0;
  };
  // The rank for the next sequence, or -1 when every rank is full.
  int PickRank() const;

  SchedulerLimits limits_;
  std::vector<RankLoad> ranks_;
  std::deque<SequenceDemand> waiting_;
  std::unordered_map<uint64_t, SequencePlacement> running_;
  std::unordered_map<uint64_t, int64_t> reserve_of_;  // running seq -> its reserved positions
};

}  // namespace moe
