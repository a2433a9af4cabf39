// Admission and batch shape of the serving loop, as plain bookkeeping over the KV block allocator
// (no engine, no messages).
//
// Admission, in one of two modes (KvAdmission). Both keep a queue of waiting sequences ordered by
// priority (Assign.priority: lower first; all 0 unless the coordinator schedules by priority), then
// arrival, whose head goes first and is not overtaken, so a large request cannot starve behind a
// stream of small ones of its priority, and both count blocks shared through prefix caching once: a prompt that starts with blocks
// another running sequence holds needs only the rest, and sequences sharing a long prefix run
// together where their separate copies would not fit.
//   - kOnDemand (the default, vLLM's rule): a sequence enters once what it must compute now (its
//     prompt; after a preemption its prompt and the tokens it had generated) plus one position
//     fits beside what the running sequences need now (their own computed positions plus one),
//     keeping a watermark of 1% of the blocks free. Blocks are taken as sequences grow; when a step
//     cannot get its blocks, a running sequence is preempted (Victim: the lowest priority, the
//     newest of those): the caller frees its blocks and it waits at the head of its priority in the
//     queue, to compute its whole context again when readmitted. The first in queue order is never
//     preempted for a later one, and a sequence alone always fits (EverFits), so every sequence
//     finishes (those of a lower priority once the higher ones let them). A waiting sequence that
//     does not fit has running ones of a higher priority value preempted for it (the serving loop).
//   - kReserve (TGI's rule): a sequence enters only once the cache can hold its worst case (prompt
//     + max_tokens positions, in whole blocks) beside every running sequence's worst case, so a
//     step never runs out of blocks and nothing is preempted, at the price of running fewer
//     sequences at once when max_tokens is far above what answers use.
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

enum class KvAdmission { kOnDemand, kReserve };

class BatchPlanner {
 public:
  // Sequences are the allocator's under the same ids (cast to int64), added by the caller once
  // admitted; `kv` must outlive the planner.
  explicit BatchPlanner(const KvBlockAllocator& kv, KvAdmission mode = KvAdmission::kOnDemand) : kv_(kv), mode_(mode) {}
  KvAdmission mode() const { return mode_; }

  // Blocks that `positions` token positions occupy.
  int64_t BlocksFor(int64_t positions) const { return kv_.BlocksFor(positions); }
  // Whether a sequence of `positions` worst-case positions could ever run (on an empty cache).
  bool EverFits(int64_t positions) const { return BlocksFor(positions) <= kv_.total_blocks(); }

  // A new sequence joins the waiting queue, after every sequence of its priority or a lower value,
  // with the positions it must compute when admitted (its prompt). Its worst case must satisfy
  // EverFits.
  void Enqueue(uint64_t seq_id, int64_t worst_case_positions, int64_t positions_now, int32_t priority = 0);
  // The oldest waiting sequence, if any.
  std::optional<uint64_t> next_waiting() const;
  // Moves the oldest waiting sequence into the running batch when the committed blocks plus its
  // own (its worst case, or on demand what it computes now plus one position and the watermark),
  // less `shared_blocks_in_use` (blocks of its cached prefix that running sequences hold:
  // KvBlockAllocator::LookupCachedPrefix's in_use), fit the cache. On demand, a sequence is
  // admitted into an empty batch whenever it fits at all. The caller adds it to the allocator, and
  // attaches that prefix, before the next call. False when it must wait or none does.
  bool AdmitNext(int64_t shared_blocks_in_use);
  // The running sequence to preempt first: of the highest priority value, the last admitted. The
  // batch must not be empty.
  uint64_t Victim() const;
  // A waiting or running sequence's priority.
  int32_t priority(uint64_t seq_id) const { return demand_.at(seq_id).priority; }
  // Moves running `seq_id` back to the waiting queue, ahead of the waiting sequences of its
  // priority, to compute `positions_now` positions when readmitted; the caller frees its blocks.
  void Preempt(uint64_t seq_id, int64_t positions_now);
  // Blocks the running sequences must take for a step in which running()[i] writes tokens[i] more
  // positions (beyond the blocks each holds).
  int64_t StepBlocks(const std::vector<int64_t>& tokens) const;
  // Forgets a waiting or running sequence; unknown ids are ignored. Its blocks count as long as the
  // allocator holds them.
  void Remove(uint64_t seq_id);

  // Running sequences in admission order.
  const std::vector<uint64_t>& running() const { return running_; }
  size_t num_waiting() const { return waiting_.size(); }
  // Blocks in use plus every running sequence's blocks still to come: up to its worst case, or on
  // demand up to what it computes now plus one position.
  int64_t committed_blocks() const;
  // On demand, the free blocks admission leaves (1% of the cache, at least one).
  int64_t watermark_blocks() const;

 private:
  struct Demand {
    int64_t worst_blocks = 0;   // its worst case
    int64_t positions_now = 0;  // what it computes when admitted
    int32_t priority = 0;
  };
  // The blocks a sequence commits to: its worst case, or on demand its positions now plus one.
  int64_t CommittedBlocks(const Demand& d) const;

  const KvBlockAllocator& kv_;
  KvAdmission mode_;
  std::deque<uint64_t> waiting_;
  std::vector<uint64_t> running_;
  std::unordered_map<uint64_t, Demand> demand_;  // waiting or running
};

// The tokens each running sequence (in admission order) contributes to the next step, given the
// context tokens it has still to feed before it decodes (0 once it does): one for each decoding sequence, then
// prompt chunks, in order, as long as the step stays within `max_batch_tokens` (>= 1). A 0 means
// the sequence sits this step out.
std::vector<int64_t> PlanStepTokens(const std::vector<int64_t>& prompt_remaining, int64_t max_batch_tokens);

}  // namespace moe
