#include "worker/logits_penalties.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

namespace moe {
namespace {

bool InPenaltyRange(float x) { return x >= -2.0f && x <= 2.0f; }  // false for NaN

}  // namespace

absl::Status PenaltyParams::Validate(int64_t vocab_size) const {
  if (!(std::isfinite(repetition_penalty) && repetition_penalty > 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty: must be finite and > 0 (1 = off), got ", repetition_penalty));
  }
  if (!InPenaltyRange(presence_penalty)) {
    return absl::InvalidArgumentError(absl::StrCat("presence_penalty: must be in [-2, 2], got ", presence_penalty));
  }
  if (!InPenaltyRange(frequency_penalty)) {
    return absl::InvalidArgumentError(absl::StrCat("frequency_penalty: must be in [-2, 2], got ", frequency_penalty));
  }
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("logit_bias[", id, "]: token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
    if (!(bias >= -100.0f && bias <= 100.0f)) {
      return absl::InvalidArgumentError(absl::StrCat("logit_bias[", id, "]: must be in [-100, 100], got ", bias));
    }
  }
  for (size_t i = 0; i < allowed_token_ids.size(); ++i) {
    const int32_t id = allowed_token_ids[i];
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("allowed_token_ids[", i, "]: token id ", id,
                                                     " is outside the vocabulary [0, ", vocab_size, ")"));
    }
    if (i > 0 && allowed_token_ids[i - 1] >= id) {
      return absl::InvalidArgumentError(absl::StrCat("allowed_token_ids[", i, "]: ", id, " is repeated or out of order"));
    }
  }
  for (size_t i = 0; i < bad_words.size(); ++i) {
    if (bad_words[i].empty()) return absl::InvalidArgumentError(absl::StrCat("bad_words[", i, "]: no token ids"));
    for (int32_t id : bad_words[i]) {
      if (id < 0 || id >= vocab_size) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad_words[", i, "]: token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
      }
    }
  }
  return absl::OkStatus();
}

LogitsPenalties::LogitsPenalties(const PenaltyParams& p, std::span<const int32_t> prompt, std::vector<int32_t> end_ids)
    : p_(p), end_ids_(std::move(end_ids)) {
  if (p_.repetition_penalty != 1.0f) seen_.insert(prompt.begin(), prompt.end());
}

void LogitsPenalties::Add(int32_t token) {
  ++generated_;
  if (!p_.bad_words.empty()) output_.push_back(token);
  if (p_.repetition_penalty != 1.0f) seen_.insert(token);
  if (p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) ++in_output_[token];
}

void LogitsPenalties::Restrict(TokenMask& allowed) const {
  if (!p_.allowed_token_ids.empty()) {
    TokenMask only(allowed.size());
    only.BanAll();
    for (int32_t id : p_.allowed_token_ids) only.Allow(id);
    allowed.KeepFirst(only.words(), allowed.size());
  }
  if (generated_ < p_.min_tokens) {
    for (int32_t id : end_ids_) allowed.Ban(id);
  }
  for (const std::vector<int32_t>& word : p_.bad_words) {
    const size_t before = word.size() - 1;  // the ids that must end the output
    if (output_.size() >= before &&
        std::equal(word.begin(), word.end() - 1, output_.end() - static_cast<std::ptrdiff_t>(before))) {
      allowed.Ban(word.back());
    }
  }
}

void LogitsPenalties::Apply(std::span<float> logits) const {
  const auto in_vocab = [&](int32_t id) { return id >= 0 && static_cast<size_t>(id) < logits.size(); };
  if (!p_.allowed_token_ids.empty() || generated_ < p_.min_tokens || !p_.bad_words.empty()) {
    TokenMask allowed(static_cast<int64_t>(logits.size()));
    Restrict(allowed);
    MaskLogits(allowed.words(), logits);
  }
  for (const auto& [id, bias] : p_.logit_bias) {
    if (in_vocab(id)) logits[static_cast<size_t>(id)] += bias;
  }
  const float r = p_.repetition_penalty;
  for (int32_t id : seen_) {
    if (!in_vocab(id)) continue;
    float& l = logits[static_cast<size_t>(id)];
    l = l < 0.0f ? l * r : l / r;
  }
  for (const auto& [id, n] : in_output_) {
    if (!in_vocab(id)) continue;
    float& l = logits[static_cast<size_t>(id)];
    l -= p_.frequency_penalty * static_cast<float>(n);  // two steps, in float, as vLLM's
    l -= p_.presence_penalty;
  }
}

}  // namespace moe
