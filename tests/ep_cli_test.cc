// Issue acceptance for expert parallelism, end to end through the built moe-cli: the same inputs
// give the same answers in one process and as an N-rank MPI job (N = 1 .. 16, so that some ranks
// have no input and, for N > 8, experts have replicas), the greedy tokens match the transformers
// golden data, and the load statistics match expert counts computed from the golden router logits.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/json_util.h"
#include "worker/model/config.h"
#include "tests/support/cli_runner.h"
#include "worker/model/safetensors.h"

#ifndef MOE_MPIRUN
#define MOE_MPIRUN "mpirun"
#endif

namespace moe {
namespace {

using nlohmann::json;

const std::string kCli = std::string(MOE_BINARY_DIR) + "/worker/moe-cli";
const std::string kGoldenDir = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/tiny";
const std::string kShakespeareDir = std::string(MOE_SOURCE_DIR) + "/models/shakespeare-moe";
constexpr int kGreedyTokens = 24;  // the length of expected.json "greedy"
constexpr double kLogprobTolerance = 1e-5;

class MpiEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { testing_ref::SetMpiTestEnvironment(); }
};
const ::testing::Environment* const kMpiEnvironment = ::testing::AddGlobalTestEnvironment(new MpiEnvironment);

using testing_ref::CliRun;
using testing_ref::JoinIds;
using testing_ref::RunCli;

// ----------------------------------------------------------------------------------------------
// The golden data.

struct Golden {
  ModelConfig config;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<std::vector<int32_t>> greedy;
  // [layer][expert]: token-slots the golden router logits send to each expert over all prompts.
  std::vector<std::vector<int64_t>> expert_tokens;
  int64_t total_tokens = 0;
};

// The top-k experts of one router row under Mixtral's rule: softmax, k most probable, ties to the
// lower expert id.
std::vector<int64_t> TopK(const float* logits, int64_t E, int64_t k) {
  std::vector<double> p(logits, logits + E);
  const double m = *std::max_element(p.begin(), p.end());
  double sum = 0;
  for (double& x : p) sum += (x = std::exp(x - m));
  for (double& x : p) x /= sum;
  std::vector<int64_t> chosen;
  for (int64_t s = 0; s < k; ++s) {
    int64_t best = -1;
    for (int64_t e = 0; e < E; ++e) {
      if (std::find(chosen.begin(), chosen.end(), e) != chosen.end()) continue;
      if (best < 0 || p[e] > p[best]) best = e;  // strict: the lower id wins a tie
    }
    chosen.push_back(best);
  }
  return chosen;
}

absl::StatusOr<Golden> LoadGolden() {
  Golden g;
  MOE_ASSIGN_OR_RETURN(g.config, ModelConfig::FromModelDir(kGoldenDir));
  MOE_ASSIGN_OR_RETURN(json expected, ReadJsonFile(kGoldenDir + "/expected.json"));
  g.prompts = expected["prompts"].get<std::vector<std::vector<int32_t>>>();
  g.greedy = expected["greedy"].get<std::vector<std::vector<int32_t>>>();
  MOE_ASSIGN_OR_RETURN(auto tensors, SafetensorsFile::Open(kGoldenDir + "/expected.safetensors"));
  const int64_t L = g.config.num_layers, E = g.config.num_experts, k = g.config.experts_per_token;
  g.expert_tokens.assign(static_cast<size_t>(L), std::vector<int64_t>(static_cast<size_t>(E), 0));
  for (size_t p = 0; p < g.prompts.size(); ++p) {
    const int64_t T = static_cast<int64_t>(g.prompts[p].size());
    g.total_tokens += T;
    const std::string name = "router." + std::to_string(p);
    auto it = tensors->tensors().find(name);
    if (it == tensors->tensors().end()) return absl::NotFoundError(name + " missing from expected.safetensors");
    const TensorView& v = it->second;
    if (v.dtype != DType::kF32 || v.shape != std::vector<int64_t>{L, T, E}) {
      return absl::InvalidArgumentError(name + ": expected float32 [layers, T, experts]");
    }
    // The mapping is only byte-aligned; copy before reading floats.
    std::vector<float> logits(static_cast<size_t>(v.numel()));
    std::memcpy(logits.data(), v.data, v.nbytes);
    for (int64_t l = 0; l < L; ++l) {
      for (int64_t t = 0; t < T; ++t) {
        for (int64_t e : TopK(&logits[(l * T + t) * E], E, k)) ++g.expert_tokens[l][e];
      }
    }
  }
  return g;
}

const Golden& GoldenData() {
  static const Golden* g = [] {
    auto loaded = LoadGolden();
    if (!loaded.ok()) {
      ADD_FAILURE() << "golden data: " << loaded.status();
      return new Golden();
    }
    return new Golden(std::move(*loaded));
  }();
  return *g;
}

// moe-cli arguments giving every golden prompt, in order, as one input each.
std::vector<std::string> GoldenInputs() {
  std::vector<std::string> args;
  for (const auto& p : GoldenData().prompts) {
    args.push_back("--token-ids");
    args.push_back(JoinIds(p));
  }
  return args;
}

CliRun GenerateGolden(int ranks) {
  std::vector<std::string> args = {"generate", "--model", kGoldenDir, "--max-tokens", std::to_string(kGreedyTokens),
                                   "--ignore-eos", "--json", "--stats"};
  for (const std::string& a : GoldenInputs()) args.push_back(a);
  return RunCli(ranks, args);
}

CliRun ScoreGolden(int ranks) {
  std::vector<std::string> args = {"score", "--model", kGoldenDir, "--json", "--stats"};
  for (const std::string& a : GoldenInputs()) args.push_back(a);
  return RunCli(ranks, args);
}

// ----------------------------------------------------------------------------------------------
// Checks on one run's output.

// ||a - b|| / ||b|| over the non-null logprobs; the null positions must agree.
double LogprobRelativeError(const json& a, const json& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    EXPECT_EQ(a[i].is_null(), b[i].is_null()) << "position " << i;
    if (a[i].is_null() || b[i].is_null()) continue;
    const double x = a[i].get<double>(), y = b[i].get<double>();
    diff += (x - y) * (x - y);
    norm += y * y;
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// What every run's statistics must satisfy: shapes, conservation of routed rows (each token goes to
// k experts, and each routed row is computed by exactly one rank), and sane balance figures.
void CheckStatsInvariants(const json& stats, int world, int64_t steps, int64_t tokens_per_layer) {
  const ModelConfig& c = GoldenData().config;
  ASSERT_TRUE(stats.is_object()) << stats;
  EXPECT_EQ(stats["steps"].get<int64_t>(), steps);
  EXPECT_EQ(stats["world_size"].get<int>(), world);
  ASSERT_EQ(static_cast<int64_t>(stats["layers"].size()), c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const json& layer = stats["layers"][l];
    EXPECT_EQ(layer["layer"].get<int64_t>(), l);
    const auto experts = layer["expert_tokens"].get<std::vector<int64_t>>();
    const auto ranks = layer["rank_rows"].get<std::vector<int64_t>>();
    ASSERT_EQ(static_cast<int64_t>(experts.size()), c.num_experts);
    ASSERT_EQ(static_cast<int>(ranks.size()), world);
    int64_t expert_sum = 0, rank_sum = 0;
    for (int64_t x : experts) expert_sum += x;
    for (int64_t x : ranks) rank_sum += x;
    EXPECT_EQ(expert_sum, c.experts_per_token * tokens_per_layer) << "layer " << l;
    EXPECT_EQ(rank_sum, c.experts_per_token * tokens_per_layer) << "layer " << l;
    for (const char* which : {"last_step", "mean"}) {
      const double imbalance = layer[which]["imbalance"].get<double>();
      const double cv2 = layer[which]["expert_cv2"].get<double>();
      EXPECT_TRUE(std::isfinite(imbalance) && std::isfinite(cv2)) << which << " layer " << l;
      EXPECT_GE(imbalance, 1.0) << which << " layer " << l;
      EXPECT_GE(cv2, 0.0) << which << " layer " << l;
    }
  }
}

// A score run over the golden prompts is one step: its totals are that step's counts, so the
// expert counts must equal the golden router's and the balance figures can be recomputed here.
void CheckScoreStats(const json& stats, int world) {
  const Golden& g = GoldenData();
  CheckStatsInvariants(stats, world, /*steps=*/1, g.total_tokens);
  if (::testing::Test::HasFatalFailure()) return;
  for (int64_t l = 0; l < g.config.num_layers; ++l) {
    const json& layer = stats["layers"][l];
    const auto experts = layer["expert_tokens"].get<std::vector<int64_t>>();
    const auto ranks = layer["rank_rows"].get<std::vector<int64_t>>();
    EXPECT_EQ(experts, g.expert_tokens[l]) << "layer " << l << ": expert counts differ from the golden router's";

    const double rank_mean = static_cast<double>(g.config.experts_per_token * g.total_tokens) / world;
    const double imbalance = static_cast<double>(*std::max_element(ranks.begin(), ranks.end())) / rank_mean;
    double expert_mean = 0, var = 0;
    for (int64_t x : experts) expert_mean += static_cast<double>(x) / static_cast<double>(experts.size());
    for (int64_t x : experts) var += (x - expert_mean) * (x - expert_mean) / static_cast<double>(experts.size());
    const double cv2 = var / (expert_mean * expert_mean);
    for (const char* which : {"last_step", "mean"}) {
      EXPECT_NEAR(layer[which]["imbalance"].get<double>(), imbalance, 1e-12 * imbalance) << which << " layer " << l;
      EXPECT_NEAR(layer[which]["expert_cv2"].get<double>(), cv2, 1e-12 * std::max(cv2, 1.0)) << which << " layer " << l;
    }
  }
}

// The results array of a multi-input run, checked to hold `n` entries.
const json& Results(const CliRun& run, size_t n) {
  static const json kEmpty = json::array();
  EXPECT_TRUE(run.result.is_object() && run.result.contains("results")) << "last stdout line: " << run.out;
  if (!run.result.is_object() || !run.result.contains("results")) return kEmpty;
  const json& r = run.result["results"];
  EXPECT_EQ(r.size(), n);
  return r.size() == n ? r : kEmpty;
}

// ----------------------------------------------------------------------------------------------
// The single-process reference, run once for all tests (the plain and the per-rank-count tests are
// two test suites, so a suite-level SetUp would run it twice).

struct SingleProcessRuns {
  CliRun generate, score;
};

const SingleProcessRuns& SingleProcess() {
  static const SingleProcessRuns* runs = new SingleProcessRuns{GenerateGolden(0), ScoreGolden(0)};
  return *runs;
}

class EpCliTest : public ::testing::TestWithParam<int> {
 protected:
  const CliRun* generate_ = &SingleProcess().generate;
  const CliRun* score_ = &SingleProcess().score;
};

TEST_F(EpCliTest, SingleProcessGenerateMatchesGolden) {
  ASSERT_EQ(generate_->exit_code, 0) << generate_->Describe();
  const Golden& g = GoldenData();
  const json& results = Results(*generate_, g.prompts.size());
  ASSERT_EQ(results.size(), g.prompts.size());
  for (size_t p = 0; p < g.prompts.size(); ++p) {
    EXPECT_EQ(results[p]["token_ids"].get<std::vector<int32_t>>(), g.greedy[p]) << "prompt " << p;
    EXPECT_EQ(results[p]["finish_reason"], "length") << "prompt " << p;
  }
  CheckStatsInvariants(generate_->result["load_stats"], 1, kGreedyTokens,
                       g.total_tokens + static_cast<int64_t>(g.prompts.size()) * (kGreedyTokens - 1));
}

TEST_F(EpCliTest, SingleProcessScoreStatsMatchGoldenRouter) {
  ASSERT_EQ(score_->exit_code, 0) << score_->Describe();
  const Golden& g = GoldenData();
  const json& results = Results(*score_, g.prompts.size());
  ASSERT_EQ(results.size(), g.prompts.size());
  for (size_t p = 0; p < g.prompts.size(); ++p) {
    EXPECT_EQ(results[p]["token_ids"].get<std::vector<int32_t>>(), g.prompts[p]);
    EXPECT_EQ(results[p]["logprobs"].size(), g.prompts[p].size());
  }
  CheckScoreStats(score_->result["load_stats"], 1);
}

// (a) Greedy generation of all five prompts in one N-rank job equals the single-process run and
// the golden continuations.
TEST_P(EpCliTest, GenerateMatchesSingleProcessAndGolden) {
  const int world = GetParam();
  ASSERT_EQ(generate_->exit_code, 0) << generate_->Describe();
  const CliRun run = GenerateGolden(world);
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  const Golden& g = GoldenData();
  const json& ours = Results(run, g.prompts.size());
  const json& single = Results(*generate_, g.prompts.size());
  ASSERT_EQ(ours.size(), g.prompts.size());
  ASSERT_EQ(single.size(), g.prompts.size());
  for (size_t p = 0; p < g.prompts.size(); ++p) {
    const auto ids = ours[p]["token_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(ids, single[p]["token_ids"].get<std::vector<int32_t>>()) << "prompt " << p << ", rank " << p % world;
    EXPECT_EQ(ids, g.greedy[p]) << "prompt " << p << ", rank " << p % world;
    EXPECT_EQ(ours[p]["finish_reason"], "length");
  }
  // Every step carries one row per still-active sequence: the prompts, then 23 decode tokens each.
  CheckStatsInvariants(run.result["load_stats"], world, kGreedyTokens,
                       g.total_tokens + static_cast<int64_t>(g.prompts.size()) * (kGreedyTokens - 1));
}

// (b) Scoring in an N-rank job gives the single-process logprobs, and (2) the load statistics
// equal the counts from the golden router logits.
TEST_P(EpCliTest, ScoreMatchesSingleProcessAndStatsMatchGoldenRouter) {
  const int world = GetParam();
  ASSERT_EQ(score_->exit_code, 0) << score_->Describe();
  const CliRun run = ScoreGolden(world);
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  const Golden& g = GoldenData();
  const json& ours = Results(run, g.prompts.size());
  const json& single = Results(*score_, g.prompts.size());
  ASSERT_EQ(ours.size(), g.prompts.size());
  ASSERT_EQ(single.size(), g.prompts.size());
  double worst = 0;
  for (size_t p = 0; p < g.prompts.size(); ++p) {
    EXPECT_EQ(ours[p]["token_ids"].get<std::vector<int32_t>>(), g.prompts[p]);
    const double err = LogprobRelativeError(ours[p]["logprobs"], single[p]["logprobs"]);
    EXPECT_LE(err, kLogprobTolerance) << "prompt " << p << ", rank " << p % world;
    worst = std::max(worst, err);
  }
  std::cout << world << " ranks: max logprob relative error vs one process " << worst << "\n";
  RecordProperty("max_rel_err_logprobs", std::to_string(worst));
  CheckScoreStats(run.result["load_stats"], world);
}

INSTANTIATE_TEST_SUITE_P(Ranks, EpCliTest, ::testing::Values(1, 2, 3, 4, 8, 16),
                         [](const ::testing::TestParamInfo<int>& info) { return "np" + std::to_string(info.param); });

// One input on four ranks: ranks 1-3 have no sequence but must still take part in every
// collective of every step, or the job hangs.
TEST(EpCliIdleRanksTest, SinglePromptOnFourRanks) {
  const Golden& g = GoldenData();
  const size_t p = 3;  // the 64-token prompt: its rows reach experts on every rank
  const CliRun run = RunCli(4, {"generate", "--model", kGoldenDir, "--token-ids", JoinIds(g.prompts[p]), "--max-tokens",
                                std::to_string(kGreedyTokens), "--ignore-eos", "--json", "--stats"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  ASSERT_TRUE(run.result.is_object() && run.result.contains("token_ids")) << run.out;
  EXPECT_EQ(run.result["token_ids"].get<std::vector<int32_t>>(), g.greedy[p]);
  EXPECT_EQ(run.result["finish_reason"], "length");
  const json& stats = run.result["load_stats"];
  CheckStatsInvariants(stats, 4, kGreedyTokens, static_cast<int64_t>(g.prompts[p].size()) + kGreedyTokens - 1);
  // The idle ranks still computed expert rows for rank 0's tokens.
  for (const json& layer : stats["layers"]) {
    const auto ranks = layer["rank_rows"].get<std::vector<int64_t>>();
    EXPECT_GT(*std::min_element(ranks.begin(), ranks.end()), 0) << layer;
  }
}

// (c) The shipped model, a text prompt, three ranks with uneven expert shares (3, 3, 2).
TEST(EpCliShakespeareTest, RomeoOnThreeRanksMatchesSamples) {
  auto samples = ReadJsonFile(kShakespeareDir + "/samples.json");
  ASSERT_TRUE(samples.ok()) << samples.status();
  const json* sample = nullptr;
  for (const json& s : (*samples)["greedy_samples"]) {
    if (s["prompt"] == "ROMEO:") sample = &s;
  }
  ASSERT_NE(sample, nullptr) << "samples.json has no ROMEO: sample";
  const auto want = (*sample)["greedy_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(want.size(), 48u);
  const CliRun run = RunCli(3, {"generate", "--model", kShakespeareDir, "--prompt", "ROMEO:", "--max-tokens", "48",
                                "--json"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe();
  ASSERT_TRUE(run.result.is_object() && run.result.contains("token_ids")) << run.out;
  EXPECT_EQ(run.result["token_ids"].get<std::vector<int32_t>>(), want);
}

// (d) The other golden checkpoints: window (a sliding window of 8 shorter than the prompts, top-3 of
// 6 experts, GQA 3) on 1, 4 (uneven expert shares 2, 2, 1, 1) and 6 ranks (one expert each); tied
// (tied embeddings, head_dim 24 apart from hidden / heads, top-1 of 4 experts) on 1, 3 (shares 2, 1,
// 1) and 4 ranks; yarn (YaRN RoPE scaling, 4 experts) on 1, 2 and 4 ranks. All prompts in one job
// continue as transformers did.
struct EpGoldenCase {
  const char* name;
  std::vector<int> ranks;  // 0: the single-process engine
};
class EpCliGoldenTest : public ::testing::TestWithParam<EpGoldenCase> {};
INSTANTIATE_TEST_SUITE_P(Checkpoints, EpCliGoldenTest,
                         ::testing::Values(EpGoldenCase{"window", {0, 4, 6}}, EpGoldenCase{"tied", {0, 3, 4}},
                                           EpGoldenCase{"yarn", {0, 2, 4}}),
                         [](const ::testing::TestParamInfo<EpGoldenCase>& i) { return std::string(i.param.name); });

TEST_P(EpCliGoldenTest, GenerateOnSeveralRanksMatchesTransformers) {
  const std::string dir = std::string(MOE_SOURCE_DIR) + "/tests/data/golden/" + GetParam().name;
  auto expected = ReadJsonFile(dir + "/expected.json");
  ASSERT_TRUE(expected.ok()) << expected.status();
  const auto prompts = (*expected)["prompts"].get<std::vector<std::vector<int32_t>>>();
  const auto greedy = (*expected)["greedy"].get<std::vector<std::vector<int32_t>>>();
  ASSERT_GE(prompts.size(), 3u);
  for (int ranks : GetParam().ranks) {
    std::vector<std::string> args = {"generate", "--model", dir, "--max-tokens", std::to_string(greedy[0].size()),
                                     "--ignore-eos", "--json"};
    for (const auto& p : prompts) {
      args.push_back("--token-ids");
      args.push_back(JoinIds(p));
    }
    const CliRun run = RunCli(ranks, args);
    ASSERT_EQ(run.exit_code, 0) << run.Describe();
    const json& results = Results(run, prompts.size());
    ASSERT_EQ(results.size(), prompts.size());
    for (size_t p = 0; p < prompts.size(); ++p) {
      EXPECT_EQ(results[p]["token_ids"].get<std::vector<int32_t>>(), greedy[p]) << ranks << " ranks, prompt " << p;
    }
  }
}

}  // namespace
}  // namespace moe
