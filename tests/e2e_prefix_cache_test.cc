// End-to-end KV cache management on the default model, with a real moe-coordinator and mpirun'd
// moe-workers.
//
// Prefix caching: `mpirun -np 2 moe-worker --enable-prefix-caching`. Prompts are a sample's prompt
// followed by the start of transformers' greedy continuation (samples.json), so each must continue
// with the next tokens of that continuation: a first turn sent three times, then the
// conversation's next turn (the first turn's prompt and answer, and more), alone and six times at
// once. Every rank caches, so the coordinator places by prefix: everything goes to the rank that
// served the first turn, and the ranks' counters show exactly which prompt tokens came from
// cached blocks.
//
// Preemption: one rank whose KV cache holds 8 blocks runs 9 streams that need 4 blocks each at
// worst. Admitted on demand, they outgrow the cache, the newest are preempted and computed again,
// and every stream still gets transformers' greedy tokens.
//
// Priorities (moe-coordinator --scheduling-policy priority): with one slot on the rank, a request
// of a lower priority value that arrives last among those waiting is served first.
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

constexpr int kNewTokens = 8;
constexpr int kConcurrent = 6;
constexpr int kBlock = 16;  // moe-worker's default KV block size

struct RankCache {
  int64_t queried = 0, hits = 0, used = 0;
};

// Per rank, once they account for `queried` prompt tokens in all and no block is in use: the ranks
// report their counters with their heartbeats, which may trail the streams' ends a little.
std::vector<RankCache> WaitForCounters(moe::v1::Inference::Stub& stub, int64_t queried) {
  std::vector<RankCache> ranks;
  for (int attempt = 0; attempt < 200; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(10));
    moe::v1::Stats s;
    if (!stub.GetStats(&ctx, moe::v1::GetStatsRequest(), &s).ok()) continue;
    ranks.clear();
    int64_t total = 0, used = 0;
    for (const auto& r : s.ranks()) {
      ranks.push_back({r.prefix_cache_queried_tokens(), r.prefix_cache_hit_tokens(), r.kv_blocks_used()});
      total += r.prefix_cache_queried_tokens();
      used += r.kv_blocks_used();
    }
    if (total >= queried && used == 0) break;
  }
  return ranks;
}

