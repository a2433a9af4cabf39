#include "coordinator/openai/tool_calls.h"

#include "coordinator/openai/random_id.h"

#include <algorithm>
#include <cstdio>
#include <random>

#include "coordinator/openai/openai_protocol.h"
#include "worker/json_schema.h"

namespace moe::openai {
namespace {

using ordered = nlohmann::ordered_json;

// vLLM's tool call ids: "chatcmpl-tool-" and 32 random hex digits.
std::string NewToolCallId() { return RandomId("chatcmpl-tool-"); }

// o[key] when it is a string, else "" (nlohmann's value() throws on another type: a request must not).
std::string StringField(const ordered& o, const char* key) {
  return o.is_object() && o.contains(key) && o[key].is_string() ? o[key].get<std::string>() : std::string();
}

nlohmann::json Call(const std::string& name, const std::string& arguments) {
  return {{"id", NewToolCallId()}, {"type", "function"}, {"function", {{"name", name}, {"arguments", arguments}}}};
}

}  // namespace

std::optional<HttpError> ParseToolChoice(const ordered& body, ToolChoice& choice, v1::SamplingParams& sampling,
                                         int32_t auto_marker_id) {
  const ordered none;
  const ordered& tools = body.contains("tools") ? body["tools"] : none;
  const ordered& tool_choice = body.contains("tool_choice") ? body["tool_choice"] : none;
  if (!tools.is_null() && !tools.is_array()) return BadParam("tools", "expected an array");
  if (body.contains("parallel_tool_calls") && !body["parallel_tool_calls"].is_null()) {
    if (!body["parallel_tool_calls"].is_boolean()) return BadParam("parallel_tool_calls", "expected true or false");
    choice.single_call = !body["parallel_tool_calls"].get<bool>();
  }
  // Every tool's shape, whatever tool_choice says (the tools reach the chat template in any case), as
  // vLLM's request model has it: "type" "function" (its default), a function with a name.
  std::vector<std::string> names;
  for (size_t i = 0; tools.is_array() && i < tools.size(); ++i) {
    const ordered& t = tools[i];
    const bool typed = t.is_object() && (!t.contains("type") || t["type"].is_null() || StringField(t, "type") == "function");
    if (!typed || !t.contains("function") || !t["function"].is_object() || !t["function"].contains("name") ||
        !t["function"]["name"].is_string()) {
      return BadParam("tools[" + std::to_string(i) + "]",
                      "expected {\"type\": \"function\", \"function\": {\"name\": ..., \"parameters\": {...}}}");
    }
    names.push_back(t["function"]["name"].get<std::string>());
  }
  const bool has_tools = tools.is_array() && !tools.empty();
  if (tool_choice == "auto" || (tool_choice.is_null() && has_tools && auto_marker_id >= 0)) {
    if (auto_marker_id < 0) {
      return BadParam("tool_choice", "\"auto\" is served when moe-openai-server reads the model's tool calls "
                                "(--tool-call-parser mistral); use \"required\" or a named function ({\"type\": "
                                "\"function\", \"function\": {\"name\": ...}})");
    }
    if (has_tools) {
      choice.kind = ToolChoice::Kind::kAuto;
      choice.marker_id = auto_marker_id;
    }
    return std::nullopt;
  }
  if (tool_choice.is_null() || tool_choice == "none") return std::nullopt;  // tools reach the template only
  if (tools.is_null() || tools.empty()) return BadParam("tool_choice", "needs tools");
  // Each tool's parameters schema, checked as the coordinator will compile it; the calls are told
  // apart by their names.
  std::vector<ordered> parameters;
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string param = "tools[" + std::to_string(i) + "]";
    const ordered& t = tools[i];
    if (std::find(names.begin(), names.begin() + static_cast<std::ptrdiff_t>(i), names[i]) != names.begin() + static_cast<std::ptrdiff_t>(i)) {
      return BadParam(param, "the function name \"" + names[i] + "\" is given to an earlier tool too");
    }
    const ordered p = t["function"].contains("parameters") && !t["function"]["parameters"].is_null()
                          ? t["function"]["parameters"]
                          : ordered{{"type", "object"}};
    if (absl::StatusOr<JsonSchema> s = JsonSchema::Compile(p); !s.ok()) {
      return BadParam("tools", param + ".function.parameters: " + std::string(s.status().message()));
    }
    parameters.push_back(p);
  }
  ordered schema;
  if (tool_choice == "required") {
    choice.kind = ToolChoice::Kind::kRequired;
    // A list of calls, each one tool's {"name", "parameters"}: a tagged union told apart by the name
    // (JsonSchema's anyOf of objects). The tools' definitions move to the root, where their
    // "#/$defs/..." references point.
    ordered calls = ordered::array(), hoisted = ordered::object();
    for (size_t i = 0; i < names.size(); ++i) {
      ordered p = parameters[i];
      for (const char* section : {"$defs", "definitions"}) {
        if (!p.is_object() || !p.contains(section) || !p[section].is_object()) continue;
        for (const auto& [name, definition] : p[section].items()) {
          ordered& slot = hoisted[section][name];
          if (!slot.is_null() && slot != definition) {
            return BadParam("tools", "tools[" + std::to_string(i) + "].function.parameters." + section + "." + name +
                                         ": an earlier tool defines it differently");
          }
          slot = definition;
        }
        p.erase(section);
      }
      calls.push_back({{"type", "object"},
                       {"properties", {{"name", {{"const", names[i]}}}, {"parameters", p}}},
                       {"required", {"name", "parameters"}}});
    }
    schema = {{"type", "array"}, {"items", calls.size() == 1 ? calls[0] : ordered{{"anyOf", calls}}}, {"minItems", 1}};
    if (choice.single_call) schema["maxItems"] = 1;
    for (const auto& [section, definitions] : hoisted.items()) schema[section] = definitions;
  } else if ((tool_choice.is_object() && StringField(tool_choice, "type") == "function" &&
              tool_choice.contains("function") && tool_choice["function"].is_object() &&
              tool_choice["function"].contains("name") && tool_choice["function"]["name"].is_string()) ||
             tool_choice.is_string()) {
    // A string other than "none", "auto" and "required" names the function, as TGI reads it (its
    // clients send tool_choice="get_weather"); vLLM takes only the object.
    choice.kind = ToolChoice::Kind::kNamed;
    choice.name = tool_choice.is_string() ? tool_choice.get<std::string>() : tool_choice["function"]["name"].get<std::string>();
    size_t i = 0;
    while (i < names.size() && names[i] != choice.name) ++i;
    if (i == names.size()) return BadParam("tool_choice", "names the function \"" + choice.name + "\", which is not among the tools");
    schema = parameters[i];
  } else {
    return BadParam("tool_choice", "expected \"none\", \"required\", a function's name or {\"type\": \"function\", \"function\": {\"name\": ...}}");
  }
  if (sampling.response_format().type() != v1::ResponseFormat::TYPE_TEXT) {
    return BadParam("tool_choice", "cannot be combined with a JSON response_format or guided_json");
  }
  sampling.mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
  sampling.mutable_response_format()->set_json_schema(schema.dump());
  return std::nullopt;
}

