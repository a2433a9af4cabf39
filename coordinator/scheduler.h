// Admission and placement of sequences onto worker ranks (continuous batching at iteration level).
//
// Sequences enter a bounded queue (arrival order, or by priority first: SequenceDemand.priority);
// Dispatch() moves them, in queue order, to ranks that have a free slot (at most
// max_running_per_rank each) and a KV cache that could hold them (SetCapacity), choosing the rank
// with the least reserved KV positions (prompt + max_tokens of every sequence it runs: their worst
// case, a load measure; as a share of its cache when every rank's is known), ties to the rank
// running fewer sequences, then to the lower rank. First come, first served, as vLLM's: a sequence
// only busy ranks could hold waits at the head of the queue, and those behind it wait too.
// Finish() frees the slot and the next Dispatch() refills it. Pure bookkeeping: no threads, no I/O;
// the caller serialises access.
//
// Prefix affinity (when the ranks cache prompt prefixes): a sequence carries keys of its prompt's
// leading 16-token chunks (PrefixKeys), and the scheduler remembers which keys each rank has seen
// (NoteCached: the prompts it was given, and what they became once finished). A sequence goes to
// the rank holding the longest run of its keys, ties to the least loaded, unless that rank
// reserves more than `prefix_affinity_slack` positions beyond the least loaded one (beyond its
// share, with every cache known: the same share of its own cache plus the slack); then the plain
// rule decides. Its keys count as seen on the rank it goes to; keys a rank reports evicted
// (Forget) no longer count there.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace moe {

struct SchedulerLimits {
  // vLLM's max_num_seqs is 256; its queue is unbounded, this one holds 1,024 (RESOURCE_EXHAUSTED beyond).
  int64_t max_waiting = 1024;          // sequences queued in the coordinator
  int64_t max_running_per_rank = 256;  // sequences a rank runs (or queues locally) at once
  // Positions beyond the least loaded rank that a rank holding a sequence's prefix may reserve and
  // still take it (with SetPrefixAffinity(true)); 0: no affinity.
  int64_t prefix_affinity_slack = 4096;
};

// Tokens a prefix key covers.
inline constexpr int64_t kPrefixKeyTokens = 16;
// One key per whole chunk of kPrefixKeyTokens at the start of `tokens`, each a hash of everything
// up to the chunk's end (so a key stands for the whole prefix before it too).
// `root`: the chain's first parent (Assign.prefix_root: 0, or a cache_salt's), as the ranks' own.
std::vector<uint64_t> PrefixKeys(std::span<const int32_t> tokens, uint64_t root = 0);
// Extends `keys`, the PrefixKeys of the first keys.size() chunks of `tokens` from `root`, to all of
// `tokens`' whole chunks, hashing only the chunks after them (a finished sequence's prompt + answer).
void ExtendPrefixKeys(std::vector<uint64_t>& keys, std::span<const int32_t> tokens, uint64_t root = 0);

struct SequenceDemand {
  uint64_t seq_id = 0;
  int64_t reserve_positions = 0;    // its worst-case KV positions: prompt + max_tokens
  std::vector<uint64_t> prefix_keys = {};  // PrefixKeys of its prompt (generation; empty for scoring)
  int32_t priority = 0;  // lower goes first; equal ones in arrival order
};

struct SequencePlacement {
  uint64_t seq_id = 0;
  int rank = 0;
};

class Scheduler {
 public:
  Scheduler(SchedulerLimits limits, int world_size);

  // Adds all `seqs` to the queue, or none: RESOURCE_EXHAUSTED "queue full (N waiting)" when they do
  // not all fit. Several sequences come from one request (Score items), which should not be half
  // admitted. The queue is ordered by priority, then arrival: each goes after those of its priority
  // or a lower one (a FIFO when every priority is 0).
  absl::Status Enqueue(const std::vector<SequenceDemand>& seqs);
  // Adds sequences admitted before (held through a lost worker job) whatever the queue's bound:
  // they were within it when they came.
  void Readmit(const std::vector<SequenceDemand>& seqs);

