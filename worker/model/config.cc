#include "worker/model/config.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

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
  // Read as int64_t, 2^64 - 1 would wrap to -1 and be called not positive.
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return FieldError(field, "is out of range, got " + v.dump());
  }
  int64_t x = v.get<int64_t>();
  if (x <= 0) return FieldError(field, "must be positive, got " + v.dump());
  return x;
}

// Bounds far past any Mixtral-family model (8x22B: hidden 6144, 56 layers, 8 experts) that keep a
// mistaken config.json from sizing buffers and plans in the terabytes, or products of dimensions
// from wrapping 64 bits, before the checkpoint can disagree with it.
constexpr int64_t kMaxDimension = int64_t{1} << 24;  // vocabulary, widths, heads, head_dim
constexpr int64_t kMaxLayersOrExperts = 1024;

absl::StatusOr<int64_t> BoundedInt(const json& j, const std::string& field, int64_t max,
                                   std::optional<int64_t> fallback = std::nullopt) {
  MOE_ASSIGN_OR_RETURN(const int64_t x, PositiveInt(j, field, fallback));
  if (x > max) return FieldError(field, absl::StrCat("at most ", max, " is served, got ", x));
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

// A number field of the object `r` (named `where` in errors, "" for config.json's top level);
// nullopt when absent or null.
absl::StatusOr<std::optional<double>> RopeNumber(const json& r, const std::string& where, const std::string& field,
                                                 bool positive = true) {
  if (!r.contains(field) || r[field].is_null()) return std::nullopt;
  const json& v = r[field];
  const std::string name = where.empty() ? field : where + "." + field;
  if (!v.is_number()) return FieldError(name, "must be a number, got " + v.dump());
  const double x = v.get<double>();
  if (positive && !(x > 0)) return FieldError(name, "must be positive, got " + v.dump());
  return x;
}

// The positions a sequence may hold (ModelConfig::context_length), in double: ReadRope checks it
// fits 32 bits before anything casts it.
double ContextPositions(const ModelConfig& c) {
  const RopeScaling& r = c.rope_scaling;
  switch (r.type) {
    case RopeScaling::Type::kLinear:
      return static_cast<double>(c.max_position_embeddings) * r.factor;
    case RopeScaling::Type::kYarn:
      return static_cast<double>(r.original_max_position_embeddings) * r.factor;
    case RopeScaling::Type::kDefault:
    case RopeScaling::Type::kLlama3:
      break;
  }
  return static_cast<double>(c.max_position_embeddings);
}

// rope_theta and the frequency scaling, as transformers 5 reads them for Mixtral: the scaling
// object is rope_scaling (transformers 4's name) when set, else rope_parameters; a value inside it
// (rope_theta, partial_rotary_factor) wins over the top-level field of that name, except a
// top-level original_max_position_embeddings (Phi-3's place for it), which wins.
absl::Status ReadRope(const json& j, ModelConfig& c) {
  MOE_ASSIGN_OR_RETURN(c.rope_theta, PositiveNumber(j, "rope_theta", 1e6));
  std::string where = "rope_scaling";
  const json* r = nullptr;
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null() && !j["rope_scaling"].empty()) {
    r = &j["rope_scaling"];
  } else if (j.contains("rope_parameters") && !j["rope_parameters"].is_null()) {
    r = &j["rope_parameters"];
    where = "rope_parameters";
  }
  if (r != nullptr && !r->is_object()) return FieldError(where, "must be an object, got " + r->dump());
  // Rotating part of each head only (partial_rotary_factor below 1) is not Mixtral's. The value
  // inside the RoPE object wins over the top level's, as in transformers.
  {
    MOE_ASSIGN_OR_RETURN(std::optional<double> partial, RopeNumber(j, "", "partial_rotary_factor"));
    std::string name = "partial_rotary_factor";
    if (r != nullptr) {
      MOE_ASSIGN_OR_RETURN(std::optional<double> inner, RopeNumber(*r, where, "partial_rotary_factor"));
      if (inner) {
        partial = inner;
        name = where + ".partial_rotary_factor";
      }
    }
    if (partial && *partial != 1.0) {
      return FieldError(name, absl::StrCat("only 1 (every dimension rotated) is supported, got ", *partial));
    }
  }
  if (r == nullptr) return absl::OkStatus();
  MOE_ASSIGN_OR_RETURN(std::optional<double> theta, RopeNumber(*r, where, "rope_theta"));
  if (theta) c.rope_theta = *theta;
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (r->contains(key) && !(*r)[key].is_null()) {
      if (!(*r)[key].is_string()) return FieldError(where + "." + key, "must be a string, got " + (*r)[key].dump());
      type = (*r)[key].get<std::string>();
      break;
    }
  }
  RopeScaling& s = c.rope_scaling;
  if (type == "default") return absl::OkStatus();
  if (type == "linear") {
    s.type = RopeScaling::Type::kLinear;
  } else if (type == "yarn") {
    s.type = RopeScaling::Type::kYarn;
  } else if (type == "llama3") {
    s.type = RopeScaling::Type::kLlama3;
  } else {
    return FieldError(where + ".rope_type",
                      "only 'default', 'linear', 'yarn' and 'llama3' are supported (frequencies fixed for every "
                      "position), got '" + type + "'");
  }
  const auto required = [&](const std::string& field) -> absl::StatusOr<double> {
    MOE_ASSIGN_OR_RETURN(std::optional<double> v, RopeNumber(*r, where, field));
    if (!v) return FieldError(where + "." + field, "missing (required by rope_type '" + type + "')");
    return *v;
  };
  if (s.type != RopeScaling::Type::kLinear) {
    s.original_max_position_embeddings = c.max_position_embeddings;
    const auto has = [](const json& o) {
      return o.contains("original_max_position_embeddings") && !o["original_max_position_embeddings"].is_null();
    };
    const json* origin = has(j) ? &j : has(*r) ? r : nullptr;
    if (origin != nullptr) {
      const std::string origin_name = origin == &j ? "original_max_position_embeddings"
                                                   : where + ".original_max_position_embeddings";
      const json& v = (*origin)["original_max_position_embeddings"];
      // A whole number written as 8192.0 is one too (Python's int() of it, as vLLM and transformers take it).
      const bool whole = v.is_number_integer() || (v.is_number_float() && v.get<double>() == std::floor(v.get<double>()) &&
                                                   std::abs(v.get<double>()) < 9e15);
      if (!whole || v.get<double>() <= 0) return FieldError(origin_name, "must be a positive integer, got " + v.dump());
      s.original_max_position_embeddings = static_cast<int64_t>(v.get<double>());
    }
  }
  if (s.type == RopeScaling::Type::kYarn && r->contains("factor") && (*r)["factor"].is_null()) {
    // transformers: an explicit null is the ratio of the extended context to the pretraining one.
    s.factor = static_cast<double>(c.max_position_embeddings) / static_cast<double>(s.original_max_position_embeddings);
  } else {
    MOE_ASSIGN_OR_RETURN(s.factor, required("factor"));
  }
  // Positions are 32-bit on the GPU: the context the factor makes must fit, and hold one position.
  if (ContextPositions(c) > static_cast<double>(std::numeric_limits<int32_t>::max())) {
    return FieldError(where + ".factor", absl::StrCat("makes a context beyond 2^31 - 1 positions, got ", s.factor));
  }
  if (ContextPositions(c) < 1) {
    return FieldError(where + ".factor", absl::StrCat("makes a context of less than one position, got ", s.factor));
  }
  if (s.type == RopeScaling::Type::kYarn) {
    MOE_ASSIGN_OR_RETURN(s.attention_factor, RopeNumber(*r, where, "attention_factor"));
    MOE_ASSIGN_OR_RETURN(s.mscale, RopeNumber(*r, where, "mscale", /*positive=*/false));
    MOE_ASSIGN_OR_RETURN(s.mscale_all_dim, RopeNumber(*r, where, "mscale_all_dim", /*positive=*/false));
    // transformers takes 0 or null as the default (`or 32`).
    MOE_ASSIGN_OR_RETURN(std::optional<double> fast, RopeNumber(*r, where, "beta_fast", /*positive=*/false));
    MOE_ASSIGN_OR_RETURN(std::optional<double> slow, RopeNumber(*r, where, "beta_slow", /*positive=*/false));
    if (fast && *fast != 0) s.beta_fast = *fast;
    if (slow && *slow != 0) s.beta_slow = *slow;
    if (!(s.beta_fast > 0) || !(s.beta_slow > 0)) {
      return FieldError(where + (s.beta_fast > 0 ? ".beta_slow" : ".beta_fast"), "must be positive");
    }
    if (r->contains("truncate")) {  // null is false, as transformers' truthiness test reads it
      const json& t = (*r)["truncate"];
      if (!t.is_boolean() && !t.is_null()) return FieldError(where + ".truncate", "must be true or false, got " + t.dump());
      s.truncate = t.is_boolean() && t.get<bool>();
    }
  } else if (s.type == RopeScaling::Type::kLlama3) {
    MOE_ASSIGN_OR_RETURN(s.low_freq_factor, required("low_freq_factor"));
    MOE_ASSIGN_OR_RETURN(s.high_freq_factor, required("high_freq_factor"));
    if (!(s.high_freq_factor > s.low_freq_factor)) {
      return FieldError(where + ".high_freq_factor", "must exceed low_freq_factor (" +
                                                          absl::StrCat(s.low_freq_factor) + "), got " +
                                                          (*r)["high_freq_factor"].dump());
    }
  }
  return absl::OkStatus();
}

}  // namespace

