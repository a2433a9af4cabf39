// OpenAI's Responses API (POST /v1/responses) as vLLM serves it for models without gpt-oss's
// Harmony format: a conversation in, one assistant message (or function calls) out. A request is
// translated into the chat completion request it amounts to (`input` and `instructions` into
// messages, `max_output_tokens` into max_tokens, `text.format` into response_format, the output
// logprobs `include` into logprobs), which then runs through the chat path unchanged; its answer,
// whole or streamed, is translated back into a response object or Responses events. Plain
// functions on JSON (no I/O), so the rules are tested without a server.
//
// Stored responses (ResponseStore) are the caller's: previous_response_id names one whose
// conversation (ConversationAfter) goes before the input (ChatBody).
// Function tools go through the chat path's tool calls (beyond vLLM, which serves tools here with
// Harmony only): `tools` and `tool_choice` in chat's shape, function_call and function_call_output
// input items as the assistant's tool_calls and tool turns, and the answer's calls as
// function_call output items (streamed: response.function_call_arguments.delta / .done).
// Refused with a 400 naming the field, rather than ignored: hosted tools (web search, files, MCP),
// background (answers are not kept running past their request), truncation other than "disabled",
// input parts other than text.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "coordinator/openai/openai_protocol.h"

namespace moe::openai {

struct ResponsesCall {
  // The response's own id, 32 random hex digits: "resp_" + id, its message "msg_" + id, its calls
  // "fc_" + id + "_" + k (unique, as OpenAI's: the front stores responses by it).
  std::string id;
  nlohmann::ordered_json chat;          // the chat completion request but its messages (key order kept)
  nlohmann::ordered_json instructions;  // null, or the system turn they make
  nlohmann::ordered_json input;         // the input as chat messages
  // The input as the Responses API lists it (GET /v1/responses/{id}/input_items): each item with an
  // id ("msg_", "fc_" or "fco_" + id + "_in" + its index, unless the request gave one), a message's
  // text content as parts (input_text; output_text in the assistant's turns).
  nlohmann::ordered_json input_items;
  std::string previous_response_id;     // empty: none
  bool store = true;                    // OpenAI's default
  // The request's fields a response object repeats (instructions, max_output_tokens, temperature,
  // top_p, top_logprobs, text, metadata, user, ...), with OpenAI's defaults where absent.
  nlohmann::ordered_json echo;
  bool stream = false;
  // OpenAI's background mode (needs store): the answer is the response "queued" at once; the
  // generation runs on, GET /v1/responses/{id} finds it, POST .../cancel ends it.
  bool background = false;
};

std::variant<ResponsesCall, HttpError> ParseResponsesRequest(const std::string& body_text);

// GET /v1/responses/{id}/input_items's query parameters, as given (unset: absent).
struct InputItemsQuery {
  std::optional<std::string> limit, order, after;
};
// A page of a stored response's input items in OpenAI's list shape ({"object": "list", "data",
// "first_id", "last_id", "has_more"}): limit 1 to 100 (default 20), order "asc" or "desc" (the
// default: the last item first), after: the id of the item the page starts after. A 400 naming the
// parameter otherwise.
std::variant<nlohmann::ordered_json, HttpError> InputItemsPage(const nlohmann::ordered_json& items,
                                                               const InputItemsQuery& query);

// The chat completion request's text: the instructions' turn, `history` (the conversation a
// previous response ended, an array of chat messages; empty: none), then the input.
std::string ChatBody(const ResponsesCall& call, const nlohmann::ordered_json& history);

// The conversation `response` ends, to store: `history`, the input, and the response's output as
// the assistant's turn (its text, or null with its calls as tool_calls). The instructions are not
// part of it: OpenAI does not carry them over to a response that names this one as previous.
nlohmann::ordered_json ConversationAfter(const ResponsesCall& call, const nlohmann::ordered_json& history,
                                         const nlohmann::ordered_json& response);

// A chat-path error as the Responses request's: the param renamed to the field the client sent
// (max_tokens -> max_output_tokens, messages -> input, response_format -> text.format, logprobs ->
// include), in the message too.
HttpError ResponsesError(HttpError chat_error);

// The response object of a whole chat completion answer (one choice): "completed", or "incomplete"
// with incomplete_details.reason "max_output_tokens" when the length limit ended it.
nlohmann::ordered_json ResponseFromChat(const ResponsesCall& call, const nlohmann::json& chat, const std::string& model,
                                        int64_t created);

// The response object without output or usage in `status` ("queued", "in_progress", "cancelled",
// or "failed" with `error` as its error object {"code", "message"}): a background response's
// states before (or instead of) its answer.
nlohmann::ordered_json ResponseWithStatus(const ResponsesCall& call, const std::string& model, int64_t created,
                                          const std::string& status, const HttpError* error = nullptr);

// The events of a streamed response, from the chat completion chunks of its one choice, each
// {"type", "sequence_number", ...} (sent as server-sent events named by their type):
// response.created and response.in_progress (with the first chunk); for the text
// response.output_item.added and response.content_part.added before its first delta, one
// response.output_text.delta per chunk with text; for each tool call response.output_item.added
// with its name, then response.function_call_arguments.delta; at the end, item by item,
// response.output_text.done and response.content_part.done (text) or
// response.function_call_arguments.done (a call), response.output_item.done; then
// response.completed (response.incomplete at the length limit), or response.failed.
class ResponsesEvents {
 public:
  ResponsesEvents(const ResponsesCall& call, std::string model, int64_t created);

  std::vector<nlohmann::ordered_json> Chunk(const nlohmann::json& chat_chunk);
  // `usage`: the chat usage object (prompt_tokens, completion_tokens, ...).
  std::vector<nlohmann::ordered_json> Finish(const nlohmann::json& usage);
  std::vector<nlohmann::ordered_json> Failed(const HttpError& error);
  // After Finish: the response object response.completed (or .incomplete) carried; else null.
  const nlohmann::ordered_json& final_response() const { return final_; }

 private:
  // One output item: the assistant message (text and its logprobs) or a function call (text: its
  // arguments).
  struct Item {
    bool call = false;
    std::string id, call_id, name, text;
    nlohmann::ordered_json logprobs = nlohmann::ordered_json::array();
  };
  nlohmann::ordered_json Event(const std::string& type);
  nlohmann::ordered_json Response(const std::string& status) const;
  nlohmann::ordered_json ItemJson(const Item& item, const std::string& status) const;
  // The message item's output index, added (with its content part) on first use.
  size_t OpenMessage(std::vector<nlohmann::ordered_json>& out);

  const ResponsesCall& call_;
  std::string model_;
  int64_t created_;
  int64_t sequence_ = 0;
  bool started_ = false;
  std::vector<Item> items_;       // in output order
  int message_ = -1;              // the message's index in items_
  std::map<int, size_t> calls_;   // a chat tool call's index -> its item
  std::string finish_reason_;
  nlohmann::ordered_json final_;
};

}  // namespace moe::openai
