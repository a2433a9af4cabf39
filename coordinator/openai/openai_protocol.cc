#include "coordinator/openai/openai_protocol.h"

#include <algorithm>
#include <cmath>
#include <exception>
#include <initializer_list>
#include <set>
#include <string>

#include "absl/strings/numbers.h"
#include "common/json_util.h"
#include "common/utf8.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace moe::openai {

HttpError BadParam(const std::string& param, const std::string& message) {
  return HttpError{400, param + ": " + message, "invalid_request_error", param};
}

namespace {

using nlohmann::json;

// A number field (null or absent: not set).
std::optional<HttpError> Number(const json& body, const std::string& key, std::optional<double>& out) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  if (!body[key].is_number()) return BadParam(key, "expected a number");
  out = body[key].get<double>();
  return std::nullopt;
}

// A JSON integer as int64 (unsigned ones beyond it clamped to INT64_MAX, so range checks refuse them).
int64_t Int64Of(const json& v) {
  return v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX) ? INT64_MAX : v.get<int64_t>();
}

// An integer field within [lo, hi] (null or absent: not set). A bound of UINT32_MAX or more is a
// type's, not the field's: below lo the message names lo alone.
std::optional<HttpError> Integer(const json& body, const std::string& key, int64_t lo, int64_t hi,
                                 std::optional<int64_t>& out) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  const json& v = body[key];
  const std::string range = "must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  const std::string at_least = hi >= static_cast<int64_t>(UINT32_MAX) ? "must be at least " + std::to_string(lo) : range;
  // A whole number past 64 bits parses as a float: out of range, not "not an integer".
  if (v.is_number_float() && std::isfinite(v.get<double>()) && std::fabs(v.get<double>()) >= 0x1p63 &&
      std::floor(v.get<double>()) == v.get<double>()) {
    return BadParam(key, v.get<double>() < 0 ? at_least : range + ", got " + v.dump());
  }
  if (!v.is_number_integer()) return BadParam(key, "expected an integer");
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    return BadParam(key, range + ", got " + v.dump());  // past any bound (hi is an int64)
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo) return BadParam(key, at_least + ", got " + std::to_string(x));
  if (x > hi) return BadParam(key, range + ", got " + std::to_string(x));
  out = x;
  return std::nullopt;
}

// Appends the integers of `ids` (an array of them) to `out`, each within [lo, INT32_MAX]; the
// coordinator checks them against the vocabulary.
std::optional<HttpError> AppendTokenIds(const json& ids, const std::string& param, int64_t lo,
                                        google::protobuf::RepeatedField<int32_t>& out) {
  for (const json& x : ids) {
    const int64_t id = Int64Of(x);
    if (id < lo || id > INT32_MAX) return BadParam(param, "token id " + x.dump() + " out of range");
    out.Add(static_cast<int32_t>(id));
  }
  return std::nullopt;
}

bool AllIntegers(const json& a) {
  return std::all_of(a.begin(), a.end(), [](const json& x) { return x.is_number_integer(); });
}

bool AllStrings(const json& a) {
  return std::all_of(a.begin(), a.end(), [](const json& x) { return x.is_string(); });
}

std::optional<HttpError> ParseOnePrompt(const json& p, v1::Prompt& prompt) {
  if (p.is_string()) {
    prompt.set_text(p.get<std::string>());
    prompt.set_parse_special_tokens(true);  // "<s>" written in the prompt is BOS, as vLLM's tokenizer call reads it
    return std::nullopt;
  }
  if (p.is_array() && !p.empty() && AllIntegers(p)) {
    return AppendTokenIds(p, "prompt", INT32_MIN, *prompt.mutable_token_ids()->mutable_ids());
  }
  return BadParam("prompt", "expected a string, an array of token ids, or an array of those (a batch)");
}

// A prompt, or a batch of them (an array of strings or of token-id arrays).
std::optional<HttpError> ParsePrompts(const json& body, std::vector<v1::Prompt>& prompts) {
  if (!body.contains("prompt") || body["prompt"].is_null()) return BadParam("prompt", "required");
  const json& p = body["prompt"];
  const bool batch = p.is_array() && !p.empty() && (p[0].is_string() || p[0].is_array());
  if (!batch) {
    prompts.emplace_back();
    return ParseOnePrompt(p, prompts.back());
  }
  if (p.size() > kMaxPromptBatch) {
    return BadParam("prompt", "a batch of " + std::to_string(p.size()) + " prompts; at most " +
                                  std::to_string(kMaxPromptBatch) + " in one request");
  }
  for (const json& one : p) {
    prompts.emplace_back();
    if (!one.is_string() && !one.is_array()) return BadParam("prompt", "a batch mixes prompts with other values");
    if (std::optional<HttpError> e = ParseOnePrompt(one, prompts.back())) return e;
  }
  return std::nullopt;
}

}  // namespace

json HttpError::ToJson() const {
  return {{"error", {{"message", message}, {"type", type}, {"param", param ? json(*param) : json(nullptr)}, {"code", status}}}};
}

std::optional<HttpError> CheckBodyBeforeParsing(const std::string& body) {
  if (const size_t nul = body.find('\0'); nul != std::string::npos) {
    return HttpError{400, absl::StrCat("the request body is not valid JSON: a NUL byte at offset ", nul),
                     "invalid_request_error", {}};
  }
  if (!NestsDeeperThan(body, kMaxBodyNesting)) return std::nullopt;
  return HttpError{400, "the request body nests arrays and objects more than " + std::to_string(kMaxBodyNesting) +
                            " levels deep",
                   "invalid_request_error", {}};
}

namespace {

// The body as a JSON object naming the served model (or none), or the error to answer.
std::variant<json, HttpError> ParseBody(const std::string& body_text, const ServedModel& model) {
  absl::StatusOr<json> parsed = ParseJson(body_text, kMaxBodyNesting);
  if (!parsed.ok()) {  // "not valid JSON: parse error at line 1, column 9: ..."
    return HttpError{400, absl::StrCat("the request body is ", parsed.status().message()), "invalid_request_error", {}};
  }
  json body = *std::move(parsed);
  if (!body.is_object()) return HttpError{400, "the request body must be a JSON object", "invalid_request_error", {}};
  if (body.contains("model") && !body["model"].is_null()) {
    if (!body["model"].is_string()) return BadParam("model", "expected a string");
    if (std::optional<HttpError> e = UnknownModel(model, body["model"].get<std::string>())) return *e;
  }
  return body;
}

std::optional<HttpError> Bool(const json& body, const std::string& key, bool& out) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  if (!body[key].is_boolean()) return BadParam(key, "expected true or false");
  out = body[key].get<bool>();
  return std::nullopt;
}

// A request's JSON schema as JSON text with the properties in the request's order (the order the
// output writes them in): read from the body's text, since `json` sorts object keys. `path` is
// where the schema (an object or its text) is: vLLM's {"guided_json"} or {"structured_outputs",
// "json"}, TGI's {"response_format", "value"}; errors name it, dotted.
std::variant<std::string, HttpError> SchemaText(const std::string& body_text, std::initializer_list<const char*> path) {
  const nlohmann::ordered_json body = nlohmann::ordered_json::parse(body_text, nullptr, false);
  const nlohmann::ordered_json* g = &body;
  std::string param;
  for (const char* key : path) {
    g = &g->at(key);
    param += (param.empty() ? "" : ".") + std::string(key);
  }
  if (g->is_string()) return g->get<std::string>();
  if (!g->is_object()) return BadParam(param, "expected a JSON schema (an object or its text)");
  return g->dump();
}