int64_t ModelConfig::context_length() const { return static_cast<int64_t>(ContextPositions(*this)); }

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
  if (j.contains("model_type") && !j["model_type"].is_null() && j["model_type"] != "mixtral") {
    return FieldError("model_type", "only 'mixtral' is supported, got " + j["model_type"].dump());
  }

  ModelConfig c;
  MOE_ASSIGN_OR_RETURN(c.vocab_size, BoundedInt(j, "vocab_size", kMaxDimension));
  MOE_ASSIGN_OR_RETURN(c.hidden_size, BoundedInt(j, "hidden_size", kMaxDimension));
  MOE_ASSIGN_OR_RETURN(c.intermediate_size, BoundedInt(j, "intermediate_size", kMaxDimension));
  MOE_ASSIGN_OR_RETURN(c.num_layers, BoundedInt(j, "num_hidden_layers", kMaxLayersOrExperts));
  MOE_ASSIGN_OR_RETURN(c.num_heads, BoundedInt(j, "num_attention_heads", kMaxDimension));
  MOE_ASSIGN_OR_RETURN(c.num_kv_heads, BoundedInt(j, "num_key_value_heads", kMaxDimension, c.num_heads));
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
    MOE_ASSIGN_OR_RETURN(c.head_dim, BoundedInt(j, "head_dim", kMaxDimension));
  }
  if (c.head_dim % 2 != 0) return FieldError("head_dim", absl::StrCat("must be even for RoPE, got ", c.head_dim));
  if (c.q_dim() > kMaxDimension) {
    return FieldError("head_dim", absl::StrCat("num_attention_heads ", c.num_heads, " x head_dim ", c.head_dim,
                                               " makes queries wider than ", kMaxDimension));
  }
  MOE_ASSIGN_OR_RETURN(c.num_experts, BoundedInt(j, "num_local_experts", kMaxLayersOrExperts));
  MOE_ASSIGN_OR_RETURN(c.experts_per_token, PositiveInt(j, "num_experts_per_tok"));
  if (c.experts_per_token > c.num_experts) {
    return FieldError("num_experts_per_tok", absl::StrCat(c.experts_per_token, " exceeds num_local_experts ",
                                                          c.num_experts));
  }
  // The whole model's parameters (counted in double: with every bound above, layers x experts x an
  // expert's could pass 64 bits), bounded far past any Mixtral-family model (8x22B: 1.4e11), so the
  // loaders' sums of sizes stay exact.
  const double params = static_cast<double>(c.replicated_params()) +
                        static_cast<double>(c.num_layers) * static_cast<double>(c.num_experts) *
                            static_cast<double>(c.expert_params());
  if (params > 0x1p40) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the model config.json describes holds ", params, " parameters, more than 2^40 (hidden_size ", c.hidden_size,
        ", intermediate_size ", c.intermediate_size, ", num_hidden_layers ", c.num_layers, ", num_local_experts ",
        c.num_experts, ", vocab_size ", c.vocab_size, ")"));
  }
  MOE_ASSIGN_OR_RETURN(c.max_position_embeddings, PositiveInt(j, "max_position_embeddings", 4096 * 32));
  MOE_ASSIGN_OR_RETURN(c.rms_norm_eps, PositiveNumber(j, "rms_norm_eps", 1e-5));

  MOE_RETURN_IF_ERROR(ReadRope(j, c));
  // Positions are 32-bit on the GPU (ReadRope names a scaling's factor for the same bound).
  if (ContextPositions(c) > static_cast<double>(std::numeric_limits<int32_t>::max())) {
    return FieldError("max_position_embeddings", absl::StrCat("at most 2^31 - 1 is served, got ", c.max_position_embeddings));
  }

  if (j.contains("sliding_window") && !j["sliding_window"].is_null()) {
    MOE_ASSIGN_OR_RETURN(int64_t w, PositiveInt(j, "sliding_window"));
    c.sliding_window = w;
  }
  if (j.contains("tie_word_embeddings") && !j["tie_word_embeddings"].is_null()) {
    if (!j["tie_word_embeddings"].is_boolean()) return FieldError("tie_word_embeddings", "must be true or false");
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  // A quantized checkpoint (GPTQ, AWQ, FP8, bitsandbytes: packed weights beside scales, under
  // other tensor names and dtypes) is refused here by its method rather than later by a tensor.
  if (j.contains("quantization_config") && !j["quantization_config"].is_null()) {
    const json& q = j["quantization_config"];
    const std::string method = q.is_object() && q.contains("quant_method") && q["quant_method"].is_string()
                                   ? q["quant_method"].get<std::string>()
                                   : q.dump();
    return FieldError("quantization_config", "quantized checkpoints are not supported (quant_method '" + method +
                                                 "'): serve the model's bf16, fp16 or fp32 checkpoint");
  }
  // transformers' ACT2FN: "swish" is the same SiLU.
  if (j.contains("hidden_act") && !j["hidden_act"].is_null() && j["hidden_act"] != "silu" && j["hidden_act"] != "swish") {
    return FieldError("hidden_act", "only 'silu' (or 'swish', the same) is supported, got " + j["hidden_act"].dump());
  }
  // The special ids must be tokens of the vocabulary (generation_config.json's are checked alike).
  const auto in_vocabulary = [&](const char* field, const json& id) -> absl::Status {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= c.vocab_size ||
        (id.is_number_unsigned() && id.get<uint64_t>() >= static_cast<uint64_t>(c.vocab_size))) {
      return FieldError(field, absl::StrCat("must be token ids of the vocabulary [0, ", c.vocab_size, "), got ", id.dump()));
    }
    return absl::OkStatus();
  };
  // bos_token_id is only reported (ModelInfo; BOS comes from the tokenizer): one that is not an
  // integer is passed over, as transformers and vLLM pass it over; an integer must be a token.
  if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) {
    MOE_RETURN_IF_ERROR(in_vocabulary("bos_token_id", j["bos_token_id"]));
    c.bos_token_id = j["bos_token_id"].get<int64_t>();
  }
  if (j.contains("eos_token_id") && !j["eos_token_id"].is_null()) {
    const json& e = j["eos_token_id"];
    c.eos_token_ids.clear();
    if (e.is_number_integer()) {
      MOE_RETURN_IF_ERROR(in_vocabulary("eos_token_id", e));
      c.eos_token_ids.push_back(e.get<int64_t>());
    } else if (e.is_array()) {
      for (const json& x : e) {
        MOE_RETURN_IF_ERROR(in_vocabulary("eos_token_id", x));
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

absl::Status CheckTokenizerVocabulary(int64_t tokenizer_tokens, const ModelConfig& c, const std::string& dir) {
  if (tokenizer_tokens <= c.vocab_size) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("the tokenizer of ", dir, " has ", tokenizer_tokens,
                                                 " tokens, more than config.json's vocab_size of ", c.vocab_size));
}

const char* RopeScaling::TypeName(Type t) {
  switch (t) {
    case Type::kLinear:
      return "linear";
    case Type::kYarn:
      return "yarn";
    case Type::kLlama3:
      return "llama3";
    case Type::kDefault:
      break;
  }
  return "default";
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
  // The scaling in transformers 4's rope_scaling, every value it uses spelled out.
  const RopeScaling& r = rope_scaling;
  json scaling = nullptr;
  if (r.type != RopeScaling::Type::kDefault) {
    scaling = {{"rope_type", RopeScaling::TypeName(r.type)}, {"factor", r.factor}};
    if (r.type != RopeScaling::Type::kLinear) {
      scaling["original_max_position_embeddings"] = r.original_max_position_embeddings;
    }
    if (r.type == RopeScaling::Type::kYarn) {
      if (r.attention_factor) scaling["attention_factor"] = *r.attention_factor;
      if (r.mscale) scaling["mscale"] = *r.mscale;
      if (r.mscale_all_dim) scaling["mscale_all_dim"] = *r.mscale_all_dim;
      scaling["beta_fast"] = r.beta_fast;
      scaling["beta_slow"] = r.beta_slow;
      scaling["truncate"] = r.truncate;
    } else if (r.type == RopeScaling::Type::kLlama3) {
      scaling["low_freq_factor"] = r.low_freq_factor;
      scaling["high_freq_factor"] = r.high_freq_factor;
    }
  }
  j["rope_scaling"] = scaling;
  return j;
}

}  // namespace moe
