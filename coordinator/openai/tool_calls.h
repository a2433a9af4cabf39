// Tool calls for /v1/chat/completions, as vLLM serves a named function and tool_choice "required":
// the completion is constrained (response_format json_schema) to the calls' JSON and answered as
// the message's tool_calls instead of its content.
//   - {"type": "function", "function": {"name": N}}: the output is N's arguments, a value of its
//     "parameters" schema; one call.
//   - "required": the output is a JSON array of at least one {"name", "parameters"}; with one tool
//     its parameters follow the tool's schema, with several the name is one of theirs and the
//     parameters any object (the schema subset cannot choose between alternatives that all start
//     with "{": worker/json_schema.h).
// "auto" (free text that may hold calls in a model's own syntax) is refused: no parser reads them.
#pragma once

#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "moe/v1/inference.pb.h"

namespace moe::openai {

struct HttpError;

struct ToolChoice {
  enum class Kind { kNone, kNamed, kRequired };
  Kind kind = Kind::kNone;
  std::string name;  // kNamed: the function
};

// Reads tools / tool_choice of a chat request (`ordered`: the body with its key order) into
// `choice`, and for a named or required choice sets `sampling`'s response_format to the calls'
// schema. Errors name "tools" or "tool_choice".
std::optional<HttpError> ParseToolChoice(const nlohmann::ordered_json& ordered, ToolChoice& choice,
                                         v1::SamplingParams& sampling);

// The tool_calls of a completion's text ([{"id", "type": "function", "function": {"name",
// "arguments"}}]); null when the text is not what the choice constrained it to (cut short by
// max_tokens).
nlohmann::json ToolCallsJson(const ToolChoice& choice, const std::string& text);

// A chat answer (CompletionAccumulator::ToJson) with each choice's content turned into its tool
// calls (content "", as vLLM answers), where it reads as such.
void ApplyToolCalls(const ToolChoice& choice, nlohmann::json& answer);

// A streamed choice's last delta: its tool calls, each with its "index", or, when the text does not
// read as calls, the text as content.
nlohmann::json ToolCallsDelta(const ToolChoice& choice, const std::string& text);

}  // namespace moe::openai