// OpenAI's response_format json_schema ({"type": "json_schema", "json_schema": {"name", "schema",
// ...}}; TGI puts the same object in "value"), as SchemaText reads it.
std::variant<std::string, HttpError> ResponseFormatSchemaText(const std::string& body_text) {
  const nlohmann::ordered_json body = nlohmann::ordered_json::parse(body_text, nullptr, false);
  const nlohmann::ordered_json& f = body["response_format"];
  // TGI's json_schema puts the same {"name", "schema"} in "value" (huggingface_hub sends it so).
  const char* key = !f.contains("json_schema") && f.contains("value") ? "value" : "json_schema";
  if (!f.contains(key) || !f[key].is_object() || !f[key].contains("schema") || !f[key]["schema"].is_object()) {
    return BadParam("response_format", "json_schema: expected {\"name\": ..., \"schema\": {...}}");
  }
  return f[key]["schema"].dump();
}

// vLLM's choice (guided_choice, structured_outputs.choice): the output is exactly one of the texts.
std::optional<HttpError> SetChoices(const json& choices, const std::string& param, v1::ResponseFormat& f) {
  if (!choices.is_array() || choices.empty() || !AllStrings(choices)) {
    return BadParam(param, "expected a non-empty array of strings");
  }
  f.set_type(v1::ResponseFormat::TYPE_CHOICE);
  for (const json& c : choices) f.add_choices(c.get<std::string>());
  return std::nullopt;
}

// vLLM's regex (guided_regex, structured_outputs.regex): the whole output matches it.
std::optional<HttpError> SetRegex(const json& regex, const std::string& param, v1::ResponseFormat& f) {
  if (!regex.is_string() || regex.get<std::string>().empty()) return BadParam(param, "expected a non-empty string");
  f.set_type(v1::ResponseFormat::TYPE_REGEX);
  f.set_regex(regex.get<std::string>());
  return std::nullopt;
}

// vLLM's grammar (guided_grammar, structured_outputs.grammar): the whole output is a text the GBNF
// grammar derives from its rule root (the coordinator parses it: errors name line and column).
std::optional<HttpError> SetGrammar(const json& grammar, const std::string& param, v1::ResponseFormat& f) {
  if (!grammar.is_string() || grammar.get<std::string>().empty()) {
    return BadParam(param, "expected a non-empty string (a GBNF grammar with a rule root)");
  }
  f.set_type(v1::ResponseFormat::TYPE_GRAMMAR);
  f.set_grammar(grammar.get<std::string>());
  return std::nullopt;
}

// vLLM's disable_additional_properties: every object schema that does not say otherwise takes only
// its listed properties (none when it lists none).
void CloseObjects(nlohmann::ordered_json& schema) {
  if (!schema.is_object()) return;
  const bool object = schema.contains("properties") || (schema.contains("type") && schema["type"] == "object");
  if (object && !schema.contains("additionalProperties")) schema["additionalProperties"] = false;
  for (const char* map : {"properties", "$defs", "definitions"}) {
    if (schema.contains(map) && schema[map].is_object()) {
      for (auto& [name, sub] : schema[map].items()) CloseObjects(sub);
    }
  }
  for (const char* list : {"anyOf", "oneOf", "allOf", "prefixItems"}) {
    if (schema.contains(list) && schema[list].is_array()) {
      for (auto& sub : schema[list]) CloseObjects(sub);
    }
  }
  for (const char* one : {"items", "additionalProperties"}) {
    if (schema.contains(one)) CloseObjects(schema[one]);
  }
}

// vLLM's structured_outputs (its name for the guided_* fields since v0.12): one of json, regex,
// choice, grammar, json_object; disable_any_whitespace and disable_additional_properties honoured;
// what this server cannot enforce (structural_tag, whitespace_pattern) refused naming it.
std::optional<HttpError> StructuredOutputs(const json& body, const std::string& body_text, v1::SamplingParams& s) {
  if (!body.contains("structured_outputs") || body["structured_outputs"].is_null()) return std::nullopt;
  const json& so = body["structured_outputs"];
  if (!so.is_object()) {
    return BadParam("structured_outputs", "expected an object with one of json, regex, choice, grammar, json_object");
  }
  int constraints = 0;
  for (const auto& [key, value] : so.items()) {
    const std::string param = "structured_outputs." + key;
    if (key == "structural_tag" || key == "whitespace_pattern") {
      if (value.is_null()) continue;
      return BadParam(param, key == "whitespace_pattern"
                                 ? "not supported: JSON takes nothing, one space, or a newline and an indent between "
                                   "tokens here, or no whitespace with disable_any_whitespace"
                                 : "not supported (json, regex, choice, grammar and json_object are)");
    }
    if (key == "json" || key == "regex" || key == "choice" || key == "grammar") {
      constraints += value.is_null() ? 0 : 1;
    } else if (key == "json_object") {
      if (!value.is_null() && !value.is_boolean()) return BadParam(param, "expected true or false");
      constraints += value == true ? 1 : 0;
    } else if (key == "disable_fallback" || key == "disable_any_whitespace" || key == "disable_additional_properties") {
      if (!value.is_null() && !value.is_boolean()) return BadParam(param, "expected true or false");
    } else {
      return BadParam(param, "not known (json, regex, choice, grammar, json_object, disable_any_whitespace, "
                             "disable_additional_properties, disable_fallback are)");
    }
  }
  if (constraints == 0) return std::nullopt;
  if (constraints > 1) return BadParam("structured_outputs", "only one of json, regex, choice, grammar and json_object");
  if (s.response_format().type() != v1::ResponseFormat::TYPE_TEXT) {
    return BadParam("structured_outputs", "cannot be combined with response_format or the guided_* fields");
  }
  v1::ResponseFormat& f = *s.mutable_response_format();
  const auto flag = [&](const char* key) { return so.contains(key) && so[key] == true; };
  f.set_compact(flag("disable_any_whitespace"));
  if (so.contains("json") && !so["json"].is_null()) {
    std::variant<std::string, HttpError> schema = SchemaText(body_text, {"structured_outputs", "json"});
    if (auto* e = std::get_if<HttpError>(&schema)) return *e;
    std::string text = std::get<std::string>(schema);
    if (flag("disable_additional_properties")) {
      nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (parsed.is_discarded()) return BadParam("structured_outputs.json", "not valid JSON");
      CloseObjects(parsed);
      text = parsed.dump();
    }
    f.set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
    f.set_json_schema(text);
  } else if (so.contains("regex") && !so["regex"].is_null()) {
    return SetRegex(so["regex"], "structured_outputs.regex", f);
  } else if (so.contains("choice") && !so["choice"].is_null()) {
    return SetChoices(so["choice"], "structured_outputs.choice", f);
  } else if (so.contains("grammar") && !so["grammar"].is_null()) {
    return SetGrammar(so["grammar"], "structured_outputs.grammar", f);
  } else {
    f.set_type(v1::ResponseFormat::TYPE_JSON_OBJECT);
  }
  return std::nullopt;
}

// vLLM's request fields this server does not serve, refused with a 400 when they ask for what it
// cannot do (ignored, they would change the answer without a word); at their defaults they pass.
std::optional<HttpError> RefuseUnserved(const json& body) {
  const auto given = [&](const char* key) { return body.contains(key) && !body[key].is_null(); };
  if (given("logits_processors") && !(body["logits_processors"].is_array() && body["logits_processors"].empty())) {
    return BadParam("logits_processors", "custom logits processors are not served");
  }
  if (given("guided_whitespace_pattern")) {
    return BadParam("guided_whitespace_pattern", "not served (guided_json, guided_regex, guided_choice and guided_grammar are)");
  }
  return std::nullopt;
}

