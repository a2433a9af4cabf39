// config.json parsing: the real Mixtral configs, defaults, and every refusal naming its field; and
// generation_config.json's end-of-sequence ids and sampling defaults.
#include "worker/model/config.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "worker/model/generation_config.h"

namespace moe {
namespace {

using nlohmann::json;

const std::string kSrc = MOE_SOURCE_DIR;

json Tiny() {
  return json::parse(R"({"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 1024,
    "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
    "num_key_value_heads": 2, "num_local_experts": 8, "num_experts_per_tok": 2, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-05, "sliding_window": null, "tie_word_embeddings": false,
    "max_position_embeddings": 4096, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2})");
}

void ExpectRefused(const json& j, const std::string& field) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(j);
  ASSERT_FALSE(c.ok()) << j.dump();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(c.status().message()).find("'" + field + "'"), std::string::npos) << c.status();
}

TEST(ConfigTest, GoldenTiny) {
  ModelConfig c = ModelConfig::FromModelDir(kSrc + "/tests/data/golden/tiny").value();
  EXPECT_EQ(c.vocab_size, 1024);
  EXPECT_EQ(c.hidden_size, 128);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.heads_per_kv(), 4);
  EXPECT_EQ(c.num_experts, 8);
  EXPECT_EQ(c.experts_per_token, 2);
  EXPECT_FALSE(c.sliding_window.has_value());
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.eos_token_ids, std::vector<int64_t>{2});
}

TEST(ConfigTest, Mixtral8x7bParameterCount) {
  // The real Mixtral-8x7B config: 46.7B parameters, 12.9B active per token (top-2 of 8 experts).
  json j = json::parse(R"({"architectures": ["MixtralForCausalLM"], "hidden_size": 4096,
    "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mixtral",
    "num_attention_heads": 32, "num_experts_per_tok": 2, "num_hidden_layers": 32, "num_key_value_heads": 8,
    "num_local_experts": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null,
    "tie_word_embeddings": false, "vocab_size": 32000})");
  ModelConfig c = ModelConfig::FromJson(j).value();
  const double total = static_cast<double>(c.replicated_params() + c.num_layers * c.num_experts * c.expert_params());
  const double active =
      static_cast<double>(c.replicated_params() + c.num_layers * c.experts_per_token * c.expert_params());
  EXPECT_NEAR(total / 1e9, 46.7, 0.05);
  EXPECT_NEAR(active / 1e9, 12.9, 0.05);
}

TEST(ConfigTest, OptionalFields) {
  json j = Tiny();
  j["head_dim"] = 32;  // differs from hidden / heads
  j["sliding_window"] = 4096;
  j["tie_word_embeddings"] = true;
  j["eos_token_id"] = {2, 7};
  j.erase("num_key_value_heads");
  ModelConfig c = ModelConfig::FromJson(j).value();
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.q_dim(), 256);
  EXPECT_EQ(c.num_kv_heads, 8);  // defaults to the query heads
  EXPECT_EQ(*c.sliding_window, 4096);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 7}));
  // transformers 5 puts rope_theta inside rope_parameters.
  json k = Tiny();
  k.erase("rope_theta");
  k["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5e5}};
  EXPECT_DOUBLE_EQ(ModelConfig::FromJson(k).value().rope_theta, 5e5);
}

