#include "coordinator/openai/responses_api.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <utility>
#include <vector>

#include "common/json_util.h"
#include "coordinator/openai/random_id.h"

namespace moe::openai {
namespace {

using ojson = nlohmann::ordered_json;

bool Given(const ojson& body, const char* key) { return body.contains(key) && !body[key].is_null(); }

// A chat tool call: {"id", "type": "function", "function": {"name", "arguments"}}.
ojson ChatToolCall(const ojson& id, const ojson& name, const ojson& arguments) {
  return {{"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", arguments}}}};
}

// A chat choice's logprobs entries ({token, logprob, bytes, top_logprobs}: the Responses API's too),
// or none.
ojson ChatLogprobs(const nlohmann::json& choice) {
  if (!choice.contains("logprobs") || !choice["logprobs"].is_object() || !choice["logprobs"].contains("content") ||
      !choice["logprobs"]["content"].is_array()) {
    return ojson::array();
  }
  return ojson::parse(choice["logprobs"]["content"].dump());
}

// The id of a response's k-th function call item.
std::string FunctionCallItemId(const std::string& response_id, size_t k) {
  return "fc_" + response_id + "_" + std::to_string(k);
}

ojson FunctionCallItem(const std::string& id, const std::string& call_id, const std::string& name,
                       const std::string& arguments, const std::string& status) {
  return {{"id", id}, {"type", "function_call"}, {"status", status}, {"call_id", call_id}, {"name", name},
          {"arguments", arguments}};
}

// One input item's content as chat content: a string, or [{"type": "text", "text"}] from the
// Responses API's text parts (input_text, and output_text in an assistant turn given back).
std::variant<ojson, HttpError> ChatContent(const ojson& content, const std::string& param) {
  if (content.is_string()) return content;
  if (!content.is_array()) return BadParam(param, "expected a string or an array of content parts");
  ojson parts = ojson::array();
  for (size_t k = 0; k < content.size(); ++k) {
    const ojson& part = content[k];
    const std::string at = param + "[" + std::to_string(k) + "]";
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      return BadParam(at + ".type", "required: a string");
    }
    const std::string type = part["type"].get<std::string>();
    if (type != "input_text" && type != "output_text" && type != "text") {
      return BadParam(at + ".type", "\"" + type + "\" is not served (text parts only: input_text, output_text)");
    }
    if (!part.contains("text") || !part["text"].is_string()) return BadParam(at + ".text", "required: a string");
    parts.push_back({{"type", "text"}, {"text", part["text"]}});
  }
  return parts;
}

// The input as chat messages (a user turn's text, or message and call items).
std::variant<ojson, HttpError> ChatMessages(const ojson& body) {
  ojson messages = ojson::array();
  if (!Given(body, "input")) return BadParam("input", "required: a string or an array of input items");
  const ojson& input = body["input"];
  if (input.is_string()) {
    messages.push_back({{"role", "user"}, {"content", input}});
    return messages;
  }
  if (!input.is_array() || input.empty()) return BadParam("input", "expected a string or a non-empty array of input items");
  const auto string_field = [](const ojson& item, const std::string& at, const char* key) -> std::optional<HttpError> {
    if (!item.contains(key) || !item[key].is_string()) return BadParam(at + "." + key, "required: a string");
    return std::nullopt;
  };
  for (size_t i = 0; i < input.size(); ++i) {
    const ojson& item = input[i];
    const std::string at = "input[" + std::to_string(i) + "]";
    if (!item.is_object()) return BadParam(at, "expected an object");
    const std::string type = !Given(item, "type") ? "message" : item["type"].is_string() ? item["type"].get<std::string>()
                                                                                       : item["type"].dump();
    if (type == "function_call") {  // a call the model made: an assistant turn's tool call (calls in a row: one turn)
      for (const char* key : {"call_id", "name", "arguments"}) {
        if (std::optional<HttpError> e = string_field(item, at, key)) return *e;
      }
      const ojson call = ChatToolCall(item["call_id"], item["name"], item["arguments"]);
      if (messages.empty() || messages.back()["role"] != "assistant" || !messages.back().contains("tool_calls")) {
        messages.push_back({{"role", "assistant"}, {"content", nullptr}, {"tool_calls", ojson::array()}});
      }
      messages.back()["tool_calls"].push_back(call);
      continue;
    }
    if (type == "function_call_output") {  // its result: a tool turn
      if (std::optional<HttpError> e = string_field(item, at, "call_id")) return *e;
      if (!item.contains("output")) return BadParam(at + ".output", "required: a string or text parts");
      std::variant<ojson, HttpError> output = ChatContent(item["output"], at + ".output");
      if (auto* e = std::get_if<HttpError>(&output)) return *e;
      messages.push_back({{"role", "tool"}, {"tool_call_id", item["call_id"]}, {"content", std::get<ojson>(output)}});
      continue;
    }
    if (type != "message") {
      return BadParam(at + ".type", "\"" + type + "\" is not served (message, function_call and function_call_output items)");
    }
    if (!item.contains("role") || !item["role"].is_string()) return BadParam(at + ".role", "required: a string");
    std::string role = item["role"].get<std::string>();
    if (role != "user" && role != "assistant" && role != "system" && role != "developer") {
      return BadParam(at + ".role", "expected user, assistant, system or developer");
    }
    if (role == "developer") role = "system";  // OpenAI's name for the system turn
    if (!item.contains("content")) return BadParam(at + ".content", "required");
    std::variant<ojson, HttpError> content = ChatContent(item["content"], at + ".content");
    if (auto* e = std::get_if<HttpError>(&content)) return *e;
    messages.push_back({{"role", role}, {"content", std::get<ojson>(content)}});
  }
  return messages;
}