// use_beam_search (vLLM's): the search ranks whole beams by their log-probabilities (beam_search.h),
// one token a step, so what samples, constrains, stops or streams otherwise is refused with it
// rather than ignored; n beams need the 2n most probable tokens a step (top logprobs: at most 20).
std::optional<HttpError> CheckBeamSearch(const CompletionCall& call) {
  if (!call.beam_search) return std::nullopt;
  const auto refuse = [](const std::string& param) {
    return BadParam(param, "not served with use_beam_search (max_tokens, n, temperature, seed, ignore_eos, "
                           "length_penalty, include_stop_str_in_output, skip_special_tokens and truncate_prompt_tokens are)");
  };
  if (call.stream) return refuse("stream");
  if (call.echo || !call.chat_echo.empty()) return refuse("echo");
  if (call.logprobs) return refuse("logprobs");
  if (call.prompt_logprobs) return refuse("prompt_logprobs");
  if (call.tool_choice.kind != ToolChoice::Kind::kNone) return refuse("tool_choice");
  if (call.n < 1 || call.n > kMaxBeamWidth) {
    return BadParam("n", "with use_beam_search, the beam width: from 1 to " + std::to_string(kMaxBeamWidth));
  }
  static const std::set<std::string> kServed = {"max_tokens", "temperature", "seed", "n", "ignore_eos",
                                                "include_stop_str_in_output", "skip_special_tokens",
                                                "truncate_prompt_tokens"};
  const v1::SamplingParams& s = call.request.sampling();
  std::vector<const google::protobuf::FieldDescriptor*> set;
  s.GetReflection()->ListFields(s, &set);
  for (const google::protobuf::FieldDescriptor* f : set) {
    if (!kServed.contains(f->name())) return refuse(f->name());
  }
  return std::nullopt;
}

