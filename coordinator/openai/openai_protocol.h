// OpenAI's text-completions and chat-completions protocols (POST /v1/completions,
// /v1/chat/completions, GET /v1/models) translated to and from the public gRPC API, as plain
// functions on JSON and protos (no I/O), so the rules are tested without a server. Field names and
// defaults are OpenAI's, with vLLM's extensions (top_k, min_p, repetition_penalty, min_tokens,
// ignore_eos, stop_token_ids, guided_json, add_special_tokens); what is not served (suffix, best_of
// other than n, beam search, custom logits processors, guided_grammar, skip_special_tokens false,
// return_tokens_as_token_ids) is refused with a 400 naming the parameter rather than ignored. A batch of prompts (at
// most 64) answers with n choices per prompt, prompt i's at indices i * n .. i * n + n - 1, as
// OpenAI's API does, whole or streamed. logprobs (at most 20 alternatives) come in OpenAI's
// completions shape: tokens (each token's text, adding up to the completion's), token_logprobs,
// top_logprobs ({text: logprob}: the k most probable and the chosen token, under its name in tokens)
// and text_offset. echo puts the prompt before each choice (whole, or on each choice's first
// streamed chunk, as vLLM's server does), its logprobs from ScoreRolling (the first token's null;
// each other position's k most probable tokens and the prompt's own), which is what
// lm-evaluation-harness's local-completions asks for.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "coordinator/openai/tool_calls.h"
#include "moe/v1/inference.pb.h"

namespace moe::openai {

// An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
struct HttpError {
  int status = 400;
  std::string message;
  std::string type = "invalid_request_error";
  std::optional<std::string> param;

