#include "coordinator/generate_output.h"

#include <algorithm>
#include <utility>
#include <vector>

namespace moe {

GenerateOutput::GenerateOutput(const GenerateJob& job, const RequestModel& model, std::string request_id)
    : model_(model),
      request_id_(std::move(request_id)),
      want_logprobs_(job.want_logprobs),
      prompt_tokens_(static_cast<uint32_t>(job.assign.prompt_size())),
      min_tokens_(job.assign.min_tokens()),
      include_stop_(job.include_stop),
      skip_special_tokens_(job.skip_special_tokens),
      stop_(job.stop, job.include_stop) {
  stop_token_ids_.assign(job.assign.stop_token_ids().begin(), job.assign.stop_token_ids().end());
  if (!job.assign.ignore_eos()) {
    eos_ids_.assign(model.config.eos_token_ids.begin(), model.config.eos_token_ids.end());
    if (model.tokenizer != nullptr) end_of_sequence_ = model.tokenizer->eos_id();
  }
  if (job.assign.has_prompt_logprobs()) prompt_.assign(job.assign.prompt().begin(), job.assign.prompt().end());
  if (model.tokenizer != nullptr) {
    const std::vector<int32_t> prompt(job.assign.prompt().begin(), job.assign.prompt().end());
    detok_ = model.tokenizer->NewStream(prompt, skip_special_tokens_);
  }
}

std::string GenerateOutput::TokenText(int32_t id) const {
  if (model_.tokenizer == nullptr) return {};
  const int32_t ids[1] = {id};
  return model_.tokenizer->Decode(ids, skip_special_tokens_);
}

std::string GenerateOutput::TokenBytes(int32_t id) const {
  return model_.tokenizer == nullptr ? std::string() : model_.tokenizer->TokenBytes(id);
}

namespace {

bool Contains(const std::vector<int32_t>& ids, int32_t id) { return std::find(ids.begin(), ids.end(), id) != ids.end(); }

}  // namespace

void GenerateOutput::AddTop(const v1::TopAlternatives& alts, v1::TokenLogprob& lp) const {
  for (const v1::WorkerTopLogprob& alt : alts.alternatives()) {
    if (alt.token_id() < 0 || alt.token_id() >= model_.config.vocab_size) continue;  // not the worker's to crash us
    v1::TopLogprob* t = lp.add_top();
    t->set_token_id(alt.token_id());
    t->set_logprob(alt.logprob());
    t->set_text(TokenText(alt.token_id()));
    t->set_token_bytes(TokenBytes(alt.token_id()));
  }
}

bool GenerateOutput::EndsOutput(int32_t id) const { return Contains(stop_token_ids_, id) || Contains(eos_ids_, id); }

absl::StatusOr<bool> GenerateOutput::AddTokens(const v1::Tokens& tokens, v1::GenerateResponse& out) {
  out.set_request_id(request_id_);
  if (stopped_) return true;
  const int64_t vocab = model_.config.vocab_size;
  const int n = tokens.token_ids_size();
  // The worker is trusted for sampling but not for memory safety: decoding a bad id would throw.
  for (int i = 0; i < n; ++i) {
    if (tokens.token_ids(i) < 0 || tokens.token_ids(i) >= vocab) {
      return absl::InternalError(absl::StrCat("worker sent token id ", tokens.token_ids(i), " outside the vocabulary"));
    }
  }
  if (want_logprobs_ && tokens.logprobs_size() != n) {
    return absl::InternalError(absl::StrCat("worker sent ", tokens.logprobs_size(), " logprobs for ", n, " tokens"));
  }
  // The worker's count of prompt tokens its prefix cache held, at most the prompt's, from the first
  // tokens only (a sequence resumed on a new worker job reports again, for its longer context).
  if (completion_tokens_ == 0) cached_prompt_tokens_ = std::min(tokens.cached_prompt_tokens(), prompt_tokens_);
  for (int i = 0; i < n; ++i) {
    const int32_t id = tokens.token_ids(i);
    last_token_ = id;
    ++completion_tokens_;
    out.add_token_ids(id);
    // The token that ends the output adds no text unless asked (the worker sends nothing after it).
    const bool silent = !include_stop_ && EndsOutput(id);
    const std::string delta = detok_ != nullptr && !silent ? detok_->Push(id) : std::string();
    if (want_logprobs_) {
      v1::TokenLogprob* lp = out.add_logprobs();
      lp->set_token_id(id);
      lp->set_logprob(tokens.logprobs(i));
      lp->set_text(silent ? TokenText(id) : delta);
      lp->set_token_bytes(TokenBytes(id));
      if (i < tokens.top_size()) AddTop(tokens.top(i), *lp);
    }
    if (detok_ == nullptr) continue;
    // A stop string cannot end in the first min_tokens tokens' text, but may start there (vLLM's).
    StopMatcher::Output text = stop_.Push(delta, /*may_stop=*/completion_tokens_ > min_tokens_);
    out.mutable_text()->append(text.text);
    if (text.stopped) {
      stopped_ = true;
      return true;
    }
  }
  return false;
}

absl::Status GenerateOutput::AddPromptLogprobs(const v1::PromptLogprobs& p, v1::GenerateResponse& out) {
  out.set_request_id(request_id_);
  const int n = prompt_.empty() ? 0 : static_cast<int>(prompt_.size()) - 1;
  if (p.logprobs_size() != n || p.ranks_size() != n || (p.top_size() != 0 && p.top_size() != n)) {
    return absl::InternalError(absl::StrCat("worker sent ", p.logprobs_size(), " prompt logprobs, ", p.ranks_size(),
                                            " ranks and ", p.top_size(), " top lists for ", n, " prompt tokens"));
  }
  for (int i = 0; i < n; ++i) {
    v1::TokenLogprob* lp = out.add_prompt_logprobs();
    const int32_t id = prompt_[static_cast<size_t>(i) + 1];
    lp->set_token_id(id);
    lp->set_logprob(p.logprobs(i));
    lp->set_rank(p.ranks(i));
    lp->set_text(TokenText(id));
    if (i < p.top_size()) AddTop(p.top(i), *lp);
  }
  return absl::OkStatus();
}

void GenerateOutput::Finish(v1::FinishReason reason, v1::GenerateResponse& out) {
  out.set_request_id(request_id_);
  if (!stopped_ && detok_ != nullptr) {
    // The detokenizer's held-back bytes can still complete a stop string (unless they are the first
    // min_tokens tokens').
    StopMatcher::Output text = stop_.Push(detok_->Flush(), /*may_stop=*/completion_tokens_ > min_tokens_);
    out.mutable_text()->append(text.text);
    if (text.stopped) {
      stopped_ = true;
      reason = v1::FINISH_REASON_STOP_SEQUENCE;
    } else {
      out.mutable_text()->append(stop_.Flush());
    }
  }
  out.set_finish_reason(reason);
  if (reason == v1::FINISH_REASON_STOP_SEQUENCE && stop_.stopped()) {
    out.set_stop_string(stop_.matched());
  } else if (reason == v1::FINISH_REASON_STOP && last_token_ != end_of_sequence_ && EndsOutput(last_token_)) {
    out.set_stop_token_id(last_token_);  // (the end-of-sequence token has no stop reason, as in vLLM)
  }
  out.mutable_usage()->set_prompt_tokens(prompt_tokens_);
  out.mutable_usage()->set_completion_tokens(completion_tokens_);
  out.mutable_usage()->set_cached_prompt_tokens(cached_prompt_tokens_);
}

v1::FinishReason PublicFinishReason(v1::Finished::Reason r) {
  switch (r) {
    case v1::Finished::REASON_LENGTH:
      return v1::FINISH_REASON_LENGTH;
    case v1::Finished::REASON_STOP:
      return v1::FINISH_REASON_STOP;
    case v1::Finished::REASON_CANCELLED:
      return v1::FINISH_REASON_CANCELLED;
    default:
      return v1::FINISH_REASON_ERROR;
  }
}

}  // namespace moe
