// Checks of public requests where they enter the coordinator, and their translation into token
// ids and worker assignments. Every error is INVALID_ARGUMENT with a message that starts with the
// offending field's path (e.g. "sampling.top_p: ..."), so a client can tell what to fix.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "moe/v1/cluster.pb.h"
#include "moe/v1/inference.pb.h"
#include "coordinator/chat_template_info.h"
#include "coordinator/score_windows.h"
#include "coordinator/text_codec.h"
#include "worker/model/config.h"

namespace moe {

// What requests are checked against.
struct RequestModel {
  const ModelConfig& config;
  const TextCodec* tokenizer = nullptr;  // null: the model folder has no tokenizer.model
  ChatTemplateInfo chat{};
  int64_t max_model_len = 0;  // moe-coordinator --max-model-len; 0: the config's context_length()
  bool priority_scheduling = false;  // moe-coordinator --scheduling-policy priority
  std::string name{};  // moe-coordinator --served-model-name, else the model folder's name
  // The model's recommended sampling defaults (generation_config.json, moe-coordinator
  // --generation-config): only the fields it sets, under what a request sets.
  v1::SamplingParams default_sampling{};
  // A cap on every request's max_tokens (vLLM's override_max_tokens: the max_new_tokens of
  // --generation-config DIR or --override-generation-config); 0: none.
  uint32_t max_tokens_cap = 0;
  // End ids beyond the model's (config.json's and its folder's generation_config.json's): the
  // tokenizer's EOS where those lack it, and --generation-config DIR's. Every request stops at them
  // too, as stop_token_ids, unless it sets ignore_eos (vLLM's; a finish at the tokenizer's EOS names
  // no stop_reason, at DIR's the id).
  std::vector<int32_t> extra_stop_token_ids{};
  // The positions a request may use: prompt + max_tokens, a scoring window.
  int64_t context() const {
    return max_model_len > 0 ? std::min(max_model_len, config.context_length()) : config.context_length();
  }
};

inline constexpr uint32_t kDefaultMaxTokens = 16;
inline constexpr uint32_t kMaxLogprobs = 20;
inline constexpr uint32_t kMaxCompletions = 64;  // SamplingParams.n
inline constexpr int kMaxLogitBias = 1024;         // SamplingParams.logit_bias entries
inline constexpr size_t kMaxRequestIdLength = 256;
inline constexpr size_t kMaxCacheSaltLength = 256;
// Stop strings are matched on every text delta: bounded so that matching stays cheap.
inline constexpr int kMaxStopStrings = 64;
inline constexpr int kMaxBadWords = 64;  // SamplingParams.bad_words
inline constexpr size_t kMaxStopLength = 1024;

// How text becomes ids: prompts and score contexts get BOS as the tokenizer config says;
// continuations are appended to a context and get none.
enum class BosPolicy { kTokenizerConfig, kNone };

// The tokenizer's EOS where the model's end ids (config.json's, its folder's
// generation_config.json's) lack it: it ends generation too, as in vLLM and TGI. nullopt without a
// tokenizer or where they list it.
std::optional<int32_t> TokenizerEosBeyondConfig(const ModelConfig& config, const TextCodec* tokenizer);

// InvalidArgument "<field>[i]: token id X is outside the vocabulary [0, V)" for the first bad id.
absl::Status CheckTokenIds(std::span<const int32_t> ids, int64_t vocab_size, const std::string& field);

// Text (tokenised) or ids (checked against the vocabulary). Empty text or ids are refused unless
// `allow_empty` (a score context given as "" still yields BOS).
absl::StatusOr<std::vector<int32_t>> ResolvePrompt(const v1::Prompt& prompt, const RequestModel& model,
                                                   const std::string& field, BosPolicy bos,
                                                   bool allow_empty = false);

// Tokenize's text -> ids, BOS as asked (default: the tokenizer config), EOS as the tokenizer config
// says unless `add_eos` is false; with `parse_special_tokens` special tokens written in the text
// become their ids (TextCodec::EncodeWithSpecialTokens). `spans`, when given, gets each id's bytes
// of `text` (TextCodec::Encode's; BOS and EOS [0, 0)).
std::vector<int32_t> Tokenize(const TextCodec& tok, const std::string& text, std::optional<bool> add_bos,
                              bool parse_special_tokens = false, std::vector<TextSpan>* spans = nullptr,
                              bool add_eos = true);

struct GenerateJob {
  v1::Assign assign;              // kind, prompt and sampling filled; seq_id is the scheduler's
  std::vector<std::string> stop;  // stop strings, matched on the generated text
  bool include_stop = false;      // the text keeps the stop string or stop token that ended it
  bool skip_special_tokens = true;  // false: control tokens appear in the text as their pieces
  bool want_logprobs = false;     // SamplingParams.logprobs was set
  uint32_t n = 1;                 // completions; completion i runs `assign` with seed + i
  int64_t reserve_positions() const { return assign.prompt_size() + assign.max_tokens(); }
  // The assignment of completion i (the prompt's logprobs are the request's: completion 0 computes them).
  v1::Assign CompletionAssign(uint32_t i) const {
    v1::Assign a = assign;
    a.set_seed(assign.seed() + i);
    if (i > 0) a.clear_prompt_logprobs();
    return a;
  }
};

absl::StatusOr<GenerateJob> ValidateGenerate(const v1::GenerateRequest& request, const RequestModel& model);

// One lm-evaluation-harness loglikelihood item: the tokens run through the model are
// context + continuation; the answer is about tokens[context_tokens:].
struct ScoreJob {
  std::vector<int32_t> tokens;
  int64_t context_tokens = 0;
};

absl::StatusOr<std::vector<ScoreJob>> ValidateScore(const v1::ScoreRequest& request, const RequestModel& model);

// A text of a ScoreRolling request: its token ids and the windows they are scored in.
struct RollingText {
  std::vector<int32_t> ids;
  std::vector<ScoreWindow> windows;  // RollingWindows(ids.size(), the model's context)
};

// The token ids of every text (BOS per the tokenizer config for text) and their windows; any
// length (long texts are scored in rolling windows). Texts are encoded one by one, and the windows
// counted as they come: more than `max_windows` (the coordinator's queue, --max-waiting) are
// refused at the first text that goes over, before the texts after it are encoded.
absl::StatusOr<std::vector<RollingText>> ValidateScoreRolling(const v1::ScoreRollingRequest& request,
                                                              const RequestModel& model,
                                                              int64_t max_windows = std::numeric_limits<int64_t>::max());

}  // namespace moe