  nlohmann::json ToJson() const;
};

// 400 "<param>: <message>" naming `param`: a request field the server refuses.
HttpError BadParam(const std::string& param, const std::string& message);

// How deeply a request body's arrays and objects may nest. Each level costs stack in every
// recursive pass over the body (copies, conversions into template values, schema compilers); no
// real request comes near it (a JSON schema's nesting counts from about 5).
inline constexpr int kMaxBodyNesting = 512;

// 400 when `body` (any text; strings are skipped) opens more than kMaxBodyNesting arrays and
// objects inside one another, or holds a NUL byte (where nlohmann's parser stops reading, taking
// `{...}\0junk` for `{...}`); checked before any parser sees the body.
std::optional<HttpError> CheckBodyBeforeParsing(const std::string& body);

inline constexpr size_t kMaxPromptBatch = 64;

struct CompletionCall {
  v1::GenerateRequest request;          // with the first prompt
  std::vector<v1::Prompt> prompts;      // every prompt of the batch (one unless the request sent a list)
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage: a last chunk with the usage
  // stream_options.continuous_usage_stats with include_usage (vLLM's): every chunk also carries its
  // choice's usage so far (its prompt's tokens, the tokens the choice has generated).
  bool continuous_usage = false;
  uint32_t n = 1;
  bool logprobs = false;       // the answer carries a logprobs object per choice
  bool echo = false;           // the prompt (and its logprobs) before each completion
  bool prompt_logprobs = false;  // vLLM's prompt_logprobs: the answer carries them
  // vLLM's add_special_tokens (completions): false encodes a text prompt without the BOS token.
  bool add_special_tokens = true;
  uint32_t max_tokens = 16;    // 0 only with echo: the prompt alone
  // Completions' "max_tokens": null (vLLM's None, not OpenAI's default of 16): each prompt gets
  // what the context leaves after it, within the model's max_new_tokens; prompt_max_tokens[i] is
  // prompt i's, filled by the server once it has counted the prompt's tokens.
  bool max_tokens_to_context = false;
  std::vector<uint32_t> prompt_max_tokens;
  uint32_t MaxTokens(size_t prompt) const {
    return prompt < prompt_max_tokens.size() ? prompt_max_tokens[prompt] : max_tokens;
  }
  // vLLM's return_token_ids: each choice carries its generated "token_ids" (a chunk's: its delta)
  // and the prompt's "prompt_token_ids" (completions: in each choice; chat: in the answer, or in
  // each choice's first chunk).
  bool return_token_ids = false;
  // vLLM's return_tokens_as_token_ids: logprobs name every token "token_id:<id>", not by its text.
  bool tokens_as_ids = false;
  // Chat only: vLLM's echo, the text every choice's content starts with (the last message's content
  // when its role is the answer's: "assistant", or with add_generation_prompt false any role).
  std::string chat_echo;
  ToolChoice tool_choice;      // chat: a named function or "required" answers with tool_calls
  // vLLM's use_beam_search: the n best of a beam search n wide (beam_search.h), answered whole;
  // length_penalty divides each beam's log-probability by its length to that power.
  bool beam_search = false;
  double length_penalty = 1.0;
  // The usage says how many prompt tokens the prefix cache held (prompt_tokens_details:
  // {"cached_tokens"}): the server's --enable-prompt-tokens-details (vLLM's), or a Responses
  // request, whose usage always carries them. Set by the server, not by the request.
  bool prompt_tokens_details = false;
};

// use_beam_search's widest beam: n beams take the 2n most probable tokens a step (top logprobs, at most 20).
inline constexpr uint32_t kMaxBeamWidth = 10;

// Which of OpenAI's APIs an answer is shaped for: text completions ("text_completion", choices with
// "text") or chat completions ("chat.completion", choices with a "message"; streamed chunks with a
// "delta"; logprobs as {"content": [{token, logprob, bytes, top_logprobs}]}).
enum class Api { kCompletions, kChat };

// The names a request's "model" may give (vLLM's --served-model-name: any of them; answers, and
// /v1/models first, name the first). A request without "model" is served too.
struct ServedModel {
  ServedModel(std::string name) : names{std::move(name)} {}  // NOLINT: one name reads as itself
  ServedModel(const char* name) : names{name} {}              // NOLINT
  explicit ServedModel(std::vector<std::string> all) : names(std::move(all)) {}
  const std::string& name() const { return names.front(); }
  bool Serves(const std::string& requested) const;
  std::vector<std::string> names;  // at least one
};

// POST /v1/chat/completions: the conversation for the chat template, and the generation as a
// CompletionCall whose prompt the server fills with the rendered conversation's token ids.
struct ChatCall {
  CompletionCall completion;
  nlohmann::ordered_json messages;  // each {"role", "content": string, ...} (text parts joined)
  nlohmann::ordered_json tools;     // null unless given
  nlohmann::ordered_json template_kwargs = nlohmann::ordered_json::object();  // chat_template_kwargs
  std::optional<std::string> chat_template;  // the request's own template (vLLM's chat_template)
  bool add_generation_prompt = true;
  bool continue_final_message = false;
  bool max_tokens_given = false;  // else: what the context leaves after the prompt, as vLLM does
};
// `auto_marker_id` >= 0: the server reads tool_choice "auto" answers that start with this token
// (ParseToolChoice).
std::variant<ChatCall, HttpError> ParseChatRequest(const std::string& body, const ServedModel& model,
                                                   int32_t auto_marker_id = -1);

// The request body of POST /v1/completions; `model_name` is the one model served (a request naming
// another gets 404, as vLLM answers).
std::variant<CompletionCall, HttpError> ParseCompletionRequest(const std::string& body, const ServedModel& model);

// nginx's status for a request whose client closed its connection before the answer: the front
// cancels such a request's calls (client_watch.h), and a client that only closed its sending side
// may still read this.
inline constexpr int kClientClosedRequest = 499;
inline constexpr char kClientClosedMessage[] =
    "the request was cancelled: its client closed the connection (closing only its sending side counts, "
    "as in vLLM's server)";

// The HTTP error for a failed gRPC call: INVALID_ARGUMENT 400 (param: the field the message starts
// with, "sampling." dropped, so a client sees "top_p"), NOT_FOUND 404, RESOURCE_EXHAUSTED 429,
// UNAVAILABLE 503, DEADLINE_EXCEEDED 504, UNIMPLEMENTED 501, anything else 500 (a call the front
// cancelled: OpenAiServer::CallError tells a client that left, 499, from a stopping server, 503).
HttpError FromGrpcError(int grpc_code, const std::string& message);
// The same for a completion or chat call's Generate of prompt `prompt`: where tool_choice made the
// tools a JSON schema (a named function or "required"), the schema's refusal names "tools", which
// the request sent, not the response_format it did not; in a batch of prompts, a refused prompt's
// field is named with its index ("prompt[1].token_ids.ids[0]"), another refusal says which prompt.
HttpError FromGrpcError(const CompletionCall& call, size_t prompt, int grpc_code, const std::string& message);

// "stop" (EOS, a stop token id or a stop string) or "length"; "abort" for a cancelled completion.
std::string FinishReasonName(v1::FinishReason r);
// vLLM's stop_reason of a message: the stop string or stop token id that ended it, else null.
nlohmann::json StopReasonJson(const v1::GenerateResponse& r);

// How an answer reports its tokens beyond their text (vLLM's extensions, CompletionCall's fields).
struct TokenReport {
  bool token_ids = false;      // return_token_ids
  bool tokens_as_ids = false;  // return_tokens_as_token_ids
  bool cached_tokens = false;  // the usage's prompt_tokens_details (CompletionCall::prompt_tokens_details)
};
inline TokenReport TokenReportOf(const CompletionCall& call) {
  return {call.return_token_ids, call.tokens_as_ids, call.prompt_tokens_details};
}

// A token as logprobs name it: its text, or "token_id:<id>" (return_tokens_as_token_ids).
std::string TokenName(int32_t id, const std::string& text, bool as_ids);

// Accumulates a stream's messages into the non-streaming answer.
class CompletionAccumulator {
 public:
  // `prompt_logprobs`: the answer carries vLLM's prompt_logprobs (every choice's in the completions
  // API, the answer's in the chat API), [null, {"id": {logprob, rank, decoded_token}}, ...].
  // `report.token_ids`: each choice's "token_ids" and the prompt's "prompt_token_ids" (each choice's
  // in the completions API, the answer's in the chat API), from the message that carries them.
  CompletionAccumulator(uint32_t n, bool logprobs, Api api = Api::kCompletions, bool prompt_logprobs = false,
                        TokenReport report = {})
      : api_(api), logprobs_(logprobs), prompt_logprobs_wanted_(prompt_logprobs), report_(report), choices_(n) {}
  // False when the message names a completion index outside [0, n).
  bool Add(const v1::GenerateResponse& r);
  // {"id", "object": "text_completion" or "chat.completion", "created", "model", "choices", "usage"}.
  nlohmann::json ToJson(const std::string& model_name, int64_t created) const;
  // Each choice's first generated token (-1 when it has none).
  std::vector<int32_t> FirstTokens() const;