TEST(ConfigTest, RoundTrip) {
  json j = Tiny();
  j["sliding_window"] = 64;
  ModelConfig a = ModelConfig::FromJson(j).value();
  ModelConfig b = ModelConfig::FromJson(a.ToJson()).value();
  EXPECT_EQ(a.ToJson(), b.ToJson());
  // With each RoPE scaling: what ToJson writes reads back the same (a worker's and the
  // coordinator's configs are compared through it).
  for (const json& scaling : {json{{"rope_type", "linear"}, {"factor", 2.0}},
                              json{{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 1024},
                                   {"mscale", 0.707}, {"mscale_all_dim", 0.707}, {"beta_fast", 16}, {"truncate", false}},
                              json{{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                   {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 512}}}) {
    json k = Tiny();
    k["rope_scaling"] = scaling;
    ModelConfig c = ModelConfig::FromJson(k).value();
    EXPECT_NE(c.rope_scaling.type, RopeScaling::Type::kDefault) << scaling;
    ModelConfig d = ModelConfig::FromJson(c.ToJson()).value();
    EXPECT_EQ(c.ToJson(), d.ToJson()) << scaling;
    EXPECT_NE(c.ToJson(), a.ToJson());
  }
}

// The RoPE fields as transformers 5 reads them: rope_scaling (transformers 4's name, with "type" or
// "rope_type") before rope_parameters; inside them rope_theta wins over the top level's; yarn's and
// llama3's original_max_position_embeddings defaults to max_position_embeddings (a top-level one
// wins); yarn without a factor takes max_position_embeddings over it, beta 0 or null the defaults.
// The context served is vLLM's max_model_len for each.
TEST(ConfigTest, RopeScalingFields) {
  json j = Tiny();
  j["max_position_embeddings"] = 8192;
  j["rope_theta"] = 1e4;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.5}, {"rope_theta", 5e5}};
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 8}};  // rope_scaling is read first
  ModelConfig c = ModelConfig::FromJson(j).value();
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLinear);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 2.5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 5e5);
  EXPECT_EQ(c.context_length(), 20480) << "vLLM's max_model_len: max_position_embeddings times the factor";
  j.erase("rope_scaling");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"factor", nullptr}, {"original_max_position_embeddings", 2048},
                          {"beta_fast", 0}, {"beta_slow", nullptr}};
  c = ModelConfig::FromJson(j).value();
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kYarn);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e4);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_fast, 32.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.beta_slow, 1.0);
  EXPECT_TRUE(c.rope_scaling.truncate);
  EXPECT_FALSE(c.rope_scaling.attention_factor.has_value());
  j["rope_parameters"]["factor"] = 3;
  EXPECT_EQ(ModelConfig::FromJson(j).value().context_length(), 6144) << "YaRN's original context times its factor";
  j["original_max_position_embeddings"] = 1024;  // Phi-3's place wins
  EXPECT_EQ(ModelConfig::FromJson(j).value().rope_scaling.original_max_position_embeddings, 1024);
  j["original_max_position_embeddings"] = nullptr;  // unless null
  EXPECT_EQ(ModelConfig::FromJson(j).value().rope_scaling.original_max_position_embeddings, 2048);
  j.erase("original_max_position_embeddings");
  j["rope_parameters"]["original_max_position_embeddings"] = 4096.0;  // a whole number written as a float
  EXPECT_EQ(ModelConfig::FromJson(j).value().rope_scaling.original_max_position_embeddings, 4096);
  j["rope_parameters"]["truncate"] = nullptr;  // transformers' `if truncate:` reads null as false
  EXPECT_FALSE(ModelConfig::FromJson(j).value().rope_scaling.truncate);
  j["partial_rotary_factor"] = 0.5;  // the RoPE object's own value wins
  j["rope_parameters"]["partial_rotary_factor"] = 1.0;
  EXPECT_TRUE(ModelConfig::FromJson(j).ok());
  j.erase("partial_rotary_factor");
  j["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 8}, {"low_freq_factor", 1}, {"high_freq_factor", 4}};
  c = ModelConfig::FromJson(j).value();
  EXPECT_EQ(c.rope_scaling.type, RopeScaling::Type::kLlama3);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.context_length(), 8192) << "llama3's max_position_embeddings is the extended context";
  // An empty rope_scaling is none, and rope_parameters is read.
  j["rope_scaling"] = json::object();
  EXPECT_EQ(ModelConfig::FromJson(j).value().rope_scaling.type, RopeScaling::Type::kLlama3);
  j["rope_parameters"] = {{"rope_type", "default"}};
  EXPECT_EQ(ModelConfig::FromJson(j).value().rope_scaling.type, RopeScaling::Type::kDefault);
}