// The sampling and streaming fields both APIs share (OpenAI's, and vLLM's extensions).
std::optional<HttpError> ParseSampling(const json& body, const std::string& body_text, CompletionCall& call) {
  if (std::optional<HttpError> e = RefuseUnserved(body)) return e;
  v1::SamplingParams& s = *call.request.mutable_sampling();
  std::optional<int64_t> top_k, seed, n, min_tokens;
  std::optional<double> temperature, top_p, min_p, presence, frequency, repetition;
  for (auto e : {Integer(body, "top_k", -1, INT32_MAX, top_k), Integer(body, "seed", INT64_MIN, INT64_MAX, seed),
                 Integer(body, "n", 0, UINT32_MAX, n), Integer(body, "min_tokens", 0, UINT32_MAX, min_tokens),
                 Number(body, "temperature", temperature), Number(body, "top_p", top_p), Number(body, "min_p", min_p),
                 Number(body, "presence_penalty", presence), Number(body, "frequency_penalty", frequency),
                 Number(body, "repetition_penalty", repetition)}) {
    if (e) return e;
  }
  if (top_k) s.set_top_k(*top_k < 0 ? 0 : static_cast<int32_t>(*top_k));  // vLLM: -1 = off
  // vLLM's range, torch.long's; -1 is no seed there, another negative one is taken as its bits.
  if (seed && *seed != -1) s.set_seed(static_cast<uint64_t>(*seed));
  if (n) s.set_n(static_cast<uint32_t>(*n));
  call.n = n ? static_cast<uint32_t>(*n) : 1;
  if (min_tokens) s.set_min_tokens(static_cast<uint32_t>(*min_tokens));
  if (temperature) s.set_temperature(static_cast<float>(*temperature));
  if (top_p) s.set_top_p(static_cast<float>(*top_p));
  if (min_p) s.set_min_p(static_cast<float>(*min_p));
  if (presence) s.set_presence_penalty(static_cast<float>(*presence));
  if (frequency) s.set_frequency_penalty(static_cast<float>(*frequency));
  if (repetition) s.set_repetition_penalty(static_cast<float>(*repetition));

  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& stop = body["stop"];
    if (stop.is_string()) {
      s.add_stop(stop.get<std::string>());
    } else if (stop.is_array() && AllStrings(stop)) {
      for (const json& x : stop) s.add_stop(x.get<std::string>());
    } else {
      return BadParam("stop", "expected a string or an array of strings");
    }
  }
  if (body.contains("stop_token_ids") && !body["stop_token_ids"].is_null()) {
    const json& ids = body["stop_token_ids"];
    if (!ids.is_array() || !AllIntegers(ids)) return BadParam("stop_token_ids", "expected an array of token ids");
    if (std::optional<HttpError> e = AppendTokenIds(ids, "stop_token_ids", INT32_MIN, *s.mutable_stop_token_ids())) return e;
  }
  std::optional<int64_t> prompt_logprobs;  // vLLM's
  if (std::optional<HttpError> e = Integer(body, "prompt_logprobs", 0, 20, prompt_logprobs)) return e;
  if (prompt_logprobs) s.set_prompt_logprobs(static_cast<uint32_t>(*prompt_logprobs));
  call.prompt_logprobs = prompt_logprobs.has_value();
  std::optional<int64_t> priority;  // vLLM's: lower first (the coordinator's --scheduling-policy priority)
  if (std::optional<HttpError> e = Integer(body, "priority", INT32_MIN, INT32_MAX, priority)) return e;
  if (priority) call.request.set_priority(static_cast<int32_t>(*priority));
  bool include_stop = false;  // vLLM's
  if (std::optional<HttpError> e = Bool(body, "include_stop_str_in_output", include_stop)) return e;
  if (include_stop) s.set_include_stop_str_in_output(true);
  if (std::optional<HttpError> e = Bool(body, "use_beam_search", call.beam_search)) return e;  // vLLM's
  std::optional<double> length_penalty;  // vLLM's, for beam search (without it, as there, no effect)
  if (std::optional<HttpError> e = Number(body, "length_penalty", length_penalty)) return e;
  if (length_penalty && !std::isfinite(*length_penalty)) return BadParam("length_penalty", "must be a finite number");
  if (length_penalty) call.length_penalty = *length_penalty;
  bool skip_special = true;  // vLLM's: false shows the control tokens generated ("<s>", "[INST]")
  if (std::optional<HttpError> e = Bool(body, "skip_special_tokens", skip_special)) return e;
  if (!skip_special) s.set_skip_special_tokens(false);
  std::optional<int64_t> truncate;  // vLLM's: the prompt's last k tokens; -1: no truncation
  if (std::optional<HttpError> e = Integer(body, "truncate_prompt_tokens", -1, UINT32_MAX, truncate)) return e;
  if (truncate && *truncate == 0) return BadParam("truncate_prompt_tokens", "must be at least 1 (or -1: no truncation)");
  if (truncate && *truncate > 0) s.set_truncate_prompt_tokens(static_cast<uint32_t>(*truncate));
  if (body.contains("bad_words") && !body["bad_words"].is_null()) {  // vLLM's
    const json& words = body["bad_words"];
    if (!words.is_array() || !AllStrings(words)) {
      return BadParam("bad_words", "expected an array of strings");
    }
    for (const json& w : words) s.add_bad_words(w.get<std::string>());
  }
  if (body.contains("allowed_token_ids") && !body["allowed_token_ids"].is_null()) {  // vLLM's
    const json& ids = body["allowed_token_ids"];
    if (!ids.is_array() || ids.empty() || !AllIntegers(ids)) {
      return BadParam("allowed_token_ids", "expected a non-empty array of token ids");
    }
    if (std::optional<HttpError> e = AppendTokenIds(ids, "allowed_token_ids", 0, *s.mutable_allowed_token_ids())) return e;
  }
  if (body.contains("logit_bias") && !body["logit_bias"].is_null()) {
    const json& bias = body["logit_bias"];
    if (!bias.is_object()) return BadParam("logit_bias", "expected an object {token id: bias}");
    for (const auto& [key, value] : bias.items()) {
      int32_t id = 0;
      size_t used = 0;
      try {
        id = std::stoi(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used == 0 || used != key.size() || !value.is_number()) {
        return BadParam("logit_bias", "expected token ids (as strings) mapped to numbers, got \"" + key + "\"");
      }
      (*s.mutable_logit_bias())[id] = value.get<float>();
    }
  }
  if (body.contains("response_format") && !body["response_format"].is_null()) {
    const json& f = body["response_format"];
    const json type = f.is_object() ? f.value("type", json()) : json();
    // TGI's Messages API puts its grammar here: {"type": "json" | "json_object" | "regex", "value":
    // ...}; huggingface_hub's InferenceClient.chat_completion sends a json_schema that way. Read
    // without the value, json_object would drop the schema and answer any JSON object.
    const bool tgi_value = f.is_object() && f.contains("value") && !f["value"].is_null();
    if (tgi_value && (type == "json" || type == "json_object")) {
      std::variant<std::string, HttpError> schema = SchemaText(body_text, {"response_format", "value"});
      if (auto* e = std::get_if<HttpError>(&schema)) return *e;
      s.mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
      s.mutable_response_format()->set_json_schema(std::get<std::string>(schema));
    } else if (tgi_value && type == "regex") {
      if (std::optional<HttpError> e = SetRegex(f["value"], "response_format.value", *s.mutable_response_format())) {
        return *e;
      }
    } else if (type == "json_object") {
      s.mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_OBJECT);
    } else if (type == "json_schema") {
      std::variant<std::string, HttpError> schema = ResponseFormatSchemaText(body_text);
      if (auto* e = std::get_if<HttpError>(&schema)) return *e;
      s.mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
      s.mutable_response_format()->set_json_schema(std::get<std::string>(schema));
    } else if (type != "text") {
      return BadParam("response_format", "expected {\"type\": \"text\"}, {\"type\": \"json_object\"}, "
                                         "{\"type\": \"json_schema\", \"json_schema\": {...}} or TGI's "
                                         "{\"type\": \"json\" or \"regex\", \"value\": ...}");
    }
  }
  if (body.contains("guided_choice") && !body["guided_choice"].is_null()) {  // vLLM's: one of these texts
    const bool combined = s.response_format().type() != v1::ResponseFormat::TYPE_TEXT || body.contains("guided_json");
    v1::ResponseFormat choice;
    if (std::optional<HttpError> e = SetChoices(body["guided_choice"], "guided_choice", choice)) return e;
    if (combined) return BadParam("guided_choice", "cannot be combined with a JSON response_format or guided_json");
    *s.mutable_response_format() = std::move(choice);
  }
  if (body.contains("guided_json") && !body["guided_json"].is_null()) {  // vLLM's name for the same
    if (s.response_format().type() != v1::ResponseFormat::TYPE_TEXT) {
      return BadParam("guided_json", "cannot be combined with a JSON response_format");
    }
    std::variant<std::string, HttpError> schema = SchemaText(body_text, {"guided_json"});
    if (auto* e = std::get_if<HttpError>(&schema)) return *e;
    s.mutable_response_format()->set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
    s.mutable_response_format()->set_json_schema(std::get<std::string>(schema));
  }
  if (body.contains("guided_regex") && !body["guided_regex"].is_null()) {  // vLLM's: the whole output matches
    const bool combined = s.response_format().type() != v1::ResponseFormat::TYPE_TEXT;
    v1::ResponseFormat regex;
    if (std::optional<HttpError> e = SetRegex(body["guided_regex"], "guided_regex", regex)) return e;
    if (combined) {
      return BadParam("guided_regex", "cannot be combined with a JSON response_format, guided_json or guided_choice");
    }
    *s.mutable_response_format() = std::move(regex);
  }
  if (body.contains("guided_grammar") && !body["guided_grammar"].is_null()) {  // vLLM's: a GBNF grammar's text
    const bool combined = s.response_format().type() != v1::ResponseFormat::TYPE_TEXT;
    v1::ResponseFormat grammar;
    if (std::optional<HttpError> e = SetGrammar(body["guided_grammar"], "guided_grammar", grammar)) return e;
    if (combined) {
      return BadParam("guided_grammar",
                      "cannot be combined with a JSON response_format, guided_json, guided_choice or guided_regex");
    }
    *s.mutable_response_format() = std::move(grammar);
  }
  if (std::optional<HttpError> e = StructuredOutputs(body, body_text, s)) return e;
  bool ignore_eos = false;
  if (std::optional<HttpError> e = Bool(body, "ignore_eos", ignore_eos)) return e;
  if (ignore_eos) s.set_ignore_eos(true);
  if (std::optional<HttpError> e = Bool(body, "stream", call.stream)) return e;
  if (std::optional<HttpError> e = Bool(body, "return_token_ids", call.return_token_ids)) return e;
  if (std::optional<HttpError> e = Bool(body, "return_tokens_as_token_ids", call.tokens_as_ids)) return e;
  call.request.set_return_prompt_token_ids(call.return_token_ids);
  if (body.contains("request_id") && !body["request_id"].is_null()) {  // vLLM's: the answer's id is cmpl-<it>
    const json& id = body["request_id"];
    if (!id.is_string() || id.get<std::string>().empty()) return BadParam("request_id", "expected a non-empty string");
    call.request.set_request_id(id.get<std::string>());  // its length the coordinator checks
  }
  if (body.contains("cache_salt") && !body["cache_salt"].is_null()) {  // vLLM's: the prefix cache per salt
    const json& salt = body["cache_salt"];
    if (!salt.is_string() || salt.get<std::string>().empty()) return BadParam("cache_salt", "expected a non-empty string");
    call.request.set_cache_salt(salt.get<std::string>());  // its length the coordinator checks
  }
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    const json& o = body["stream_options"];
    if (!o.is_object()) return BadParam("stream_options", "expected an object");
    if (!call.stream) return BadParam("stream_options", "only allowed with stream: true");
    for (const auto& [key, value] : o.items()) {
      if (key != "include_usage" && key != "continuous_usage_stats") {
        return BadParam("stream_options", key + ": not known (include_usage and continuous_usage_stats are)");
      }
      if (value.is_null()) continue;
      if (!value.is_boolean()) return BadParam("stream_options", key + ": expected true or false");
      (key == "include_usage" ? call.include_usage : call.continuous_usage) = value.get<bool>();
    }
    // As vLLM: the usage in every chunk only when it is asked for at all. Each stream's first message
    // then carries its prompt's ids, so the chunks can count its tokens from the first one on.
    call.continuous_usage = call.continuous_usage && call.include_usage;
    if (call.continuous_usage) call.request.set_return_prompt_token_ids(true);
  }
  return std::nullopt;
}

}  // namespace

