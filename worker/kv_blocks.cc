#include "worker/kv_blocks.h"

namespace moe {

KvBlockAllocator::KvBlockAllocator(int64_t block_size, int64_t num_blocks)
    : block_size_(block_size), num_blocks_(num_blocks) {
  MOE_CHECK(block_size > 0 && num_blocks >= 0);
  free_.reserve(static_cast<size_t>(num_blocks));
  // Highest id at the bottom, so blocks are handed out in ascending order.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

absl::Status KvBlockAllocator::AddSequence(int64_t seq_id) {
  if (seqs_.count(seq_id)) return absl::AlreadyExistsError(absl::StrCat("sequence ", seq_id, " already exists"));
  seqs_.emplace(seq_id, Sequence{});
  return absl::OkStatus();
}

void KvBlockAllocator::FreeSequence(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) free_.push_back(*b);
  seqs_.erase(it);
}

absl::Status KvBlockAllocator::Reserve(int64_t seq_id, int64_t new_length) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrCat("sequence ", seq_id, " is not in the KV cache"));
  Sequence& s = it->second;
  const int64_t need = BlocksFor(new_length) - static_cast<int64_t>(s.blocks.size());
  if (need <= 0) return absl::OkStatus();
  if (need > free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache full: sequence ", seq_id, " needs ", need,
                                                     " more blocks of ", block_size_, " positions, ",
                                                     free_blocks(), " of ", num_blocks_, " are free"));
  }
  for (int64_t i = 0; i < need; ++i) {
    s.blocks.push_back(free_.back());
    free_.pop_back();
  }
  return absl::OkStatus();
}

}  // namespace moe
