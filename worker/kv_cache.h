// The paged KV cache: keys and values live in fixed-size blocks drawn from one pool; each sequence
// owns a block table. A finished sequence returns its blocks, so memory follows the live tokens,
// not the longest possible sequence.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "worker/model/config.h"

namespace moe {

class KvCache {
 public:
  // `num_blocks` blocks of `block_size` token positions each, for every layer.
  KvCache(const ModelConfig& c, int64_t block_size, int64_t num_blocks);

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

  // Key / value row [kv_heads * head_dim] of a position (which must be reserved).
  float* key(int64_t layer, int64_t seq_id, int64_t pos) { return Row(keys_, layer, seq_id, pos); }
  float* value(int64_t layer, int64_t seq_id, int64_t pos) { return Row(values_, layer, seq_id, pos); }

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
  float* Row(std::vector<float>& pool, int64_t layer, int64_t seq_id, int64_t pos) {
    const Sequence& s = seqs_.at(seq_id);
    const int64_t block = s.blocks[static_cast<size_t>(pos / block_size_)];
    return pool.data() + ((layer * num_blocks_ + block) * block_size_ + pos % block_size_) * row_;
  }

  int64_t num_layers_, block_size_, num_blocks_, row_;
  std::vector<float> keys_, values_;  // [layers, blocks, block_size, kv_heads * head_dim]
  std::vector<int32_t> free_;         // free block ids, used as a stack
  std::unordered_map<int64_t, Sequence> seqs_;
};

}  // namespace moe
