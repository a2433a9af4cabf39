// Adjustments of a generation's raw logits before sampling, as vLLM applies them (and, for those
// Hugging Face has, as its logits processors do): the allowed ids, min_tokens and the logit bias,
// then the repetition penalty, then the frequency and presence penalties. Temperature, top-k,
// top-p and min-p follow in SampleToken.
//
// - allowed_token_ids (vLLM's): when non-empty, every other id gets -inf.
// - bad_words (vLLM's, as token sequences): the last id of a sequence gets -inf when the output
//   ends with the ids before it (always, for a sequence of one id).
// - logit_bias (OpenAI's): a fixed amount added to chosen ids' logits at every step
//   (SequenceBiasLogitsProcessor with one-token sequences).
// - min_tokens: while fewer tokens than this were generated, the end ids (EOS unless ignore_eos,
//   and the request's stop token ids) get -inf (MinNewTokensLengthLogitsProcessor).
// - repetition_penalty r: each distinct id of the prompt and the output so far has its logit
//   divided by r when positive, multiplied by r when negative (RepetitionPenaltyLogitsProcessor,
//   in float as there).
// - frequency_penalty f and presence_penalty p (OpenAI's): an id that occurs n > 0 times in the
//   output loses f * n + p.
//
// The state is per sequence and grows with its output, so a step costs O(distinct ids seen), not
// O(prompt + output).
#pragma once

#include <cstdint>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/logit_adjustment.h"
#include "common/status.h"
#include "worker/token_mask.h"

namespace moe {

struct PenaltyParams {
  float repetition_penalty = 1.0f;  // > 0; 1 = off
  float presence_penalty = 0.0f;    // [-2, 2]
  float frequency_penalty = 0.0f;   // [-2, 2]
  uint32_t min_tokens = 0;
  std::vector<std::pair<int32_t, float>> logit_bias = {};  // (id, bias), ids in the vocabulary
  std::vector<int32_t> allowed_token_ids = {};  // empty: all; else sorted, distinct, in the vocabulary
  std::vector<std::vector<int32_t>> bad_words = {};  // non-empty id sequences in the vocabulary

  // Whether any of them changes a logit.
  bool any() const {
    return repetition_penalty != 1.0f || presence_penalty != 0.0f || frequency_penalty != 0.0f || min_tokens > 0 ||
           !logit_bias.empty() || !allowed_token_ids.empty() || !bad_words.empty();
  }
  // InvalidArgument "<field>: <what>" for the first bad field: repetition_penalty not finite and
  // > 0; a presence or frequency penalty outside [-2, 2] (or NaN); a logit_bias id outside
  // [0, vocab_size) or repeated, or a bias outside [-100, 100] ("logit_bias[id]: ..."); an allowed id outside
  // the vocabulary ("allowed_token_ids[i]: ...", i its index in the sorted list) or repeated; an
  // empty bad word or one with an id outside the vocabulary ("bad_words[i]: ...").
  absl::Status Validate(int64_t vocab_size) const;
};

class LogitsPenalties {
 public:
  // `end_ids`: the ids min_tokens holds back. Params must be valid.
  LogitsPenalties(const PenaltyParams& p, std::span<const int32_t> prompt, std::vector<int32_t> end_ids);

  // Adjusts `logits` (one row over the vocabulary, ids outside it ignored) for the next token:
  // Restrict's bans, then Adjustments' changes. An engine that samples the row where it is computed
  // takes the two instead (SampleNext: allowed, adjust).
  void Apply(std::span<float> logits) const;
  // Bans in `allowed` the ids Apply sets to -inf for the next token: allowed_token_ids, min_tokens,
  // bad_words.
  void Restrict(TokenMask& allowed) const;
  // Whether Restrict may ban anything for the next token.
  bool Bans() const { return !p_.allowed_token_ids.empty() || generated_ < p_.min_tokens || !p_.bad_words.empty(); }
  // The changed values for the next token, one entry per id (in the order the ids were first
  // met): the logit bias, the repetition penalty of the ids seen, the frequency and presence
  // penalties of the output's ids. Empty when none applies. Kept up to date by Add, so a step
  // costs no rebuild.
  const std::vector<LogitAdjustment>& Adjustments() const { return adjust_; }
  // The token just generated.
  void Add(int32_t token);

 private:
  PenaltyParams p_;
  std::vector<int32_t> end_ids_;
  uint32_t generated_ = 0;
  std::vector<int32_t> output_;  // the generated ids, kept only for bad_words
  std::vector<LogitAdjustment> adjust_;              // one entry per id a value rule touches
  std::vector<uint32_t> output_count_;               // per entry: the id's occurrences in the output
  std::unordered_map<int32_t, size_t> entry_of_;     // id -> its entry
  size_t Entry(int32_t id);                          // the index of the id's entry, added (rules off) if new
};

}  // namespace moe