// The input items as the API lists them back (ResponsesCall::input_items); `input` is valid
// (ChatMessages accepted it).
ojson InputItems(const ojson& input, const std::string& id) {
  const auto item_id = [&](const char* prefix, size_t k) { return std::string(prefix) + "_" + id + "_in" + std::to_string(k); };
  const auto parts = [](const ojson& content, const std::string& role) {
    if (!content.is_string()) return content;
    return ojson::array({{{"type", role == "assistant" ? "output_text" : "input_text"}, {"text", content}}});
  };
  ojson items = ojson::array();
  if (input.is_string()) {
    items.push_back({{"id", item_id("msg", 0)}, {"type", "message"}, {"role", "user"}, {"content", parts(input, "user")}});
    return items;
  }
  for (size_t k = 0; k < input.size(); ++k) {
    const ojson& given = input[k];
    const std::string type = Given(given, "type") ? given["type"].get<std::string>() : "message";
    const char* prefix = type == "function_call" ? "fc" : type == "function_call_output" ? "fco" : "msg";
    ojson item = {{"id", Given(given, "id") && given["id"].is_string() ? given["id"] : ojson(item_id(prefix, k))},
                  {"type", type}};
    for (const auto& [key, value] : given.items()) {
      if (key == "id" || key == "type") continue;
      item[key] = key == "content" && type == "message" ? parts(value, given["role"].get<std::string>()) : value;
    }
    items.push_back(std::move(item));
  }
  return items;
}

// text.format as the chat request's response_format (none for plain text).
std::variant<ojson, HttpError> ResponseFormat(const ojson& body) {
  if (!Given(body, "text")) return ojson();
  const ojson& text = body["text"];
  if (!text.is_object()) return BadParam("text", "expected an object");
  if (!Given(text, "format")) return ojson();
  const ojson& format = text["format"];
  if (!format.is_object() || !format.contains("type") || !format["type"].is_string()) {
    return BadParam("text.format.type", "required: text, json_object or json_schema");
  }
  const std::string type = format["type"].get<std::string>();
  if (type == "text") return ojson();
  if (type == "json_object") return ojson{{"type", "json_object"}};
  if (type != "json_schema") return BadParam("text.format.type", "expected text, json_object or json_schema");
  ojson schema = ojson::object();
  for (const char* key : {"name", "description", "schema", "strict"}) {
    if (format.contains(key)) schema[key] = format[key];
  }
  return ojson{{"type", "json_schema"}, {"json_schema", std::move(schema)}};
}

// The sampling fields that mean the same in a chat request (vLLM's extensions included).
constexpr const char* kSameInChat[] = {
    "model", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
    "seed", "stop", "stop_token_ids", "ignore_eos", "min_tokens", "priority", "cache_salt", "request_id", "logit_bias",
    "bad_words", "allowed_token_ids", "chat_template", "chat_template_kwargs", "structured_outputs", "guided_json",
    "guided_regex", "guided_choice", "guided_grammar"};