TEST(E2ePrefixCache, ATurnAndItsContinuationAreServedFromOneRanksCacheWithTransformersTokens) {
  testing_ref::SetMpiTestEnvironment();
  absl::StatusOr<json> samples = ReadJsonFile(testing_ref::kDefaultModelDir + "/samples.json");
  ASSERT_TRUE(samples.ok()) << samples.status();
  const json& sample = (*samples)["greedy_samples"][0];
  const std::vector<int32_t> start = sample["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<int32_t> greedy = sample["greedy_ids"].get<std::vector<int32_t>>();
  ASSERT_EQ(start.size(), 2u);
  ASSERT_GE(greedy.size(), 48u);
  // The sample's prompt and the first n greedy tokens, and the greedy tokens that follow them.
  const auto prompt = [&](int n) {
    std::vector<int32_t> p = start;
    p.insert(p.end(), greedy.begin(), greedy.begin() + n);
    return p;
  };
  const auto next = [&](int n) { return std::vector<int32_t>(greedy.begin() + n, greedy.begin() + n + kNewTokens); };
  const std::vector<int32_t> turn1 = prompt(24), turn2 = prompt(40);  // 26 and 42 tokens

  Cluster cluster(ClusterOptions{2, testing_ref::kDefaultModelDir, {}, {"--enable-prefix-caching"}});
  const absl::Status started = cluster.Start(Seconds(90));
  ASSERT_TRUE(started.ok()) << started;
  auto stub = moe::v1::Inference::NewStub(cluster.channel());

  // The first turn, three times one after another: the first computes everything (rank 0, both
  // idle); the others find its whole block of 16 (the last prompt token is always computed).
  for (int i = 0; i < 3; ++i) {
    const StreamOutcome r = RunGenerate(*stub, GreedyTokenRequest(turn1, kNewTokens), 60);
    ASSERT_TRUE(r.status.ok()) << r.status << cluster.LogTail();
    EXPECT_EQ(r.result.token_ids, next(24)) << "turn 1, request " << i;
  }
  // The next turn starts with the first turn's prompt and answer: 32 of its tokens are in rank 0's
  // blocks (the first turn's 26 + 7 fed-back tokens fill two blocks).
  const StreamOutcome r2 = RunGenerate(*stub, GreedyTokenRequest(turn2, kNewTokens), 60);
  ASSERT_TRUE(r2.status.ok()) << r2.status;
  EXPECT_EQ(r2.result.token_ids, next(40));
  std::vector<RankCache> ranks = WaitForCounters(*stub, 3 * 26 + 42);
  ASSERT_EQ(ranks.size(), 2u);
  EXPECT_EQ(ranks[0].queried, 3 * 26 + 42);
  EXPECT_EQ(ranks[0].hits, 2 * kBlock + 2 * kBlock);
  EXPECT_EQ(ranks[1].queried, 0) << "rank 1 got a prompt rank 0 had cached";

  // Six at once, sharing rank 0's cached blocks while they run.
  const std::vector<StreamOutcome> outcomes = RunGenerateConcurrently(
      cluster.public_address(),
      std::vector<moe::v1::GenerateRequest>(kConcurrent, GreedyTokenRequest(turn2, kNewTokens)), 60);
  for (int i = 0; i < kConcurrent; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << outcomes[i].status;
    EXPECT_EQ(outcomes[i].result.token_ids, next(40)) << "concurrent stream " << i;
  }
  ranks = WaitForCounters(*stub, 3 * 26 + (1 + kConcurrent) * 42);
  ASSERT_EQ(ranks.size(), 2u);
  EXPECT_EQ(ranks[0].queried, 3 * 26 + (1 + kConcurrent) * 42);
  EXPECT_EQ(ranks[0].hits, 4 * kBlock + kConcurrent * 2 * kBlock);
  EXPECT_EQ(ranks[1].queried, 0);
  EXPECT_EQ(ranks[0].used + ranks[1].used, 0) << "cached blocks are not in use";
  // The same counts on the Prometheus endpoint.
  absl::StatusOr<std::string> metrics = HttpGet(cluster.ports().metrics_port, "/metrics", Seconds(10));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(MetricSum(*metrics, "moe_prefix_cache_queried_tokens"), ranks[0].queried);
  EXPECT_EQ(MetricSum(*metrics, "moe_prefix_cache_hit_tokens"), ranks[0].hits);
  // And under vLLM's names (counters that follow the ranks' totals).
  EXPECT_EQ(MetricSum(*metrics, "vllm:prefix_cache_queries_total"), ranks[0].queried);
  EXPECT_EQ(MetricSum(*metrics, "vllm:prefix_cache_hits_total"), ranks[0].hits);

  const Cluster::ExitStatus st = cluster.Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0) << cluster.LogTail();
  EXPECT_EQ(st.mpirun, 0) << cluster.LogTail();
}