std::variant<CompletionCall, HttpError> ParseCompletionRequest(const std::string& body_text, const ServedModel& model) {
  std::variant<json, HttpError> parsed = ParseBody(body_text, model);
  if (auto* e = std::get_if<HttpError>(&parsed)) return *e;
  const json& body = std::get<json>(parsed);
  if (body.contains("suffix") && !body["suffix"].is_null()) return BadParam("suffix", "not supported by this server");

  CompletionCall call;
  v1::GenerateRequest& r = call.request;
  if (std::optional<HttpError> e = ParsePrompts(body, call.prompts)) return *e;
  *r.mutable_prompt() = call.prompts.front();
  if (std::optional<HttpError> e = ParseSampling(body, body_text, call)) return *e;
  v1::SamplingParams& s = *r.mutable_sampling();

  std::optional<int64_t> max_tokens, best_of, logprobs;
  for (auto e : {Integer(body, "max_tokens", 0, UINT32_MAX, max_tokens), Integer(body, "best_of", 0, UINT32_MAX, best_of),
                 Integer(body, "logprobs", 0, 20, logprobs)}) {
    if (e) return *e;
  }
  // OpenAI's and vLLM's default of 16 is the request's own, never the model's max_new_tokens; an
  // explicit null is vLLM's None: the context's room (the server sets it per prompt).
  call.max_tokens = max_tokens ? static_cast<uint32_t>(*max_tokens) : 16;
  call.max_tokens_to_context = body.contains("max_tokens") && body["max_tokens"].is_null();
  s.set_max_tokens(call.max_tokens);
  if (best_of && *best_of != call.n) return BadParam("best_of", "only best_of = n is served (no ranking of completions)");
  if (logprobs) s.set_logprobs(static_cast<uint32_t>(*logprobs));
  call.logprobs = logprobs.has_value();

  if (std::optional<HttpError> e = Bool(body, "echo", call.echo)) return *e;
  if (std::optional<HttpError> e = Bool(body, "add_special_tokens", call.add_special_tokens)) return *e;
  if (call.max_tokens == 0 && !call.echo) return BadParam("max_tokens", "must be at least 1 (0 only with echo)");
  if (call.max_tokens == 0 && call.prompt_logprobs) return BadParam("prompt_logprobs", "needs max_tokens of at least 1");
  if (std::optional<HttpError> e = CheckBeamSearch(call)) return *e;
  return call;
}

namespace {

// A message's content as the chat template sees it, always a string, as vLLM gives templates that
// print content: a string as it is; null or none at all (an assistant turn that only calls tools; its
// tool_calls stay) as "" (a template that adds content to a string, Mixtral-8x7B-Instruct's, fails on
// null); OpenAI's parts [{"type": "text", "text"}] (and {"type": "refusal", "refusal"}, an
// assistant's) joined with newlines.
std::optional<HttpError> NormaliseContent(nlohmann::ordered_json& message, size_t i) {
  const std::string param = "messages[" + std::to_string(i) + "].content";
  nlohmann::ordered_json& content = message["content"];  // (added as null when absent)
  if (content.is_string()) return std::nullopt;
  if (content.is_null()) {
    content = "";
    return std::nullopt;
  }
  if (!content.is_array()) return BadParam(param, "expected a string or an array of content parts");
  std::string text;
  for (size_t k = 0; k < content.size(); ++k) {
    const nlohmann::ordered_json& part = content[k];
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      return BadParam(param, "part " + std::to_string(k) + " has no \"type\"");
    }
    const std::string type = part["type"].get<std::string>();
    if (type != "text" && type != "refusal") {
      return BadParam(param, "part type \"" + type + "\" is not served (text and refusal only)");
    }
    if (!part.contains(type) || !part[type].is_string()) {
      return BadParam(param, type + " part without a string \"" + type + "\"");
    }
    if (k > 0) text += "\n";
    text += part[type].get<std::string>();
  }
  content = text;
  return std::nullopt;
}

}  // namespace

std::variant<ChatCall, HttpError> ParseChatRequest(const std::string& body_text, const ServedModel& model,
                                                   int32_t auto_marker_id) {
  std::variant<json, HttpError> parsed = ParseBody(body_text, model);
  if (auto* e = std::get_if<HttpError>(&parsed)) return *e;
  const json& body = std::get<json>(parsed);
  // Parsed again keeping key order: the template may print messages and tools with tojson.
  nlohmann::ordered_json ordered = nlohmann::ordered_json::parse(body_text);

  ChatCall chat;
  CompletionCall& call = chat.completion;
  if (std::optional<HttpError> e = ParseSampling(body, body_text, call)) return *e;
  v1::SamplingParams& s = *call.request.mutable_sampling();

  if (!ordered.contains("messages") || !ordered["messages"].is_array() || ordered["messages"].empty()) {
    return BadParam("messages", "required: a non-empty array of {\"role\", \"content\"}");
  }
  chat.messages = ordered["messages"];
  for (size_t i = 0; i < chat.messages.size(); ++i) {
    nlohmann::ordered_json& m = chat.messages[i];
    const std::string param = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) return BadParam(param, "expected an object");
    if (!m.contains("role") || !m["role"].is_string()) return BadParam(param + ".role", "required: a string");
    if (std::optional<HttpError> e = NormaliseContent(m, i)) return *e;
  }

  std::optional<int64_t> max_tokens, max_completion_tokens, top_logprobs;
  for (auto e : {Integer(body, "max_tokens", 1, UINT32_MAX, max_tokens),
                 Integer(body, "max_completion_tokens", 1, UINT32_MAX, max_completion_tokens),
                 Integer(body, "top_logprobs", 0, 20, top_logprobs)}) {
    if (e) return *e;
  }
  if (max_completion_tokens) max_tokens = max_completion_tokens;  // OpenAI's newer name wins
  if (max_tokens) {
    s.set_max_tokens(static_cast<uint32_t>(*max_tokens));
    call.max_tokens = static_cast<uint32_t>(*max_tokens);
    chat.max_tokens_given = true;
  }
  if (std::optional<HttpError> e = Bool(body, "logprobs", call.logprobs)) return *e;
  if (top_logprobs && !call.logprobs) return BadParam("top_logprobs", "only allowed with logprobs: true");
  if (call.logprobs) s.set_logprobs(top_logprobs ? static_cast<uint32_t>(*top_logprobs) : 0);

  if (std::optional<HttpError> e = Bool(body, "add_generation_prompt", chat.add_generation_prompt)) return *e;
  if (std::optional<HttpError> e = Bool(body, "continue_final_message", chat.continue_final_message)) return *e;
  if (chat.continue_final_message && chat.add_generation_prompt && body.contains("add_generation_prompt") &&
      body["add_generation_prompt"].is_boolean()) {
    return BadParam("continue_final_message", "cannot be combined with add_generation_prompt: true");
  }
  if (chat.continue_final_message) chat.add_generation_prompt = false;
  // vLLM's chat default is false: the template writes the special tokens; true would add a second BOS.
  if (body.contains("add_special_tokens") && body["add_special_tokens"] == true) {
    return BadParam("add_special_tokens", "only false is served for chat (the chat template writes the special tokens)");
  }
  bool echo = false;
  if (std::optional<HttpError> e = Bool(body, "echo", echo)) return *e;
  if (echo) {  // vLLM's: the answer's role is "assistant", or without a generation prompt the last message's
    const nlohmann::ordered_json& last = chat.messages.back();
    const bool same_role = !chat.add_generation_prompt || last["role"] == "assistant";
    if (same_role && last.contains("content") && last["content"].is_string()) call.chat_echo = last["content"];
  }
  // The tools reach the template; a named function or "required" also constrains the output.
  if (std::optional<HttpError> e = ParseToolChoice(ordered, call.tool_choice, s, auto_marker_id)) return *e;
  if (call.tool_choice.kind != ToolChoice::Kind::kNone && s.has_skip_special_tokens() && !s.skip_special_tokens()) {
    return BadParam("skip_special_tokens", "false cannot be combined with tool calls: they are read from the text without "
                                           "control tokens ([TOOL_CALLS], </s>)");
  }
  if (ordered.contains("tools") && !ordered["tools"].is_null()) {
    chat.tools = ordered["tools"];
    // vLLM's request model fills a tool's missing "type" ("function") before the template sees it.
    for (auto& tool : chat.tools) {
      if (tool.is_object() && (!tool.contains("type") || tool["type"].is_null())) tool["type"] = "function";
    }
  }
  if (ordered.contains("chat_template") && !ordered["chat_template"].is_null()) {
    if (!ordered["chat_template"].is_string()) return BadParam("chat_template", "expected a string");
    chat.chat_template = ordered["chat_template"].get<std::string>();
  }
  if (ordered.contains("chat_template_kwargs") && !ordered["chat_template_kwargs"].is_null()) {
    if (!ordered["chat_template_kwargs"].is_object()) return BadParam("chat_template_kwargs", "expected an object");
    chat.template_kwargs = ordered["chat_template_kwargs"];
  }
  if (std::optional<HttpError> e = CheckBeamSearch(call)) return *e;
  return chat;
}

