// The model configuration, read from a Mixtral-family config.json. Every size in the engine comes
// from here; nothing else in the code base knows how large a model is.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace moe {

// RoPE's frequency scaling: config.json's rope_scaling (transformers 4) or rope_parameters
// (transformers 5), the static kinds, which change every frequency once for all positions
// (worker/model/rope.h computes them). "dynamic" and "longrope", whose frequencies transformers
// changes with each forward's length, are refused.
struct RopeScaling {
  enum class Type { kDefault, kLinear, kYarn, kLlama3 };
  Type type = Type::kDefault;
  double factor = 1.0;                            // linear, yarn, llama3
  int64_t original_max_position_embeddings = 0;   // yarn, llama3 (the pretraining context)
  std::optional<double> attention_factor;         // yarn: else from mscale / mscale_all_dim / factor
  std::optional<double> mscale, mscale_all_dim;   // yarn
  double beta_fast = 32.0, beta_slow = 1.0;       // yarn
  bool truncate = true;                           // yarn: the ramp's ends rounded to whole dimensions
  double low_freq_factor = 1.0, high_freq_factor = 4.0;  // llama3

  static const char* TypeName(Type t);  // "default" | "linear" | "yarn" | "llama3"
};

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;  // one expert's FFN width
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;  // config's head_dim, else hidden_size / num_heads
  int64_t num_experts = 0;
  int64_t experts_per_token = 0;
  double rope_theta = 1e6;
  RopeScaling rope_scaling;
  double rms_norm_eps = 1e-5;
  std::optional<int64_t> sliding_window;  // none: full causal attention
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 0;
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids = {2};

  // The positions a sequence may hold, as vLLM derives its max_model_len: max_position_embeddings,
  // times the factor of a linear scaling, or YaRN's original_max_position_embeddings times its
  // factor (llama3's max_position_embeddings is already the extended context).
  int64_t context_length() const;

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  int64_t heads_per_kv() const { return num_heads / num_kv_heads; }
  // Whether `token` is one of the end-of-sequence ids.
  bool is_eos(int64_t token) const {
    return std::find(eos_token_ids.begin(), eos_token_ids.end(), token) != eos_token_ids.end();
  }

  // Parameter counts, used for memory planning and the benchmark's byte floor.
  int64_t expert_params() const { return 3 * hidden_size * intermediate_size; }
  int64_t replicated_params() const;  // everything but the experts

  // Parses and validates; an unsupported field is refused with an error naming it.
  static absl::StatusOr<ModelConfig> FromJson(const nlohmann::json& j);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);
  // Reads DIR/config.json, with DIR/generation_config.json's eos_token_id (where the folder has
  // one) added to eos_token_ids.
  static absl::StatusOr<ModelConfig> FromModelDir(const std::string& dir);

  nlohmann::json ToJson() const;
};

// A tokenizer (of `dir`) with more tokens than config.json's vocab_size would hand the engine ids
// past its embedding rows from any text: refused where a tokenizer is loaded beside a config.
absl::Status CheckTokenizerVocabulary(int64_t tokenizer_tokens, const ModelConfig& c, const std::string& dir);

}  // namespace moe
