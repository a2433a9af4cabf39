// OpenAI's Responses API (POST /v1/responses) as vLLM serves it for models without gpt-oss's
// Harmony format: a conversation in, one assistant message out, nothing stored. A request is
// translated into the chat completion request it amounts to (`input` and `instructions` into
// messages, `max_output_tokens` into max_tokens, `text.format` into response_format, the output
// logprobs `include` into logprobs), which then runs through the chat path unchanged; its answer,
// whole or streamed, is translated back into a response object or Responses events. Plain
// functions on JSON (no I/O), so the rules are tested without a server.
//
// Refused with a 400 naming the field, rather than ignored: tools and tool outputs (vLLM serves
// them here with Harmony only: /v1/chat/completions serves tools), previous_response_id and
// background (they need stored responses; as vLLM's default, `store` is accepted and nothing is
// stored), truncation other than "disabled", input parts other than text.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "coordinator/openai/openai_protocol.h"

namespace moe::openai {

struct ResponsesCall {
  std::string chat_body;  // the chat completion request, as text (schemas keep their key order)
  // The request's fields a response object repeats (instructions, max_output_tokens, temperature,
  // top_p, top_logprobs, text, metadata, user, ...), with OpenAI's defaults where absent.
  nlohmann::ordered_json echo;
  bool stream = false;
};

std::variant<ResponsesCall, HttpError> ParseResponsesRequest(const std::string& body_text);

// A chat-path error as the Responses request's: the param renamed to the field the client sent
// (max_tokens -> max_output_tokens, messages -> input, response_format -> text.format, logprobs ->
// include), in the message too.
HttpError ResponsesError(HttpError chat_error);

// The response object of a whole chat completion answer (one choice): "completed", or "incomplete"
// with incomplete_details.reason "max_output_tokens" when the length limit ended it.
nlohmann::ordered_json ResponseFromChat(const ResponsesCall& call, const nlohmann::json& chat, const std::string& model,
                                        int64_t created);

// The events of a streamed response, from the chat completion chunks of its one choice, each
// {"type", "sequence_number", ...} (sent as server-sent events named by their type):
// response.created and response.in_progress (with the first chunk), response.output_item.added
// and response.content_part.added (before the first text), one response.output_text.delta per
// chunk with text, then at the end response.output_text.done, response.content_part.done,
// response.output_item.done and response.completed (response.incomplete at the length limit), or
// response.failed.
class ResponsesEvents {
 public:
  ResponsesEvents(const ResponsesCall& call, std::string model, int64_t created);

  std::vector<nlohmann::ordered_json> Chunk(const nlohmann::json& chat_chunk);
  // `usage`: the chat usage object (prompt_tokens, completion_tokens, ...).
  std::vector<nlohmann::ordered_json> Finish(const nlohmann::json& usage);
  std::vector<nlohmann::ordered_json> Failed(const HttpError& error);

 private:
  nlohmann::ordered_json Event(const std::string& type);
  nlohmann::ordered_json Response(const std::string& status) const;
  void Open(std::vector<nlohmann::ordered_json>& out);

  const ResponsesCall& call_;
  std::string model_;
  int64_t created_;
  int64_t sequence_ = 0;
  std::string id_;  // the chat completion's id behind "resp_" and "msg_"
  bool started_ = false, opened_ = false;
  std::string text_;
  nlohmann::ordered_json logprobs_ = nlohmann::ordered_json::array();
  std::string finish_reason_;
};

}  // namespace moe::openai
