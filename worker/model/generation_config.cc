#include "worker/model/generation_config.h"

#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"

namespace moe {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("\"", field, "\" ", what));
}

// A number field (null or absent: none); kept only where it differs from `hf_default`.
absl::StatusOr<std::optional<double>> Number(const json& j, const char* key, std::optional<double> hf_default) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_number()) return FieldError(key, "must be a number, got " + j[key].dump());
  const double v = j[key].get<double>();
  if (hf_default && v == *hf_default) return std::nullopt;
  return v;
}

absl::StatusOr<std::optional<int64_t>> Integer(const json& j, const char* key, std::optional<int64_t> hf_default) {
  if (!j.contains(key) || j[key].is_null()) return std::nullopt;
  if (!j[key].is_number_integer()) return FieldError(key, "must be an integer, got " + j[key].dump());
  const int64_t v = j[key].get<int64_t>();
  if (hf_default && v == *hf_default) return std::nullopt;
  return v;
}

}  // namespace

absl::StatusOr<GenerationConfig> GenerationConfig::FromJson(const json& j, bool sampling) {
  return Parse(j, sampling, /*drop_hf_defaults=*/true);
}

absl::StatusOr<GenerationConfig> GenerationConfig::FromOverride(const json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  for (const auto& [key, value] : j.items()) {
    if (key != "temperature" && key != "top_p" && key != "top_k" && key != "min_p" && key != "repetition_penalty" &&
        key != "max_new_tokens") {
      return FieldError(key, "is not one of temperature, top_p, top_k, min_p, repetition_penalty, max_new_tokens");
    }
  }
  MOE_ASSIGN_OR_RETURN(GenerationConfig g, Parse(j, /*sampling=*/true, /*drop_hf_defaults=*/false));
  for (const auto& [key, value] : j.items()) {
    if (value.is_null()) g.unset.push_back(key);  // as vLLM's dict update: the field's default goes
  }
  return g;
}

void GenerationConfig::Override(const GenerationConfig& over) {
  for (const std::string& key : over.unset) {
    if (key == "temperature") temperature.reset();
    if (key == "top_p") top_p.reset();
    if (key == "top_k") top_k.reset();
    if (key == "min_p") min_p.reset();
    if (key == "repetition_penalty") repetition_penalty.reset();
    if (key == "max_new_tokens") max_new_tokens.reset();
  }
  if (over.temperature) temperature = over.temperature;
  if (over.top_p) top_p = over.top_p;
  if (over.top_k) top_k = over.top_k;
  if (over.min_p) min_p = over.min_p;
  if (over.repetition_penalty) repetition_penalty = over.repetition_penalty;
  if (over.max_new_tokens) max_new_tokens = over.max_new_tokens;
}

absl::StatusOr<GenerationConfig> GenerationConfig::Parse(const json& j, bool sampling, bool drop_hf_defaults) {
  if (!j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  GenerationConfig g;
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const json& e = j["eos_token_id"];
    const json ids = e.is_array() ? e : json::array({e});
    for (const json& x : ids) {
      if (!x.is_number_integer() || x.get<int64_t>() < 0) {
        return FieldError("eos_token_id", "must be a non-negative integer or a list of them, got " + e.dump());
      }
      g.eos_token_ids.push_back(x.get<int64_t>());
    }
  }
  if (!sampling) return g;
  const auto hf = [&](auto v) { return drop_hf_defaults ? std::optional(v) : std::nullopt; };
  MOE_ASSIGN_OR_RETURN(g.temperature, Number(j, "temperature", hf(1.0)));
  MOE_ASSIGN_OR_RETURN(g.top_p, Number(j, "top_p", hf(1.0)));
  MOE_ASSIGN_OR_RETURN(g.top_k, Integer(j, "top_k", hf(int64_t{50})));
  MOE_ASSIGN_OR_RETURN(g.min_p, Number(j, "min_p", std::nullopt));
  MOE_ASSIGN_OR_RETURN(g.repetition_penalty, Number(j, "repetition_penalty", hf(1.0)));
  MOE_ASSIGN_OR_RETURN(g.max_new_tokens, Integer(j, "max_new_tokens", std::nullopt));
  // The ranges a request's own values must have (SamplingParams), on the floats requests carry: a
  // bad default would fail every request that leaves the field unset.
  const auto as_float = [](double v) { return static_cast<double>(static_cast<float>(v)); };
  if (g.temperature && !(std::isfinite(as_float(*g.temperature)) && *g.temperature >= 0)) {
    return FieldError("temperature", absl::StrCat("must be finite and >= 0, got ", *g.temperature));
  }
  if (g.top_p && !(as_float(*g.top_p) > 0 && *g.top_p <= 1)) return FieldError("top_p", absl::StrCat("must be in (0, 1], got ", *g.top_p));
  if (g.top_k && *g.top_k == -1) g.top_k = 0;  // vLLM's "off", as 0 here
  if (g.top_k && *g.top_k < 0) return FieldError("top_k", absl::StrCat("must be >= 0 (or -1: off), got ", *g.top_k));
  if (g.top_k && *g.top_k > INT32_MAX) return FieldError("top_k", absl::StrCat("too large: ", *g.top_k));
  if (g.min_p && !(*g.min_p >= 0 && *g.min_p <= 1)) return FieldError("min_p", absl::StrCat("must be in [0, 1], got ", *g.min_p));
  if (g.repetition_penalty && !(std::isfinite(as_float(*g.repetition_penalty)) && as_float(*g.repetition_penalty) > 0)) {
    return FieldError("repetition_penalty", absl::StrCat("must be finite and > 0, got ", *g.repetition_penalty));
  }
  if (g.max_new_tokens && (*g.max_new_tokens < 1 || *g.max_new_tokens > UINT32_MAX)) {
    return FieldError("max_new_tokens", absl::StrCat("must be in [1, 2^32), got ", *g.max_new_tokens));
  }
  return g;
}

absl::StatusOr<GenerationConfig> GenerationConfig::FromModelDir(const std::string& dir, bool sampling) {
  const std::string path = (std::filesystem::path(dir) / "generation_config.json").string();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return GenerationConfig{};
  MOE_ASSIGN_OR_RETURN(json j, ReadJsonFile(path));
  absl::StatusOr<GenerationConfig> g = FromJson(j, sampling);
  if (!g.ok()) return absl::Status(g.status().code(), absl::StrCat(path, ": ", g.status().message()));
  return g;
}

json GenerationConfig::SamplingDefaultsJson() const {
  json j = json::object();
  if (repetition_penalty) j["repetition_penalty"] = *repetition_penalty;
  if (temperature) j["temperature"] = *temperature;
  if (top_k) j["top_k"] = *top_k;
  if (top_p) j["top_p"] = *top_p;
  if (min_p) j["min_p"] = *min_p;
  if (max_new_tokens) j["max_tokens"] = *max_new_tokens;
  return j;
}

}  // namespace moe
