#include "worker/logits_penalties.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>
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
  std::unordered_set<int32_t> biased;
  for (const auto& [id, bias] : logit_bias) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("logit_bias[", id, "]: token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
    if (!biased.insert(id).second) return absl::InvalidArgumentError(absl::StrCat("logit_bias[", id, "]: repeated"));
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
  for (const auto& [id, bias] : p_.logit_bias) adjust_[Entry(id)].bias = bias;  // ids distinct (Validate)
  if (p_.repetition_penalty != 1.0f) {
    for (int32_t id : prompt) adjust_[Entry(id)].repetition = p_.repetition_penalty;
  }
}

size_t LogitsPenalties::Entry(int32_t id) {
  const auto [it, fresh] = entry_of_.try_emplace(id, adjust_.size());
  if (fresh) {
    adjust_.push_back(LogitAdjustment{.id = id});
    output_count_.push_back(0);
  }
  return it->second;
}

void LogitsPenalties::Add(int32_t token) {
  ++generated_;
  if (!p_.bad_words.empty()) output_.push_back(token);
  if (p_.repetition_penalty != 1.0f) adjust_[Entry(token)].repetition = p_.repetition_penalty;
  if (p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f) {
    const size_t k = Entry(token);
    adjust_[k].frequency = p_.frequency_penalty * static_cast<float>(++output_count_[k]);
    adjust_[k].presence = p_.presence_penalty;
  }
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
  if (Bans()) {
    TokenMask allowed(static_cast<int64_t>(logits.size()));
    Restrict(allowed);
    MaskLogits(allowed.words(), logits);
  }
  for (const LogitAdjustment& a : adjust_) {
    if (a.id < 0 || static_cast<size_t>(a.id) >= logits.size()) continue;
    float& l = logits[static_cast<size_t>(a.id)];
    l = Adjusted(l, a);
  }
}

}  // namespace moe