bool IncludesOutputLogprobs(const ojson& body) {
  if (!Given(body, "include") || !body["include"].is_array()) return false;
  for (const ojson& x : body["include"]) {
    if (x == "message.output_text.logprobs") return true;
  }
  return false;
}

ojson Usage(const nlohmann::json& chat_usage) {
  const auto number = [&](const char* key) -> uint64_t {
    return chat_usage.is_object() && chat_usage.contains(key) && chat_usage[key].is_number() ? chat_usage[key].get<uint64_t>()
                                                                                            : 0;
  };
  uint64_t cached = 0;
  if (chat_usage.is_object() && chat_usage.contains("prompt_tokens_details") &&
      chat_usage["prompt_tokens_details"].is_object() && chat_usage["prompt_tokens_details"].contains("cached_tokens") &&
      chat_usage["prompt_tokens_details"]["cached_tokens"].is_number()) {
    cached = chat_usage["prompt_tokens_details"]["cached_tokens"].get<uint64_t>();
  }
  const uint64_t input = number("prompt_tokens"), output = number("completion_tokens");
  return {{"input_tokens", input},
          {"input_tokens_details", {{"cached_tokens", cached}}},
          {"output_tokens", output},
          {"output_tokens_details", {{"reasoning_tokens", 0}}},
          {"total_tokens", input + output}};
}

// The response object without output and usage, in OpenAI's field order.
ojson ResponseObject(const ResponsesCall& call, const std::string& id, const std::string& model, int64_t created,
                     const std::string& status) {
  ojson r = {{"id", "resp_" + id}, {"object", "response"}, {"created_at", created}, {"status", status},
             {"background", call.background}, {"error", nullptr}, {"incomplete_details", nullptr}};
  for (const auto& [key, value] : call.echo.items()) r[key] = value;
  r["model"] = model;
  r["output"] = ojson::array();
  r["usage"] = nullptr;
  return r;
}

ojson OutputText(const std::string& text, const ojson& logprobs) {
  return {{"type", "output_text"}, {"text", text}, {"annotations", ojson::array()}, {"logprobs", logprobs}};
}

ojson MessageItem(const std::string& id, const std::string& status, ojson content) {
  return {{"id", "msg_" + id}, {"type", "message"}, {"status", status}, {"role", "assistant"}, {"content", std::move(content)}};
}

// Function tools ({"type": "function", "name", "description", "parameters", "strict"}) as chat
// tools, and tool_choice ("none", "auto", "required", {"type": "function", "name"}) as chat's.
std::optional<HttpError> ChatTools(const ojson& body, ojson& chat) {
  if (Given(body, "tools")) {
    if (!body["tools"].is_array()) return BadParam("tools", "expected an array of function tools");
    ojson tools = ojson::array();
    for (size_t i = 0; i < body["tools"].size(); ++i) {
      const ojson& tool = body["tools"][i];
      const std::string at = "tools[" + std::to_string(i) + "]";
      if (!tool.is_object() || tool.value("type", ojson()) != "function") {
        return BadParam(at + ".type", "only function tools are served (no hosted tools: web search, files, MCP, ...)");
      }
      if (!tool.contains("name") || !tool["name"].is_string()) return BadParam(at + ".name", "required: a string");
      ojson function = ojson::object();
      for (const char* key : {"name", "description", "parameters", "strict"}) {
        if (Given(tool, key)) function[key] = tool[key];
      }
      tools.push_back({{"type", "function"}, {"function", std::move(function)}});
    }
    if (!tools.empty()) chat["tools"] = std::move(tools);
  }
  if (Given(body, "tool_choice")) {
    const ojson& choice = body["tool_choice"];
    if (choice == "none" || choice == "auto" || choice == "required") {
      if (chat.contains("tools")) chat["tool_choice"] = choice;
    } else if (choice.is_object() && choice.value("type", ojson()) == "function" && choice.contains("name") &&
               choice["name"].is_string()) {
      chat["tool_choice"] = {{"type", "function"}, {"function", {{"name", choice["name"]}}}};
    } else {
      return BadParam("tool_choice", "expected \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\"}");
    }
  }
  if (body.contains("parallel_tool_calls")) chat["parallel_tool_calls"] = body["parallel_tool_calls"];
  return std::nullopt;
}

}  // namespace

