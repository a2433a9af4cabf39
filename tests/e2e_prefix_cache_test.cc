// End-to-end prefix caching: a real moe-coordinator and `mpirun -np 2 moe-worker
// --enable-prefix-caching` on the default model. A prompt made of a sample's prompt and the first 40
// tokens of transformers' greedy continuation must continue with the next greedy tokens of that
// continuation (samples.json) every time it is sent, once alone, again, and six times at once,
// while the ranks' statistics show the repeats were served from cached KV blocks.
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/json_util.h"
#include "moe/v1/inference.grpc.pb.h"
#include "tests/e2e_cluster.h"
#include "tests/support/cli_runner.h"
#include "tests/support/engine_fixture.h"

namespace moe::e2e {
namespace {

using nlohmann::json;

constexpr int kPrefixTokens = 40;  // of the greedy continuation, after the sample's prompt
constexpr int kNewTokens = 8;
constexpr int kConcurrent = 6;

struct CacheTotals {
  int64_t queried = 0, hits = 0, cached = 0, used = 0;
};

// The ranks' prefix-cache counters once they account for `queried` prompt tokens and no block is in
// use: the ranks report them with their heartbeats, which may trail the streams' ends a little.
CacheTotals WaitForTotals(moe::v1::Inference::Stub& stub, int64_t queried) {
  CacheTotals t{.used = 1};
  for (int attempt = 0; attempt < 200 && (t.queried < queried || t.used > 0); ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(10));
    moe::v1::Stats s;
    if (!stub.GetStats(&ctx, moe::v1::GetStatsRequest(), &s).ok()) continue;
    t = CacheTotals{};
    for (const auto& rank : s.ranks()) {
      t.queried += rank.prefix_cache_queried_tokens();
      t.hits += rank.prefix_cache_hit_tokens();
      t.cached += rank.kv_blocks_cached();
      t.used += rank.kv_blocks_used();
    }
  }
  return t;
}

TEST(E2ePrefixCache, RepeatedPromptsAreServedFromCachedBlocksWithTransformersTokens) {
  testing_ref::SetMpiTestEnvironment();
  absl::StatusOr<json> samples = ReadJsonFile(testing_ref::kDefaultModelDir + "/samples.json");
  ASSERT_TRUE(samples.ok()) << samples.status();
  const json& sample = (*samples)["greedy_samples"][0];
  std::vector<int32_t> prompt = sample["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<int32_t> greedy = sample["greedy_ids"].get<std::vector<int32_t>>();
  ASSERT_GE(greedy.size(), static_cast<size_t>(kPrefixTokens + kNewTokens));
  prompt.insert(prompt.end(), greedy.begin(), greedy.begin() + kPrefixTokens);
  const std::vector<int32_t> expected(greedy.begin() + kPrefixTokens, greedy.begin() + kPrefixTokens + kNewTokens);

  Cluster cluster(ClusterOptions{2, testing_ref::kDefaultModelDir, {}, {"--enable-prefix-caching"}});
  ASSERT_TRUE(cluster.StartCoordinator(Seconds(30)).ok());
  ASSERT_TRUE(cluster.StartWorkers().ok());
  const absl::Status serving = cluster.WaitServing(Seconds(90));
  ASSERT_TRUE(serving.ok()) << serving;
  auto stub = moe::v1::Inference::NewStub(cluster.channel());

  // One at a time, three times: two of them run on the same rank, so at least one finds the
  // prompt's whole blocks (blocks of 16 positions: 2 of its 42 tokens' 2 whole blocks; the last
  // token is always computed).
  for (int i = 0; i < 3; ++i) {
    const StreamOutcome r = RunGenerate(*stub, GreedyTokenRequest(prompt, kNewTokens), 60);
    ASSERT_TRUE(r.status.ok()) << r.status << cluster.LogTail();
    EXPECT_EQ(r.result.token_ids, expected) << "request " << i;
  }
  const CacheTotals repeats = WaitForTotals(*stub, 3 * static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(repeats.queried, 3 * static_cast<int64_t>(prompt.size()));
  EXPECT_GE(repeats.hits, 32);
  EXPECT_EQ(repeats.hits % 32, 0) << "whole blocks of the shared prompt only";
  EXPECT_GT(repeats.cached, 0);

  // Six at once, sharing the cached blocks while they run.
  std::vector<StreamOutcome> outcomes(kConcurrent);
  std::vector<std::thread> threads;
  for (int i = 0; i < kConcurrent; ++i) {
    threads.emplace_back([&, i] {
      auto s = moe::v1::Inference::NewStub(
          grpc::CreateChannel(cluster.public_address(), grpc::InsecureChannelCredentials()));
      outcomes[i] = RunGenerate(*s, GreedyTokenRequest(prompt, kNewTokens), 60);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kConcurrent; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << outcomes[i].status;
    EXPECT_EQ(outcomes[i].result.token_ids, expected) << "concurrent stream " << i;
  }
  const CacheTotals all = WaitForTotals(*stub, (3 + kConcurrent) * static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(all.queried, (3 + kConcurrent) * static_cast<int64_t>(prompt.size()));
  EXPECT_GE(all.hits - repeats.hits, 2 * 32) << "both ranks hold the prompt's blocks by now";
  EXPECT_EQ(all.used, 0) << "cached blocks are not in use";

  const Cluster::ExitStatus st = cluster.Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0) << cluster.LogTail();
  EXPECT_EQ(st.mpirun, 0) << cluster.LogTail();
}

}  // namespace
}  // namespace moe::e2e
