// One sequence a worker serves, from the coordinator's Assign to its Finished: what was asked, how
// far the engine has got, and what it produced.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "common/status.h"
#include "moe/v1/cluster.pb.h"
#include "worker/json_constraint.h"
#include "worker/logits_penalties.h"
#include "worker/model/config.h"
#include "worker/sampler.h"

namespace moe {

struct ServedSequence {
  moe::v1::Assign assign;
  SamplingParams sampling;         // generation only
  std::optional<LogitsPenalties> penalties;  // generation with penalties or min_tokens
  // What its output must be (Assign.json_object / json_schema / choices / regex / grammar), and the
  // mask cache of that spec, kept while the sequence uses it.
  std::unique_ptr<OutputConstraint> constraint;
  std::shared_ptr<const void> constraint_masks;
  // Its context is the prompt, then the generated tokens; the engine has been handed the first
  // `fed` of them (prompt chunks, then one generated token a step; from 0 again after a preemption).
  int64_t fed = 0;
  // Prompt tokens its first admission found in the prefix cache (reported with its first token; -1
  // before it is admitted: a preemption's re-admission finds its own blocks, which do not count).
  int64_t cached_prompt_tokens = -1;
  // When its Assign reached the serving loop, and at its first admission Assign.queued_seconds plus
  // the wait since (reported with its first token: the coordinator's queue-time metrics).
  std::chrono::steady_clock::time_point assigned_at = std::chrono::steady_clock::now();
  float queued_seconds = 0;
  std::vector<int32_t> generated;  // sampled token ids
  // The engine samples its next token under a mask that allows no id (NextAllowed was false): the
  // pick is meaningless, the output ends instead.
  bool none_allowed = false;
  moe::v1::Scored scored;          // scoring: logprobs (and is_argmax) gathered chunk by chunk
  // Assign.prompt_logprobs: gathered chunk by chunk like scoring's, sent once before the first
  // token (not again after a preemption).
  moe::v1::PromptLogprobs prompt_logprobs;
  bool prompt_logprobs_sent = false;

  bool is_score() const { return assign.kind() == moe::v1::Assign::KIND_SCORE; }
  int64_t prompt_size() const { return assign.prompt_size(); }
  int64_t context_size() const { return prompt_size() + static_cast<int64_t>(generated.size()); }
  // Context tokens [begin, begin + n).
  std::vector<int32_t> ContextTokens(int64_t begin, int64_t n) const;
  // Context tokens not yet handed to the engine: the rest of the prompt, the last generated token
  // while it decodes, or after a preemption the whole context. The chunk that hands over the last
  // of them gives the next token.
  int64_t feed_remaining() const { return context_size() - fed; }
  // Whether it decodes: only its last generated token is left to hand over.
  bool decoding() const { return !generated.empty() && feed_remaining() == 1; }
  // Whether it still owes its prompt's logprobs: then the prompt is computed whole (no cached
  // prefix), its first n-1 tokens in chunks that return every row, the last one alone.
  bool wants_prompt_logprobs() const {
    return assign.has_prompt_logprobs() && !prompt_logprobs_sent && prompt_size() > 1;
  }
  // Context tokens to hand over in rows that all come back (scoring's prompt, or the prompt
  // tokens before the last of one that wants its logprobs); 0 when none are left.
  int64_t whole_rows_remaining() const;
  // Back to nothing handed over (a preemption): its generated tokens stay, scoring starts again.
  void Restart();
  // Whether anything restricts which ids its next token may be (an output constraint, or penalties
  // that ban ids now).
  bool constrained() const { return constraint != nullptr || (penalties.has_value() && penalties->Bans()); }
  // Narrows `allowed` (the model's vocabulary) to the ids its next token may be: its output
  // constraint's, less the ids its penalties ban. False when it leaves none.
  bool NextAllowed(TokenMask& allowed);
  // Appends a generated token: to its output, its penalties' counts and its constraint's state.
  void Accept(int32_t token);
  // Whether its output ends with its last generated token: REASON_STOP for an end id (an EOS unless
  // ignore_eos, or a stop token id), REASON_LENGTH at max_tokens or once its context passes the
  // model's (the last token is never fed back); nullopt to go on.
  std::optional<moe::v1::Finished::Reason> EndReason(const ModelConfig& c) const;
};

// The most token positions a sequence can occupy: prompt + max_tokens, capped at the context
// (generation stops at the context end); the prompt alone for scoring.
int64_t WorstCasePositions(const moe::v1::Assign& a, const ModelConfig& c);

// Checks an Assign against the model: a non-empty prompt of in-vocabulary ids within the context,
// a known kind, and valid sampling parameters. InvalidArgument naming the field.
absl::Status ValidateAssign(const moe::v1::Assign& a, const ModelConfig& c);

// The sampling parameters of a generation Assign (temperature 0 = greedy).
SamplingParams SamplingOf(const moe::v1::Assign& a);
// Its penalties and min_tokens (an absent repetition_penalty is 1, off).
PenaltyParams PenaltiesOf(const moe::v1::Assign& a);
// The ids min_tokens holds back: the model's EOS ids unless ignore_eos, and the stop token ids.
std::vector<int32_t> EndIds(const moe::v1::Assign& a, const ModelConfig& c);

}  // namespace moe
