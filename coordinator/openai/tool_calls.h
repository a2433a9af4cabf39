// Tool calls for /v1/chat/completions, as vLLM serves a named function and tool_choice "required":
// the completion is constrained (response_format json_schema) to the calls' JSON and answered as
// the message's tool_calls instead of its content.
//   - {"type": "function", "function": {"name": N}}: the output is N's arguments, a value of its
//     "parameters" schema; one call.
//   - "required": the output is a JSON array of at least one {"name", "parameters"}, each call's
//     parameters following its named tool's schema (an anyOf of one object per tool, told apart by
//     the name: worker/json_schema.h's tagged union); the tools' $defs move to the root. Two tools
//     of one name are refused.
//   - "auto" (or tools without a tool_choice), when the server reads a model's own syntax
//     (moe-openai-server --tool-call-parser mistral): the output is free; one that starts with the
//     [TOOL_CALLS] control token is read as Mistral's JSON list of {"name", "arguments"} and answered
//     as tool_calls with finish_reason "tool_calls" (as vLLM's mistral parser). Without the parser
//     "auto" is refused, and tools without a tool_choice only reach the template.
// parallel_tool_calls: false allows one call: "required"'s list holds exactly one (the schema's
// maxItems), and of an "auto" answer's calls only the first is answered.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/json_util.h"
#include "moe/v1/inference.pb.h"

namespace moe::openai {

struct HttpError;

struct ToolChoice {
  enum class Kind { kNone, kNamed, kRequired, kAuto };
  Kind kind = Kind::kNone;
  std::string name;         // kNamed: the function
  int32_t marker_id = -1;   // kAuto: the [TOOL_CALLS] token that starts an answer of calls
  bool single_call = false;  // parallel_tool_calls: false
};

// Reads tools / tool_choice of a chat request (`ordered`: the body with its key order) into
// `choice`, and for a named or required choice sets `sampling`'s response_format to the calls'
// schema. `auto_marker_id` >= 0: the server reads "auto" answers that start with that token.
// Errors name "tools" or "tool_choice".
std::optional<HttpError> ParseToolChoice(const nlohmann::ordered_json& ordered, ToolChoice& choice,
                                         v1::SamplingParams& sampling, int32_t auto_marker_id = -1);

// The tool_calls of a completion's text ([{"id", "type": "function", "function": {"name",
// "arguments"}}]); null when the text is not what the choice constrained it to (cut short by
// max_tokens), or for "auto" not Mistral's list of calls.
nlohmann::json ToolCallsJson(const ToolChoice& choice, const std::string& text);

// Whether a choice's answer holds calls: always for a named function or "required"; for "auto"
// when its first token is the [TOOL_CALLS] marker.
bool AnswersWithCalls(const ToolChoice& choice, int32_t first_token);

// A chat answer (CompletionAccumulator::ToJson) with each choice's content turned into its tool
// calls (content "", as vLLM answers; for "auto" content null and finish_reason "tool_calls"),
// where it reads as such. first_tokens[i]: choice i's first generated token (-1: none).
void ApplyToolCalls(const ToolChoice& choice, nlohmann::json& answer, const std::vector<int32_t>& first_tokens);

// A list of calls streamed ("required"'s [{"name": N, "parameters": P}, ...], constrained; "auto"'s
// Mistral [{"name": N, "arguments": A}, ...] after [TOOL_CALLS]): reads the text as it arrives and
// gives OpenAI's tool_calls delta entries: a call's "index", "id", "type" and name once its name is
// read, then the text of its arguments, as written, while it comes (arguments written as a JSON
// string: its decoded value, once whole). A JSON lexer over the bytes, so text may be split anywhere.
class ToolCallsStream {
 public:
  // `arguments_key`: "parameters" ("required"), "arguments" ("auto"). `max_calls` > 0: the entries
  // of later calls are left out.
  explicit ToolCallsStream(std::string arguments_key = "parameters", int max_calls = 0)
      : arguments_key_(std::move(arguments_key)), max_calls_(max_calls) {}

  // The entries the text adds (an array, maybe empty); pieces of one call within it are merged.
  nlohmann::json Feed(std::string_view text);
  int calls() const { return index_ + 1; }        // calls begun
  int complete_calls() const { return complete_; }  // calls whose parameters were read whole

 private:
  enum class Part : uint8_t { kOther, kExpectKey, kKey, kExpectValue, kName, kArguments };
  void Step(char c);
  void Emit(nlohmann::json entry);
  void EmitArguments();  // arguments_ out (or held, before the call's name)
  void EndArguments();

  JsonNesting json_;  // the text's brackets and strings so far
  int index_ = -1;  // the call being read
  Part part_ = Part::kOther;
  std::string key_, token_;  // the call's last key; the key or name string being read (raw JSON)
  enum class Value : uint8_t { kContainer, kString, kScalar };
  Value arguments_kind_ = Value::kScalar;
  bool arguments_started_ = false;
  std::string arguments_;  // read and not yet given
  bool named_ = false;           // the current call's name went out
  std::string held_arguments_;   // its arguments read before its name
  int complete_ = 0;
  nlohmann::json out_;
  std::string arguments_key_;
  int max_calls_;
};

// A named function's streamed delta: {"tool_calls": [{"index": 0, "function": {"arguments": text}}]},
// the first with the call's "id", "type" and the function's "name" too.
nlohmann::json NamedToolCallDelta(const ToolChoice& choice, const std::string& text, bool first);

}  // namespace moe::openai
