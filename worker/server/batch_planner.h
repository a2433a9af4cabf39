// Admission and batch shape of the serving loop, as plain bookkeeping over the KV block allocator
// (no engine, no messages).
//
// Admission: a sequence enters the running batch only once the KV cache can hold its worst case
// (prompt + max_tokens positions, in whole blocks), so a step never runs out of KV blocks. The
// test is on what the cache has committed: the blocks in use now, plus every running sequence's
// blocks still to come (its worst case less what it holds). Blocks shared through prefix caching
// are in use once however many sequences hold them, so a prompt that starts with blocks another
// running sequence holds needs only the rest, and sequences sharing a long prefix run together
// where their separate copies would not fit. Sequences that do not fit wait in a FIFO; the oldest
// goes first and is not overtaken, so a large request cannot starve behind a stream of small ones.
//
// Batch shape: per step, every decoding sequence contributes one token (oldest first), then
// prefilling sequences contribute prompt chunks (oldest first), all within max_batch_tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <unordered_map>
#include <vector>

#include "worker/kv_blocks.h"

namespace moe {

class BatchPlanner {
 public:
  // Sequences are the allocator's under the same ids (cast to int64), added by the caller once
  // admitted; `kv` must outlive the planner.
  explicit BatchPlanner(const KvBlockAllocator& kv) : kv_(kv) {}

  // Blocks that `positions` token positions occupy.
  int64_t BlocksFor(int64_t positions) const { return kv_.BlocksFor(positions); }
  // Whether a sequence of `positions` worst-case positions could ever run (on an empty cache).
  bool EverFits(int64_t positions) const { return BlocksFor(positions) <= kv_.total_blocks(); }

  // A new sequence joins the end of the waiting FIFO. Its worst case must satisfy EverFits.
  void Enqueue(uint64_t seq_id, int64_t worst_case_positions);
  // The oldest waiting sequence, if any.
  std::optional<uint64_t> next_waiting() const;
  // Moves the oldest waiting sequence into the running batch when the committed blocks plus its
  // worst case, less `shared_blocks_in_use` (blocks of its cached prefix that running sequences
  // hold: KvBlockAllocator::LookupCachedPrefix's in_use), fit the cache. The caller adds it to the
  // allocator, and attaches that prefix, before the next call. False when it must wait or none does.
  bool AdmitNext(int64_t shared_blocks_in_use);
  // Forgets a waiting or running sequence; unknown ids are ignored. Its blocks count as long as the
  // allocator holds them.
  void Remove(uint64_t seq_id);

  // Running sequences in admission order.
  const std::vector<uint64_t>& running() const { return running_; }
  size_t num_waiting() const { return waiting_.size(); }
  // Blocks in use plus every running sequence's blocks still to come.
  int64_t committed_blocks() const;

 private:
  const KvBlockAllocator& kv_;
  std::deque<uint64_t> waiting_;
  std::vector<uint64_t> running_;
  std::unordered_map<uint64_t, int64_t> blocks_;  // seq id -> its worst case in blocks (waiting or running)
};

// The tokens each running sequence (in admission order) contributes to the next step, given the
// prompt tokens it has still to feed (0 once it decodes): one for each decoding sequence, then
// prompt chunks, in order, as long as the step stays within `max_batch_tokens` (>= 1). A 0 means
// the sequence sits this step out.
std::vector<int64_t> PlanStepTokens(const std::vector<int64_t>& prompt_remaining, int64_t max_batch_tokens);

}  // namespace moe