std::variant<ResponsesCall, HttpError> ParseResponsesRequest(const std::string& body_text) {
  absl::StatusOr<ojson> parsed = ParseJson<ojson>(body_text, kMaxBodyNesting);
  if (!parsed.ok()) {
    return HttpError{400, absl::StrCat("the request body is ", parsed.status().message()), "invalid_request_error", {}};
  }
  const ojson body = *std::move(parsed);
  if (!body.is_object()) return HttpError{400, "the request body must be a JSON object", "invalid_request_error", {}};

  if (Given(body, "conversation")) return BadParam("conversation", "the Conversations API is not served: name a previous_response_id");
  if (Given(body, "background") && !body["background"].is_boolean()) return BadParam("background", "expected true or false");
  if (Given(body, "truncation") && body["truncation"] != "disabled") {
    return BadParam("truncation", "only \"disabled\" is served (a conversation past the context is refused)");
  }
  if (Given(body, "prompt")) return BadParam("prompt", "stored prompt templates are not served");
  std::optional<int64_t> top_logprobs;
  if (Given(body, "top_logprobs")) {
    if (!body["top_logprobs"].is_number_integer() || body["top_logprobs"].get<int64_t>() < 0 ||
        body["top_logprobs"].get<int64_t>() > 20) {
      return BadParam("top_logprobs", "expected an integer from 0 to 20");
    }
    top_logprobs = body["top_logprobs"].get<int64_t>();
  }
  if (Given(body, "include") && !body["include"].is_array()) return BadParam("include", "expected an array of strings");
  if (Given(body, "stream") && !body["stream"].is_boolean()) return BadParam("stream", "expected true or false");

  ResponsesCall call;
  call.id = RandomId("");
  if (Given(body, "previous_response_id")) {
    if (!body["previous_response_id"].is_string()) return BadParam("previous_response_id", "expected a string");
    call.previous_response_id = body["previous_response_id"].get<std::string>();
  }
  if (Given(body, "store")) {
    if (!body["store"].is_boolean()) return BadParam("store", "expected true or false");
    call.store = body["store"].get<bool>();
  }
  if (Given(body, "instructions")) {
    if (!body["instructions"].is_string()) return BadParam("instructions", "expected a string");
    call.instructions = {{"role", "system"}, {"content", body["instructions"]}};
  }
  ojson chat = ojson::object();
  for (const char* key : kSameInChat) {
    if (body.contains(key)) chat[key] = body[key];
  }
  std::variant<ojson, HttpError> messages = ChatMessages(body);
  if (auto* e = std::get_if<HttpError>(&messages)) return *e;
  call.input = std::move(std::get<ojson>(messages));
  call.input_items = InputItems(body["input"], call.id);
  std::set<std::string> item_ids;  // input_items pages by id: each must name one item
  for (size_t k = 0; k < call.input_items.size(); ++k) {
    if (!item_ids.insert(call.input_items[k]["id"].get<std::string>()).second) {
      return BadParam("input[" + std::to_string(k) + "].id", "another input item has this id");
    }
  }
  if (Given(body, "max_output_tokens")) chat["max_tokens"] = body["max_output_tokens"];
  if (std::optional<HttpError> e = ChatTools(body, chat)) return *e;
  std::variant<ojson, HttpError> format = ResponseFormat(body);
  if (auto* e = std::get_if<HttpError>(&format)) return *e;
  if (!std::get<ojson>(format).is_null()) chat["response_format"] = std::move(std::get<ojson>(format));
  if (IncludesOutputLogprobs(body)) {
    chat["logprobs"] = true;
    chat["top_logprobs"] = top_logprobs.value_or(0);
  }
  call.stream = Given(body, "stream") && body["stream"].get<bool>();
  if (call.stream) chat["stream"] = true;
  call.chat = std::move(chat);
  call.background = Given(body, "background") && body["background"].get<bool>();
  if (call.background && !call.store) {
    return BadParam("background", "needs store: true (a background response is fetched by its id)");
  }
  if (call.background && call.stream) {
    return BadParam("background", "with stream is not served: poll GET /v1/responses/{id} for the answer");
  }

  // What the response object repeats (OpenAI's defaults where the request is silent).
  const auto echo = [&](const char* key, ojson fallback) { call.echo[key] = Given(body, key) ? body[key] : fallback; };
  echo("instructions", nullptr);
  echo("max_output_tokens", nullptr);
  call.echo["max_tool_calls"] = nullptr;
  echo("parallel_tool_calls", true);
  echo("previous_response_id", nullptr);
  echo("reasoning", nullptr);
  echo("service_tier", "auto");
  call.echo["store"] = call.store;  // the server sets what it did
  echo("temperature", 1.0);
  echo("text", ojson{{"format", {{"type", "text"}}}});
  echo("tool_choice", "auto");
  echo("tools", ojson::array());
  echo("top_logprobs", 0);
  echo("top_p", 1.0);
  call.echo["truncation"] = "disabled";
  echo("user", nullptr);
  echo("metadata", ojson::object());
  return call;
}

