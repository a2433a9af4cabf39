#include "coordinator/openai/tgi_protocol.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "coordinator/openai/openai_protocol.h"

namespace moe::openai {
namespace {

using nlohmann::json;

bool Given(const json& o, const char* key) { return o.contains(key) && !o[key].is_null(); }

// A number field (absent or null: not set), or TGI's complaint naming it.
std::optional<TgiError> Number(const json& o, const char* key, std::optional<double>& out) {
  if (!Given(o, key)) return std::nullopt;
  if (!o[key].is_number()) return TgiValidationError(std::string("`") + key + "` must be a number");
  out = o[key].get<double>();
  if (!std::isfinite(*out)) return TgiValidationError(std::string("`") + key + "` must be a finite number");
  return std::nullopt;
}

std::optional<TgiError> Integer(const json& o, const char* key, std::optional<int64_t>& out) {
  if (!Given(o, key)) return std::nullopt;
  if (!o[key].is_number_integer()) return TgiValidationError(std::string("`") + key + "` must be an integer");
  if (o[key].is_number_unsigned() && o[key].get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    out = INT64_MAX;
  } else {
    out = o[key].get<int64_t>();
  }
  return std::nullopt;
}

std::optional<TgiError> Bool(const json& o, const char* key, bool& out) {
  if (!Given(o, key)) return std::nullopt;
  if (!o[key].is_boolean()) return TgiValidationError(std::string("`") + key + "` must be true or false");
  out = o[key].get<bool>();
  return std::nullopt;
}

// TGI's grammar {"type": "json" | "json_object", "value": a schema (or its text)} or {"type":
// "regex", "value": a regular expression} as the Generate call's response format.
std::optional<TgiError> Grammar(const json& g, v1::ResponseFormat& f) {
  if (!g.is_object() || !g.contains("type") || !g["type"].is_string() || !g.contains("value")) {
    return TgiValidationError("`grammar` must be {\"type\": \"json\" or \"regex\", \"value\": ...}");
  }
  const std::string type = g["type"].get<std::string>();
  const json& value = g["value"];
  if (type == "json" || type == "json_object") {
    json schema = value;
    if (value.is_string()) schema = json::parse(value.get<std::string>(), nullptr, /*allow_exceptions=*/false);
    if (!schema.is_object()) return TgiValidationError("grammar is not valid: the json grammar's value must be a JSON schema");
    f.set_type(v1::ResponseFormat::TYPE_JSON_SCHEMA);
    // The text as sent keeps its properties' order (the schema's text, or the object as written).
    f.set_json_schema(value.is_string() ? value.get<std::string>() : value.dump());
    return std::nullopt;
  }
  if (type == "regex") {
    if (!value.is_string() || value.get<std::string>().empty()) {
      return TgiValidationError("grammar is not valid: the regex grammar's value must be a non-empty string");
    }
    f.set_type(v1::ResponseFormat::TYPE_REGEX);
    f.set_regex(value.get<std::string>());
    return std::nullopt;
  }
  return TgiValidationError("grammar is not supported: type \"" + type + "\" (json and regex are)");
}

}  // namespace

TgiError TgiValidationError(const std::string& message) {
  return TgiError{422, "Input validation error: " + message, "validation"};
}

TgiError TgiErrorFromGrpc(int grpc_code, const std::string& message) {
  switch (static_cast<absl::StatusCode>(grpc_code)) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kNotFound:
      return TgiValidationError(message);
    case absl::StatusCode::kResourceExhausted:
      return TgiError{429, "Model is overloaded: " + message, "overloaded"};
    case absl::StatusCode::kUnauthenticated:
      return TgiError{401, message, "authentication"};
    default:
      return TgiError{424, "Request failed during generation: " + message, "generation"};
  }
}

TgiError TgiErrorFromHttp(int status, const std::string& message) {
  if (status == 400 || status == 404 || status == 422) return TgiValidationError(message);
  if (status == 429) return TgiError{429, "Model is overloaded: " + message, "overloaded"};
  if (status == 401) return TgiError{401, message, "authentication"};
  // Refused before generation (a wrong method, a body over the limit): the status stays.
  if (status == 405 || status == 413) return TgiError{status, message, "validation"};
  if (status == kClientClosedRequest) return TgiError{status, message, "cancelled"};
  // The rest (a stopping front, a cluster that cannot serve) as TGI answers a failed backend, the
  // same kind TgiErrorFromGrpc gives UNAVAILABLE.
  return TgiError{424, "Request failed during generation: " + message, "generation"};
}

