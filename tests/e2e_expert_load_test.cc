// End-to-end: balancing the expert placement by an earlier run's load (moe-coordinator
// --expert-load). A 2-rank cluster serves the default model's greedy samples; what `moe-client
// stats` then prints is the load file of a second cluster, whose plan must differ from the default
// one (the default model's routing is not even), keep each rank's expert count per layer, leave no
// layer's busiest rank busier by that load than the default plan (computed here from the file and
// the plan the cluster reports), and serve transformers' greedy tokens (samples.json) all the same.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/json_util.h"
#include "coordinator/placement.h"
#include "moe/v1/inference.grpc.pb.h"
#include "tests/e2e_cluster.h"
#include "tests/support/cli_runner.h"
#include "tests/support/engine_fixture.h"
#include "tests/support/random_model.h"

namespace moe::e2e {
namespace {

using nlohmann::json;

struct Sample {
  std::vector<int32_t> prompt, greedy;
};

std::vector<Sample> Samples() {
  const json samples = ValueOrThrow(ReadJsonFile(testing_ref::kDefaultModelDir + "/samples.json"));
  std::vector<Sample> out;
  for (const json& s : samples["greedy_samples"]) {
    out.push_back({s["prompt_ids"].get<std::vector<int32_t>>(), s["greedy_ids"].get<std::vector<int32_t>>()});
  }
  return out;
}

// Every sample's greedy continuation through the cluster equals transformers'.
void ExpectTransformersTokens(Cluster& cluster, const std::vector<Sample>& samples) {
  auto stub = moe::v1::Inference::NewStub(cluster.channel());
  for (size_t i = 0; i < samples.size(); ++i) {
    const Sample& s = samples[i];
    const StreamOutcome got = RunGenerate(*stub, GreedyTokenRequest(s.prompt, static_cast<uint32_t>(s.greedy.size())), 60);
    ASSERT_TRUE(got.status.ok()) << got.status;
    EXPECT_EQ(got.result.token_ids, s.greedy) << "sample " << i;
  }
}

moe::v1::ClusterInfo Info(Cluster& cluster) {
  auto stub = moe::v1::Inference::NewStub(cluster.channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(5));
  moe::v1::ClusterInfo info;
  EXPECT_TRUE(stub->GetClusterInfo(&ctx, moe::v1::GetClusterInfoRequest(), &info).ok());
  return info;
}

// The busiest rank's load in `layer` (an expert's load split over its replicas), from a plan's JSON.
double BusiestRank(const json& plan, size_t layer, const std::vector<int64_t>& load) {
  std::vector<double> ranks(plan["world_size"].get<size_t>(), 0.0);
  const json& experts = plan["replicas"][layer];
  for (size_t e = 0; e < experts.size(); ++e) {
    for (const json& r : experts[e]) ranks[r.get<size_t>()] += static_cast<double>(load[e]) / static_cast<double>(experts[e].size());
  }
  return *std::max_element(ranks.begin(), ranks.end());
}

TEST(E2eExpertLoad, APlanBalancedByAnEarlierRunsLoadServesTheSameTokens) {
  testing_ref::SetMpiTestEnvironment();
  const std::vector<Sample> samples = Samples();
  ASSERT_FALSE(samples.empty());
  const std::string stats_file = testing_ref::MakeTempDir("e2e_expert_load_") + "/stats.json";
  json even_plan;
  {
    Cluster first(ClusterOptions{2, testing_ref::kDefaultModelDir, {}, {}});
    const absl::Status started = first.Start(Seconds(90));
    ASSERT_TRUE(started.ok()) << started << first.LogTail();
    ExpectTransformersTokens(first, samples);
    even_plan = json::parse(Info(first).placement_json());
    const testing_ref::CliRun stats = testing_ref::RunProgram(
        {std::string(MOE_BINARY_DIR) + "/clients/moe-client", "--server", first.public_address(), "stats"});
    ASSERT_EQ(stats.exit_code, 0) << stats.Describe();
    std::ofstream(stats_file) << stats.out;
    EXPECT_EQ(first.Stop(Seconds(30)).coordinator, 0);
  }
  const json stats = json::parse(std::ifstream(stats_file));
  ASSERT_TRUE(stats.contains("layers")) << stats.dump();
  const size_t layers = stats["layers"].size();
  ASSERT_EQ(layers, even_plan["num_layers"].get<size_t>());

  Cluster second(ClusterOptions{2, testing_ref::kDefaultModelDir, {"--expert-load", stats_file}, {}});
  const absl::Status started = second.Start(Seconds(90));
  ASSERT_TRUE(started.ok()) << started << second.LogTail();
  const json plan = json::parse(Info(second).placement_json());
  EXPECT_NE(plan, even_plan) << "the load file changed nothing";
  const PlacementPlan got = ValueOrThrow(PlacementPlan::FromJson(plan)), even = ValueOrThrow(PlacementPlan::FromJson(even_plan));
  for (size_t l = 0; l < layers; ++l) {
    std::vector<int64_t> load;  // moe-client prints int64 counts as strings (proto3 JSON)
    for (const json& x : stats["layers"][l]["expert_tokens"]) load.push_back(std::stoll(x.get<std::string>()));
    EXPECT_LE(BusiestRank(plan, l, load), BusiestRank(even_plan, l, load)) << "layer " << l;
    for (int r = 0; r < 2; ++r) {
      EXPECT_EQ(got.experts_on_rank(static_cast<int64_t>(l), r).size(), even.experts_on_rank(static_cast<int64_t>(l), r).size());
    }
  }
  const std::string log = second.LogTail(1 << 20);
  const size_t said = log.find("moe-coordinator: experts placed by the load in " + stats_file);
  ASSERT_NE(said, std::string::npos) << log;
  std::fprintf(stderr, "[ info ] %s\n", log.substr(said, log.find('\n', said) - said).c_str());
  ExpectTransformersTokens(second, samples);
  const Cluster::ExitStatus st = second.Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0);
  EXPECT_EQ(st.mpirun, 0);
}

// A load file that does not fit the model stops the coordinator at start, naming the file and why.
TEST(E2eExpertLoad, ALoadFileOfAnotherModelIsRefusedAtStart) {
  testing_ref::SetMpiTestEnvironment();
  const std::string dir = testing_ref::MakeTempDir("e2e_expert_load_bad_");
  std::ofstream(dir + "/stats.json") << R"({"layers": [{"layer": 0, "expert_tokens": ["5", "3"]}]})";
  Cluster cluster(ClusterOptions{2, testing_ref::kDefaultModelDir, {"--expert-load", dir + "/stats.json"}, {}});
  EXPECT_FALSE(cluster.StartCoordinator(Seconds(30)).ok());
  EXPECT_NE(cluster.LogTail().find("--expert-load " + dir + "/stats.json: has the load of 1 layers; the model has "),
            std::string::npos)
      << cluster.LogTail();
}

}  // namespace
}  // namespace moe::e2e