 private:
  struct Choice {
    std::string text;
    std::string finish_reason;
    nlohmann::json stop_reason;  // vLLM's: the stop string or stop token id that ended it, else null
    uint32_t completion_tokens = 0;
    nlohmann::json logprobs;  // OpenAI's object, grown message by message
    size_t offset = 0;        // text_offset of the next token
    int32_t first_token = -1;
    std::vector<int32_t> token_ids;
  };
  Api api_;
  bool logprobs_;
  bool prompt_logprobs_wanted_;
  TokenReport report_;
  std::vector<int32_t> prompt_token_ids_;
  nlohmann::json prompt_logprobs_ = nlohmann::json::array({nullptr});  // a prompt of one token: [null]
  std::string request_id_;
  uint32_t prompt_tokens_ = 0;
  // The fewest prompt tokens any completion found cached (its prompt is counted once).
  std::optional<uint32_t> cached_prompt_tokens_;
  std::vector<Choice> choices_;
};

// The logprobs object of a message's tokens; `offset` is the text_offset of its first token and
// moves past the last (offsets into the text in characters, as OpenAI's and vLLM's, also when
// tokens are named by id).
nlohmann::json LogprobsJson(const v1::GenerateResponse& r, size_t& offset, bool tokens_as_ids = false);

// vLLM's prompt_logprobs of a message that carries them: [null, {"<token id>": {"logprob", "rank",
// "decoded_token"}, ...}, ...], each position the prompt token and its top alternatives.
nlohmann::json PromptLogprobsJson(const v1::GenerateResponse& r);

// The chat API's logprobs of a message's tokens: [{"token", "logprob", "bytes", "top_logprobs": [...]}].
// "bytes" are those of "token" (as vLLM gives them, also for "token_id:<id>").
nlohmann::json ChatLogprobsJson(const v1::GenerateResponse& r, bool tokens_as_ids = false);

// A streamed chat completion's first event for completion `index`: the delta {"role": "assistant",
// "content": ""}, as OpenAI's and vLLM's servers send it before the text.
nlohmann::json ChatRoleChunkJson(const std::string& request_id, uint32_t index, const std::string& model_name,
                                 int64_t created);

// One server-sent event's JSON for a streamed message: its completion's text delta, its logprobs
// when asked (`offset` as LogprobsJson's, one per completion), its "token_ids" with
// report.token_ids and, on its last message, the finish reason. (The prompt's token ids go on each
// choice's first chunk: the caller adds them.)
nlohmann::json StreamChunkJson(const v1::GenerateResponse& r, const std::string& model_name, int64_t created,
                               bool logprobs, size_t& offset, Api api = Api::kCompletions, TokenReport report = {});
// OpenAI's usage object: {"prompt_tokens", "completion_tokens", "total_tokens"}, and with
// `cached_prompt_tokens` its "prompt_tokens_details": {"cached_tokens"}.
nlohmann::json UsageJson(uint64_t prompt_tokens, uint64_t completion_tokens,
                         std::optional<uint64_t> cached_prompt_tokens = std::nullopt);
// The last event with include_usage: no choices, the request's usage.
nlohmann::json StreamUsageJson(const std::string& request_id, const std::string& model_name, int64_t created,
                               uint32_t prompt_tokens, uint32_t completion_tokens, Api api = Api::kCompletions,
                               std::optional<uint64_t> cached_prompt_tokens = std::nullopt);

// echo: what a prompt puts before each of its choices: its text (the request's, or for token ids
// the detokenizer's texts of ScoreRolling, which add up to it) and, with logprobs, its tokens
// (ScoreRolling's token_texts), their logprobs (null for the first) and as top_logprobs the k most
// probable tokens at each position with the prompt's own, text_offset from 0.
struct Echo {
  std::string text;
  nlohmann::json logprobs;  // null without logprobs
  uint32_t tokens = 0;      // the prompt's length in tokens
  std::vector<int32_t> token_ids;  // its ids (ScoreRolling's)
};
Echo EchoOf(const v1::Prompt& prompt, const v1::ScoreRollingResult& scored, bool logprobs, bool tokens_as_ids = false);

// `choice` (a completions choice, of a whole answer or of a streamed chunk) with `echo` before it:
// its text first, its logprobs' entries first, the choice's own text_offset values moved by `shift`
// (the echo's text length in characters for a whole answer; 0 for a stream, whose offsets start past the prompt).
void PrependEcho(nlohmann::json& choice, const Echo& echo, size_t shift);

// A streamed echo with max_tokens 0: the one chunk of completion `index`, the prompt alone,
// finish_reason "length".
nlohmann::json EchoOnlyChunkJson(const Echo& echo, const std::string& request_id, uint32_t index,
                                 const std::string& model_name, int64_t created);

// The answers of a batch's prompts as one: their choices in prompt order, indices renumbered
// (prompt i's choice j at i * n + j), usage summed, the first answer's id.
nlohmann::json MergeAnswers(const std::vector<nlohmann::json>& answers, uint32_t n);

// An http:// URL's parts ("http://127.0.0.1:9400/metrics" -> host 127.0.0.1, port 9400, path
// /metrics; no port: 80; no path: /), or the reason it is not one.
struct HttpUrl {
  std::string host;
  int port = 80;
  std::string path = "/";
};
absl::StatusOr<HttpUrl> ParseHttpUrl(const std::string& url);

// GET /v1/models: one entry per served name, as vLLM lists them, with the context length.
nlohmann::json ModelsJson(const ServedModel& model, int64_t max_model_len, int64_t created);
// GET /v1/models/{name} (OpenAI's retrieve, the SDKs' models.retrieve): that name's entry of the list.
nlohmann::json ModelJson(const std::string& name, int64_t max_model_len, int64_t created);
// A request's "model" (a body's, or /v1/models/{name}'s) that is none of the served names: OpenAI's
// 404 naming it and what is served.
std::optional<HttpError> UnknownModel(const ServedModel& model, const std::string& requested);

}  // namespace moe::openai
