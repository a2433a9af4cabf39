// The ids a step may draw, one bit per id: what a constraint (a JSON grammar, allowed_token_ids,
// bad_words, min_tokens) leaves of the vocabulary. Engines take it with the step
// (SampleNext::allowed) and treat a clear bit as a -inf logit, so a constrained row is sampled
// where its logits are (on a GPU rank, on the device) instead of being copied to the host whole.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace moe {

class TokenMask {
 public:
  TokenMask() = default;
  // `size` ids, all allowed.
  explicit TokenMask(int64_t size);

  // The words for `size` ids: id i is bit i % 64 of word i / 64 (on a little-endian machine, bit
  // i % 32 of 32-bit word i / 32, as the GPU's sampling kernel reads them).
  static int64_t WordsFor(int64_t size) { return (size + 63) / 64; }

  int64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  bool allowed(int64_t id) const { return id >= 0 && id < size_ && ((words_[id / 64] >> (id % 64)) & 1) != 0; }
  // Ids outside [0, size) are ignored.
  void Allow(int64_t id);
  void Ban(int64_t id);
  // Keeps the ids `bits` allows among [0, n), bans every id from n on; `bits` covers at least n ids.
  void KeepFirst(std::span<const uint64_t> bits, int64_t n);
  void BanAll();
  bool any() const;
  std::span<const uint64_t> words() const { return words_; }

 private:
  std::vector<uint64_t> words_;  // bits past size_ are always clear
  int64_t size_ = 0;
};

// Sets logits[i] to -inf for every id `allowed` (at least logits.size() bits) bans: a word at a
// time, since a grammar's masks are mostly whole words of ones or of zeros.
void MaskLogits(std::span<const uint64_t> allowed, std::span<float> logits);

}  // namespace moe