std::variant<TgiCall, TgiError> ParseTgiRequest(const std::string& body_text, TgiRoute route) {
  const json body = json::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return TgiError{400, "the request body is not a JSON object {\"inputs\", \"parameters\"}", "validation"};
  }
  TgiCall call;
  call.stream = route == TgiRoute::kGenerateStream;
  if (route == TgiRoute::kCompat) {
    if (std::optional<TgiError> e = Bool(body, "stream", call.stream)) return *e;
  }
  if (!body.contains("inputs") || !body["inputs"].is_string()) return TgiValidationError("`inputs` must be a string");
  call.inputs = body["inputs"].get<std::string>();
  if (call.inputs.empty()) return TgiValidationError("`inputs` cannot be empty");
  call.request.mutable_prompt()->set_text(call.inputs);
  call.request.mutable_prompt()->set_parse_special_tokens(true);  // as TGI's tokenizer reads special tokens in inputs
  if (route != TgiRoute::kCompat) {  // TGI's compat body has no such field
    if (std::optional<TgiError> e = Bool(body, "add_special_tokens", call.add_special_tokens)) return *e;
  }

  // Without "parameters" TGI samples (its default_parameters); with them, do_sample defaults to false.
  const bool has_parameters = Given(body, "parameters");
  if (has_parameters && !body["parameters"].is_object()) return TgiValidationError("`parameters` must be an object");
  const json p = has_parameters ? body["parameters"] : json::object();
  bool do_sample = !has_parameters;
  std::optional<double> temperature, repetition, frequency, top_p, typical_p;
  std::optional<int64_t> best_of, top_k, max_new_tokens, truncate, seed, top_n_tokens;
  bool watermark = false;
  call.return_full_text = route == TgiRoute::kCompat;  // a text-generation model's default on POST /
  for (std::optional<TgiError> e :
       {Number(p, "temperature", temperature), Number(p, "repetition_penalty", repetition),
        Number(p, "frequency_penalty", frequency), Number(p, "top_p", top_p), Number(p, "typical_p", typical_p),
        Integer(p, "best_of", best_of), Integer(p, "top_k", top_k), Integer(p, "max_new_tokens", max_new_tokens),
        Integer(p, "truncate", truncate), Integer(p, "seed", seed), Integer(p, "top_n_tokens", top_n_tokens),
        Bool(p, "do_sample", do_sample), Bool(p, "return_full_text", call.return_full_text), Bool(p, "watermark", watermark),
        Bool(p, "details", call.details), Bool(p, "decoder_input_details", call.decoder_input_details)}) {
    if (e) return *e;
  }
  // In TGI's order of checks.
  const bool sampling_asked = do_sample || temperature || top_k || top_p || typical_p;
  if (best_of && *best_of > 1 && !sampling_asked) return TgiValidationError("you must use sampling when `best_of` is > 1");
  if (temperature && *temperature <= 0) return TgiValidationError("`temperature` must be strictly positive");
  if (repetition && *repetition <= 0) return TgiValidationError("`repetition_penalty` must be strictly positive");
  if (frequency && (*frequency < -2 || *frequency > 2)) {
    return TgiValidationError("`frequency_penalty` must be >= -2.0 and <= 2.0");
  }
  if (top_p && (*top_p <= 0 || *top_p >= 1)) return TgiValidationError("`top_p` must be > 0.0 and < 1.0");
  if (typical_p && (*typical_p <= 0 || *typical_p >= 1)) return TgiValidationError("`typical_p` must be > 0.0 and < 1.0");
  if (typical_p) return TgiValidationError("`typical_p`: typical sampling is not served (top_p, top_k and temperature are)");
  if (top_k && *top_k <= 0) return TgiValidationError("`top_k` must be strictly positive");
  if (top_k && *top_k > INT32_MAX) return TgiValidationError("`top_k` is too large");
  if (p.contains("max_new_tokens") && p["max_new_tokens"].is_null()) {
    call.max_new_tokens_to_context = true;
  } else if (max_new_tokens && (*max_new_tokens <= 0 || *max_new_tokens > UINT32_MAX)) {
    return TgiValidationError("`max_new_tokens` must be strictly positive");
  }
  if (Given(p, "stop")) {
    const json& stop = p["stop"];
    if (!stop.is_array()) return TgiValidationError("`stop` must be an array of strings");
    if (stop.size() > kTgiMaxStopSequences) {
      return TgiValidationError("`stop` supports up to " + std::to_string(kTgiMaxStopSequences) +
                                " stop sequences. Given: " + std::to_string(stop.size()));
    }
    for (const json& s : stop) {
      if (!s.is_string()) return TgiValidationError("`stop` must be an array of strings");
      call.request.mutable_sampling()->add_stop(s.get<std::string>());
    }
  }
  if (seed && *seed < 0) return TgiValidationError("`seed` must be a non-negative integer");
  if (seed && best_of && *best_of > 1) return TgiValidationError("`seed` must not be set when `best_of` > 1");
  if (top_n_tokens && (*top_n_tokens < 0 || *top_n_tokens > kTgiMaxTopNTokens)) {
    return TgiValidationError("`top_n_tokens` must be >= 0 and <= " + std::to_string(kTgiMaxTopNTokens) +
                              ". Given: " + std::to_string(*top_n_tokens));
  }
  if (truncate && *truncate <= 0) return TgiValidationError("`truncate` must be strictly positive");
  if (watermark) return TgiValidationError("`watermark` is not served");
  if (Given(p, "adapter_id")) return TgiValidationError("`adapter_id`: adapters are not served");
  if (best_of && (*best_of < 1 || *best_of > kTgiMaxBestOf)) {
    return TgiValidationError("`best_of` must be > 0 and <= " + std::to_string(kTgiMaxBestOf) +
                              ". Given: " + std::to_string(*best_of));
  }
  if (best_of && *best_of != 1 && call.stream) {
    return TgiValidationError("`best_of` != 1 is not supported when streaming tokens");
  }
  if (best_of) call.best_of = static_cast<uint32_t>(*best_of);
  if (call.stream && call.decoder_input_details) {
    return TgiValidationError("`decoder_input_details` == true is not supported when streaming tokens");
  }

  v1::SamplingParams& s = *call.request.mutable_sampling();
  // TGI samples when asked, or when a sampling parameter is given (its Python shard's rule).
  call.sampling = do_sample || (temperature && *temperature != 1.0) || top_k || top_p;
  // Every sampling field set: TGI takes no defaults from the model's generation_config.json, which
  // the coordinator fills into fields a request leaves unset.
  if (call.sampling) {
    s.set_temperature(static_cast<float>(temperature.value_or(1.0)));
    s.set_top_k(top_k ? static_cast<int32_t>(*top_k) : 0);
    s.set_top_p(top_p ? static_cast<float>(*top_p) : 1.0f);
  } else {
    s.set_temperature(0);  // greedy
  }
  s.set_min_p(0);
  if (seed) call.seed = static_cast<uint64_t>(*seed);
  s.set_repetition_penalty(repetition ? static_cast<float>(*repetition) : 1.0f);
  if (frequency) s.set_frequency_penalty(static_cast<float>(*frequency));
  if (!call.max_new_tokens_to_context) s.set_max_tokens(static_cast<uint32_t>(max_new_tokens.value_or(100)));
  if (truncate) s.set_truncate_prompt_tokens(static_cast<uint32_t>(std::min<int64_t>(*truncate, UINT32_MAX)));
  s.set_include_stop_str_in_output(true);  // TGI's text keeps the stop sequence
  if (top_n_tokens) call.top_n_tokens = static_cast<uint32_t>(*top_n_tokens);
  if (Given(p, "grammar")) {
    if (std::optional<TgiError> e = Grammar(p["grammar"], *s.mutable_response_format())) return *e;
  }
  if (call.decoder_input_details) call.details = true;
  return call;
}