  // Moves waiting sequences, in queue order, onto ranks with free slots; returns the placements made.
  // A sequence no rank's cache could ever hold (they shrank, or a new worker job has smaller ones)
  // leaves the queue into `too_large`, rather than blocking it for ever.
  std::vector<SequencePlacement> Dispatch(std::vector<SequenceDemand>* too_large = nullptr);
  // The largest cache a rank reported (SetCapacity), or 0 when some rank reported none.
  int64_t LargestCapacity() const;

  // Removes a sequence still waiting (a cancelled request); false when it is not waiting.
  bool RemoveWaiting(uint64_t seq_id);
  // Frees the slot of a dispatched sequence; unknown ids are ignored.
  void Finish(uint64_t seq_id);
  // Forgets everything (the cluster was lost or re-formed) and takes `world_size` ranks.
  void Reset(int world_size);

  // The KV positions `rank`'s cache holds (0: not reported, the rank decides). A sequence goes only
  // to a rank that could hold it, and load is compared as the share of each rank's cache reserved:
  // ranks' caches differ (a rank holding more experts has less memory left for its cache).
  void SetCapacity(int rank, int64_t positions);

  // Whether placement follows prefixes (the ranks cache them); off after construction and Reset.
  void SetPrefixAffinity(bool on) { affinity_ = on && limits_.prefix_affinity_slack > 0; }
  bool prefix_affinity() const { return affinity_; }
  // `keys` are (probably) cached on `rank` now: a finished sequence's prompt and generated tokens.
  void NoteCached(int rank, const std::vector<uint64_t>& keys);
  // `keys` are no longer cached on `rank` (its prefix cache reclaimed their blocks).
  void Forget(int rank, std::span<const uint64_t> keys);
  // How many leading `keys` the scheduler believes `rank` holds.
  int64_t CachedRun(int rank, const std::vector<uint64_t>& keys) const;

  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t running_on(int rank) const { return ranks_[rank].running; }
  int64_t reserved_on(int rank) const { return ranks_[rank].reserved_positions; }
  const SchedulerLimits& limits() const { return limits_; }

 private:
  struct RankLoad {
    int64_t running = 0;
    int64_t reserved_positions = 0;
    int64_t capacity = 0;  // SetCapacity's; 0: unknown
  };
  // Whether every rank's cache is known: loads compare as shares then, else as positions (one
  // measure for every pair, so "less loaded" stays an order).
  bool by_share_ = false;
  // Prefix keys a rank has seen, least recently used first, at most kMaxKeysPerRank.
  struct SeenKeys {
    std::list<uint64_t> order;
    std::unordered_map<uint64_t, std::list<uint64_t>::iterator> where;
  };
  static constexpr size_t kMaxKeysPerRank = 1 << 16;
  // The rank for `d`, or -1 when no rank can take it now (CanTake).
  int PickRank(const SequenceDemand& d) const;
  // Whether rank a is less loaded than rank b (reserved positions, as shares of their caches when
  // every rank's is known, then running sequences).
  bool LessLoaded(int a, int b) const;
  // Whether `rank` has a free slot and a cache that could hold `d` (or one of unknown size).
  bool CanTake(int rank, const SequenceDemand& d) const;
  // Whether rank r reserves more than the prefix-affinity slack beyond rank `least`'s load.
  bool BeyondSlack(int r, int least) const;

  SchedulerLimits limits_;
  std::vector<RankLoad> ranks_;
  std::deque<SequenceDemand> waiting_;
  std::unordered_map<uint64_t, SequencePlacement> running_;
  std::unordered_map<uint64_t, int64_t> reserve_of_;  // running seq -> its reserved positions
  bool affinity_ = false;
  std::vector<SeenKeys> seen_;  // per rank
};

}  // namespace moe