TEST(ConfigTest, RefusesWhatItCannotHonour) {
  json j = Tiny();
  j["architectures"] = {"LlamaForCausalLM"};
  ExpectRefused(j, "architectures");
  j = Tiny();
  j["model_type"] = "llama";
  ExpectRefused(j, "model_type");
  j = Tiny();  // beside the right architectures too: transformers' AutoConfig knows no model_type 5
  j["model_type"] = 5;
  ExpectRefused(j, "model_type");
  // RoPE scalings whose frequencies transformers changes with each forward's length, a rotary
  // part of the head, and scaling fields that are missing or make no sense.
  j = Tiny();
  j["rope_scaling"] = {{"type", "dynamic"}, {"factor", 2.0}};
  ExpectRefused(j, "rope_scaling.rope_type");
  j = Tiny();
  j["rope_parameters"] = {{"rope_type", "longrope"}, {"short_factor", {1.0}}, {"long_factor", {2.0}}};
  ExpectRefused(j, "rope_parameters.rope_type");
  j = Tiny();
  j["partial_rotary_factor"] = 0.5;
  ExpectRefused(j, "partial_rotary_factor");
  j = Tiny();
  j["rope_parameters"] = {{"rope_type", "default"}, {"partial_rotary_factor", 0.25}};
  ExpectRefused(j, "rope_parameters.partial_rotary_factor");
  j = Tiny();
  j["rope_scaling"] = {{"type", "linear"}};
  ExpectRefused(j, "rope_scaling.factor");
  j = Tiny();
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", -2}};
  ExpectRefused(j, "rope_scaling.factor");
  j = Tiny();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8}, {"low_freq_factor", 4}, {"high_freq_factor", 4}};
  ExpectRefused(j, "rope_scaling.high_freq_factor");
  j = Tiny();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8}, {"high_freq_factor", 4}};
  ExpectRefused(j, "rope_scaling.low_freq_factor");
  j = Tiny();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}, {"original_max_position_embeddings", 0.5}};
  ExpectRefused(j, "rope_scaling.original_max_position_embeddings");
  j = Tiny();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4}, {"truncate", "yes"}};
  ExpectRefused(j, "rope_scaling.truncate");
  j = Tiny();
  j["rope_scaling"] = "yarn";
  ExpectRefused(j, "rope_scaling");
  j = Tiny();  // transformers requires the key (an explicit null derives it)
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"original_max_position_embeddings", 1024}};
  ExpectRefused(j, "rope_scaling.factor");
  j = Tiny();  // 32-bit positions
  j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 1e9}};
  ExpectRefused(j, "rope_scaling.factor");
  j = Tiny();
  j["hidden_act"] = "gelu";
  ExpectRefused(j, "hidden_act");
  j["hidden_act"] = "swish";  // transformers' other name for SiLU
  EXPECT_TRUE(ModelConfig::FromJson(j).ok());
  j = Tiny();  // e.g. a GPTQ Mixtral's
  j["quantization_config"] = {{"bits", 4}, {"group_size", 128}, {"quant_method", "gptq"}};
  ExpectRefused(j, "gptq");
  j = Tiny();
  j["quantization_config"] = {{"quant_method", "fp8"}, {"activation_scheme", "static"}};
  ExpectRefused(j, "quantization_config");
  j = Tiny();
  j["num_key_value_heads"] = 3;
  ExpectRefused(j, "num_key_value_heads");
  j = Tiny();
  j["num_experts_per_tok"] = 9;
  ExpectRefused(j, "num_experts_per_tok");
  j = Tiny();
  j.erase("hidden_size");
  ExpectRefused(j, "hidden_size");
  j = Tiny();
  j["vocab_size"] = -5;
  ExpectRefused(j, "vocab_size");
  j = Tiny();
  j["intermediate_size"] = "big";
  ExpectRefused(j, "intermediate_size");
  j = Tiny();
  j["head_dim"] = 15;
  ExpectRefused(j, "head_dim");
}