nlohmann::json ToolCallsJson(const ToolChoice& choice, const std::string& text) {
  const ordered value = ordered::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) return nullptr;
  nlohmann::json calls = nlohmann::json::array();
  if (choice.kind == ToolChoice::Kind::kNamed) {
    calls.push_back(Call(choice.name, text));
    return calls;
  }
  if (choice.kind == ToolChoice::Kind::kNone || !value.is_array()) return nullptr;
  // "required": our schema's {"name", "parameters"}; "auto": Mistral's {"name", "arguments"}. Read as
  // the stream reads them, so that the whole answer's arguments are the streamed ones (as written).
  const std::string key = choice.kind == ToolChoice::Kind::kRequired ? "parameters" : "arguments";
  for (const ordered& c : value) {
    if (!c.is_object() || !c.contains("name") || !c["name"].is_string() || !c.contains(key)) return nullptr;
  }
  ToolCallsStream stream(key, choice.single_call ? 1 : 0);
  const nlohmann::json entries = stream.Feed(text);
  if (stream.calls() != static_cast<int>(value.size()) || stream.complete_calls() != stream.calls()) return nullptr;
  for (const nlohmann::json& e : entries) {
    if (e.contains("id")) {
      calls.push_back({{"id", e["id"]}, {"type", "function"}, {"function", e["function"]}});
    } else if (e["index"].get<size_t>() >= calls.size()) {
      return nullptr;  // arguments of a call without a name
    } else {
      nlohmann::json& args = calls[e["index"].get<size_t>()]["function"]["arguments"];
      args = args.get<std::string>() + e["function"]["arguments"].get<std::string>();
    }
  }
  return calls;
}

bool AnswersWithCalls(const ToolChoice& choice, int32_t first_token) {
  if (choice.kind == ToolChoice::Kind::kAuto) return first_token >= 0 && first_token == choice.marker_id;
  return choice.kind != ToolChoice::Kind::kNone;
}

void ApplyToolCalls(const ToolChoice& choice, nlohmann::json& answer, const std::vector<int32_t>& first_tokens) {
  if (choice.kind == ToolChoice::Kind::kNone || !answer.contains("choices")) return;
  for (size_t i = 0; i < answer["choices"].size(); ++i) {
    nlohmann::json& c = answer["choices"][i];
    if (!AnswersWithCalls(choice, i < first_tokens.size() ? first_tokens[i] : -1)) continue;
    nlohmann::json& message = c["message"];
    if (!message.contains("content") || !message["content"].is_string()) continue;
    nlohmann::json calls = ToolCallsJson(choice, message["content"].get<std::string>());
    if (calls.is_null()) continue;
    message["tool_calls"] = std::move(calls);
    if (choice.kind == ToolChoice::Kind::kAuto) {
      message["content"] = nullptr;
      c["finish_reason"] = "tool_calls";
    } else {
      message["content"] = "";
    }
  }
}

