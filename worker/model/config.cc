#include "worker/model/config.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "worker/model/generation_config.h"

namespace moe {
namespace {

using nlohmann::json;

absl::Status FieldError(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json field '", field, "': ", what));
}

// Reads a positive integer field; `fallback` is used when the field is absent or null.
absl::StatusOr<int64_t> PositiveInt(const json& j, const std::string& field,
                                    std::optional<int64_t> fallback = std::nullopt) {
  if (!j.contains(field) || j[field].is_null()) {
    if (fallback) return *fallback;
    return FieldError(field, "missing");
  }
  const json& v = j[field];
  if (!v.is_number_integer()) return FieldError(field, "must be an integer, got " + v.dump());
  int64_t x = v.get<int64_t>();
  if (x <= 0) return FieldError(field, "must be positive, got " + v.dump());
  return x;
}

absl::StatusOr<double> PositiveNumber(const json& j, const std::string& field, double fallback) {
  if (!j.contains(field) || j[field].is_null()) return fallback;
  const json& v = j[field];
  if (!v.is_number()) return FieldError(field, "must be a number, got " + v.dump());
  double x = v.get<double>();
  if (!(x > 0)) return FieldError(field, "must be positive, got " + v.dump());
  return x;
}

}  // namespace

int64_t ModelConfig::replicated_params() const {
  int64_t per_layer = hidden_size * q_dim()          // q_proj
                      + 2 * hidden_size * kv_dim()   // k_proj, v_proj
                      + q_dim() * hidden_size        // o_proj
                      + num_experts * hidden_size    // router
                      + 2 * hidden_size;             // two norms
  int64_t embed = vocab_size * hidden_size;
  return num_layers * per_layer + embed + (tie_word_embeddings ? 0 : embed) + hidden_size;
}

absl::StatusOr<ModelConfig> ModelConfig::FromJson(const json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");

  // Architecture: Mixtral only. model_type is checked when architectures is absent.
  if (j.contains("architectures") && !j["architectures"].is_null()) {
    const json& a = j["architectures"];
    bool ok = a.is_array() && std::any_of(a.begin(), a.end(), [](const json& x) {
                return x.is_string() && x.get<std::string>() == "MixtralForCausalLM";
              });
    if (!ok) return FieldError("architectures", "only MixtralForCausalLM is supported, got " + a.dump());
  } else if (!j.contains("model_type") || j["model_type"] != "mixtral") {
    return FieldError("model_type", "only 'mixtral' is supported, got " +
                                        (j.contains("model_type") ? j["model_type"].dump() : "nothing"));
  }
  if (j.contains("model_type") && j["model_type"].is_string() && j["model_type"] != "mixtral") {
    return FieldError("model_type", "only 'mixtral' is supported, got " + j["model_type"].dump());
  }

  ModelConfig c;
  MOE_ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(j, "vocab_size"));
  MOE_ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(j, "hidden_size"));
  MOE_ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(j, "intermediate_size"));
  MOE_ASSIGN_OR_RETURN(c.num_layers, PositiveInt(j, "num_hidden_layers"));
  MOE_ASSIGN_OR_RETURN(c.num_heads, PositiveInt(j, "num_attention_heads"));
  MOE_ASSIGN_OR_RETURN(c.num_kv_heads, PositiveInt(j, "num_key_value_heads", c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return FieldError("num_key_value_heads",
                      absl::StrCat(c.num_kv_heads, " does not divide num_attention_heads ", c.num_heads));
  }
  if (!j.contains("head_dim") || j["head_dim"].is_null()) {
    if (c.hidden_size % c.num_heads != 0) {
      return FieldError("head_dim", absl::StrCat("absent, and hidden_size ", c.hidden_size,
                                                 " is not a multiple of num_attention_heads ", c.num_heads));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  } else {
    MOE_ASSIGN_OR_RETURN(c.head_dim, PositiveInt(j, "head_dim"));
  }
  if (c.head_dim % 2 != 0) return FieldError("head_dim", absl::StrCat("must be even for RoPE, got ", c.head_dim));
  MOE_ASSIGN_OR_RETURN(c.num_experts, PositiveInt(j, "num_local_experts"));
  MOE_ASSIGN_OR_RETURN(c.experts_per_token, PositiveInt(j, "num_experts_per_tok"));
  if (c.experts_per_token > c.num_experts) {
    return FieldError("num_experts_per_tok", absl::StrCat(c.experts_per_token, " exceeds num_local_experts ",
                                                          c.num_experts));
  }
  MOE_ASSIGN_OR_RETURN(c.max_position_embeddings, PositiveInt(j, "max_position_embeddings", 4096 * 32));
  MOE_ASSIGN_OR_RETURN(c.rms_norm_eps, PositiveNumber(j, "rms_norm_eps", 1e-5));

  // RoPE: plain rotary only. transformers 5 writes rope_theta inside rope_parameters.
  c.rope_theta = 1e6;
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    return FieldError("rope_scaling", "RoPE scaling is not supported, got " + j["rope_scaling"].dump());
  }
  if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    const json& rp = j["rope_parameters"];
    if (!rp.is_object()) return FieldError("rope_parameters", "must be an object");
    if (rp.contains("rope_type") && rp["rope_type"] != "default") {
      return FieldError("rope_parameters.rope_type", "only 'default' is supported, got " + rp["rope_type"].dump());
    }
    MOE_ASSIGN_OR_RETURN(c.rope_theta, PositiveNumber(rp, "rope_theta", c.rope_theta));
  }
  MOE_ASSIGN_OR_RETURN(c.rope_theta, PositiveNumber(j, "rope_theta", c.rope_theta));

  if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    MOE_ASSIGN_OR_RETURN(int64_t w, PositiveInt(j, "sliding_window"));
    c.sliding_window = w;
  }
  if (j.contains("tie_word_embeddings") && !j["tie_word_embeddings"].is_null()) {
    if (!j["tie_word_embeddings"].is_boolean()) return FieldError("tie_word_embeddings", "must be true or false");
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  if (j.contains("hidden_act") && !j["hidden_act"].is_null() && j["hidden_act"] != "silu") {
    return FieldError("hidden_act", "only 'silu' is supported, got " + j["hidden_act"].dump());
  }
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) {
    c.bos_token_id = j["bos_token_id"].get<int64_t>();
  }
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const json& e = j["eos_token_id"];
    c.eos_token_ids.clear();
    if (e.is_number_integer()) {
      c.eos_token_ids.push_back(e.get<int64_t>());
    } else if (e.is_array()) {
      for (const json& x : e) {
        if (!x.is_number_integer()) return FieldError("eos_token_id", "must be integers, got " + e.dump());
        c.eos_token_ids.push_back(x.get<int64_t>());
      }
    } else {
      return FieldError("eos_token_id", "must be an integer or a list, got " + e.dump());
    }
  }
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(json j, ReadJsonFile(path));
  auto c = FromJson(j);
  if (!c.ok()) return absl::Status(c.status().code(), absl::StrCat(path, ": ", c.status().message()));
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromModelDir(const std::string& dir) {
  MOE_ASSIGN_OR_RETURN(ModelConfig c, FromFile(dir + "/config.json"));
  // generation_config.json's end-of-sequence ids end generation too (as in transformers' generate(),
  // vLLM and TGI): a fine-tune's chat end token (ChatML's <|im_end|>) is often only there.
  MOE_ASSIGN_OR_RETURN(const GenerationConfig g, GenerationConfig::FromModelDir(dir, /*sampling=*/false));
  for (int64_t id : g.eos_token_ids) {
    if (id >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(dir, "/generation_config.json: eos_token_id ", id,
                                                     " is outside the vocabulary of ", c.vocab_size));
    }
    if (!c.is_eos(id)) c.eos_token_ids.push_back(id);
  }
  return c;
}

json ModelConfig::ToJson() const {
  json j = {{"architectures", {"MixtralForCausalLM"}},
            {"model_type", "mixtral"},
            {"vocab_size", vocab_size},
            {"hidden_size", hidden_size},
            {"intermediate_size", intermediate_size},
            {"num_hidden_layers", num_layers},
            {"num_attention_heads", num_heads},
            {"num_key_value_heads", num_kv_heads},
            {"head_dim", head_dim},
            {"num_local_experts", num_experts},
            {"num_experts_per_tok", experts_per_token},
            {"rope_theta", rope_theta},
            {"rms_norm_eps", rms_norm_eps},
            {"tie_word_embeddings", tie_word_embeddings},
            {"max_position_embeddings", max_position_embeddings},
            {"hidden_act", "silu"},
            {"bos_token_id", bos_token_id},
            {"eos_token_id", eos_token_ids}};
  j["sliding_window"] = sliding_window ? json(*sliding_window) : json(nullptr);
  return j;
}

}  // namespace moe