// A mistaken config.json is refused before it sizes anything: counts that would size plans and
// buffers in the terabytes, heads x head_dim wrapping 64 bits (which passed every shape check of a
// checkpoint made to match and crashed the engine), contexts past 32-bit positions or under one,
// and special ids outside the vocabulary.
TEST(ConfigTest, RefusesSizesNoModelHas) {
  const std::vector<std::pair<json, std::string>> cases = {
      {{{"num_attention_heads", int64_t{1} << 62}, {"num_key_value_heads", int64_t{1} << 62}, {"head_dim", 4}},
       "num_attention_heads"},
      {{{"num_attention_heads", 1 << 16}, {"num_key_value_heads", 1 << 16}, {"head_dim", 1 << 16}}, "head_dim"},
      {{{"num_hidden_layers", 1000000000}}, "num_hidden_layers"},
      {{{"num_local_experts", 10000000}}, "num_local_experts"},
      {{{"vocab_size", int64_t{1} << 31}}, "vocab_size"},
      {{{"intermediate_size", int64_t{1} << 40}}, "intermediate_size"},
      {{{"max_position_embeddings", int64_t{1} << 40}}, "max_position_embeddings"},
      {{{"rope_scaling", {{"rope_type", "linear"}, {"factor", 1e-300}}}}, "rope_scaling.factor"},
      {{{"eos_token_id", 5000}}, "eos_token_id"},
      {{{"eos_token_id", -1}}, "eos_token_id"},
      {{{"eos_token_id", {2, 99999}}}, "eos_token_id"},
      {{{"eos_token_id", uint64_t{18446744073709551615u}}}, "eos_token_id"},
      {{{"bos_token_id", 1024}}, "bos_token_id"},
      {{{"hidden_size", uint64_t{18446744073709551615u}}}, "hidden_size"},
  };
  for (const auto& [changes, field] : cases) {
    json j = Tiny();
    j.update(changes);
    ExpectRefused(j, field);
  }
  json wraps = Tiny();  // read as int64_t it was -1, "must be positive"
  wraps["hidden_size"] = uint64_t{18446744073709551615u};
  EXPECT_NE(std::string(ModelConfig::FromJson(wraps).status().message()).find("is out of range, got 18446744073709551615"),
            std::string::npos)
      << ModelConfig::FromJson(wraps).status();
  json huge = Tiny();  // every count within its bound, the product past 2^40 parameters
  huge.update({{"num_hidden_layers", 1024}, {"num_local_experts", 1024}, {"intermediate_size", 1 << 20}});
  absl::StatusOr<ModelConfig> too_many = ModelConfig::FromJson(huge);
  ASSERT_FALSE(too_many.ok());
  EXPECT_NE(std::string(too_many.status().message()).find("more than 2^40"), std::string::npos) << too_many.status();
  json odd_bos = Tiny();  // a bos_token_id that is not an integer is passed over, as transformers does
  odd_bos["bos_token_id"] = "<s>";
  EXPECT_TRUE(ModelConfig::FromJson(odd_bos).ok());
  json bounds = Tiny();  // the bounds themselves are served
  bounds.update({{"num_hidden_layers", 1024}, {"num_local_experts", 1024}, {"eos_token_id", {0, 1023}}});
  EXPECT_TRUE(ModelConfig::FromJson(bounds).ok()) << ModelConfig::FromJson(bounds).status();
}

// Error messages quote values, and writing out one nested 100,000 levels deep overflowed the stack:
// files nesting past 512 levels are refused before they are parsed.
TEST(ConfigTest, DeeplyNestedFilesAreRefusedBeforeTheyAreRead) {
  const std::string dir = ::testing::TempDir() + "/config_test_nested_" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  std::string text = Tiny().dump();
  text.replace(text.find("\"hidden_size\":128"), std::string("\"hidden_size\":128").size(),
               "\"hidden_size\":" + std::string(100000, '[') + std::string(100000, ']'));
  std::ofstream(dir + "/config.json") << text;
  absl::StatusOr<ModelConfig> c = ModelConfig::FromModelDir(dir);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find("config.json: nests arrays and objects more than 512 levels deep"),
            std::string::npos)
      << c.status();
  std::filesystem::remove_all(dir);
}

