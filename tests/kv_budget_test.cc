// The KV cache's memory budget (worker/kv_budget.h) at the real Mixtral sizes: the per-position and
// per-rank weight bytes against the published architecture (46.7B parameters; 32 layers of 8
// key-value heads of 128), the positions that fit against a long-double computation of the rule,
// and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "coordinator/placement.h"
#include "worker/kv_budget.h"
#include "worker/model/config.h"

namespace moe {
namespace {

ModelConfig Mixtral8x7b() {
  return ModelConfig::FromFile(std::string(MOE_SOURCE_DIR) + "/benchmarks/configs/mixtral-8x7b-v0.1.json").value();
}

TEST(KvBudgetTest, MixtralSizes) {
  const ModelConfig c = Mixtral8x7b();
  EXPECT_EQ(KvBytesPerPosition(c), 32 * 2 * 8 * 128 * 2);  // layers x (k, v) x kv heads x dims x bf16
  const PlacementPlan one = PlacementPlan::Make(c.num_layers, c.num_experts, 1).value();
  const double all = static_cast<double>(RankWeightBytes(c, one, 0));
  EXPECT_NEAR(all / 2, 46.7e9, 0.05e9);  // Mistral's figure: 46.7B parameters
  // Four ranks: each holds the replicated part and a quarter of the experts.
  const PlacementPlan four = PlacementPlan::Make(c.num_layers, c.num_experts, 4).value();
  int64_t sum = 0;
  for (int r = 0; r < 4; ++r) sum += RankWeightBytes(c, four, r);
  EXPECT_EQ(sum, RankWeightBytes(c, one, 0) + 3 * 2 * c.replicated_params());
  EXPECT_GT(StepBufferBytes(c, 2048), StepBufferBytes(c, 1));
  EXPECT_GE(StepBufferBytes(c, 1), kLibraryBytes);
}

TEST(KvBudgetTest, PositionsThatFit) {
  const ModelConfig c = Mixtral8x7b();
  const PlacementPlan one = PlacementPlan::Make(c.num_layers, c.num_experts, 1).value();
  const int64_t total = 150'109'880'320;  // an H200's cudaMemGetInfo total
  const int64_t weights = RankWeightBytes(c, one, 0), buffers = StepBufferBytes(c, 2048);
  const int64_t got = KvTokensForMemory(c, total, 0.9, weights, buffers, 16).value();
  const long double budget = std::floor(0.9L * total) - weights - buffers;
  const int64_t want = static_cast<int64_t>(std::floor(budget / (131072.0L * 16))) * 16;
  EXPECT_EQ(got, want);
  EXPECT_GT(got, 200'000);  // ~38 GB of KV: about 290k positions
  // Exactly one block's worth of room, and one byte less.
  const int64_t block = 16 * KvBytesPerPosition(c);
  EXPECT_EQ(KvTokensForMemory(c, 1'000'000'000, 1.0, 1'000'000'000 - block - 10, 10, 16).value(), 16);
  const auto none = KvTokensForMemory(c, 1'000'000'000, 1.0, 1'000'000'000 - block - 9, 10, 16);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(std::string(none.status().message()).find("no GPU memory left for the KV cache"), std::string::npos);
}

TEST(KvBudgetTest, TooLittleMemoryOrABadFractionIsAnError) {
  const ModelConfig c = Mixtral8x7b();
  const PlacementPlan one = PlacementPlan::Make(c.num_layers, c.num_experts, 1).value();
  // The whole model on an 80 GB GPU: its weights alone do not fit.
  const auto s = KvTokensForMemory(c, 80'000'000'000, 0.9, RankWeightBytes(c, one, 0), StepBufferBytes(c, 2048), 16);
  ASSERT_EQ(s.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(std::string(s.status().message()).find("weights take 93.4 GB"), std::string::npos) << s.status();
  for (double f : {0.0, -0.5, 1.5, std::numeric_limits<double>::quiet_NaN()}) {
    const auto bad = KvTokensForMemory(c, 80'000'000'000, f, 0, 0, 16);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << f;
  }
}

}  // namespace
}  // namespace moe