std::string ChatBody(const ResponsesCall& call, const nlohmann::ordered_json& history) {
  ojson chat = call.chat;
  ojson messages = ojson::array();
  if (!call.instructions.is_null()) messages.push_back(call.instructions);
  for (const ojson& m : history) messages.push_back(m);
  for (const ojson& m : call.input) messages.push_back(m);
  chat["messages"] = std::move(messages);
  return chat.dump();
}

nlohmann::ordered_json ConversationAfter(const ResponsesCall& call, const nlohmann::ordered_json& history,
                                         const nlohmann::ordered_json& response) {
  ojson conversation = history.is_array() ? history : ojson::array();
  for (const ojson& m : call.input) conversation.push_back(m);
  ojson turn = {{"role", "assistant"}, {"content", nullptr}};
  std::string text;
  ojson calls = ojson::array();
  for (const ojson& item : response["output"]) {
    if (item["type"] == "message") {
      for (const ojson& part : item["content"]) text += part.value("text", std::string());
    } else if (item["type"] == "function_call") {
      calls.push_back(ChatToolCall(item["call_id"], item["name"], item["arguments"]));
    }
  }
  if (!text.empty() || calls.empty()) turn["content"] = text;
  if (!calls.empty()) turn["tool_calls"] = std::move(calls);
  conversation.push_back(std::move(turn));
  return conversation;
}

HttpError ResponsesError(HttpError e) {
  if (!e.param) return e;
  static const std::pair<const char*, const char*> kRenamed[] = {
      {"max_tokens", "max_output_tokens"}, {"messages", "input"}, {"response_format", "text.format"}, {"logprobs", "include"}};
  for (const auto& [chat, responses] : kRenamed) {
    const std::string from = chat;
    if (e.param->rfind(from, 0) != 0) continue;
    const std::string to = responses;
    // messages[i] counts the instructions' system turn: name the field, not a shifted index.
    const std::string renamed = from == "messages" ? to : to + e.param->substr(from.size());
    if (e.message.rfind(*e.param, 0) == 0) e.message = renamed + e.message.substr(e.param->size());
    e.param = renamed;
    break;
  }
  return e;
}

nlohmann::ordered_json ResponseFromChat(const ResponsesCall& call, const nlohmann::json& chat, const std::string& model,
                                        int64_t created) {
  const std::string& id = call.id;
  const nlohmann::json& choice = chat["choices"][0];
  const bool cut = choice.value("finish_reason", std::string()) == "length";
  const std::string status = cut ? "incomplete" : "completed";
  const nlohmann::json& message = choice["message"];
  const std::string text = message.contains("content") && message["content"].is_string() ? message["content"].get<std::string>() : "";
  const bool calls = message.contains("tool_calls") && message["tool_calls"].is_array() && !message["tool_calls"].empty();
  const ojson logprobs = ChatLogprobs(choice);
  ojson r = ResponseObject(call, id, model, created, status);
  if (cut) r["incomplete_details"] = {{"reason", "max_output_tokens"}};
  // The text (an answer of calls has none), then each call.
  if (!text.empty() || !calls) r["output"].push_back(MessageItem(id, status, ojson::array({OutputText(text, logprobs)})));
  if (calls) {
    for (size_t k = 0; k < message["tool_calls"].size(); ++k) {
      const nlohmann::json& c = message["tool_calls"][k];
      r["output"].push_back(FunctionCallItem(FunctionCallItemId(id, k), c.value("id", std::string()),
                                             c["function"].value("name", std::string()),
                                             c["function"].value("arguments", std::string()), status));
    }
  }
  r["usage"] = Usage(chat.contains("usage") ? chat["usage"] : nlohmann::json());
  return r;
}