// vLLM's cache_salt: one rank with prefix caching serves the same prompt under two salts and none;
// a prompt finds cached blocks only of its own salt (or of none, unsalted), and every answer is
// transformers' greedy continuation all the same.
TEST(E2ePrefixCache, CacheSaltsShareCachedBlocksOnlyWithinASalt) {
  testing_ref::SetMpiTestEnvironment();
  absl::StatusOr<json> samples = ReadJsonFile(testing_ref::kDefaultModelDir + "/samples.json");
  ASSERT_TRUE(samples.ok()) << samples.status();
  const json& sample = (*samples)["greedy_samples"][0];
  std::vector<int32_t> prompt = sample["prompt_ids"].get<std::vector<int32_t>>();
  const std::vector<int32_t> greedy = sample["greedy_ids"].get<std::vector<int32_t>>();
  prompt.insert(prompt.end(), greedy.begin(), greedy.begin() + 24);  // 26 tokens: one whole block to share
  const std::vector<int32_t> want(greedy.begin() + 24, greedy.begin() + 24 + kNewTokens);

  Cluster cluster(ClusterOptions{1, testing_ref::kDefaultModelDir, {}, {"--enable-prefix-caching"}});
  const absl::Status started = cluster.Start(Seconds(90));
  ASSERT_TRUE(started.ok()) << started;
  auto stub = moe::v1::Inference::NewStub(cluster.channel());
  // (salt, the cached prompt tokens it finds): the first of each salt computes everything.
  const std::vector<std::pair<std::string, int64_t>> runs = {
      {"a", 0}, {"a", kBlock}, {"b", 0}, {"", 0}, {"", kBlock}, {"b", kBlock}, {"a", kBlock}};
  int64_t queried = 0, hits = 0;
  for (const auto& [salt, found] : runs) {
    moe::v1::GenerateRequest request = GreedyTokenRequest(prompt, kNewTokens);
    request.set_cache_salt(salt);
    const StreamOutcome r = RunGenerate(*stub, request, 60);
    ASSERT_TRUE(r.status.ok()) << r.status << cluster.LogTail();
    EXPECT_EQ(r.result.token_ids, want) << "salt '" << salt << "'";
    queried += static_cast<int64_t>(prompt.size());
    hits += found;
    const std::vector<RankCache> ranks = WaitForCounters(*stub, queried);
    ASSERT_EQ(ranks.size(), 1u);
    EXPECT_EQ(ranks[0].hits, hits) << "after a prompt with salt '" << salt << "'";
  }
  const Cluster::ExitStatus st = cluster.Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0) << cluster.LogTail();
  EXPECT_EQ(st.mpirun, 0) << cluster.LogTail();
}

TEST(E2eKvPreemption, StreamsThatOutgrowTheCacheArePreemptedAndStillGetTransformersTokens) {
  testing_ref::SetMpiTestEnvironment();
  absl::StatusOr<json> samples = ReadJsonFile(testing_ref::kDefaultModelDir + "/samples.json");
  ASSERT_TRUE(samples.ok()) << samples.status();
  const json& greedy_samples = (*samples)["greedy_samples"];
  ASSERT_EQ(greedy_samples.size(), 3u);
  constexpr int kStreams = 9;
  constexpr uint32_t kTokens = 48;  // prompts of 2, 4 and 9 tokens: 4 blocks of 16 each at worst

  Cluster cluster(ClusterOptions{1, testing_ref::kDefaultModelDir, {}, {"--kv-tokens", "128"}});
  const absl::Status started = cluster.Start(Seconds(90));
  ASSERT_TRUE(started.ok()) << started;

  std::vector<moe::v1::GenerateRequest> requests;
  for (int i = 0; i < kStreams; ++i) {
    requests.push_back(GreedyTokenRequest(greedy_samples[i % 3]["prompt_ids"].get<std::vector<int32_t>>(), kTokens));
  }
  const std::vector<StreamOutcome> outcomes = RunGenerateConcurrently(cluster.public_address(), requests, 120);
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(outcomes[i].status.ok()) << outcomes[i].status << cluster.LogTail();
    EXPECT_EQ(outcomes[i].result.token_ids, greedy_samples[i % 3]["greedy_ids"].get<std::vector<int32_t>>())
        << "stream " << i;
  }

  // The rank reports its preemptions with its heartbeats, which may trail the streams' ends.
  auto stub = moe::v1::Inference::NewStub(cluster.channel());
  uint64_t preemptions = 0;
  for (int attempt = 0; attempt < 100 && preemptions == 0; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(10));
    moe::v1::Stats s;
    ASSERT_TRUE(stub->GetStats(&ctx, moe::v1::GetStatsRequest(), &s).ok());
    ASSERT_EQ(s.ranks_size(), 1);
    EXPECT_EQ(s.ranks(0).kv_blocks_total(), 8);
    preemptions = s.ranks(0).preemptions();
  }
  EXPECT_GT(preemptions, 0u) << "9 streams of up to 4 blocks each in 8 blocks";
  absl::StatusOr<std::string> metrics = HttpGet(cluster.ports().metrics_port, "/metrics", Seconds(10));
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(MetricSum(*metrics, "moe_num_preemptions"), static_cast<double>(preemptions));
  EXPECT_EQ(MetricSum(*metrics, "vllm:num_preemptions_total"), static_cast<double>(preemptions));

  const Cluster::ExitStatus st = cluster.Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0) << cluster.LogTail();
  EXPECT_EQ(st.mpirun, 0) << cluster.LogTail();
}