// What is wrong with a config.json that is not JSON is said, with where; a NUL byte, where the
// parser stops reading, is refused instead of ending the file there.
TEST(ConfigTest, InvalidJsonIsNamedWithWhere) {
  const std::string dir = ::testing::TempDir() + "/config_test_invalid_" + std::to_string(getpid());
  std::filesystem::create_directories(dir);
  const std::string text = Tiny().dump();
  struct Case {
    std::string text, expect;
  };
  for (const Case& c : {Case{text + std::string("\0{\"hidden_size\": 64}", 20), "config.json: not valid JSON: a NUL byte at offset"},
                        Case{"{\"vocab_size\": 1024,\n \"hidden_size\": }", "config.json: not valid JSON: parse error at line 2, column 17"},
                        Case{"{\"rope_theta\": 1e400}", "config.json: not valid JSON: number overflow parsing '1e400'"},
                        Case{"", "config.json: not valid JSON: parse error at line 1, column 1"}}) {
    std::ofstream(dir + "/config.json", std::ios::binary | std::ios::trunc) << c.text;
    absl::StatusOr<ModelConfig> config = ModelConfig::FromModelDir(dir);
    ASSERT_FALSE(config.ok()) << c.expect;
    EXPECT_TRUE(absl::IsInvalidArgument(config.status())) << config.status();
    EXPECT_NE(std::string(config.status().message()).find(c.expect), std::string::npos) << config.status();
  }
  std::filesystem::remove_all(dir);
}

TEST(ConfigTest, MissingFileNamesPath) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromModelDir("/nonexistent/model");
  ASSERT_FALSE(c.ok());
  EXPECT_NE(std::string(c.status().message()).find("/nonexistent/model/config.json"), std::string::npos);
}

// Hugging Face's GenerationConfig defaults (temperature 1, top_p 1, top_k 50, repetition_penalty 1)
// are no recommendation (vLLM reads the file's to_diff_dict(), which drops them); anything else
// is, with max_new_tokens as max_tokens. Mixtral's own file recommends nothing.
TEST(GenerationConfigTest, SamplingDefaultsAreWhatDiffersFromHuggingFaces) {
  const GenerationConfig mixtral =
      GenerationConfig::FromJson(json::parse(R"({"_from_model_config": true, "bos_token_id": 1, "eos_token_id": 2,
                                                 "transformers_version": "4.36.0.dev0"})"))
          .value();
  EXPECT_FALSE(mixtral.has_sampling_defaults());
  EXPECT_EQ(mixtral.eos_token_ids, std::vector<int64_t>{2});
  const GenerationConfig hf_defaults =
      GenerationConfig::FromJson(json::parse(R"({"temperature": 1.0, "top_p": 1, "top_k": 50, "repetition_penalty": 1.0,
                                                 "do_sample": true, "max_length": 4096, "min_p": null})"))
          .value();
  EXPECT_FALSE(hf_defaults.has_sampling_defaults());
  const GenerationConfig tuned =
      GenerationConfig::FromJson(json::parse(R"({"temperature": 0.6, "top_p": 0.9, "top_k": 0, "min_p": 0.05,
                                                 "repetition_penalty": 1.1, "max_new_tokens": 512,
                                                 "eos_token_id": [2, 32000]})"))
          .value();
  EXPECT_EQ(tuned.SamplingDefaultsJson(),
            json::parse(R"({"temperature": 0.6, "top_p": 0.9, "top_k": 0, "min_p": 0.05, "repetition_penalty": 1.1,
                            "max_tokens": 512})"));
  EXPECT_EQ(tuned.eos_token_ids, (std::vector<int64_t>{2, 32000}));
  EXPECT_EQ(GenerationConfig::FromJson(json::parse(R"({"top_k": -1})")).value().top_k, 0) << "vLLM's off";
  for (const auto& [body, field] : std::vector<std::pair<std::string, std::string>>{
           {R"({"temperature": -0.5})", "temperature"},
           {R"({"temperature": 1e39})", "temperature"},  // finite as a double, not as the float a request carries
           {R"({"repetition_penalty": 1e39})", "repetition_penalty"},
           {R"({"top_p": 1e-46})", "top_p"},
           {R"({"top_k": -2})", "top_k"},
           {R"({"top_p": 0})", "top_p"},
           {R"({"min_p": 2})", "min_p"},
           {R"({"repetition_penalty": 0})", "repetition_penalty"},
           {R"({"max_new_tokens": 0})", "max_new_tokens"},
           {R"({"temperature": "hot"})", "temperature"},
           {R"({"top_k": 1.5})", "top_k"},
           {R"({"eos_token_id": [2, "x"]})", "eos_token_id"},
           {R"({"eos_token_id": -1})", "eos_token_id"}}) {
    absl::StatusOr<GenerationConfig> g = GenerationConfig::FromJson(json::parse(body));
    ASSERT_FALSE(g.ok()) << body;
    EXPECT_NE(std::string(g.status().message()).find("\"" + field + "\""), std::string::npos) << g.status();
  }
}

