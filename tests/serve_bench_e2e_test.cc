// moe-serve-bench against a real cluster on loopback (moe-coordinator + `mpirun -np 2 moe-worker
// --enable-prefix-caching`, the default model): the load it reports is the load the coordinator
// counted (requests, prompt and generated tokens from GetStats before and after), every request's
// timeline is consistent, the summary's latencies are those of its own records (recomputed here), a
// shared prompt prefix is found in the ranks' prefix caches, an overload comes back as counted
// RESOURCE_EXHAUSTED failures with the cluster still serving, and bad arguments or an unreachable
// server give an exit status and a message that names the problem.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "moe/v1/inference.grpc.pb.h"
#include "tests/e2e_cluster.h"
#include "tests/support/cli_runner.h"
#include "tests/support/engine_fixture.h"

namespace moe::e2e {
namespace {

using nlohmann::json;

const std::string kBench = std::string(MOE_BINARY_DIR) + "/benchmarks/serving/moe-serve-bench";
constexpr int kRunningPerRank = 4;
constexpr int kMaxWaiting = 8;

json ReadJson(const std::string& path) {
  std::ifstream f(path);
  return json::parse(f, nullptr, /*allow_exceptions=*/false);
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()) + ".json")).string();
}

class ServeBenchE2e : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    testing_ref::SetMpiTestEnvironment();
    cluster_ = std::make_unique<Cluster>(ClusterOptions{
        2, testing_ref::kDefaultModelDir,
        {"--max-running-per-rank", std::to_string(kRunningPerRank), "--max-waiting", std::to_string(kMaxWaiting)},
        {"--enable-prefix-caching"}});
    setup_ = cluster_->Start(Seconds(90));
  }
  static void TearDownTestSuite() {
    if (cluster_) cluster_->Stop(Seconds(10));
    cluster_.reset();
  }
  void SetUp() override { ASSERT_TRUE(setup_.ok()) << setup_; }
  void TearDown() override {
    if (HasFailure() && cluster_) std::fprintf(stderr, "%s", cluster_->LogTail().c_str());
  }

  static moe::v1::Stats Stats() {
    auto stub = moe::v1::Inference::NewStub(cluster_->channel());
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(10));
    moe::v1::Stats s;
    EXPECT_TRUE(stub->GetStats(&ctx, moe::v1::GetStatsRequest(), &s).ok());
    return s;
  }

  static testing_ref::CliRun Bench(std::vector<std::string> args) {
    args.insert(args.begin(), {kBench, "--server", cluster_->public_address()});
    return testing_ref::RunProgram(args);
  }

  // moe-serve-bench with `args` and --out to a temporary file named after `name`: the run, and the
  // JSON it wrote (discarded when it wrote none).
  struct BenchRun {
    testing_ref::CliRun run;
    json result;
  };
  static BenchRun BenchWithJson(const std::string& name, std::vector<std::string> args) {
    const std::string out = TempPath(name);
    args.insert(args.end(), {"--out", out});
    BenchRun b{Bench(std::move(args)), ReadJson(out)};
    std::filesystem::remove(out);
    return b;
  }

  // --regex and --grammar: every request is constrained; a constraint that never ends keeps each to
  // --output-len. One the server refuses fails the requests, counted with the server's reason.
  static void CheckConstrainedRunsToLength(const std::string& flag, const std::string& endless,
                                           const std::string& refused) {
    const std::string name = flag.substr(2);  // "regex", "grammar": also its field in args and in the error
    const auto [run, r] = BenchWithJson("serve_bench_" + name,
                                        {"--requests", "4", "--input-len", "6", "--output-len", "10", flag, endless});
    ASSERT_EQ(run.exit_code, 0) << run.Describe() << run.out;
    ASSERT_TRUE(r.is_object());
    EXPECT_EQ(r["args"][name], endless);
    ASSERT_EQ(r["records"].size(), 4u);
    for (const json& rec : r["records"]) {
      EXPECT_EQ(rec["output_tokens"], 10);
      EXPECT_EQ(rec["finish_reason"], "length");
    }
    const testing_ref::CliRun bad = Bench({"--requests", "1", flag, refused});
    EXPECT_EQ(bad.exit_code, 1) << bad.Describe();
    EXPECT_NE(bad.out.find("sampling.response_format." + name), std::string::npos) << bad.out;
  }

  static inline std::unique_ptr<Cluster> cluster_;
  static inline absl::Status setup_;
};

// The median of `v` the plain way (the middle one, or the mean of the middle two).
double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