nlohmann::json NamedToolCallDelta(const ToolChoice& choice, const std::string& text, bool first) {
  nlohmann::json call = {{"index", 0}, {"function", {{"arguments", text}}}};
  if (first) {
    call["id"] = NewToolCallId();
    call["type"] = "function";
    call["function"]["name"] = choice.name;
  }
  return {{"tool_calls", {call}}};
}

nlohmann::json ToolCallsStream::Feed(std::string_view text) {
  out_ = nlohmann::json::array();
  for (char c : text) Step(c);
  // What arrived of a call's arguments goes out now; a JSON string's only once whole (its value).
  if (part_ == Part::kArguments && arguments_kind_ != Value::kString) EmitArguments();
  return std::move(out_);
}

void ToolCallsStream::EmitArguments() {
  if (!named_) {  // arguments before the name (free text may put them first): held until it comes
    held_arguments_ += arguments_;
  } else if (!arguments_.empty()) {
    Emit({{"index", index_}, {"function", {{"arguments", arguments_}}}});
  }
  arguments_.clear();
}

void ToolCallsStream::Emit(nlohmann::json entry) {
  if (max_calls_ > 0 && entry["index"].get<int>() >= max_calls_) return;
  // Pieces of the call the last entry holds join it: its arguments grow.
  if (!out_.empty() && out_.back()["index"] == entry["index"] && !entry.contains("id")) {
    nlohmann::json& args = out_.back()["function"]["arguments"];
    args = args.get<std::string>() + entry["function"]["arguments"].get<std::string>();
    return;
  }
  out_.push_back(std::move(entry));
}

void ToolCallsStream::EndArguments() {
  if (arguments_kind_ == Value::kString) {  // arguments written as a JSON string: its value
    const nlohmann::json s = nlohmann::json::parse(arguments_, nullptr, /*allow_exceptions=*/false);
    arguments_ = s.is_string() ? s.get<std::string>() : arguments_;
  }
  EmitArguments();
  ++complete_;
  part_ = Part::kOther;
}

void ToolCallsStream::Step(char c) {
  const bool was_in_string = json_.in_string();
  const int depth_before = json_.depth();
  json_.Step(c);
  const bool space = !was_in_string && (c == ' ' || c == '\n' || c == '\t' || c == '\r');
  if (part_ == Part::kArguments) {
    if (!arguments_started_) {
      if (space) return;
      arguments_started_ = true;
      arguments_kind_ = c == '{' || c == '[' ? Value::kContainer : c == '"' ? Value::kString : Value::kScalar;
    } else if (arguments_kind_ == Value::kScalar && depth_before == 2 && (space || c == ',' || c == '}')) {
      EndArguments();  // a number or literal ends before the byte after it, which is structure
    }
    if (part_ == Part::kArguments) {
      arguments_ += c;
      if (json_.depth() == 2 && !json_.in_string() && (arguments_kind_ == Value::kContainer || (arguments_kind_ == Value::kString && was_in_string))) {
        EndArguments();
      }
      return;
    }
  }
  if (part_ == Part::kKey || part_ == Part::kName) {  // a key, or the name's value, inside its quotes
    token_ += c;
    if (json_.in_string()) return;
    const nlohmann::json s = nlohmann::json::parse(token_, nullptr, /*allow_exceptions=*/false);
    const std::string value = s.is_string() ? s.get<std::string>() : std::string();
    if (part_ == Part::kKey) {
      key_ = value;
      part_ = Part::kOther;
    } else {
      Emit({{"index", index_}, {"id", NewToolCallId()}, {"type", "function"},
            {"function", {{"name", value}, {"arguments", held_arguments_}}}});
      held_arguments_.clear();
      named_ = true;
      part_ = Part::kOther;
    }
    return;
  }
  if (was_in_string) return;
  if (c == '{' && depth_before == 1) {  // a call begins
    ++index_;
    key_.clear();
    named_ = false;
    held_arguments_.clear();
    part_ = Part::kExpectKey;
    return;
  }
  if (depth_before != 2) return;  // inside another key's value
  if (c == '"' && part_ == Part::kExpectKey) {
    part_ = Part::kKey;
    token_ = "\"";
  } else if (c == '"' && part_ == Part::kExpectValue && key_ == "name") {
    part_ = Part::kName;
    token_ = "\"";
  } else if (c == ':') {
    part_ = key_ == arguments_key_ ? Part::kArguments : Part::kExpectValue;
    arguments_started_ = false;
  } else if (c == ',') {
    part_ = Part::kExpectKey;
  }
}

}  // namespace moe::openai
