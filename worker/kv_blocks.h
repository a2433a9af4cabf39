// Block bookkeeping of a paged KV cache, shared by the CPU and GPU engines: a pool of fixed-size
// blocks of token positions, a block table and a length per sequence. It owns no key or value
// storage: the CPU KvCache keeps its float pools beside it, the GPU engine its bf16 device pools,
// and both index them with the same block ids (one pool per layer, the same ids in every layer).
//
// Prefix caching (EnablePrefixCache; moe-worker turns it on unless --no-enable-prefix-caching, as
// vLLM's default): a block that a sequence
// has filled is registered under the token ids of everything up to its end (a hash chain over the
// blocks, each block's own tokens and its parent's hash checked on a match). A later sequence whose
// prompt starts with the same whole blocks attaches them instead of computing them again; a block
// is shared by reference count and never written again (positions are only appended). When its last
// sequence ends, a registered block keeps its contents, counted as free, and is reclaimed least
// recently used first, only once no never-registered block is left.
#pragma once

#include <cstdint>
#include <deque>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "common/status.h"

namespace moe {

class KvBlockAllocator {
 public:
  // `num_blocks` blocks of `block_size` token positions each.
  KvBlockAllocator(int64_t block_size, int64_t num_blocks);

  absl::Status AddSequence(int64_t seq_id);
  // Releases the sequence's blocks (free, or cached when registered); unknown ids are ignored.
  void FreeSequence(int64_t seq_id);
  bool HasSequence(int64_t seq_id) const { return seqs_.count(seq_id) != 0; }

  // Makes room for positions [0, new_length); ResourceExhausted when the pool runs out (nothing is
  // allocated then).
  absl::Status Reserve(int64_t seq_id, int64_t new_length);
  // The tokens just written at positions length .. length + tokens.size() - 1 (reserved): the
  // length grows by their number, and with prefix caching the blocks they fill are registered.
  void Append(int64_t seq_id, std::span<const int32_t> tokens);
  // The number of positions whose keys and values are written.
  int64_t length(int64_t seq_id) const { return seqs_.at(seq_id).length; }
  // The sequence's block table: block ids in position order.
  const std::vector<int32_t>& blocks(int64_t seq_id) const { return seqs_.at(seq_id).blocks; }

  // Prefix caching. Enable before any sequence is added.
  void EnablePrefixCache();
  bool prefix_cache_enabled() const { return prefix_cache_; }
  // For a sequence just added: attaches the registered blocks that hold the longest run of whole
  // blocks at the start of `prompt`, leaving at least its last token to compute (its logits are
  // wanted), and returns the positions attached (the sequence's length now). 0 when caching is off.
  // `root` is the chain's first parent (Assign.prefix_root: 0, or a cache_salt's): only blocks
  // registered under the same root match, and the blocks this sequence fills register under it
  // (also when `prompt` is empty: a sequence that attaches nothing but must stay in its salt's chain).
  int64_t AttachCachedPrefix(int64_t seq_id, std::span<const int32_t> prompt, uint64_t root = 0);
  // What AttachCachedPrefix would attach for `prompt` now: how many blocks, and how many of them
  // some sequence holds (sharing those takes nothing from the free pool; the cached free ones do).
  struct CachedPrefix {
    int64_t blocks = 0;
    int64_t in_use = 0;
  };
  CachedPrefix LookupCachedPrefix(std::span<const int32_t> prompt, uint64_t root = 0) const;
  // Prompt tokens looked up and found by AttachCachedPrefix so far.
  int64_t prefix_queried_tokens() const { return queried_tokens_; }
  int64_t prefix_hit_tokens() const { return hit_tokens_; }
  // Free blocks that still hold a registered prefix.
  int64_t cached_free_blocks() const { return static_cast<int64_t>(lru_.size()); }
  // The prefix hashes of the cached blocks reclaimed for new use since the last call (at most the
  // latest kMaxEvictedHashes), oldest first.
  std::vector<uint64_t> TakeEvictedHashes();
  static constexpr size_t kMaxEvictedHashes = 1 << 16;

  int64_t block_size() const { return block_size_; }
  int64_t total_blocks() const { return num_blocks_; }
  // Blocks no sequence holds (cached ones included: they are reclaimed when needed).
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  int64_t used_blocks() const { return num_blocks_ - free_blocks(); }
  int64_t num_sequences() const { return static_cast<int64_t>(seqs_.size()); }
  // Blocks needed to hold `length` positions.
  int64_t BlocksFor(int64_t length) const { return (length + block_size_ - 1) / block_size_; }
  // The free blocks Reserve takes for `seq_id` to grow by `tokens` positions (a sequence not added
  // yet holds none): what a step's validation and the serving loop's planning count.
  int64_t GrowthBlocks(int64_t seq_id, int64_t tokens) const;

 private:
  struct Sequence {
    std::vector<int32_t> blocks;
    int64_t length = 0;
    // Prefix caching: the tokens written after the last whole block (those not hashed yet), and
    // the hash of the prefix the whole blocks hold.
    std::vector<int32_t> pending;
    uint64_t prefix_hash = 0;
  };
  struct Block {
    int32_t refs = 0;
    bool registered = false;
    uint64_t hash = 0;         // of the prefix up to the block's end
    uint64_t parent_hash = 0;  // of the prefix before it
    std::vector<int32_t> tokens;
    std::list<int32_t>::iterator lru;  // its place in lru_ while free and registered
  };

  // The registered blocks holding the longest run of whole blocks at the start of `prompt`, at most
  // (size - 1) / block_size of them (the last token is always computed), with the hash of the
  // prefix they hold. Empty when caching is off.
  std::vector<int32_t> MatchCachedPrefix(std::span<const int32_t> prompt, uint64_t root, uint64_t* prefix_hash) const;
  int32_t TakeBlock();
  void Release(int32_t b);

  int64_t block_size_, num_blocks_;
  std::vector<int32_t> free_;  // free unregistered block ids, used as a stack
  std::unordered_map<int64_t, Sequence> seqs_;
  std::vector<Block> info_;  // per block
  bool prefix_cache_ = false;
  std::unordered_map<uint64_t, int32_t> registered_;  // prefix hash -> block
  std::deque<uint64_t> evicted_;                      // TakeEvictedHashes' next answer
  std::list<int32_t> lru_;  // free registered blocks, least recently released first
  int64_t queried_tokens_ = 0, hit_tokens_ = 0;
};

}  // namespace moe