TEST_F(ServeBenchE2e, ReportsTheLoadTheCoordinatorCounted) {
  constexpr int kRequests = 24, kWarmup = 2, kInput = 12, kOutput = 6, kConcurrency = 8;
  const moe::v1::Stats before = Stats();
  const auto [run, r] = BenchWithJson(
      "serve_bench", {"--requests", std::to_string(kRequests), "--rate", "100", "--max-concurrency",
                      std::to_string(kConcurrency), "--input-len", std::to_string(kInput), "--output-len",
                      std::to_string(kOutput), "--seed", "5", "--warmup", std::to_string(kWarmup), "--connections",
                      "2", "--commit", "test"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe() << run.out;
  const moe::v1::Stats after = Stats();
  ASSERT_TRUE(r.is_object());

  // What the coordinator counted is what the benchmark says it sent and received.
  constexpr int kAll = kRequests + kWarmup;
  EXPECT_EQ(after.requests_finished() - before.requests_finished(), static_cast<uint64_t>(kAll));
  EXPECT_EQ(after.prompt_tokens_total() - before.prompt_tokens_total(), static_cast<uint64_t>(kAll * kInput));
  EXPECT_EQ(after.generation_tokens_total() - before.generation_tokens_total(), static_cast<uint64_t>(kAll * kOutput));
  EXPECT_EQ(r["server_stats_after"]["generation_tokens_total"].get<std::string>(),
            std::to_string(after.generation_tokens_total()));  // uint64 in proto3 JSON: a string

  const json& s = r["summary"];
  EXPECT_EQ(s["completed"], kRequests);
  EXPECT_EQ(s["failed"], 0);
  EXPECT_EQ(s["total_input_tokens"], kRequests * kInput);
  EXPECT_EQ(s["total_output_tokens"], kRequests * kOutput);
  EXPECT_GE(s["max_in_flight"].get<int>(), 1);
  EXPECT_LE(s["max_in_flight"].get<int>(), kConcurrency);
  EXPECT_EQ(r["warmup_summary"]["completed"], kWarmup);
  EXPECT_EQ(r["cluster"]["world_size"], 2);
  EXPECT_EQ(r["model"]["vocab_size"], "2048");  // int64 in proto3 JSON: a string
  EXPECT_EQ(r["commit"], "test");

  // Every request's timeline, and the summary recomputed from the records.
  ASSERT_EQ(r["records"].size(), static_cast<size_t>(kRequests));
  std::vector<double> ttft, e2el;
  double first_sent = 1e300, last_end = 0;
  for (const json& rec : r["records"]) {
    EXPECT_EQ(rec["finish_reason"], "length") << rec.dump();
    EXPECT_EQ(rec["prompt_tokens"], kInput);
    EXPECT_EQ(rec["output_tokens"], kOutput);
    int64_t tokens = 0;
    for (const json& t : rec["message_tokens"]) tokens += t.get<int64_t>();
    EXPECT_EQ(tokens, kOutput);
    const std::vector<double> msgs = rec["token_message_ms"].get<std::vector<double>>();
    ASSERT_FALSE(msgs.empty());
    EXPECT_TRUE(std::is_sorted(msgs.begin(), msgs.end()));
    const double sent = rec["sent_ms"].get<double>(), end = rec["end_ms"].get<double>();
    EXPECT_LE(sent, msgs.front());
    EXPECT_LE(msgs.back(), end);
    ttft.push_back(msgs.front() - sent);
    e2el.push_back(end - sent);
    first_sent = std::min(first_sent, sent);
    last_end = std::max(last_end, end);
  }
  EXPECT_NEAR(s["ttft_ms"]["median"].get<double>(), Median(ttft), 1e-6);
  EXPECT_NEAR(s["e2el_ms"]["median"].get<double>(), Median(e2el), 1e-6);
  EXPECT_NEAR(s["duration_s"].get<double>() * 1e3, last_end - first_sent, 1e-6);
  EXPECT_NEAR(s["output_throughput"].get<double>(), kRequests * kOutput / s["duration_s"].get<double>(), 1e-6);
  EXPECT_NE(run.out.find("completed 24, failed 0"), std::string::npos) << run.out;
}

TEST_F(ServeBenchE2e, VariedLengthsAreWhatEachRequestSentAndGot) {
  // --range-ratio 0.5: prompts of 6-18 tokens, 4-12 generated; a Poisson schedule, no limit.
  constexpr int kRequests = 16;
  const moe::v1::Stats before = Stats();
  const auto [run, r] =
      BenchWithJson("serve_bench_ranges", {"--requests", std::to_string(kRequests), "--rate", "200", "--input-len",
                                           "12", "--output-len", "8", "--range-ratio", "0.5", "--seed", "3"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe() << run.out;
  const moe::v1::Stats after = Stats();
  ASSERT_TRUE(r.is_object());
  int64_t prompt_tokens = 0, output_tokens = 0;
  std::set<int64_t> prompt_lengths, output_lengths;
  for (const json& rec : r["records"]) {
    const int64_t p = rec["prompt_tokens"].get<int64_t>(), o = rec["output_tokens"].get<int64_t>();
    EXPECT_GE(p, 6);
    EXPECT_LE(p, 18);
    EXPECT_GE(o, 4);
    EXPECT_LE(o, 12);
    EXPECT_EQ(rec["finish_reason"], "length");
    prompt_tokens += p;
    output_tokens += o;
    prompt_lengths.insert(p);
    output_lengths.insert(o);
  }
  EXPECT_GT(prompt_lengths.size(), 1u);
  EXPECT_GT(output_lengths.size(), 1u);
  EXPECT_EQ(r["summary"]["total_input_tokens"], prompt_tokens);
  EXPECT_EQ(r["summary"]["total_output_tokens"], output_tokens);
  EXPECT_EQ(after.prompt_tokens_total() - before.prompt_tokens_total(), static_cast<uint64_t>(prompt_tokens));
  EXPECT_EQ(after.generation_tokens_total() - before.generation_tokens_total(), static_cast<uint64_t>(output_tokens));
}

TEST_F(ServeBenchE2e, RegexRequestsRunToTheirLength) { CheckConstrainedRunsToLength("--regex", "[a-z ,.]+", "(?=a)"); }
TEST_F(ServeBenchE2e, GrammarRequestsRunToTheirLength) {
  CheckConstrainedRunsToLength("--grammar", "root ::= [a-z ,.]+", "root ::= word");
}

// --max-tokens above --output-len: every request asks for that many tokens and the client ends its
// stream once it has its output length; the cluster frees the sequences (no KV block left in use).
TEST_F(ServeBenchE2e, ClientStopsEndRequestsAskingForMoreTokens) {
  const auto [run, r] = BenchWithJson(
      "serve_bench_max_tokens", {"--requests", "4", "--input-len", "6", "--output-len", "10", "--max-tokens", "400"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe() << run.out;
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["args"]["max_tokens"], 400);
  EXPECT_EQ(r["summary"]["completed"], 4);
  ASSERT_EQ(r["records"].size(), 4u);
  for (const json& rec : r["records"]) {
    EXPECT_GE(rec["output_tokens"].get<int>(), 10);
    EXPECT_LT(rec["output_tokens"].get<int>(), 400);
    EXPECT_EQ(rec["finish_reason"], "client_stop");
  }
  int64_t used = -1;
  for (int attempt = 0; attempt < 100 && used != 0; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    used = 0;
    const moe::v1::Stats stats = Stats();
    for (const auto& rank : stats.ranks()) used += rank.kv_blocks_used();
  }
  EXPECT_EQ(used, 0) << "the cancelled sequences' KV blocks are freed";
  // A max_tokens the context cannot take is refused before anything is sent.
  const testing_ref::CliRun bad = Bench({"--requests", "1", "--input-len", "6", "--max-tokens", "5000"});
  EXPECT_EQ(bad.exit_code, 2) << bad.Describe();
  EXPECT_NE(bad.err.find("--max-tokens"), std::string::npos) << bad.err;
}

TEST_F(ServeBenchE2e, ASharedPrefixIsServedFromTheRanksPrefixCaches) {
  // One at a time, every prompt the same 48 tokens (three whole blocks of 16) and then 8 of its own:
  // after the first request on each rank, the other requests find those three blocks cached.
  constexpr int kRequests = 8, kShared = 48, kOwn = 8;
  auto totals = [](const moe::v1::Stats& s) {
    std::pair<int64_t, int64_t> t{0, 0};  // queried, hits
    for (const auto& r : s.ranks()) {
      t.first += r.prefix_cache_queried_tokens();
      t.second += r.prefix_cache_hit_tokens();
    }
    return t;
  };
  const auto before = totals(Stats());
  const auto [run, r] = BenchWithJson(
      "serve_bench_prefix", {"--requests", std::to_string(kRequests), "--max-concurrency", "1", "--input-len",
                             std::to_string(kOwn), "--output-len", "4", "--shared-prefix-len", std::to_string(kShared),
                             "--seed", "9"});
  ASSERT_EQ(run.exit_code, 0) << run.Describe() << run.out;
  ASSERT_TRUE(r.is_object());
  EXPECT_EQ(r["args"]["shared_prefix_len"], kShared);
  for (const json& rec : r["records"]) EXPECT_EQ(rec["prompt_tokens"], kShared + kOwn);
  std::pair<int64_t, int64_t> after = before;
  for (int attempt = 0; attempt < 100 && after.first - before.first < kRequests * (kShared + kOwn); ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the ranks report with heartbeats
    after = totals(Stats());
  }
  EXPECT_EQ(after.first - before.first, kRequests * (kShared + kOwn));
  const int64_t hits = after.second - before.second;
  EXPECT_GE(hits, (kRequests - 2) * kShared) << "at most one miss per rank";
  EXPECT_EQ(hits % kShared, 0) << "the shared blocks only";
  // The bench reports the same counts, read once the ranks had settled.
  EXPECT_EQ(r["summary"]["prefix_cache"]["queried_tokens"], kRequests * (kShared + kOwn));
  EXPECT_EQ(r["summary"]["prefix_cache"]["hit_tokens"], hits);
  EXPECT_NE(run.out.find("prefix cache: "), std::string::npos) << run.out;
}

TEST_F(ServeBenchE2e, OverloadIsCountedAsRejectedRequestsAndTheClusterKeepsServing) {
  // 40 requests at once against 2 x 4 running + 8 waiting: the coordinator refuses the excess.
  constexpr int kRequests = 40;
  const auto [run, r] = BenchWithJson("serve_bench_overload", {"--requests", std::to_string(kRequests), "--input-len",
                                                                "8", "--output-len", "64", "--no-records"});
  EXPECT_EQ(run.exit_code, 1) << run.Describe() << run.out;
  ASSERT_TRUE(r.is_object()) << run.Describe();
  const json& s = r["summary"];
  EXPECT_GT(s["failed"].get<int>(), 0);
  EXPECT_GE(s["completed"].get<int>(), 2 * kRunningPerRank);
  EXPECT_EQ(s["completed"].get<int>() + s["failed"].get<int>(), kRequests);
  EXPECT_EQ(s["total_output_tokens"].get<int>(), s["completed"].get<int>() * 64);
  for (const auto& [error, n] : s["errors"].items()) {
    EXPECT_EQ(error.rfind("RESOURCE_EXHAUSTED", 0), 0u) << error;
  }
  EXPECT_FALSE(r.contains("records"));
  EXPECT_NE(run.out.find("error x"), std::string::npos) << run.out;

  const testing_ref::CliRun again = Bench({"--requests", "2", "--input-len", "4", "--output-len", "3"});
  EXPECT_EQ(again.exit_code, 0) << again.Describe() << again.out;
}

TEST_F(ServeBenchE2e, RequestsBeyondTheContextExit2NamingTheFlags) {
  const testing_ref::CliRun run = Bench({"--input-len", "4000", "--output-len", "200", "--requests", "1"});
  EXPECT_EQ(run.exit_code, 2) << run.Describe();
  EXPECT_NE(run.err.find("--shared-prefix-len 0 + --input-len 4000 + --output-len 200 (at most 4000 + 200 with "
                         "--range-ratio 0) exceed the model's context of 4096 tokens"),
            std::string::npos)
      << run.err;
  // Within the context at their middle lengths, beyond it at their longest.
  const testing_ref::CliRun ranged =
      Bench({"--input-len", "3000", "--output-len", "100", "--range-ratio", "0.5", "--requests", "1"});
  EXPECT_EQ(ranged.exit_code, 2) << ranged.Describe();
  EXPECT_NE(ranged.err.find("(at most 4500 + 150 with --range-ratio 0.5)"), std::string::npos) << ranged.err;
}

TEST(ServeBenchCli, BadFlagsExit2AndAnUnreachableServerExits1) {
  testing_ref::CliRun run = testing_ref::RunProgram({kBench, "--rate", "0"});
  EXPECT_EQ(run.exit_code, 2) << run.Describe();
  EXPECT_NE(run.err.find("--rate: must be positive (requests a second) or inf"), std::string::npos) << run.err;
  run = testing_ref::RunProgram({kBench, "--server", "127.0.0.1:1", "--requests", "1"});
  EXPECT_EQ(run.exit_code, 1) << run.Describe();
  EXPECT_NE(run.err.find("cannot reach the server at 127.0.0.1:1"), std::string::npos) << run.err;
  run = testing_ref::RunProgram({kBench, "--server", "127.0.0.1:1", "--wait-serving", "0.5"});
  EXPECT_EQ(run.exit_code, 1) << run.Describe();
  EXPECT_NE(run.err.find("was not SERVING within 0.5 s"), std::string::npos) << run.err;
}

}  // namespace
}  // namespace moe::e2e
