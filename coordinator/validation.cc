#include "coordinator/validation.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include <absl/strings/ascii.h>
#include <nlohmann/json.hpp>

#include "common/json_util.h"
#include "common/prefix_hash.h"
#include "common/random_seed.h"
#include "worker/gbnf.h"
#include "worker/json_schema.h"
#include "worker/logits_penalties.h"
#include "worker/sampler.h"

namespace moe {
namespace {

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
}

std::string Indexed(const std::string& field, size_t i) { return absl::StrCat(field, "[", i, "]"); }

// Ids of `text` without BOS (and without EOS, which a continuation must not end in either);
// `spans` as TextCodec::Encode's.
std::vector<int32_t> EncodeBare(const TextCodec& tok, const std::string& text, std::vector<TextSpan>* spans = nullptr) {
  std::vector<int32_t> ids = tok.Encode(text, spans);
  if (tok.add_bos() && !ids.empty() && ids.front() == tok.bos_id()) {
    ids.erase(ids.begin());
    if (spans != nullptr) spans->erase(spans->begin());
  }
  if (tok.add_eos() && !ids.empty() && ids.back() == tok.eos_id()) {
    ids.pop_back();
    if (spans != nullptr) spans->pop_back();
  }
  return ids;
}

absl::Status CheckFits(int64_t tokens, const RequestModel& model, const std::string& field) {
  const int64_t context = model.context();
  if (tokens > context) {
    return FieldError(field, absl::StrCat(tokens, " tokens exceed the model context of ", context, " positions"));
  }
  return absl::OkStatus();
}

// The bytes of `text` that bound its token count from below: all of them, a run of spaces as one
// where encoding collapses runs.
size_t CountedBytes(const TextCodec& tok, const std::string& text) {
  if (!tok.collapses_spaces()) return text.size();
  size_t counted = 0;
  for (size_t i = 0; i < text.size(); ++i) counted += text[i] != ' ' || i == 0 || text[i - 1] != ' ';
  return counted;
}

int64_t CeilDiv(size_t a, size_t b) { return static_cast<int64_t>((a + b - 1) / b); }

}  // namespace

std::optional<int32_t> TokenizerEosBeyondConfig(const ModelConfig& config, const TextCodec* tokenizer) {
  if (tokenizer == nullptr || tokenizer->eos_id() < 0 || config.is_eos(tokenizer->eos_id())) return std::nullopt;
  return tokenizer->eos_id();
}