TEST(E2ePriority, AWaitingRequestOfALowerValueIsServedFirst) {
  testing_ref::SetMpiTestEnvironment();
  Cluster cluster(ClusterOptions{
      1, testing_ref::kDefaultModelDir, {"--scheduling-policy", "priority", "--max-running-per-rank", "1"}, {}});
  const absl::Status started = cluster.Start(Seconds(90));
  ASSERT_TRUE(started.ok()) << started;
  auto stub = moe::v1::Inference::NewStub(cluster.channel());
  // The coordinator's queue, once it has `waiting` sequences and `running` on the rank.
  auto wait_for = [&](int64_t waiting, int64_t running) {
    for (int attempt = 0; attempt < 400; ++attempt) {
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline(10));
      moe::v1::Stats s;
      if (stub->GetStats(&ctx, moe::v1::GetStatsRequest(), &s).ok() && s.requests_waiting() == waiting &&
          s.requests_running() == running) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  using Clock = std::chrono::steady_clock;
  struct Run {
    StreamOutcome outcome;
    Clock::time_point done;
  };
  std::vector<Run> runs(4);
  std::vector<std::thread> threads;
  const auto start = [&](int i, uint32_t max_tokens, int32_t priority) {
    threads.emplace_back([&, i, max_tokens, priority] {
      auto s = moe::v1::Inference::NewStub(
          grpc::CreateChannel(cluster.public_address(), grpc::InsecureChannelCredentials()));
      moe::v1::GenerateRequest req = GreedyTokenRequest({1, 2, 3}, max_tokens);
      req.set_priority(priority);
      runs[i].outcome = RunGenerate(*s, req, 120);
      runs[i].done = Clock::now();
    });
  };
  start(0, 3000, 0);  // holds the rank's one slot for a while
  ASSERT_TRUE(wait_for(0, 1));
  start(1, 4, 0);
  ASSERT_TRUE(wait_for(1, 1));
  start(2, 4, 0);
  ASSERT_TRUE(wait_for(2, 1));
  start(3, 4, -1);
  ASSERT_TRUE(wait_for(3, 1));
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(runs[i].outcome.status.ok()) << i << ": " << runs[i].outcome.status;
  EXPECT_LT(runs[3].done, runs[1].done) << "priority -1 before the earlier 0s";
  EXPECT_LT(runs[3].done, runs[2].done);
  EXPECT_LT(runs[1].done, runs[2].done) << "equal priorities in arrival order";
  // First come, first served refuses a priority.
  const StreamOutcome refused = [&] {
    Cluster fcfs(ClusterOptions{1, testing_ref::kDefaultModelDir, {}, {}});
    EXPECT_TRUE(fcfs.StartCoordinator(Seconds(30)).ok());
    auto s = moe::v1::Inference::NewStub(fcfs.channel());
    moe::v1::GenerateRequest req = GreedyTokenRequest({1, 2, 3}, 4);
    req.set_priority(1);
    return RunGenerate(*s, req, 30);
  }();
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kInvalidArgument) << refused.status;
  EXPECT_NE(refused.status.message().find("priority"), std::string::npos) << refused.status;

  const Cluster::ExitStatus st = cluster.Stop(Seconds(30));
  EXPECT_EQ(st.coordinator, 0) << cluster.LogTail();
  EXPECT_EQ(st.mpirun, 0) << cluster.LogTail();
}

}  // namespace
}  // namespace moe::e2e
