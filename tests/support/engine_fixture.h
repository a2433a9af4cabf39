// Shared helpers of the engine tests: loading an engine on one process, the golden data, and the
// relative error measure the acceptance criteria use (||ours - ref|| / ||ref||).
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "coordinator/placement.h"
#include "worker/comm/local_communicator.h"
#include "worker/engine.h"
#include "worker/model/safetensors.h"

namespace moe::testing_ref {

inline const std::string kGoldenDir = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/tiny";
// A second golden checkpoint: a sliding window of 8 shorter than its prompts, top-3 of 6 experts,
// GQA 6/2 with head_dim 16 (tests/data/golden/README.md).
inline const std::string kWindowGoldenDir = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/window";
// A third: tied embeddings (no lm_head tensor), head_dim 24 apart from hidden / heads, top-1 of 4
// experts, as many key-value heads as query heads (tests/data/golden/README.md).
inline const std::string kTiedGoldenDir = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/tied";
// A fourth: YaRN RoPE scaling over a pretraining context of 64 positions, prompts and greedy steps
// past it (tests/data/golden/README.md).
inline const std::string kYarnGoldenDir = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/yarn";
inline const std::string kDefaultModelDir = std::string(MOE_SOURCE_DIR) + "/models/shakespeare-moe";

// A single-process engine with its communicator and plan kept alive beside it.
struct LocalEngine {
  LocalCommunicator comm;
  std::unique_ptr<PlacementPlan> plan;
  std::unique_ptr<Engine> engine;
  Engine* operator->() { return engine.get(); }
  Engine& operator*() { return *engine; }
};

inline std::unique_ptr<LocalEngine> LoadLocalEngine(const std::string& dir, EngineOptions opts = {}) {
  auto le = std::make_unique<LocalEngine>();
  ModelConfig c = ModelConfig::FromModelDir(dir).value();
  le->plan = std::make_unique<PlacementPlan>(PlacementPlan::Make(c.num_layers, c.num_experts, 1).value());
  le->engine = ValueOrThrow(Engine::Load(dir, le->comm, *le->plan, opts));
  return le;
}

template <typename A, typename B>
double RelativeError(const A& ours, const B& ref, size_t n, size_t ours_offset = 0, size_t ref_offset = 0) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(ours[ours_offset + i]) - static_cast<double>(ref[ref_offset + i]);
    num += d * d;
    den += static_cast<double>(ref[ref_offset + i]) * static_cast<double>(ref[ref_offset + i]);
  }
  return std::sqrt(num / den);
}

// The same measure over two whole vectors of equal size; positions where both are NaN (the first
// token's log-probability, which has no context) are left out.
inline double RelativeError(const std::vector<float>& ours, const std::vector<float>& ref) {
  EXPECT_EQ(ours.size(), ref.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < std::min(ours.size(), ref.size()); ++i) {
    if (std::isnan(ours[i]) && std::isnan(ref[i])) continue;
    const double d = static_cast<double>(ours[i]) - static_cast<double>(ref[i]);
    num += d * d;
    den += static_cast<double>(ref[i]) * static_cast<double>(ref[i]);
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// The gap between the two largest of `row`'s V logits: how far a greedy choice is from a tie.
double TopTwoGap(const float* row, int64_t V);

// expected.json and expected.safetensors of the golden folder.
struct Golden {
  nlohmann::json expected;
  std::unique_ptr<SafetensorsFile> tensors;

  static Golden Load(const std::string& dir = kGoldenDir);
  std::vector<int32_t> prompt(size_t p) const { return expected["prompts"][p].get<std::vector<int32_t>>(); }
  std::vector<int32_t> greedy(size_t p) const { return expected["greedy"][p].get<std::vector<int32_t>>(); }
  size_t num_prompts() const { return expected["prompts"].size(); }
  // At each of prompt p's greedy steps, the gap between transformers' two best logits
  // (greedy_logits.p): how far a token is from a tie, for comparing engines with larger errors.
  std::vector<double> GreedyMargins(size_t p) const;
  // A float32 tensor of expected.safetensors, e.g. "logits.3".
  std::vector<float> F32(const std::string& name) const;
};

}  // namespace moe::testing_ref