HttpError FromGrpcError(int grpc_code, const std::string& message) {
  HttpError e;
  e.message = message;
  // gRPC's status codes are absl's, number for number.
  switch (static_cast<absl::StatusCode>(grpc_code)) {
    case absl::StatusCode::kInvalidArgument: {  // "sampling.top_p: ..." -> param "top_p"
      e.status = 400;
      const size_t colon = message.find(": ");
      if (colon != std::string::npos && message.find(' ') >= colon) {
        std::string field = message.substr(0, colon);
        if (field.rfind("sampling.", 0) == 0) field = field.substr(9);
        e.param = field;
      }
      return e;
    }
    case absl::StatusCode::kNotFound:
      return {404, message, "NotFoundError", {}};
    case absl::StatusCode::kResourceExhausted:
      return {429, message, "rate_limit_error", {}};
    case absl::StatusCode::kUnavailable:
      return {503, message, "server_error", {}};
    case absl::StatusCode::kDeadlineExceeded:
      return {504, message, "server_error", {}};
    case absl::StatusCode::kUnimplemented:
      return {501, message, "server_error", {}};
    default:
      return {500, message, "server_error", {}};
  }
}

HttpError FromGrpcError(const CompletionCall& call, size_t prompt, int grpc_code, const std::string& message) {
  HttpError e = FromGrpcError(grpc_code, message);
  if (call.prompts.size() > 1 && e.status == 400) {
    const std::string indexed = "prompt[" + std::to_string(prompt) + "]";
    if (e.param && (*e.param == "prompt" || e.param->starts_with("prompt."))) {
      if (e.message.starts_with("prompt")) e.message = indexed + e.message.substr(6);
      e.param = indexed + e.param->substr(6);
    } else {  // max_tokens past the context that prompt leaves, ...
      e.message += " (" + indexed + " of the batch)";
    }
  }
  const bool schema_of_tools =
      call.tool_choice.kind == ToolChoice::Kind::kNamed || call.tool_choice.kind == ToolChoice::Kind::kRequired;
  if (schema_of_tools && e.param && e.param->starts_with("response_format")) {
    e.param = "tools";
    e.message = "tools: the JSON schema of the tool calls tool_choice asks for is refused (" + message + ")";
  }
  return e;
}

std::string FinishReasonName(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
    case v1::FINISH_REASON_STOP_SEQUENCE:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_CANCELLED:
      return "abort";
    default:
      return "error";
  }
}

json StopReasonJson(const v1::GenerateResponse& r) {
  switch (r.stop_reason_case()) {
    case v1::GenerateResponse::kStopString:
      return r.stop_string();
    case v1::GenerateResponse::kStopTokenId:
      return r.stop_token_id();
    default:
      return nullptr;
  }
}

std::string TokenName(int32_t id, const std::string& text, bool as_ids) {
  return as_ids ? "token_id:" + std::to_string(id) : text;
}

namespace {

// A completions top_logprobs entry: the k most probable tokens and the chosen one (OpenAI's "the
// API will always return the logprob of the sampled token, so there may be up to logprobs+1
// elements"; vLLM's too), so that top_logprobs[i][tokens[i]] is token_logprobs[i]. The chosen
// token goes by `chosen_name`, its name in "tokens" (its text in the completion, " I"), also where
// it is one of the alternatives; the others by their texts decoded alone ("I"), each text with the
// logprob of the most probable id that has it. An alternative with no text goes by its id where
// `empty_as_id` (echo's, as before).
json CompletionTopLogprobs(const google::protobuf::RepeatedPtrField<v1::TopLogprob>& top_k, int32_t chosen_id,
                           const std::string& chosen_name, float chosen_logprob, bool tokens_as_ids, bool empty_as_id) {
  json top = json::object();
  top[chosen_name] = chosen_logprob;
  for (const v1::TopLogprob& t : top_k) {
    if (t.token_id() == chosen_id) continue;
    const std::string name =
        TokenName(t.token_id(), t.text().empty() && empty_as_id ? std::to_string(t.token_id()) : t.text(), tokens_as_ids);
    if (!top.contains(name)) top[name] = t.logprob();  // most probable first
  }
  return top;
}

}  // namespace

json LogprobsJson(const v1::GenerateResponse& r, size_t& offset, bool tokens_as_ids) {
  json j = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
            {"text_offset", json::array()}};
  for (const v1::TokenLogprob& lp : r.logprobs()) {
    const std::string name = TokenName(lp.token_id(), lp.text(), tokens_as_ids);
    j["tokens"].push_back(name);
    j["token_logprobs"].push_back(lp.logprob());
    j["top_logprobs"].push_back(
        CompletionTopLogprobs(lp.top(), lp.token_id(), name, lp.logprob(), tokens_as_ids, /*empty_as_id=*/false));
    j["text_offset"].push_back(offset);
    offset += CharCount(lp.text());  // characters, as OpenAI's and vLLM's (len of a Python str)
  }
  return j;
}

json PromptLogprobsJson(const v1::GenerateResponse& r) {
  json list = json::array({nullptr});  // nothing predicts the first prompt token
  for (const v1::TokenLogprob& lp : r.prompt_logprobs()) {
    json entry = json::object();
    entry[std::to_string(lp.token_id())] = {{"logprob", lp.logprob()}, {"rank", lp.rank()}, {"decoded_token", lp.text()}};
    for (int k = 0; k < lp.top_size(); ++k) {
      const v1::TopLogprob& t = lp.top(k);
      const std::string key = std::to_string(t.token_id());
      if (!entry.contains(key)) entry[key] = {{"logprob", t.logprob()}, {"rank", k + 1}, {"decoded_token", t.text()}};
    }
    list.push_back(entry);
  }
  return list;
}