absl::Status CheckTokenIds(std::span<const int32_t> ids, int64_t vocab_size, const std::string& field) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= vocab_size) {
      return FieldError(Indexed(field, i),
                        absl::StrCat("token id ", ids[i], " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ResolvePrompt(const v1::Prompt& prompt, const RequestModel& model,
                                                   const std::string& field, BosPolicy bos, bool allow_empty) {
  std::vector<int32_t> ids;
  switch (prompt.kind_case()) {
    case v1::Prompt::kText: {
      if (prompt.text().empty() && !allow_empty) return FieldError(field + ".text", "empty");
      if (model.tokenizer == nullptr) {
        return FieldError(field + ".text", "model has no tokenizer: send token_ids");
      }
      const bool config = bos == BosPolicy::kTokenizerConfig;  // BOS and EOS as the config says, else neither
      ids = Tokenize(*model.tokenizer, prompt.text(), config ? std::nullopt : std::optional(false),
                     prompt.parse_special_tokens(), nullptr, /*add_eos=*/config);
      if (ids.empty() && !allow_empty) return FieldError(field + ".text", "encodes to no tokens");
      break;
    }
    case v1::Prompt::kTokenIds: {
      ids.assign(prompt.token_ids().ids().begin(), prompt.token_ids().ids().end());
      if (ids.empty() && !allow_empty) return FieldError(field + ".token_ids", "empty");
      MOE_RETURN_IF_ERROR(CheckTokenIds(ids, model.config.vocab_size, field + ".token_ids.ids"));
      break;
    }
    case v1::Prompt::KIND_NOT_SET:
      return FieldError(field, "empty: set text or token_ids");
  }
  return ids;
}

std::vector<int32_t> Tokenize(const TextCodec& tok, const std::string& text, std::optional<bool> add_bos,
                              bool parse_special_tokens, std::vector<TextSpan>* spans, bool add_eos) {
  std::vector<int32_t> ids = parse_special_tokens ? tok.EncodeWithSpecialTokens(text, spans) : EncodeBare(tok, text, spans);
  if (add_bos.value_or(tok.add_bos())) {
    ids.insert(ids.begin(), tok.bos_id());
    if (spans != nullptr) spans->insert(spans->begin(), TextSpan{});
  }
  if (add_eos && tok.add_eos()) {
    ids.push_back(tok.eos_id());
    if (spans != nullptr) spans->push_back({});
  }
  return ids;
}

absl::StatusOr<GenerateJob> ValidateGenerate(const v1::GenerateRequest& request, const RequestModel& model) {
  if (request.request_id().size() > kMaxRequestIdLength) {
    return FieldError("request_id", absl::StrCat("longer than ", kMaxRequestIdLength, " characters"));
  }
  if (!request.has_prompt()) return FieldError("prompt", "empty: set text or token_ids");
  if (request.cache_salt().size() > kMaxCacheSaltLength) {
    return FieldError("cache_salt", absl::StrCat("longer than ", kMaxCacheSaltLength, " bytes"));
  }
  if (request.priority() != 0 && !model.priority_scheduling) {
    return FieldError("priority", "not 0, and this server schedules first come, first served (moe-coordinator "
                                  "--scheduling-policy priority takes priorities)");
  }
  // A text prompt too long for the context whatever it encodes to is refused before it is encoded
  // (untruncated): a 40 MB one took 18 s and 2.3 GB of the coordinator's memory to be refused after.
  if (request.prompt().kind_case() == v1::Prompt::kText && model.tokenizer != nullptr &&
      !request.sampling().has_truncate_prompt_tokens()) {
    const std::string& text = request.prompt().text();
    const size_t counted = CountedBytes(*model.tokenizer, text);  // a run of spaces as one byte where encoding collapses it
    const size_t per_token = model.tokenizer->max_token_bytes();
    const int64_t at_least = CeilDiv(counted, per_token);
    if (at_least >= model.context()) {
      return FieldError("prompt", absl::StrCat("at least ", at_least, " tokens (", counted,
                                               counted == text.size() ? "" : " counted", " bytes of text, at most ", per_token,
                                               " a token) leave no room to generate in the model context of ",
                                               model.context(), " positions"));
    }
  }
  MOE_ASSIGN_OR_RETURN(std::vector<int32_t> prompt,
                       ResolvePrompt(request.prompt(), model, "prompt", BosPolicy::kTokenizerConfig));

  // The model's recommended defaults where the request leaves a field unset (vLLM's generation config).
  v1::SamplingParams with_defaults;
  const bool defaults = model.default_sampling.ByteSizeLong() > 0;
  if (defaults) {
    with_defaults = model.default_sampling;
    with_defaults.MergeFrom(request.sampling());
  }
  const v1::SamplingParams& s = defaults ? with_defaults : request.sampling();
  if (s.has_truncate_prompt_tokens()) {  // vLLM's: the prompt's last this many tokens
    if (s.truncate_prompt_tokens() == 0) return FieldError("sampling.truncate_prompt_tokens", "must be at least 1");
    if (prompt.size() > s.truncate_prompt_tokens()) prompt.erase(prompt.begin(), prompt.end() - s.truncate_prompt_tokens());
  }
  const int64_t context = model.context();
  const int64_t vocab = model.config.vocab_size;
  const int64_t prompt_len = static_cast<int64_t>(prompt.size());
  if (request.sampling().has_max_tokens() && request.sampling().max_tokens() == 0) {
    return FieldError("sampling.max_tokens", "must be at least 1");
  }
  if (prompt_len >= context) {
    return FieldError("prompt", absl::StrCat(prompt_len, " tokens leave no room to generate in the model context of ",
                                             context, " positions"));
  }
  // Unset: the model's max_new_tokens within what the context leaves (vLLM's get_max_tokens), else 16.
  uint32_t max_tokens = kDefaultMaxTokens;
  if (request.sampling().has_max_tokens()) {
    max_tokens = request.sampling().max_tokens();
  } else if (model.default_sampling.has_max_tokens()) {
    max_tokens = static_cast<uint32_t>(std::min<int64_t>(model.default_sampling.max_tokens(), context - prompt_len));
  }
  if (prompt_len + max_tokens > context) {
    return FieldError("sampling.max_tokens",
                      absl::StrCat("prompt (", prompt_len, " tokens) + max_tokens (", max_tokens, ") = ",
                                   prompt_len + max_tokens, " exceeds the model context of ", context, " positions"));
  }
  const bool capped = model.max_tokens_cap > 0 && max_tokens > model.max_tokens_cap;  // after the request's own check
  if (capped) max_tokens = model.max_tokens_cap;
  // The ranges are the sampler's own (SamplingParams / PenaltyParams::Validate, which the worker
  // checks again), named with the request's field path.
  SamplingParams sampling;
  sampling.temperature = s.has_temperature() ? s.temperature() : 1.0f;
  sampling.top_p = s.has_top_p() ? s.top_p() : 1.0f;
  sampling.top_k = s.has_top_k() ? s.top_k() : 0;
  sampling.min_p = s.has_min_p() ? s.min_p() : 0.0f;
  PenaltyParams penalties;
  penalties.repetition_penalty = s.has_repetition_penalty() ? s.repetition_penalty() : 1.0f;
  penalties.presence_penalty = s.has_presence_penalty() ? s.presence_penalty() : 0.0f;
  penalties.frequency_penalty = s.has_frequency_penalty() ? s.frequency_penalty() : 0.0f;
  if (s.logit_bias_size() > kMaxLogitBias) {
    return FieldError("sampling.logit_bias", absl::StrCat("at most ", kMaxLogitBias, " token ids, got ", s.logit_bias_size()));
  }
  penalties.logit_bias.assign(s.logit_bias().begin(), s.logit_bias().end());
  std::sort(penalties.logit_bias.begin(), penalties.logit_bias.end());  // the first bad id named is the lowest
  MOE_RETURN_IF_ERROR(CheckTokenIds({s.allowed_token_ids().data(), static_cast<size_t>(s.allowed_token_ids_size())},
                                    vocab, "sampling.allowed_token_ids"));
  penalties.allowed_token_ids.assign(s.allowed_token_ids().begin(), s.allowed_token_ids().end());
  std::sort(penalties.allowed_token_ids.begin(), penalties.allowed_token_ids.end());
  penalties.allowed_token_ids.erase(std::unique(penalties.allowed_token_ids.begin(), penalties.allowed_token_ids.end()),
                                    penalties.allowed_token_ids.end());
  // bad_words, as vLLM encodes them: each left-trimmed, as written and after a space.
  if (s.bad_words_size() > kMaxBadWords) {
    return FieldError("sampling.bad_words", absl::StrCat("at most ", kMaxBadWords, " words, got ", s.bad_words_size()));
  }
  for (int i = 0; i < s.bad_words_size(); ++i) {
    if (model.tokenizer == nullptr) return FieldError("sampling.bad_words", "the model has no tokenizer to encode them");
    const std::string word(absl::StripLeadingAsciiWhitespace(s.bad_words(i)));
    if (word.empty()) return FieldError(Indexed("sampling.bad_words", i), "empty");
    if (word.size() > kMaxStopLength) {
      return FieldError(Indexed("sampling.bad_words", i), absl::StrCat("longer than ", kMaxStopLength, " bytes"));
    }
    for (const std::string& text : {word, " " + word}) {
      std::vector<int32_t> ids = EncodeBare(*model.tokenizer, text);
      if (!ids.empty()) penalties.bad_words.push_back(std::move(ids));
    }
  }
  for (const absl::Status& st : {sampling.Validate(), penalties.Validate(vocab)}) {
    if (!st.ok()) return absl::InvalidArgumentError(absl::StrCat("sampling.", st.message()));
  }
  if (s.has_logprobs() && s.logprobs() > kMaxLogprobs) {
    return FieldError("sampling.logprobs", absl::StrCat("at most ", kMaxLogprobs, ", got ", s.logprobs()));
  }
  if (s.has_logprobs() && s.logprobs() > vocab) {
    return FieldError("sampling.logprobs", absl::StrCat("exceeds the vocabulary size ", vocab));
  }
  if (s.has_prompt_logprobs() && s.prompt_logprobs() > kMaxLogprobs) {
    return FieldError("sampling.prompt_logprobs", absl::StrCat("at most ", kMaxLogprobs, ", got ", s.prompt_logprobs()));
  }
  if (s.has_prompt_logprobs() && s.prompt_logprobs() > vocab) {
    return FieldError("sampling.prompt_logprobs", absl::StrCat("exceeds the vocabulary size ", vocab));
  }
  const uint32_t min_tokens = s.has_min_tokens() ? s.min_tokens() : 0;
  if (min_tokens > max_tokens) {
    return FieldError("sampling.min_tokens",
                      absl::StrCat("(", min_tokens, ") exceeds max_tokens (", max_tokens, ")",
                                   capped ? " (this server caps max_tokens at the model's max_new_tokens: "
                                            "moe-coordinator --generation-config / --override-generation-config)"
                                          : ""));
  }
  const uint32_t n = s.has_n() ? s.n() : 1;
  if (n < 1 || n > kMaxCompletions) {
    return FieldError("sampling.n", absl::StrCat("must be in [1, ", kMaxCompletions, "], got ", n));
  }
  MOE_RETURN_IF_ERROR(CheckTokenIds({s.stop_token_ids().data(), static_cast<size_t>(s.stop_token_ids_size())}, vocab,
                                    "sampling.stop_token_ids"));
  const v1::ResponseFormat& format = s.response_format();
  const bool json_object = format.type() == v1::ResponseFormat::TYPE_JSON_OBJECT;
  const bool json_schema = format.type() == v1::ResponseFormat::TYPE_JSON_SCHEMA;
  const bool choice = format.type() == v1::ResponseFormat::TYPE_CHOICE;
  const bool regex = format.type() == v1::ResponseFormat::TYPE_REGEX;
  const bool grammar = format.type() == v1::ResponseFormat::TYPE_GRAMMAR;
  if (format.type() != v1::ResponseFormat::TYPE_TEXT && !json_object && !json_schema && !choice && !regex &&
      !grammar) {
    return FieldError("sampling.response_format.type", absl::StrCat("unknown type ", format.type()));
  }
  if ((json_object || json_schema || choice || regex || grammar) && model.tokenizer == nullptr) {
    return FieldError("sampling.response_format",
                      "constrained output needs the model's tokenizer (the bytes of each token), and the model has none");
  }
  if (choice) {
    const std::vector<std::string> choices(format.choices().begin(), format.choices().end());
    if (absl::StatusOr<JsonSchema> c = JsonSchema::Choice(choices); !c.ok()) {
      const std::string message(c.status().message());  // "choices[i]: what"
      const size_t colon = message.find(": ");
      return FieldError("sampling.response_format." + message.substr(0, colon), message.substr(colon + 2));
    }
  } else if (format.choices_size() > 0) {
    return FieldError("sampling.response_format.choices", "only with type CHOICE");
  }
  if (regex) {
    if (format.regex().empty()) return FieldError("sampling.response_format.regex", "empty");
    if (absl::StatusOr<JsonSchema> r = JsonSchema::Regex(format.regex()); !r.ok()) {
      const std::string message(r.status().message());  // "regex: what"
      return FieldError("sampling.response_format.regex", message.substr(message.find(": ") + 2));
    }
  } else if (!format.regex().empty()) {
    return FieldError("sampling.response_format.regex", "only with type REGEX");
  }
  if (grammar) {
    if (format.grammar().empty()) return FieldError("sampling.response_format.grammar", "empty");
    if (absl::StatusOr<GbnfGrammar> g = GbnfGrammar::Parse(format.grammar()); !g.ok()) {
      return FieldError("sampling.response_format.grammar", std::string(g.status().message()));
    }
  } else if (!format.grammar().empty()) {
    return FieldError("sampling.response_format.grammar", "only with type GRAMMAR");
  }
  std::string schema_text;  // compact, properties in their order: one text per schema for the ranks' mask caches
  if (json_schema) {
    // A schema's text is a string inside the request, which no nesting check of the body sees;
    // compiling (and quoting) a value nested 100,000 levels deep overflowed this thread's stack.
    if (NestsDeeperThan(format.json_schema(), kMaxJsonFileNesting)) {
      return FieldError("sampling.response_format.json_schema",
                        absl::StrCat("nests arrays and objects more than ", kMaxJsonFileNesting, " levels deep"));
    }
    const nlohmann::ordered_json schema = nlohmann::ordered_json::parse(format.json_schema(), nullptr, false);
    if (schema.is_discarded()) return FieldError("sampling.response_format.json_schema", "not valid JSON");
    if (absl::StatusOr<JsonSchema> compiled = JsonSchema::Compile(schema); !compiled.ok()) {
      return FieldError("sampling.response_format.json_schema", std::string(compiled.status().message()));
    }
    schema_text = schema.dump();
  } else if (!format.json_schema().empty()) {
    return FieldError("sampling.response_format.json_schema", "only with type JSON_SCHEMA");
  }
  GenerateJob job;
  job.n = n;
  job.include_stop = s.include_stop_str_in_output();
  job.skip_special_tokens = !s.has_skip_special_tokens() || s.skip_special_tokens();
  if (s.stop_size() > kMaxStopStrings) {
    return FieldError("sampling.stop", absl::StrCat("at most ", kMaxStopStrings, " stop strings, got ", s.stop_size()));
  }
  for (int i = 0; i < s.stop_size(); ++i) {
    if (s.stop(i).empty()) return FieldError(Indexed("sampling.stop", i), "empty");
    if (s.stop(i).size() > kMaxStopLength) {
      return FieldError(Indexed("sampling.stop", i), absl::StrCat("longer than ", kMaxStopLength, " bytes"));
    }
    if (model.tokenizer == nullptr) {
      return FieldError("sampling.stop", "model has no tokenizer, so there is no text to match: use stop_token_ids");
    }
    job.stop.push_back(s.stop(i));
  }

  v1::Assign& a = job.assign;
  a.set_kind(v1::Assign::KIND_GENERATE);
  a.set_priority(request.priority());
  a.mutable_prompt()->Assign(prompt.begin(), prompt.end());
  a.set_prefix_root(PrefixRoot(request.cache_salt()));
  a.set_max_tokens(max_tokens);
  a.set_temperature(sampling.temperature);
  a.set_top_k(sampling.top_k);
  a.set_top_p(sampling.top_p);
  a.set_seed(s.has_seed() ? s.seed() : RandomSeed());
  a.set_ignore_eos(s.ignore_eos());
  // Each id once, in the order given (vLLM keeps them as a set): the list goes to the rank with
  // every completion, and 10 million copies of one id were 40 MB a completion.
  std::vector<bool> stops(static_cast<size_t>(vocab), false);
  const auto add_stop = [&](int32_t id) {
    if (id < 0 || id >= vocab) return;  // (never: the request's are checked above, the model's at start)
    if (!stops[static_cast<size_t>(id)]) {
      stops[static_cast<size_t>(id)] = true;
      a.add_stop_token_ids(id);
    }
  };
  for (int32_t id : s.stop_token_ids()) add_stop(id);  // checked against the vocabulary above
  if (!s.ignore_eos()) {
    for (int32_t id : model.extra_stop_token_ids) add_stop(id);
  }
  a.set_top_logprobs(s.has_logprobs() ? s.logprobs() : 0);
  if (s.has_prompt_logprobs()) a.set_prompt_logprobs(s.prompt_logprobs());
  a.set_min_p(sampling.min_p);
  if (penalties.repetition_penalty != 1.0f) a.set_repetition_penalty(penalties.repetition_penalty);
  a.set_presence_penalty(penalties.presence_penalty);
  a.set_frequency_penalty(penalties.frequency_penalty);
  a.set_min_tokens(min_tokens);
  *a.mutable_logit_bias() = s.logit_bias();
  a.mutable_allowed_token_ids()->Assign(penalties.allowed_token_ids.begin(), penalties.allowed_token_ids.end());
  for (const std::vector<int32_t>& w : penalties.bad_words) a.add_bad_words()->mutable_ids()->Assign(w.begin(), w.end());
  a.set_json_object(json_object);
  a.set_json_schema(schema_text);
  if (choice) *a.mutable_choices() = format.choices();
  if (regex) a.set_regex(format.regex());
  if (grammar) a.set_grammar(format.grammar());
  a.set_compact_json(format.compact() && (json_object || json_schema));
  job.want_logprobs = s.has_logprobs();
  return job;
}

// Both as text: split the way lm-evaluation-harness does (its _encode_pair). Trailing whitespace
// of the context moves to the continuation, the whole string is encoded once, and the continuation
// is what follows the context's own encoding, so SentencePiece's word-initial "▁" is not
// invented for a continuation that starts mid-text.
// The two are one text here, so the context's Prompt.parse_special_tokens says how it is read.
// Neither part ends in EOS (an add_eos_token tokenizer's would sit between them).
static void EncodeTextPair(const TextCodec& tok, std::string context, std::string continuation, bool parse_special_tokens,
                           std::vector<int32_t>& context_ids, std::vector<int32_t>& continuation_ids) {
  size_t keep = context.size();
  while (keep > 0 && std::isspace(static_cast<unsigned char>(context[keep - 1]))) --keep;
  continuation = context.substr(keep) + continuation;
  context.resize(keep);
  const auto encode = [&](const std::string& text) {
    return Tokenize(tok, text, std::nullopt, parse_special_tokens, nullptr, /*add_eos=*/false);
  };
  const std::vector<int32_t> whole = encode(context + continuation);
  context_ids = encode(context);
  if (context_ids.size() > whole.size()) context_ids.resize(whole.size());
  continuation_ids.assign(whole.begin() + static_cast<std::ptrdiff_t>(context_ids.size()), whole.end());
}

absl::StatusOr<std::vector<ScoreJob>> ValidateScore(const v1::ScoreRequest& request, const RequestModel& model) {
  if (request.items().empty()) return FieldError("items", "empty");
  std::vector<ScoreJob> jobs;
  for (int i = 0; i < request.items_size(); ++i) {
    const v1::ScoreItem& item = request.items(i);
    const std::string field = Indexed("items", i);
    if (!item.has_continuation()) return FieldError(field + ".continuation", "empty: set text or token_ids");
    // As Generate's prompt: an item too long for the context whatever its text encodes to is
    // refused before it is encoded (a 256 MB context took ~30 s and 2.6 GB of the coordinator's
    // memory to be refused after).
    if (model.tokenizer != nullptr &&
        (item.context().kind_case() == v1::Prompt::kText || item.continuation().kind_case() == v1::Prompt::kText)) {
      size_t counted = 0;  // text bytes
      int64_t ids = 0;     // token ids given
      for (const v1::Prompt* part : {&item.context(), &item.continuation()}) {
        if (part->kind_case() == v1::Prompt::kText) counted += CountedBytes(*model.tokenizer, part->text());
        if (part->kind_case() == v1::Prompt::kTokenIds) ids += part->token_ids().ids_size();
      }
      // Two texts are encoded as one: a run of spaces across the seam may collapse to one.
      if (item.context().kind_case() == v1::Prompt::kText && item.continuation().kind_case() == v1::Prompt::kText &&
          counted > 0) {
        --counted;
      }
      const size_t per_token = model.tokenizer->max_token_bytes();
      const int64_t at_least = ids + CeilDiv(counted, per_token);
      if (at_least > model.context()) {
        return FieldError(field + " (context + continuation)",
                          absl::StrCat("at least ", at_least, " tokens (", counted, " bytes of text, at most ", per_token,
                                       " a token", ids > 0 ? absl::StrCat(", and ", ids, " token ids") : "",
                                       ") exceed the model context of ", model.context(), " positions"));
      }
    }
    std::vector<int32_t> context, continuation;
    const bool both_text = item.context().kind_case() == v1::Prompt::kText &&
                           item.continuation().kind_case() == v1::Prompt::kText && model.tokenizer != nullptr;
    if (both_text && !item.context().text().empty() && !item.continuation().text().empty()) {
      EncodeTextPair(*model.tokenizer, item.context().text(), item.continuation().text(),
                     item.context().parse_special_tokens(), context, continuation);
      if (continuation.empty()) return FieldError(field + ".continuation.text", "encodes to no tokens");
    } else {
      MOE_ASSIGN_OR_RETURN(context, ResolvePrompt(item.context(), model, field + ".context",
                                                  BosPolicy::kTokenizerConfig, /*allow_empty=*/true));
      MOE_ASSIGN_OR_RETURN(continuation,
                           ResolvePrompt(item.continuation(), model, field + ".continuation", BosPolicy::kNone));
    }
    if (context.empty()) {
      return FieldError(field + ".context", "empty: the first continuation token needs at least one token of context");
    }
    ScoreJob job;
    job.context_tokens = static_cast<int64_t>(context.size());
    job.tokens = std::move(context);
    job.tokens.insert(job.tokens.end(), continuation.begin(), continuation.end());
    MOE_RETURN_IF_ERROR(CheckFits(static_cast<int64_t>(job.tokens.size()), model, field + " (context + continuation)"));
    jobs.push_back(std::move(job));
  }
  return jobs;
}

absl::StatusOr<std::vector<RollingText>> ValidateScoreRolling(const v1::ScoreRollingRequest& request,
                                                              const RequestModel& model, int64_t max_windows) {
  if (request.texts().empty()) return FieldError("texts", "empty");
  if (request.top_logprobs() > kMaxLogprobs) {
    return FieldError("top_logprobs", absl::StrCat("at most ", kMaxLogprobs, ", got ", request.top_logprobs()));
  }
  if (request.top_logprobs() > static_cast<uint32_t>(model.config.vocab_size)) {
    return FieldError("top_logprobs", absl::StrCat("exceeds the vocabulary size ", model.config.vocab_size));
  }
  std::vector<RollingText> out;
  int64_t windows = 0;
  for (int i = 0; i < request.texts_size(); ++i) {
    RollingText text;
    MOE_ASSIGN_OR_RETURN(text.ids,
                         ResolvePrompt(request.texts(i), model, Indexed("texts", i), BosPolicy::kTokenizerConfig));
    text.windows = RollingWindows(static_cast<int64_t>(text.ids.size()), model.context());
    windows += static_cast<int64_t>(text.windows.size());
    if (windows > max_windows) {
      return FieldError("texts", absl::StrCat(i + 1 < request.texts_size() ? "at least " : "", windows,
                                              " sequences (rolling windows of texts[0..", i, "]) exceed the coordinator's queue of ",
                                              max_windows, " (--max-waiting); send fewer at a time"));
    }
    out.push_back(std::move(text));
  }
  return out;
}

}  // namespace moe
