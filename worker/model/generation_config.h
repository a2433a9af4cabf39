// A model folder's generation_config.json (Hugging Face's GenerationConfig): the end-of-sequence
// ids generation stops at, and the sampling defaults the model's authors recommend, which vLLM
// applies where a request leaves a parameter unset (its --generation-config auto) and transformers'
// generate() uses.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace moe {

struct GenerationConfig {
  std::vector<int64_t> eos_token_ids;  // eos_token_id, an integer or a list
  // The sampling fields vLLM takes (get_diff_sampling_param), each only where the file sets it to
  // something other than GenerationConfig's own default (temperature 1, top_p 1, top_k 50,
  // repetition_penalty 1), as its to_diff_dict() drops those.
  std::optional<double> temperature;
  std::optional<double> top_p;
  std::optional<int64_t> top_k;
  std::optional<double> min_p;
  std::optional<double> repetition_penalty;
  std::optional<int64_t> max_new_tokens;
  std::vector<std::string> unset;  // an override's fields given as null: they unset the config's

  bool has_sampling_defaults() const {
    return temperature || top_p || top_k || min_p || repetition_penalty || max_new_tokens;
  }
  // The sampling defaults as vLLM logs them: {"temperature": 0.6, "top_p": 0.9, "max_tokens": 512}.
  nlohmann::json SamplingDefaultsJson() const;

  // Parses and checks the fields read (types, ranges); errors name the field. `sampling` false
  // reads eos_token_id alone (the end ids hold whatever --generation-config says of the defaults).
  static absl::StatusOr<GenerationConfig> FromJson(const nlohmann::json& j, bool sampling = true);
  // vLLM's --override-generation-config: a JSON object of the sampling fields (each kept as given,
  // Hugging Face's defaults too; null unsets the field); any other key is refused, naming it.
  static absl::StatusOr<GenerationConfig> FromOverride(const nlohmann::json& j);
  // This config with the sampling fields `over` sets replaced by its values and those it gives as
  // null unset.
  void Override(const GenerationConfig& over);
  // DIR/generation_config.json; an empty config where the folder has none. Errors name the file.
  static absl::StatusOr<GenerationConfig> FromModelDir(const std::string& dir, bool sampling = true);

 private:
  static absl::StatusOr<GenerationConfig> Parse(const nlohmann::json& j, bool sampling, bool drop_hf_defaults);
};

}  // namespace moe