json ChatLogprobsJson(const v1::GenerateResponse& r, bool tokens_as_ids) {
  // The token's own bytes, as OpenAI's: its text can differ (empty while a byte-fallback token's
  // character is incomplete, then the whole character; U+FFFD after a character left incomplete).
  // Tokens that add none (control tokens) and tokens named by id: the name's.
  auto bytes = [tokens_as_ids](const std::string& name, const std::string& raw) {
    const std::string& from = !tokens_as_ids && !raw.empty() ? raw : name;
    json b = json::array();
    for (unsigned char ch : from) b.push_back(static_cast<int>(ch));
    return b;
  };
  json content = json::array();
  for (const v1::TokenLogprob& lp : r.logprobs()) {
    json top = json::array();
    for (const v1::TopLogprob& t : lp.top()) {
      const std::string name = TokenName(t.token_id(), t.text(), tokens_as_ids);
      top.push_back({{"token", name}, {"logprob", t.logprob()}, {"bytes", bytes(name, t.token_bytes())}});
    }
    const std::string name = TokenName(lp.token_id(), lp.text(), tokens_as_ids);
    content.push_back(
        {{"token", name}, {"logprob", lp.logprob()}, {"bytes", bytes(name, lp.token_bytes())}, {"top_logprobs", top}});
  }
  return content;
}

std::vector<int32_t> CompletionAccumulator::FirstTokens() const {
  std::vector<int32_t> first;
  for (const Choice& c : choices_) first.push_back(c.first_token);
  return first;
}

bool CompletionAccumulator::Add(const v1::GenerateResponse& r) {
  if (r.index() >= choices_.size()) return false;
  if (!r.request_id().empty()) request_id_ = r.request_id();
  Choice& c = choices_[r.index()];
  c.text += r.text();
  c.token_ids.insert(c.token_ids.end(), r.token_ids().begin(), r.token_ids().end());
  if (r.prompt_token_ids_size() > 0) prompt_token_ids_.assign(r.prompt_token_ids().begin(), r.prompt_token_ids().end());
  if (c.first_token < 0 && r.token_ids_size() > 0) c.first_token = r.token_ids(0);
  if (r.prompt_logprobs_size() > 0) {  // they may come in several messages: each one's after its leading null
    const json part = PromptLogprobsJson(r);
    prompt_logprobs_.insert(prompt_logprobs_.end(), part.begin() + 1, part.end());
  }
  if (logprobs_ && api_ == Api::kChat) {
    if (c.logprobs.is_null()) c.logprobs = {{"content", json::array()}};
    for (const json& x : ChatLogprobsJson(r, report_.tokens_as_ids)) c.logprobs["content"].push_back(x);
  } else if (logprobs_) {
    const json part = LogprobsJson(r, c.offset, report_.tokens_as_ids);
    if (c.logprobs.is_null()) {
      c.logprobs = part;
    } else {
      for (const char* key : {"tokens", "token_logprobs", "top_logprobs", "text_offset"}) {
        for (const json& x : part[key]) c.logprobs[key].push_back(x);
      }
    }
  }
  if (r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    c.finish_reason = FinishReasonName(r.finish_reason());
    c.stop_reason = StopReasonJson(r);
  }
  if (r.has_usage()) {
    prompt_tokens_ = r.usage().prompt_tokens();
    c.completion_tokens = r.usage().completion_tokens();
    cached_prompt_tokens_ = std::min(cached_prompt_tokens_.value_or(r.usage().cached_prompt_tokens()),
                                     r.usage().cached_prompt_tokens());
  }
  return true;
}

json CompletionAccumulator::ToJson(const std::string& model_name, int64_t created) const {
  json choices = json::array();
  uint32_t completion_tokens = 0;
  const bool chat = api_ == Api::kChat;
  for (size_t i = 0; i < choices_.size(); ++i) {
    json logprobs = logprobs_ ? choices_[i].logprobs : json(nullptr);
    if (logprobs_ && chat && logprobs.is_null()) logprobs = {{"content", json::array()}};
    json choice = {{"index", i}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", choices_[i].text}};
    } else {
      choice["text"] = choices_[i].text;
    }
    choice["logprobs"] = logprobs;
    if (prompt_logprobs_wanted_ && !chat) choice["prompt_logprobs"] = prompt_logprobs_;
    choice["finish_reason"] = choices_[i].finish_reason.empty() ? json(nullptr) : json(choices_[i].finish_reason);
    choice["stop_reason"] = choices_[i].stop_reason;
    if (report_.token_ids) {
      choice["token_ids"] = choices_[i].token_ids;
      if (!chat) choice["prompt_token_ids"] = prompt_token_ids_;
    }
    choices.push_back(choice);
    completion_tokens += choices_[i].completion_tokens;
  }
  json answer = {{"id", (chat ? "chatcmpl-" : "cmpl-") + request_id_},
                 {"object", chat ? "chat.completion" : "text_completion"},
                 {"created", created},
                 {"model", model_name},
                 {"choices", choices},
                 {"usage", UsageJson(prompt_tokens_, completion_tokens,
                                     report_.cached_tokens ? std::optional<uint64_t>(cached_prompt_tokens_.value_or(0))
                                                           : std::nullopt)}};
  if (prompt_logprobs_wanted_ && chat) answer["prompt_logprobs"] = prompt_logprobs_;  // vLLM's place for chat
  if (report_.token_ids && chat) answer["prompt_token_ids"] = prompt_token_ids_;
  return answer;
}

json ChatRoleChunkJson(const std::string& request_id, uint32_t index, const std::string& model_name, int64_t created) {
  return {{"id", "chatcmpl-" + request_id},
          {"object", "chat.completion.chunk"},
          {"created", created},
          {"model", model_name},
          {"choices", json::array({{{"index", index},
                                    {"delta", {{"role", "assistant"}, {"content", ""}}},
                                    {"logprobs", nullptr},
                                    {"finish_reason", nullptr}}})}};
}

json StreamChunkJson(const v1::GenerateResponse& r, const std::string& model_name, int64_t created, bool logprobs,
                     size_t& offset, Api api, TokenReport report) {
  const bool last = r.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
  const json finish = last ? json(FinishReasonName(r.finish_reason())) : json(nullptr);
  if (api == Api::kChat) {
    json chunk = {{"id", "chatcmpl-" + r.request_id()},
                  {"object", "chat.completion.chunk"},
                  {"created", created},
                  {"model", model_name},
                  {"choices", json::array({{{"index", r.index()},
                                            {"delta", {{"content", r.text()}}},
                                            {"logprobs", logprobs ? json{{"content", ChatLogprobsJson(r, report.tokens_as_ids)}}
                                                                  : json(nullptr)},
                                            {"finish_reason", finish},
                                            {"stop_reason", StopReasonJson(r)}}})}};
    if (r.prompt_logprobs_size() > 0) chunk["prompt_logprobs"] = PromptLogprobsJson(r);
    if (report.token_ids) chunk["choices"][0]["token_ids"] = r.token_ids();
    return chunk;
  }
  json chunk = {{"id", "cmpl-" + r.request_id()},
                {"object", "text_completion"},
                {"created", created},
                {"model", model_name},
                {"choices",
                 json::array({{{"index", r.index()},
                               {"text", r.text()},
                               {"logprobs", logprobs ? LogprobsJson(r, offset, report.tokens_as_ids) : json(nullptr)},
                               {"finish_reason", finish},
                               {"stop_reason", StopReasonJson(r)}}})}};
  if (r.prompt_logprobs_size() > 0) chunk["choices"][0]["prompt_logprobs"] = PromptLogprobsJson(r);
  if (report.token_ids) chunk["choices"][0]["token_ids"] = r.token_ids();
  return chunk;
}

