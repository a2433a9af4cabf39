// Admission and batch shape of the serving loop, as plain bookkeeping (no engine, no messages).
//
// Admission: a sequence enters the running batch only once the KV cache can hold its worst case
// (prompt + max_tokens positions, reserved in whole blocks), so a step never runs out of KV
// blocks. Sequences that do not fit wait in a FIFO; the oldest goes first and is not overtaken,
// so a large request cannot starve behind a stream of small ones.
//
// Batch shape: per step, every decoding sequence contributes one token (oldest first), then
// prefilling sequences contribute prompt chunks (oldest first), all within max_batch_tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <unordered_map>
#include <vector>

namespace moe {

class BatchPlanner {
 public:
  BatchPlanner(int64_t kv_blocks_total, int64_t kv_block_size);

  // Blocks that `positions` token positions occupy.
  int64_t BlocksFor(int64_t positions) const { return (positions + block_size_ - 1) / block_size_; }
  // Whether a sequence of `positions` worst-case positions could ever run (on an empty cache).
  bool EverFits(int64_t positions) const { return BlocksFor(positions) <= total_blocks_; }

  // A new sequence joins the end of the waiting FIFO. Its worst case must satisfy EverFits.
  void Enqueue(uint64_t seq_id, int64_t worst_case_positions);
  // Moves waiting sequences, oldest first, into the running batch while their reservations fit;
  // stops at the first that does not. Returns the admitted ids, in order.
  std::vector<uint64_t> Admit();
  // Forgets a waiting or running sequence and releases its reservation; unknown ids are ignored.
  void Remove(uint64_t seq_id);

  // Running sequences in admission order.
  const std::vector<uint64_t>& running() const { return running_; }
  size_t num_waiting() const { return waiting_.size(); }
  int64_t reserved_blocks() const { return reserved_; }

 private:
  int64_t total_blocks_, block_size_;
  std::deque<uint64_t> waiting_;
  std::vector<uint64_t> running_;
  std::unordered_map<uint64_t, int64_t> blocks_;  // seq id -> its reservation (waiting or running)
  int64_t reserved_ = 0;                          // sum over running sequences
};

// The tokens each running sequence (in admission order) contributes to the next step, given the
// prompt tokens it has still to feed (0 once it decodes): one for each decoding sequence, then
// prompt chunks, in order, as long as the step stays within `max_batch_tokens` (>= 1). A 0 means
// the sequence sits this step out.
std::vector<int64_t> PlanStepTokens(const std::vector<int64_t>& prompt_remaining, int64_t max_batch_tokens);

}  // namespace moe