nlohmann::ordered_json ResponseWithStatus(const ResponsesCall& call, const std::string& model, int64_t created,
                                          const std::string& status, const HttpError* error) {
  ojson r = ResponseObject(call, call.id, model, created, status);
  if (error != nullptr) r["error"] = {{"code", error->status >= 500 ? "server_error" : error->type}, {"message", error->message}};
  return r;
}

ResponsesEvents::ResponsesEvents(const ResponsesCall& call, std::string model, int64_t created)
    : call_(call), model_(std::move(model)), created_(created) {}

nlohmann::ordered_json ResponsesEvents::Event(const std::string& type) {
  return {{"type", type}, {"sequence_number", sequence_++}};
}

nlohmann::ordered_json ResponsesEvents::Response(const std::string& status) const {
  return ResponseObject(call_, call_.id, model_, created_, status);
}

nlohmann::ordered_json ResponsesEvents::ItemJson(const Item& item, const std::string& status) const {
  if (item.call) return FunctionCallItem(item.id, item.call_id, item.name, item.text, status);
  return MessageItem(call_.id, status, status == "in_progress" ? ojson::array() : ojson::array({OutputText(item.text, item.logprobs)}));
}

size_t ResponsesEvents::OpenMessage(std::vector<nlohmann::ordered_json>& out) {
  if (message_ >= 0) return static_cast<size_t>(message_);
  message_ = static_cast<int>(items_.size());
  items_.push_back(Item{});
  items_.back().id = "msg_" + call_.id;
  ojson added = Event("response.output_item.added");
  added["output_index"] = message_;
  added["item"] = ItemJson(items_.back(), "in_progress");
  out.push_back(std::move(added));
  ojson part = Event("response.content_part.added");
  part["item_id"] = items_.back().id;
  part["output_index"] = message_;
  part["content_index"] = 0;
  part["part"] = OutputText("", ojson::array());
  out.push_back(std::move(part));
  return static_cast<size_t>(message_);
}

std::vector<nlohmann::ordered_json> ResponsesEvents::Chunk(const nlohmann::json& chunk) {
  std::vector<ojson> out;
  if (!started_) {
    started_ = true;
    for (const char* type : {"response.created", "response.in_progress"}) {
      ojson e = Event(type);
      e["response"] = Response("in_progress");
      out.push_back(std::move(e));
    }
  }
  if (!chunk.contains("choices") || !chunk["choices"].is_array() || chunk["choices"].empty()) return out;
  const nlohmann::json& choice = chunk["choices"][0];
  if (choice.contains("finish_reason") && choice["finish_reason"].is_string()) {
    finish_reason_ = choice["finish_reason"].get<std::string>();
  }
  static const nlohmann::json kNoDelta = nlohmann::json::object();
  const nlohmann::json& delta = choice.contains("delta") ? choice["delta"] : kNoDelta;
  std::string text;
  if (delta.contains("content") && delta["content"].is_string()) text = delta["content"].get<std::string>();
  ojson logprobs = ChatLogprobs(choice);
  if (!text.empty() || !logprobs.empty()) {
    const size_t at = OpenMessage(out);
    Item& m = items_[at];
    m.text += text;
    for (const ojson& l : logprobs) m.logprobs.push_back(l);
    ojson e = Event("response.output_text.delta");
    e["item_id"] = m.id;
    e["output_index"] = at;
    e["content_index"] = 0;
    e["delta"] = text;
    e["logprobs"] = std::move(logprobs);
    out.push_back(std::move(e));
  }
  // Tool calls: a call's id and name first (its item added), then its arguments as they are written.
  if (delta.contains("tool_calls") && delta["tool_calls"].is_array()) {
    for (const nlohmann::json& entry : delta["tool_calls"]) {
      const int index = entry.value("index", 0);
      auto found = calls_.find(index);
      if (found == calls_.end()) {
        Item item;
        item.call = true;
        item.id = FunctionCallItemId(call_.id, calls_.size());
        item.call_id = entry.value("id", std::string());
        if (entry.contains("function")) item.name = entry["function"].value("name", std::string());
        found = calls_.emplace(index, items_.size()).first;
        items_.push_back(std::move(item));
        ojson added = Event("response.output_item.added");
        added["output_index"] = found->second;
        added["item"] = ItemJson(items_[found->second], "in_progress");
        out.push_back(std::move(added));
      }
      Item& item = items_[found->second];
      const std::string piece = entry.contains("function") ? entry["function"].value("arguments", std::string()) : "";
      if (piece.empty()) continue;
      item.text += piece;
      ojson e = Event("response.function_call_arguments.delta");
      e["item_id"] = item.id;
      e["output_index"] = found->second;
      e["delta"] = piece;
      out.push_back(std::move(e));
    }
  }
  return out;
}