std::variant<TgiTokenizeCall, TgiError> ParseTgiTokenizeRequest(const std::string& body_text) {
  const json body = json::parse(body_text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded() || !body.is_object()) {
    return TgiError{400, "the request body is not a JSON object {\"inputs\", \"parameters\"}", "validation"};
  }
  if (!body.contains("inputs") || !body["inputs"].is_string()) return TgiValidationError("`inputs` must be a string");
  if (Given(body, "parameters") && !body["parameters"].is_object()) return TgiValidationError("`parameters` must be an object");
  TgiTokenizeCall call;
  call.request.set_text(body["inputs"].get<std::string>());
  call.request.set_parse_special_tokens(true);
  call.request.set_return_offsets(true);
  bool add_special_tokens = true;
  if (std::optional<TgiError> e = Bool(body, "add_special_tokens", add_special_tokens)) return *e;
  if (!add_special_tokens) {
    call.request.set_add_bos(false);
    call.request.set_add_eos(false);
  }
  return call;
}

nlohmann::json TgiTokenizeAnswer(const std::string& text, const v1::TokenizeResponse& tokens) {
  const bool placed = tokens.offsets_size() == tokens.token_ids_size();
  json answer = json::array();
  for (int i = 0; i < tokens.token_ids_size(); ++i) {
    size_t start = 0, stop = 0;
    if (placed) {
      start = std::min<size_t>(tokens.offsets(i).start(), text.size());
      stop = std::clamp<size_t>(tokens.offsets(i).end(), start, text.size());
    }
    answer.push_back({{"id", tokens.token_ids(i)}, {"text", text.substr(start, stop - start)}, {"start", start}, {"stop", stop}});
  }
  return answer;
}

nlohmann::json TgiTokenJson(int32_t id, const std::string& text, double logprob, bool special) {
  return {{"id", id}, {"text", text}, {"logprob", logprob}, {"special", special}};
}

std::string TgiFinishReason(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return "eos_token";
    case v1::FINISH_REASON_STOP_SEQUENCE:
      return "stop_sequence";
    default:
      return "length";
  }
}

}  // namespace moe::openai
