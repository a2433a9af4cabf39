#include "worker/token_mask.h"

#include <algorithm>
#include <limits>

#include "common/status.h"

namespace moe {

TokenMask::TokenMask(int64_t size) : words_(static_cast<size_t>(WordsFor(size)), ~uint64_t{0}), size_(size) {
  if (size % 64 != 0) words_.back() = (uint64_t{1} << (size % 64)) - 1;
}

void TokenMask::Allow(int64_t id) {
  if (id >= 0 && id < size_) words_[static_cast<size_t>(id / 64)] |= uint64_t{1} << (id % 64);
}

void TokenMask::Ban(int64_t id) {
  if (id >= 0 && id < size_) words_[static_cast<size_t>(id / 64)] &= ~(uint64_t{1} << (id % 64));
}

void TokenMask::KeepFirst(std::span<const uint64_t> bits, int64_t n) {
  n = std::clamp<int64_t>(n, 0, size_);
  MOE_CHECK(static_cast<int64_t>(bits.size()) >= WordsFor(n), "TokenMask::KeepFirst: ", bits.size(),
            " words for ", n, " ids");
  for (int64_t w = 0; w < static_cast<int64_t>(words_.size()); ++w) {
    const int64_t begin = w * 64;
    const uint64_t below_n = begin + 64 <= n ? ~uint64_t{0} : (begin >= n ? 0 : (uint64_t{1} << (n - begin)) - 1);
    words_[static_cast<size_t>(w)] &= below_n == 0 ? 0 : (bits[static_cast<size_t>(w)] & below_n);
  }
}

void TokenMask::BanAll() { std::fill(words_.begin(), words_.end(), 0); }

bool TokenMask::any() const {
  return std::any_of(words_.begin(), words_.end(), [](uint64_t w) { return w != 0; });
}

void MaskLogits(std::span<const uint64_t> allowed, std::span<float> logits) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const size_t n = logits.size();
  MOE_CHECK(allowed.size() * 64 >= n, "MaskLogits: ", allowed.size(), " words for ", n, " logits");
  for (size_t w = 0; w * 64 < n; ++w) {
    const size_t begin = w * 64, end = std::min(n, begin + 64);
    const uint64_t bits = allowed[w];
    if (bits == ~uint64_t{0}) continue;
    if (bits == 0) {
      std::fill(logits.begin() + static_cast<std::ptrdiff_t>(begin), logits.begin() + static_cast<std::ptrdiff_t>(end),
                kNegInf);
      continue;
    }
    for (size_t i = begin; i < end; ++i) {
      if (((bits >> (i - begin)) & 1) == 0) logits[i] = kNegInf;
    }
  }
}

}  // namespace moe
