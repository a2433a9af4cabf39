// Turns one sequence's worker results (Tokens, then Finished) into the public stream's messages:
// UTF-8 safe text deltas (StreamingDetokenizer), stop sequences cut out of the text
// (StopMatcher; none ending in the text of the first min_tokens tokens, though one may start
// there, as vLLM looks back from the new text), the text of the stop
// token id or EOS that ended the output left out too (as vLLM; both kept with
// include_stop_str_in_output), log-probabilities with the text of each alternative, usage and
// finish reason. Control tokens add no text unless skip_special_tokens is false (vLLM's field).
// No I/O: the Generate handler feeds it and writes what it fills in.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/status.h"
#include "coordinator/stop_matcher.h"
#include "coordinator/validation.h"
#include "moe/v1/cluster.pb.h"
#include "moe/v1/inference.pb.h"

namespace moe {

// Prompt logprobs go out in messages of at most this many positions (GenerateResponse.prompt_logprobs).
inline constexpr int kPromptLogprobsPerMessage = 1024;

class GenerateOutput {
 public:
  // `tokenizer` may be null (no text then); it must outlive this object.
  GenerateOutput(const GenerateJob& job, const RequestModel& model, std::string request_id);

  // Appends the tokens of `tokens` (their ids, text delta and, when asked, log-probabilities) to
  // `out`. Returns true when a stop sequence completed: the tokens after the one that completed
  // it are dropped and the caller finishes with FINISH_REASON_STOP_SEQUENCE. Internal error when
  // the worker sent an id outside the vocabulary or mismatched logprob lists.
  absl::StatusOr<bool> AddTokens(const v1::Tokens& tokens, v1::GenerateResponse& out);

  // Fills `out.prompt_logprobs` from the worker's (one per prompt token after the first, each
  // token's text decoded alone). Internal error when the worker's lists do not fit the prompt.
  absl::Status AddPromptLogprobs(const v1::PromptLogprobs& p, v1::GenerateResponse& out);

  // The last message's extras: text still held back (unless a stop sequence ended it), finish
  // reason, the stop string or stop token id that ended it (vLLM's stop_reason), and usage.
  void Finish(v1::FinishReason reason, v1::GenerateResponse& out);

  uint32_t prompt_tokens() const { return prompt_tokens_; }
  uint32_t completion_tokens() const { return completion_tokens_; }
  const std::string& request_id() const { return request_id_; }

 private:
  std::string TokenText(int32_t id) const;
  std::string TokenBytes(int32_t id) const;  // the raw bytes `id` adds to a text (TextCodec::TokenBytes)
  // The worker's alternatives into `lp.top`, each with its text (ids outside the vocabulary dropped).
  void AddTop(const v1::TopAlternatives& alts, v1::TokenLogprob& lp) const;
  // Whether `id` ends the output on the worker (a stop token id, or EOS unless ignore_eos).
  bool EndsOutput(int32_t id) const;

  const RequestModel& model_;
  std::string request_id_;
  bool want_logprobs_;
  std::vector<int32_t> prompt_;  // with prompt logprobs
  uint32_t prompt_tokens_;
  uint32_t completion_tokens_ = 0;
  uint32_t cached_prompt_tokens_ = 0;  // from the worker's first Tokens message
  uint32_t min_tokens_;  // a stop string may end only in the text of the tokens after these
  bool include_stop_;  // include_stop_str_in_output
  bool skip_special_tokens_;  // false: control tokens' texts in the text and in logprobs
  std::vector<int32_t> stop_token_ids_, eos_ids_;  // the ids that end the output (eos_ids_ empty with ignore_eos)
  // The tokenizer's end-of-sequence id, the one end id whose finish names no stop_reason (vLLM's
  // request eos_token_id; the model's other end ids, as vLLM moves the generation config's into
  // stop_token_ids, are named); -1 with ignore_eos, and without a tokenizer, where vLLM has no
  // eos_token_id and names every end id.
  int32_t end_of_sequence_ = -1;
  int32_t last_token_ = -1;
  std::unique_ptr<TextStream> detok_;  // null without a tokenizer
  StopMatcher stop_;
  bool stopped_ = false;
};

// The public finish reason of a worker's Finished reason.
v1::FinishReason PublicFinishReason(v1::Finished::Reason r);

}  // namespace moe
