#include "coordinator/openai/responses_api.h"

#include <utility>

namespace moe::openai {
namespace {

using ojson = nlohmann::ordered_json;

bool Given(const ojson& body, const char* key) { return body.contains(key) && !body[key].is_null(); }

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

// The conversation: the instructions as a system turn, then the input (a user turn's text, or
// message items).
std::variant<ojson, HttpError> ChatMessages(const ojson& body) {
  ojson messages = ojson::array();
  if (Given(body, "instructions")) {
    if (!body["instructions"].is_string()) return BadParam("instructions", "expected a string");
    messages.push_back({{"role", "system"}, {"content", body["instructions"]}});
  }
  if (!Given(body, "input")) return BadParam("input", "required: a string or an array of input items");
  const ojson& input = body["input"];
  if (input.is_string()) {
    messages.push_back({{"role", "user"}, {"content", input}});
    return messages;
  }
  if (!input.is_array() || input.empty()) return BadParam("input", "expected a string or a non-empty array of input items");
  for (size_t i = 0; i < input.size(); ++i) {
    const ojson& item = input[i];
    const std::string at = "input[" + std::to_string(i) + "]";
    if (!item.is_object()) return BadParam(at, "expected an object");
    if (Given(item, "type") && item["type"] != "message") {
      const std::string type = item["type"].is_string() ? item["type"].get<std::string>() : item["type"].dump();
      return BadParam(at + ".type", "\"" + type + "\" is not served (message items only: tools are not served on /v1/responses)");
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

std::string Stripped(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0 ? s.substr(prefix.size()) : s;
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
             {"background", false}, {"error", nullptr}, {"incomplete_details", nullptr}};
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

}  // namespace

std::variant<ResponsesCall, HttpError> ParseResponsesRequest(const std::string& body_text) {
  const ojson body = ojson::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) return HttpError{400, "the request body is not valid JSON", "invalid_request_error", {}};
  if (!body.is_object()) return HttpError{400, "the request body must be a JSON object", "invalid_request_error", {}};

  if (Given(body, "tools") && !(body["tools"].is_array() && body["tools"].empty())) {
    return BadParam("tools", "not served on /v1/responses (vLLM serves tools there for gpt-oss's Harmony format only); "
                             "/v1/chat/completions serves them");
  }
  if (Given(body, "tool_choice") && body["tool_choice"] != "none" && body["tool_choice"] != "auto") {
    return BadParam("tool_choice", "only \"none\" or \"auto\" (no tools are served here)");
  }
  if (Given(body, "previous_response_id")) {
    return BadParam("previous_response_id", "responses are not stored (as vLLM's default): send the whole conversation in input");
  }
  if (Given(body, "conversation")) return BadParam("conversation", "conversations are not stored: send them in input");
  if (Given(body, "background") && body["background"] != false) {
    return BadParam("background", "not served (it needs stored responses)");
  }
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
  ojson chat = ojson::object();
  for (const char* key : kSameInChat) {
    if (body.contains(key)) chat[key] = body[key];
  }
  std::variant<ojson, HttpError> messages = ChatMessages(body);
  if (auto* e = std::get_if<HttpError>(&messages)) return *e;
  chat["messages"] = std::move(std::get<ojson>(messages));
  if (Given(body, "max_output_tokens")) chat["max_tokens"] = body["max_output_tokens"];
  std::variant<ojson, HttpError> format = ResponseFormat(body);
  if (auto* e = std::get_if<HttpError>(&format)) return *e;
  if (!std::get<ojson>(format).is_null()) chat["response_format"] = std::move(std::get<ojson>(format));
  if (IncludesOutputLogprobs(body)) {
    chat["logprobs"] = true;
    chat["top_logprobs"] = top_logprobs.value_or(0);
  }
  call.stream = Given(body, "stream") && body["stream"].get<bool>();
  if (call.stream) chat["stream"] = true;
  call.chat_body = chat.dump();

  // What the response object repeats (OpenAI's defaults where the request is silent).
  const auto echo = [&](const char* key, ojson fallback) { call.echo[key] = Given(body, key) ? body[key] : fallback; };
  echo("instructions", nullptr);
  echo("max_output_tokens", nullptr);
  call.echo["max_tool_calls"] = nullptr;
  call.echo["parallel_tool_calls"] = true;
  call.echo["previous_response_id"] = nullptr;
  echo("reasoning", nullptr);
  echo("service_tier", "auto");
  call.echo["store"] = false;  // nothing is stored, whatever the request asked
  echo("temperature", 1.0);
  echo("text", ojson{{"format", {{"type", "text"}}}});
  call.echo["tool_choice"] = "auto";
  call.echo["tools"] = ojson::array();
  echo("top_logprobs", 0);
  echo("top_p", 1.0);
  call.echo["truncation"] = "disabled";
  echo("user", nullptr);
  echo("metadata", ojson::object());
  return call;
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
  const std::string id = Stripped(chat.value("id", std::string()), "chatcmpl-");
  const nlohmann::json& choice = chat["choices"][0];
  const bool cut = choice.value("finish_reason", std::string()) == "length";
  const nlohmann::json& message = choice["message"];
  const std::string text = message.contains("content") && message["content"].is_string() ? message["content"].get<std::string>() : "";
  ojson logprobs = ojson::array();
  if (choice.contains("logprobs") && choice["logprobs"].is_object() && choice["logprobs"].contains("content") &&
      choice["logprobs"]["content"].is_array()) {
    logprobs = ojson::parse(choice["logprobs"]["content"].dump());  // chat's entries are the Responses API's
  }
  ojson r = ResponseObject(call, id, model, created, cut ? "incomplete" : "completed");
  if (cut) r["incomplete_details"] = {{"reason", "max_output_tokens"}};
  r["output"].push_back(MessageItem(id, cut ? "incomplete" : "completed", ojson::array({OutputText(text, logprobs)})));
  r["usage"] = Usage(chat.contains("usage") ? chat["usage"] : nlohmann::json());
  return r;
}

ResponsesEvents::ResponsesEvents(const ResponsesCall& call, std::string model, int64_t created)
    : call_(call), model_(std::move(model)), created_(created) {}

nlohmann::ordered_json ResponsesEvents::Event(const std::string& type) {
  return {{"type", type}, {"sequence_number", sequence_++}};
}

nlohmann::ordered_json ResponsesEvents::Response(const std::string& status) const {
  return ResponseObject(call_, id_, model_, created_, status);
}

void ResponsesEvents::Open(std::vector<nlohmann::ordered_json>& out) {
  if (opened_) return;
  opened_ = true;
  ojson added = Event("response.output_item.added");
  added["output_index"] = 0;
  added["item"] = MessageItem(id_, "in_progress", ojson::array());
  out.push_back(std::move(added));
  ojson part = Event("response.content_part.added");
  part["item_id"] = "msg_" + id_;
  part["output_index"] = 0;
  part["content_index"] = 0;
  part["part"] = OutputText("", ojson::array());
  out.push_back(std::move(part));
}

std::vector<nlohmann::ordered_json> ResponsesEvents::Chunk(const nlohmann::json& chunk) {
  std::vector<ojson> out;
  if (!started_) {
    started_ = true;
    id_ = Stripped(chunk.value("id", std::string()), "chatcmpl-");
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
  std::string delta;
  if (choice.contains("delta") && choice["delta"].contains("content") && choice["delta"]["content"].is_string()) {
    delta = choice["delta"]["content"].get<std::string>();
  }
  ojson logprobs = ojson::array();
  if (choice.contains("logprobs") && choice["logprobs"].is_object() && choice["logprobs"].contains("content") &&
      choice["logprobs"]["content"].is_array()) {
    logprobs = ojson::parse(choice["logprobs"]["content"].dump());
  }
  if (delta.empty() && logprobs.empty()) return out;
  Open(out);
  text_ += delta;
  for (const ojson& l : logprobs) logprobs_.push_back(l);
  ojson e = Event("response.output_text.delta");
  e["item_id"] = "msg_" + id_;
  e["output_index"] = 0;
  e["content_index"] = 0;
  e["delta"] = delta;
  e["logprobs"] = std::move(logprobs);
  out.push_back(std::move(e));
  return out;
}

std::vector<nlohmann::ordered_json> ResponsesEvents::Finish(const nlohmann::json& usage) {
  std::vector<ojson> out;
  Open(out);  // an empty answer still has its message
  const bool cut = finish_reason_ == "length";
  const std::string status = cut ? "incomplete" : "completed";
  ojson done = Event("response.output_text.done");
  done["item_id"] = "msg_" + id_;
  done["output_index"] = 0;
  done["content_index"] = 0;
  done["text"] = text_;
  done["logprobs"] = logprobs_;
  out.push_back(std::move(done));
  ojson part = Event("response.content_part.done");
  part["item_id"] = "msg_" + id_;
  part["output_index"] = 0;
  part["content_index"] = 0;
  part["part"] = OutputText(text_, logprobs_);
  out.push_back(std::move(part));
  const ojson item = MessageItem(id_, status, ojson::array({OutputText(text_, logprobs_)}));
  ojson item_done = Event("response.output_item.done");
  item_done["output_index"] = 0;
  item_done["item"] = item;
  out.push_back(std::move(item_done));
  ojson end = Event(cut ? "response.incomplete" : "response.completed");
  ojson r = Response(status);
  if (cut) r["incomplete_details"] = {{"reason", "max_output_tokens"}};
  r["output"].push_back(item);
  r["usage"] = Usage(usage);
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

}  // namespace moe::openai
