// The paged KV cache of the CPU engine: keys and values live in fixed-size blocks drawn from one
// pool; each sequence owns a block table (the bookkeeping is KvBlockAllocator, shared with the GPU
// engine). A finished sequence returns its blocks, so memory follows the live tokens, not the
// longest possible sequence.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "worker/kv_blocks.h"
#include "worker/model/config.h"

namespace moe {

class KvCache {
 public:
  // `num_blocks` blocks of `block_size` token positions each, for every layer.
  KvCache(const ModelConfig& c, int64_t block_size, int64_t num_blocks);

  absl::Status AddSequence(int64_t seq_id) { return blocks_.AddSequence(seq_id); }
  // Returns the sequence's blocks to the pool; unknown ids are ignored.
  void FreeSequence(int64_t seq_id) { blocks_.FreeSequence(seq_id); }
  bool HasSequence(int64_t seq_id) const { return blocks_.HasSequence(seq_id); }

  // Makes room for positions [0, new_length); ResourceExhausted when the pool runs out (nothing is
  // allocated then).
  absl::Status Reserve(int64_t seq_id, int64_t new_length) { return blocks_.Reserve(seq_id, new_length); }
  // The number of positions whose keys and values are written.
  int64_t length(int64_t seq_id) const { return blocks_.length(seq_id); }

  // Key / value row [kv_heads * head_dim] of a position (which must be reserved).
  float* key(int64_t layer, int64_t seq_id, int64_t pos) { return Row(keys_, layer, seq_id, pos); }
  float* value(int64_t layer, int64_t seq_id, int64_t pos) { return Row(values_, layer, seq_id, pos); }

  const KvBlockAllocator& allocator() const { return blocks_; }
  KvBlockAllocator& allocator() { return blocks_; }
  int64_t block_size() const { return blocks_.block_size(); }
  int64_t total_blocks() const { return blocks_.total_blocks(); }
  int64_t free_blocks() const { return blocks_.free_blocks(); }
  int64_t used_blocks() const { return blocks_.used_blocks(); }
  int64_t num_sequences() const { return blocks_.num_sequences(); }
  // Blocks needed to hold `length` positions.
  int64_t BlocksFor(int64_t length) const { return blocks_.BlocksFor(length); }

 private:
  float* Row(std::vector<float>& pool, int64_t layer, int64_t seq_id, int64_t pos) {
    const int64_t bs = blocks_.block_size();
    const int64_t block = blocks_.blocks(seq_id)[static_cast<size_t>(pos / bs)];
    return pool.data() + ((layer * blocks_.total_blocks() + block) * bs + pos % bs) * row_;
  }

  KvBlockAllocator blocks_;
  int64_t row_;
  std::vector<float> keys_, values_;  // [layers, blocks, block_size, kv_heads * head_dim]
};

}  // namespace moe