std::vector<nlohmann::ordered_json> ResponsesEvents::Finish(const nlohmann::json& usage) {
  std::vector<ojson> out;
  if (items_.empty()) OpenMessage(out);  // an empty answer still has its message
  const bool cut = finish_reason_ == "length";
  const std::string status = cut ? "incomplete" : "completed";
  ojson r = Response(status);
  if (cut) r["incomplete_details"] = {{"reason", "max_output_tokens"}};
  for (size_t at = 0; at < items_.size(); ++at) {
    const Item& item = items_[at];
    if (item.call) {
      ojson done = Event("response.function_call_arguments.done");
      done["item_id"] = item.id;
      done["output_index"] = at;
      done["name"] = item.name;
      done["arguments"] = item.text;
      out.push_back(std::move(done));
    } else {
      ojson done = Event("response.output_text.done");
      done["item_id"] = item.id;
      done["output_index"] = at;
      done["content_index"] = 0;
      done["text"] = item.text;
      done["logprobs"] = item.logprobs;
      out.push_back(std::move(done));
      ojson part = Event("response.content_part.done");
      part["item_id"] = item.id;
      part["output_index"] = at;
      part["content_index"] = 0;
      part["part"] = OutputText(item.text, item.logprobs);
      out.push_back(std::move(part));
    }
    ojson item_done = Event("response.output_item.done");
    item_done["output_index"] = at;
    item_done["item"] = ItemJson(item, status);
    r["output"].push_back(item_done["item"]);
    out.push_back(std::move(item_done));
  }
  ojson end = Event(cut ? "response.incomplete" : "response.completed");
  r["usage"] = Usage(usage);
  final_ = r;
  end["response"] = std::move(r);
  out.push_back(std::move(end));
  return out;
}

std::vector<nlohmann::ordered_json> ResponsesEvents::Failed(const HttpError& error) {
  ojson e = Event("response.failed");
  ojson r = Response("failed");
  r["error"] = {{"code", error.type}, {"message", error.message}};
  e["response"] = std::move(r);
  return {std::move(e)};
}

std::variant<ojson, HttpError> InputItemsPage(const ojson& items, const InputItemsQuery& query) {
  int64_t limit = 20;
  if (query.limit) {
    const std::string& v = *query.limit;
    const bool digits = !v.empty() && v.size() <= 3 && v.find_first_not_of("0123456789") == std::string::npos;
    limit = digits ? std::stoll(v) : 0;
    if (limit < 1 || limit > 100) return BadParam("limit", "expected an integer from 1 to 100, got \"" + v + "\"");
  }
  const std::string order = query.order.value_or("desc");
  if (order != "asc" && order != "desc") return BadParam("order", "expected asc or desc, got \"" + order + "\"");
  std::vector<const ojson*> ordered;
  for (const ojson& item : items) ordered.push_back(&item);
  if (order == "desc") std::reverse(ordered.begin(), ordered.end());
  size_t start = 0;
  if (query.after) {
    const auto at = std::find_if(ordered.begin(), ordered.end(), [&](const ojson* item) { return (*item)["id"] == *query.after; });
    if (at == ordered.end()) return BadParam("after", "no input item of this response has the id \"" + *query.after + "\"");
    start = static_cast<size_t>(at - ordered.begin()) + 1;
  }
  ojson page = {{"object", "list"}, {"data", ojson::array()}, {"first_id", nullptr}, {"last_id", nullptr}, {"has_more", false}};
  const size_t end = std::min(ordered.size(), start + static_cast<size_t>(limit));
  for (size_t k = start; k < end; ++k) page["data"].push_back(*ordered[k]);
  if (end > start) {
    page["first_id"] = page["data"].front()["id"];
    page["last_id"] = page["data"].back()["id"];
  }
  page["has_more"] = end < ordered.size();
  return page;
}

}  // namespace moe::openai