// vLLM's --override-generation-config: the sampling fields as given (Hugging Face's defaults too),
// over a file's; another key is refused, naming it.
TEST(GenerationConfigTest, OverrideSetsFieldsAsGiven) {
  GenerationConfig g = GenerationConfig::FromJson(json::parse(R"({"temperature": 0.6, "top_p": 0.9})")).value();
  const GenerationConfig over = GenerationConfig::FromOverride(json::parse(R"({"temperature": 1.0, "max_new_tokens": 64})")).value();
  g.Override(over);
  EXPECT_EQ(g.SamplingDefaultsJson(), json::parse(R"({"temperature": 1.0, "top_p": 0.9, "max_tokens": 64})"));
  GenerationConfig cleared = GenerationConfig::FromJson(json::parse(R"({"temperature": 0.6, "max_new_tokens": 9})")).value();
  cleared.Override(GenerationConfig::FromOverride(json::parse(R"({"max_new_tokens": null})")).value());
  EXPECT_EQ(cleared.SamplingDefaultsJson(), json::parse(R"({"temperature": 0.6})")) << "null unsets, as vLLM's dict update";
  for (const char* bad : {R"({"do_sample": true})", R"({"temperature": -1})", R"([1])"}) {
    EXPECT_FALSE(GenerationConfig::FromOverride(json::parse(bad)).ok()) << bad;
  }
  EXPECT_NE(std::string(GenerationConfig::FromOverride(json::parse(R"({"do_sample": true})")).status().message())
                .find("\"do_sample\" is not one of"),
            std::string::npos);
}

// A folder's generation_config.json adds its end-of-sequence ids to config.json's (a ChatML
// fine-tune's <|im_end|>), refuses one outside the vocabulary, and names itself when malformed.
TEST(GenerationConfigTest, ModelDirAddsItsEosIds) {
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / ("gen_config_" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "config.json") << Tiny().dump();
  EXPECT_EQ(ModelConfig::FromModelDir(dir.string()).value().eos_token_ids, std::vector<int64_t>{2}) << "no file";
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": [2, 7], "temperature": 0.7})";
  const ModelConfig c = ModelConfig::FromModelDir(dir.string()).value();
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 7}));
  EXPECT_TRUE(c.is_eos(7));
  // Sampling values the API would refuse are the coordinator's to judge (--generation-config), not
  // every rank's: transformers accepts top_p 0 beside do_sample false.
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": 2, "top_p": 0.0, "do_sample": false})";
  EXPECT_TRUE(ModelConfig::FromModelDir(dir.string()).ok());
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": 1024})";
  absl::StatusOr<ModelConfig> outside = ModelConfig::FromModelDir(dir.string());
  ASSERT_FALSE(outside.ok());
  EXPECT_NE(std::string(outside.status().message()).find("eos_token_id 1024 is outside the vocabulary of 1024"),
            std::string::npos)
      << outside.status();
  std::ofstream(dir / "generation_config.json") << R"({"eos_token_id": )";
  absl::StatusOr<ModelConfig> torn = ModelConfig::FromModelDir(dir.string());
  ASSERT_FALSE(torn.ok());
  EXPECT_NE(std::string(torn.status().message()).find("generation_config.json"), std::string::npos) << torn.status();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
