// RoPE's frequencies and attention scale against transformers': for each case of
// tests/data/golden/rope_reference.json (made by make_rope_reference.py with transformers'
// MixtralRotaryEmbedding), the config.json read by ModelConfig::FromJson gives the inverse
// frequencies transformers computed (in float32, so within its rounding) and its attention
// scaling, folded squared into the softmax scale.
#include "worker/model/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "common/json_util.h"

namespace moe {
namespace {

const std::string kReference = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/rope_reference.json";

TEST(RopeTest, FrequenciesAndScaleAreTransformers) {
  const nlohmann::json ref = ValueOrThrow(ReadJsonFile(kReference));
  ASSERT_GE(ref["cases"].size(), 9u);
  int scaled = 0;
  for (const auto& [name, c] : ref["cases"].items()) {
    SCOPED_TRACE(name);
    const ModelConfig config = ValueOrThrow(ModelConfig::FromJson(c["config"]));
    const RopeFrequencies got = ComputeRopeFrequencies(config);
    const std::vector<double> want = c["inv_freq"].get<std::vector<double>>();
    ASSERT_EQ(got.inv_freq.size(), want.size());
    const std::vector<double> plain = RopeInvFreq(config.head_dim, config.rope_theta);
    double worst = 0, moved = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      worst = std::max(worst, std::abs(got.inv_freq[i] - want[i]) / want[i]);
      moved = std::max(moved, std::abs(plain[i] - want[i]) / want[i]);
    }
    EXPECT_LT(worst, 2e-6) << "largest relative difference from transformers' float32 frequencies";
    const double af = c["attention_scaling"].get<double>();
    EXPECT_NEAR(got.attention_factor, af, 1e-12);
    EXPECT_FLOAT_EQ(AttentionScale(config), static_cast<float>(af * af / std::sqrt(static_cast<double>(config.head_dim))));
    if (config.rope_scaling.type != RopeScaling::Type::kDefault) {
      EXPECT_GT(moved, 1e-3) << "the case's scaling changes no frequency: it tests nothing";
      ++scaled;
    }
  }
  EXPECT_GE(scaled, 7);
}

}  // namespace
}  // namespace moe
