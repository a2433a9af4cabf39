#include "worker/kv_blocks.h"

#include <algorithm>

#include "common/prefix_hash.h"

namespace moe {

KvBlockAllocator::KvBlockAllocator(int64_t block_size, int64_t num_blocks)
    : block_size_(block_size), num_blocks_(num_blocks), info_(static_cast<size_t>(std::max<int64_t>(num_blocks, 0))) {
  MOE_CHECK(block_size > 0 && num_blocks >= 0);
  free_.reserve(static_cast<size_t>(num_blocks));
  // Highest id at the bottom, so blocks are handed out in ascending order.
  for (int64_t b = num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

void KvBlockAllocator::EnablePrefixCache() {
  MOE_CHECK(seqs_.empty(), "enable prefix caching before adding sequences");
  prefix_cache_ = true;
}

absl::Status KvBlockAllocator::AddSequence(int64_t seq_id) {
  if (seqs_.count(seq_id)) return absl::AlreadyExistsError(absl::StrCat("sequence ", seq_id, " already exists"));
  seqs_.emplace(seq_id, Sequence{});
  return absl::OkStatus();
}

int32_t KvBlockAllocator::TakeBlock() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {  // reclaim the least recently released cached block
    MOE_CHECK(!lru_.empty());
    b = lru_.front();
    lru_.pop_front();
    Block& info = info_[static_cast<size_t>(b)];
    registered_.erase(info.hash);
    evicted_.push_back(info.hash);
    if (evicted_.size() > kMaxEvictedHashes) evicted_.pop_front();
    info.registered = false;
    info.tokens.clear();
  }
  info_[static_cast<size_t>(b)].refs = 1;
  return b;
}

std::vector<uint64_t> KvBlockAllocator::TakeEvictedHashes() {
  std::vector<uint64_t> out(evicted_.begin(), evicted_.end());
  evicted_.clear();
  return out;
}

void KvBlockAllocator::Release(int32_t b) {
  Block& info = info_[static_cast<size_t>(b)];
  MOE_CHECK(info.refs > 0, "block ", b, " released more often than taken");
  if (--info.refs > 0) return;
  if (info.registered) {
    info.lru = lru_.insert(lru_.end(), b);
  } else {
    free_.push_back(b);
  }
}

void KvBlockAllocator::FreeSequence(int64_t seq_id) {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return;
  for (auto b = it->second.blocks.rbegin(); b != it->second.blocks.rend(); ++b) Release(*b);
  seqs_.erase(it);
}

int64_t KvBlockAllocator::GrowthBlocks(int64_t seq_id, int64_t tokens) const {
  auto it = seqs_.find(seq_id);
  if (it == seqs_.end()) return BlocksFor(tokens);
  const int64_t held = static_cast<int64_t>(it->second.blocks.size());
  return std::max<int64_t>(0, BlocksFor(it->second.length + tokens) - held);
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
  for (int64_t i = 0; i < need; ++i) s.blocks.push_back(TakeBlock());
  return absl::OkStatus();
}

void KvBlockAllocator::Append(int64_t seq_id, std::span<const int32_t> tokens) {
  Sequence& s = seqs_.at(seq_id);
  s.length += static_cast<int64_t>(tokens.size());
  MOE_CHECK(BlocksFor(s.length) <= static_cast<int64_t>(s.blocks.size()), "positions appended beyond the reserved blocks");
  if (!prefix_cache_) return;
  s.pending.insert(s.pending.end(), tokens.begin(), tokens.end());
  // The block the oldest pending token is in, and each one the pending tokens fill.
  size_t block = static_cast<size_t>((s.length - static_cast<int64_t>(s.pending.size())) / block_size_);
  size_t used = 0;
  for (; s.pending.size() - used >= static_cast<size_t>(block_size_); used += static_cast<size_t>(block_size_), ++block) {
    const std::span<const int32_t> own(s.pending.data() + used, static_cast<size_t>(block_size_));
    const uint64_t h = PrefixChainHash(s.prefix_hash, own);
    const int32_t b = s.blocks[block];
    Block& info = info_[static_cast<size_t>(b)];
    // Another block may already hold the same prefix (computed by a sequence that ran alongside):
    // that one stays the cached copy and this one is freed as usual.
    if (!info.registered && registered_.emplace(h, b).second) {
      info.registered = true;
      info.hash = h;
      info.parent_hash = s.prefix_hash;
      info.tokens.assign(own.begin(), own.end());
    }
    s.prefix_hash = h;
  }
  s.pending.erase(s.pending.begin(), s.pending.begin() + static_cast<std::ptrdiff_t>(used));
}

std::vector<int32_t> KvBlockAllocator::MatchCachedPrefix(std::span<const int32_t> prompt, uint64_t root,
                                                         uint64_t* prefix_hash) const {
  std::vector<int32_t> match;
  uint64_t h = root;
  const int64_t whole = prefix_cache_ && !prompt.empty() ? (static_cast<int64_t>(prompt.size()) - 1) / block_size_ : 0;
  for (int64_t i = 0; i < whole; ++i) {
    const std::span<const int32_t> own = prompt.subspan(static_cast<size_t>(i * block_size_), static_cast<size_t>(block_size_));
    const uint64_t next = PrefixChainHash(h, own);
    const auto it = registered_.find(next);
    if (it == registered_.end()) break;
    const Block& info = info_[static_cast<size_t>(it->second)];
    if (info.parent_hash != h || !std::equal(own.begin(), own.end(), info.tokens.begin(), info.tokens.end())) {
      break;  // a hash collision: not the same prefix
    }
    match.push_back(it->second);
    h = next;
  }
  if (prefix_hash != nullptr) *prefix_hash = h;
  return match;
}

KvBlockAllocator::CachedPrefix KvBlockAllocator::LookupCachedPrefix(std::span<const int32_t> prompt,
                                                                    uint64_t root) const {
  const std::vector<int32_t> match = MatchCachedPrefix(prompt, root, nullptr);
  return {static_cast<int64_t>(match.size()),
          std::count_if(match.begin(), match.end(), [&](int32_t b) { return info_[static_cast<size_t>(b)].refs > 0; })};
}

int64_t KvBlockAllocator::AttachCachedPrefix(int64_t seq_id, std::span<const int32_t> prompt, uint64_t root) {
  Sequence& s = seqs_.at(seq_id);
  MOE_CHECK(s.length == 0 && s.blocks.empty(), "a cached prefix attaches to a new sequence only");
  s.prefix_hash = root;  // the blocks it fills register in its root's chain
  if (!prefix_cache_ || prompt.empty()) return 0;
  queried_tokens_ += static_cast<int64_t>(prompt.size());
  s.blocks = MatchCachedPrefix(prompt, root, &s.prefix_hash);
  for (int32_t b : s.blocks) {
    Block& info = info_[static_cast<size_t>(b)];
    if (info.refs++ == 0) lru_.erase(info.lru);
  }
  s.length = static_cast<int64_t>(s.blocks.size()) * block_size_;
  hit_tokens_ += s.length;
  return s.length;
}

}  // namespace moe
