// Block bookkeeping of a paged KV cache, shared by the CPU and GPU engines: a pool of fixed-size
// blocks of token positions, a block table and a length per sequence. It owns no key or value
// storage: the CPU KvCache keeps its float pools beside it, the GPU engine its bf16 device pools,
// and both index them with the same block ids (one pool per layer, the same ids in every layer).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace moe {

class KvBlockAllocator {
 public:
  // `num_blocks` blocks of `block_size` token positions each.
  KvBlockAllocator(int64_t block_size, int64_t num_blocks);

  absl::Status AddSequence(int64_t seq_id);
  // Returns the sequence's blocks to the pool; unknown ids are ignored.
  void FreeSequence(int64_t seq_id);
  bool HasSequence(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }

  // Makes room for positions [0, new_length); ResourceExhausted when the pool runs out (nothing is
  // allocated then).
  absl::Status Reserve(int64_t seq_id, int64_t new_length);
  // The number of positions whose keys and values are written.
  int64_t length(int64_t seq_id) const { return seqs_.at(seq_id).length; }
  void set_length(int64_t seq_id, int64_t length) { seqs_.at(seq_id).length = length; }
  // The sequence's block table: block ids in position order.
  const std::vector<int32_t>& blocks(int64_t seq_id) const { return seqs_.at(seq_id).blocks; }

  int64_t block_size() const { return block_size_; }
  int64_t total_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t used_blocks() const { return num_blocks_ - free_blocks(); }
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  // Blocks needed to hold `length` positions.
  int64_t BlocksFor(int64_t length) const { return (length + block_size_ - 1) / block_size_; }

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    int64_t length = 0;
  };

  int64_t block_size_, num_blocks_;
  std::vector<int32_t> free_;  // free block ids, used as a stack
  std::unordered_map<int64_t, Sequence> seqs_;
};

}  // namespace moe
