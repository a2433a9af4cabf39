#include "worker/server/served_sequence.h"

#include <algorithm>

#include "worker/step_engine.h"

namespace moe {

std::vector<int32_t> ServedSequence::ContextTokens(int64_t begin, int64_t n) const {
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(n));
  for (int64_t i = begin; i < begin + n; ++i) {
    out.push_back(i < prompt_size() ? assign.prompt(static_cast<int>(i)) : generated[static_cast<size_t>(i - prompt_size())]);
  }
  return out;
}

void ServedSequence::Restart() {
  fed = 0;
  if (is_score()) {
    const uint64_t id = scored.seq_id();
    scored.Clear();
    scored.set_seq_id(id);
  }
  if (!prompt_logprobs_sent) {
    const uint64_t id = prompt_logprobs.seq_id();
    prompt_logprobs.Clear();
    prompt_logprobs.set_seq_id(id);
  }
}

int64_t ServedSequence::whole_rows_remaining() const {
  if (is_score()) return feed_remaining();
  if (wants_prompt_logprobs()) return std::max<int64_t>(0, prompt_size() - 1 - fed);
  return 0;
}

bool ServedSequence::NextAllowed(TokenMask& allowed) {
  // The constraint first: it allows the end ids once the output is complete, which min_tokens may still
  // hold back.
  if (constraint) constraint->Allowed(allowed);
  if (penalties) penalties->Restrict(allowed);
  return allowed.any();
}

void ServedSequence::Accept(int32_t token) {
  generated.push_back(token);
  if (penalties) penalties->Add(token);
  if (constraint) constraint->Add(token);
}

std::optional<moe::v1::Finished::Reason> ServedSequence::EndReason(const ModelConfig& c) const {
  if (generated.empty()) return std::nullopt;
  const int32_t tok = generated.back();
  const bool stop_token =
      std::find(assign.stop_token_ids().begin(), assign.stop_token_ids().end(), tok) != assign.stop_token_ids().end();
  if ((c.is_eos(tok) && !assign.ignore_eos()) || stop_token) return moe::v1::Finished::REASON_STOP;
  if (static_cast<int64_t>(generated.size()) >= static_cast<int64_t>(assign.max_tokens()) ||
      context_size() > c.context_length()) {
    return moe::v1::Finished::REASON_LENGTH;
  }
  return std::nullopt;
}

int64_t WorstCasePositions(const moe::v1::Assign& a, const ModelConfig& c) {
  const int64_t prompt = a.prompt_size();
  if (a.kind() == moe::v1::Assign::KIND_SCORE) return prompt;
  return std::min<int64_t>(prompt + static_cast<int64_t>(a.max_tokens()), c.context_length());
}

SamplingParams SamplingOf(const moe::v1::Assign& a) {
  SamplingParams p;
  p.temperature = a.temperature();
  p.top_k = a.top_k();
  p.top_p = a.top_p();
  p.min_p = a.min_p();
  p.seed = a.seed();
  return p;
}

PenaltyParams PenaltiesOf(const moe::v1::Assign& a) {
  PenaltyParams p;
  if (a.has_repetition_penalty()) p.repetition_penalty = a.repetition_penalty();
  p.presence_penalty = a.presence_penalty();
  p.frequency_penalty = a.frequency_penalty();
  p.min_tokens = a.min_tokens();
  for (const auto& [id, bias] : a.logit_bias()) p.logit_bias.emplace_back(id, bias);
  std::sort(p.logit_bias.begin(), p.logit_bias.end());  // a map's order is unspecified; keep it fixed
  p.allowed_token_ids.assign(a.allowed_token_ids().begin(), a.allowed_token_ids().end());  // Validate checks the order
  for (const moe::v1::TokenSequence& w : a.bad_words()) p.bad_words.emplace_back(w.ids().begin(), w.ids().end());
  return p;
}

std::vector<int32_t> EndIds(const moe::v1::Assign& a, const ModelConfig& c) {
  std::vector<int32_t> ids(a.stop_token_ids().begin(), a.stop_token_ids().end());
  if (!a.ignore_eos()) ids.insert(ids.end(), c.eos_token_ids.begin(), c.eos_token_ids.end());
  return ids;
}

namespace {

// InvalidArgument "<field>: token id X at index i is outside the vocabulary ..." for the first id
// outside the model's vocabulary.
absl::Status CheckTokenIds(const char* field, const google::protobuf::RepeatedField<int32_t>& ids,
                           const ModelConfig& c) {
  for (int i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": token id ", ids[i], " at index ", i,
                                                     " is outside the vocabulary [0, ", c.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateAssign(const moe::v1::Assign& a, const ModelConfig& c) {
  if (a.kind() != moe::v1::Assign::KIND_GENERATE && a.kind() != moe::v1::Assign::KIND_SCORE) {
    return absl::InvalidArgumentError(absl::StrCat("kind: unknown value ", static_cast<int>(a.kind())));
  }
  if (a.prompt_size() == 0) return absl::InvalidArgumentError("prompt: empty");
  MOE_RETURN_IF_ERROR(CheckTokenIds("prompt", a.prompt(), c));
  if (a.prompt_size() > c.context_length()) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", a.prompt_size(), " tokens exceed the context of ",
                                                   c.context_length()));
  }
  if (a.kind() == moe::v1::Assign::KIND_GENERATE) {
    MOE_RETURN_IF_ERROR(SamplingOf(a).Validate());
    MOE_RETURN_IF_ERROR(PenaltiesOf(a).Validate(c.vocab_size));
  } else if (a.resume_tokens_size() > 0) {
    return absl::InvalidArgumentError("resume_tokens: only a generation resumes");
  }
  if (a.top_logprobs() > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs: ", a.top_logprobs(), " above ", kMaxTopLogprobs));
  }
  if (a.prompt_logprobs() > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("prompt_logprobs: ", a.prompt_logprobs(), " above ", kMaxTopLogprobs));
  }
  if (static_cast<int64_t>(a.resume_tokens_size()) > static_cast<int64_t>(a.max_tokens())) {
    return absl::InvalidArgumentError(absl::StrCat("resume_tokens: ", a.resume_tokens_size(),
                                                   " tokens, more than max_tokens ", a.max_tokens()));
  }
  return CheckTokenIds("resume_tokens", a.resume_tokens(), c);
}

}  // namespace moe