json UsageJson(uint64_t prompt_tokens, uint64_t completion_tokens, std::optional<uint64_t> cached_prompt_tokens) {
  json usage = {{"prompt_tokens", prompt_tokens},
                {"completion_tokens", completion_tokens},
                {"total_tokens", prompt_tokens + completion_tokens}};
  if (cached_prompt_tokens) usage["prompt_tokens_details"] = {{"cached_tokens", *cached_prompt_tokens}};
  return usage;
}

json StreamUsageJson(const std::string& request_id, const std::string& model_name, int64_t created,
                     uint32_t prompt_tokens, uint32_t completion_tokens, Api api,
                     std::optional<uint64_t> cached_prompt_tokens) {
  const bool chat = api == Api::kChat;
  return {{"id", (chat ? "chatcmpl-" : "cmpl-") + request_id},
          {"object", chat ? "chat.completion.chunk" : "text_completion"},
          {"created", created},
          {"model", model_name},
          {"choices", json::array()},
          {"usage", UsageJson(prompt_tokens, completion_tokens, cached_prompt_tokens)}};
}

Echo EchoOf(const v1::Prompt& prompt, const v1::ScoreRollingResult& scored, bool logprobs, bool tokens_as_ids) {
  Echo echo;
  if (prompt.has_token_ids()) {  // ids: the detokenizer's texts, which add up to the prompt's text
    for (const std::string& t : scored.token_texts()) echo.text += t;
  } else {
    echo.text = prompt.text();
  }
  echo.tokens = static_cast<uint32_t>(scored.token_ids_size());
  echo.token_ids.assign(scored.token_ids().begin(), scored.token_ids().end());
  if (!logprobs) return echo;
  json lp = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
             {"text_offset", json::array()}};
  size_t offset = 0;
  for (int i = 0; i < scored.token_ids_size(); ++i) {
    const std::string text = i < scored.token_texts_size() ? scored.token_texts(i) : std::string();
    lp["tokens"].push_back(TokenName(scored.token_ids(i), text, tokens_as_ids));
    lp["text_offset"].push_back(offset);
    offset += CharCount(text);
    if (i == 0 || i - 1 >= scored.logprobs_size()) {  // nothing predicts the first token
      lp["token_logprobs"].push_back(nullptr);
      lp["top_logprobs"].push_back(nullptr);
      continue;
    }
    lp["token_logprobs"].push_back(scored.logprobs(i - 1));
    // As the completion's own tokens: the k most probable (logprobs k > 0) and the prompt's token.
    static const google::protobuf::RepeatedPtrField<v1::TopLogprob> kNone;
    lp["top_logprobs"].push_back(CompletionTopLogprobs(i - 1 < scored.top_size() ? scored.top(i - 1).top() : kNone,
                                                       scored.token_ids(i), lp["tokens"].back().get<std::string>(),
                                                       scored.logprobs(i - 1), tokens_as_ids, /*empty_as_id=*/true));
  }
  echo.logprobs = std::move(lp);
  return echo;
}

void PrependEcho(json& choice, const Echo& echo, size_t shift) {
  choice["text"] = echo.text + choice["text"].get<std::string>();
  if (echo.logprobs.is_null()) return;
  json lp = echo.logprobs;
  const json& completion = choice["logprobs"];
  if (completion.is_object()) {
    for (const char* key : {"tokens", "token_logprobs", "top_logprobs"}) {
      for (const json& x : completion[key]) lp[key].push_back(x);
    }
    for (const json& x : completion["text_offset"]) lp["text_offset"].push_back(shift + x.get<size_t>());
  }
  choice["logprobs"] = std::move(lp);
}

json EchoOnlyChunkJson(const Echo& echo, const std::string& request_id, uint32_t index, const std::string& model_name,
                       int64_t created) {
  json choice = {{"index", index}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", "length"},
                 {"stop_reason", nullptr}};
  PrependEcho(choice, echo, 0);
  return {{"id", "cmpl-" + request_id},
          {"object", "text_completion"},
          {"created", created},
          {"model", model_name},
          {"choices", json::array({choice})}};
}

json MergeAnswers(const std::vector<json>& answers, uint32_t n) {
  json merged = answers.front();
  merged["choices"] = json::array();
  uint64_t prompt_tokens = 0, completion_tokens = 0;
  std::optional<uint64_t> cached;  // when the answers carry prompt_tokens_details
  for (size_t i = 0; i < answers.size(); ++i) {
    for (json c : answers[i]["choices"]) {
      c["index"] = i * n + c["index"].get<uint64_t>();
      merged["choices"].push_back(c);
    }
    const json& usage = answers[i]["usage"];
    prompt_tokens += usage["prompt_tokens"].get<uint64_t>();
    completion_tokens += usage["completion_tokens"].get<uint64_t>();
    if (usage.contains("prompt_tokens_details")) {
      cached = cached.value_or(0) + usage["prompt_tokens_details"]["cached_tokens"].get<uint64_t>();
    }
  }
  merged["usage"] = UsageJson(prompt_tokens, completion_tokens, cached);
  return merged;
}

absl::StatusOr<HttpUrl> ParseHttpUrl(const std::string& url) {
  constexpr std::string_view kScheme = "http://";
  if (url.rfind(kScheme, 0) != 0) return absl::InvalidArgumentError("expected http://HOST[:PORT][/PATH], got '" + url + "'");
  HttpUrl u;
  std::string rest = url.substr(kScheme.size());
  const size_t slash = rest.find('/');
  if (slash != std::string::npos) {
    u.path = rest.substr(slash);
    rest = rest.substr(0, slash);
  }
  const size_t colon = rest.rfind(':');
  if (colon != std::string::npos && rest.find(']', colon) == std::string::npos) {
    int port = 0;
    if (!absl::SimpleAtoi(rest.substr(colon + 1), &port) || port < 1 || port > 65535) {
      return absl::InvalidArgumentError("bad port in '" + url + "'");
    }
    u.port = port;
    rest = rest.substr(0, colon);
  }
  if (rest.size() >= 2 && rest.front() == '[' && rest.back() == ']') rest = rest.substr(1, rest.size() - 2);
  if (rest.empty()) return absl::InvalidArgumentError("no host in '" + url + "'");
  u.host = rest;
  return u;
}

bool ServedModel::Serves(const std::string& requested) const {
  return std::find(names.begin(), names.end(), requested) != names.end();
}

json ModelJson(const std::string& name, int64_t max_model_len, int64_t created) {
  return {{"id", name}, {"object", "model"}, {"created", created}, {"owned_by", "moe"}, {"max_model_len", max_model_len}};
}

json ModelsJson(const ServedModel& model, int64_t max_model_len, int64_t created) {
  json data = json::array();
  for (const std::string& name : model.names) data.push_back(ModelJson(name, max_model_len, created));
  return {{"object", "list"}, {"data", std::move(data)}};
}

std::optional<HttpError> UnknownModel(const ServedModel& model, const std::string& requested) {
  if (model.Serves(requested)) return std::nullopt;
  std::string names;
  for (const std::string& n : model.names) names += (names.empty() ? "`" : ", `") + n + "`";
  return HttpError{404, "The model `" + requested + "` does not exist (this server serves " + names + ").",
                   "NotFoundError", std::string("model")};
}

}  // namespace moe::openai
