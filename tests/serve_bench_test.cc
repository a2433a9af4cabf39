// moe-serve-bench's arithmetic and command line, without a server: percentiles against numpy's
// (linear interpolation), a hand-worked summary of four requests (one failed), the Poisson
// schedule's mean gap, the prompts' range, and flags that name themselves when malformed.
#include <cmath>
#include <limits>
#include <set>

#include <gtest/gtest.h>

#include "benchmarks/serving/serve_bench_args.h"
#include "benchmarks/serving/serve_load.h"

namespace moe::serve_bench {
namespace {

TEST(ServeBenchStats, PercentileInterpolatesLikeNumpy) {
  // numpy.percentile([1, 2, 3, 4], 90) == 3.7, ([1, 10], 50) == 5.5, ([5], 99) == 5.
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 90), 3.7);
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 0), 1);
  EXPECT_DOUBLE_EQ(Percentile({1, 2, 3, 4}, 100), 4);
  EXPECT_DOUBLE_EQ(Percentile({1, 10}, 50), 5.5);
  EXPECT_DOUBLE_EQ(Percentile({5}, 99), 5);
}

RequestRecord Ok(int64_t index, double sent, std::vector<double> msgs, std::vector<int64_t> tokens, double end) {
  RequestRecord r;
  r.index = index;
  r.sent_s = sent;
  r.token_message_s = std::move(msgs);
  r.message_tokens = std::move(tokens);
  r.end_s = end;
  r.prompt_tokens = 10;
  for (int64_t t : r.message_tokens) r.output_tokens += t;
  r.finish_reason = "length";
  return r;
}

TEST(ServeBenchStats, SummaryOfHandWorkedRequests) {
  RequestRecord failed;
  failed.index = 2;
  failed.sent_s = 0.10;
  failed.end_s = 0.12;
  failed.error = "RESOURCE_EXHAUSTED: queue full";
  const std::vector<RequestRecord> records = {
      Ok(0, 0.00, {0.10, 0.15, 0.25}, {1, 1, 2}, 0.26),  // ttft 100, itl 50 / 100, tpot 150 / 3 = 50
      Ok(1, 0.05, {0.30, 0.40}, {1, 1}, 0.45),             // ttft 250, itl 100, tpot 100
      failed,
      Ok(3, 0.50, {0.60}, {1}, 0.61),                      // ttft 100, no tpot (one token)
  };
  const nlohmann::json s = Summarise(records);
  EXPECT_EQ(s["completed"], 3);
  EXPECT_EQ(s["failed"], 1);
  EXPECT_EQ(s["errors"]["RESOURCE_EXHAUSTED: queue full"], 1);
  EXPECT_DOUBLE_EQ(s["duration_s"].get<double>(), 0.61);
  EXPECT_EQ(s["total_input_tokens"], 30);
  EXPECT_EQ(s["total_output_tokens"], 7);
  EXPECT_NEAR(s["output_throughput"].get<double>(), 7 / 0.61, 1e-9);
  EXPECT_NEAR(s["request_throughput"].get<double>(), 3 / 0.61, 1e-9);
  EXPECT_NEAR(s["total_token_throughput"].get<double>(), 37 / 0.61, 1e-9);
  EXPECT_EQ(s["max_in_flight"], 3);  // at 0.10-0.12: requests 0, 1 and 2

  const auto& ttft = s["ttft_ms"];  // 100, 100, 250
  EXPECT_EQ(ttft["count"], 3);
  EXPECT_NEAR(ttft["mean"].get<double>(), 150, 1e-9);
  EXPECT_NEAR(ttft["median"].get<double>(), 100, 1e-9);
  EXPECT_NEAR(ttft["p90"].get<double>(), 220, 1e-9);
  EXPECT_NEAR(ttft["p99"].get<double>(), 247, 1e-9);
  const auto& itl = s["itl_ms"];  // 50, 100, 100
  EXPECT_EQ(itl["count"], 3);
  EXPECT_NEAR(itl["mean"].get<double>(), 250.0 / 3, 1e-9);
  EXPECT_NEAR(itl["median"].get<double>(), 100, 1e-9);
  const auto& tpot = s["tpot_ms"];  // 50, 100
  EXPECT_EQ(tpot["count"], 2);
  EXPECT_NEAR(tpot["mean"].get<double>(), 75, 1e-9);
  const auto& e2el = s["e2el_ms"];  // 110, 260, 400
  EXPECT_NEAR(e2el["median"].get<double>(), 260, 1e-9);
  EXPECT_NEAR(e2el["min"].get<double>(), 110, 1e-9);
  EXPECT_NEAR(e2el["max"].get<double>(), 400, 1e-9);

  const nlohmann::json r = RecordJson(records[2]);
  EXPECT_EQ(r["error"], "RESOURCE_EXHAUSTED: queue full");
  EXPECT_FALSE(r.contains("finish_reason"));
  EXPECT_NEAR(RecordJson(records[0])["token_message_ms"][2].get<double>(), 250, 1e-9);
}

TEST(ServeBenchStats, EmptyRunSummarisesToZeros) {
  const nlohmann::json s = Summarise({});
  EXPECT_EQ(s["completed"], 0);
  EXPECT_EQ(s["ttft_ms"]["count"], 0);
  EXPECT_EQ(s["output_throughput"], 0.0);
}

TEST(ServeBenchSchedule, PoissonArrivalsHaveTheAskedMeanGap) {
  const std::vector<double> all_at_once = ArrivalTimes(5, std::numeric_limits<double>::infinity(), 1);
  EXPECT_EQ(all_at_once, std::vector<double>(5, 0.0));
  const int n = 20000;
  const std::vector<double> t = ArrivalTimes(n, 50.0, 3);
  ASSERT_EQ(t.size(), static_cast<size_t>(n));
  for (int i = 1; i < n; ++i) ASSERT_GT(t[i], t[i - 1]) << i;
  // Exponential gaps of mean 1/50 s: their mean over 20000 has a relative spread of ~0.7%.
  EXPECT_NEAR(t.back() / n, 0.02, 0.02 * 0.03);
  EXPECT_EQ(ArrivalTimes(100, 50.0, 3), std::vector<double>(t.begin(), t.begin() + 100));
  EXPECT_NE(ArrivalTimes(100, 50.0, 4), std::vector<double>(t.begin(), t.begin() + 100));
}

TEST(ServeBenchSchedule, PromptsCoverTheVocabularyAndFollowTheSeed) {
  const std::vector<int64_t> forty(50, 40);
  const auto p = RandomPrompts(forty, 7, 9);
  ASSERT_EQ(p.size(), 50u);
  std::set<int32_t> seen;
  for (const auto& prompt : p) {
    ASSERT_EQ(prompt.size(), 40u);
    for (int32_t id : prompt) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, 7);
      seen.insert(id);
    }
  }
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_EQ(RandomPrompts(forty, 7, 9), p);
  EXPECT_NE(RandomPrompts(forty, 7, 10), p);
  const auto varied = RandomPrompts({3, 1, 5}, 7, 9);
  EXPECT_EQ(varied[0].size(), 3u);
  EXPECT_EQ(varied[1].size(), 1u);
  EXPECT_EQ(varied[2].size(), 5u);
}

TEST(ServeBenchSchedule, LengthsSpanTheRangeRatio) {
  EXPECT_EQ(RandomLengths(4, 128, 0, 1), std::vector<int64_t>(4, 128));
  using Range = std::pair<int64_t, int64_t>;
  EXPECT_EQ(LengthRange(128, 0.5), Range(64, 192));
  EXPECT_EQ(LengthRange(3, 0.9), Range(1, 5));  // ceil(0.3), floor(5.7)
  const std::vector<int64_t> l = RandomLengths(4000, 10, 0.5, 2);
  std::set<int64_t> seen(l.begin(), l.end());
  EXPECT_EQ(seen, (std::set<int64_t>{5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}));
  EXPECT_EQ(RandomLengths(4000, 10, 0.5, 2), l);
}

TEST(ServeBenchArgs, DefaultsAndValues) {
  auto a = ParseBenchArgs({});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(std::isinf(a->rate));
  EXPECT_EQ(a->requests, 100);
  EXPECT_EQ(a->max_concurrency, 0);
  a = ParseBenchArgs({"--server=h:9", "--requests", "7", "--rate", "2.5", "--max-concurrency=3", "--input-len", "5",
                      "--output-len", "6", "--temperature", "0.7", "--seed", "11", "--warmup", "2", "--no-records",
                      "--out", "/tmp/x.json", "--commit", "abc", "--json-object"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->server, "h:9");
  EXPECT_EQ(a->requests, 7);
  EXPECT_DOUBLE_EQ(a->rate, 2.5);
  EXPECT_EQ(a->max_concurrency, 3);
  EXPECT_EQ(a->input_len, 5);
  EXPECT_EQ(a->output_len, 6);
  EXPECT_FLOAT_EQ(a->temperature, 0.7f);
  EXPECT_EQ(a->seed, 11u);
  EXPECT_EQ(a->warmup, 2);
  EXPECT_FALSE(a->save_records);
  EXPECT_TRUE(a->json_object);
  EXPECT_EQ(a->out, "/tmp/x.json");
  EXPECT_EQ(a->commit, "abc");
  EXPECT_EQ(a->range_ratio, 0);
  a = ParseBenchArgs({"--regex", "[a-z ]+"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->regex, "[a-z ]+");
  EXPECT_FALSE(ParseBenchArgs({"--regex", ""}).ok());
  EXPECT_FALSE(ParseBenchArgs({"--regex", "a", "--json-object"}).ok());
  a = ParseBenchArgs({"--grammar", "root ::= [a-z]+"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->grammar, "root ::= [a-z]+");
  EXPECT_FALSE(ParseBenchArgs({"--grammar", ""}).ok());
  EXPECT_FALSE(ParseBenchArgs({"--grammar", "root ::= \"a\"", "--regex", "a"}).ok());
  a = ParseBenchArgs({"--rate", "inf", "--range-ratio", "0.25"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(std::isinf(a->rate));
  EXPECT_DOUBLE_EQ(a->range_ratio, 0.25);
  EXPECT_EQ(a->shared_prefix_len, 0);
  a = ParseBenchArgs({"--shared-prefix-len=64"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->shared_prefix_len, 64);
  EXPECT_EQ(a->max_tokens, 0);
  a = ParseBenchArgs({"--max-tokens", "4096"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->max_tokens, 4096);
  EXPECT_EQ(a->repetition_penalty, 1.0f);
  EXPECT_EQ(a->frequency_penalty, 0.0f);
  EXPECT_EQ(a->top_logprobs, -1);
  a = ParseBenchArgs({"--repetition-penalty", "1.2", "--frequency-penalty=-0.5", "--logprobs", "0"});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->top_logprobs, 0);
  EXPECT_FLOAT_EQ(a->repetition_penalty, 1.2f);
  EXPECT_FLOAT_EQ(a->frequency_penalty, -0.5f);
}

TEST(ServeBenchArgs, ErrorsNameTheFlag) {
  for (const auto& [args, message] : std::vector<std::pair<std::vector<std::string>, std::string>>{
           {{"--requests", "0"}, "--requests: must be at least 1, got 0"},
           {{"--requests", "many"}, "--requests: expected an integer, got 'many'"},
           {{"--rate", "0"}, "--rate: must be positive (requests a second) or inf"},
           {{"--rate", "-3"}, "--rate: must be >= 0, got -3"},
           {{"--rate", "fast"}, "--rate: expected a number, got 'fast'"},
           {{"--max-concurrency", "-1"}, "--max-concurrency: must be at least 0"},
           {{"--input-len", "0"}, "--input-len: must be at least 1"},
           {{"--output-len"}, "--output-len: missing value"},
           {{"--temperature", "-0.5"}, "--temperature: must be >= 0"},
           {{"--seed", "-2"}, "--seed: expected an unsigned integer, got '-2'"},
           {{"--timeout", "0"}, "--timeout: must be a positive number of seconds"},
           {{"--server", "nohostport"}, "--server: expected HOST:PORT, got 'nohostport'"},
           {{"--connections", "0"}, "--connections: must be at least 1"},
           {{"--out="}, "--out: empty path"},
           {{"--bogus"}, "unknown flag '--bogus'"},
           {{"--repetition-penalty", "0"}, "--repetition-penalty: must be finite and > 0, got 0"},
           {{"--frequency-penalty", "3"}, "--frequency-penalty: expected a number in [-2, 2], got '3'"},
           {{"--logprobs", "21"}, "--logprobs: expected an integer in [0, 20], got '21'"},
           {{"--range-ratio", "1"}, "--range-ratio: must be in [0, 1), got 1"},
           {{"--shared-prefix-len", "-4"}, "--shared-prefix-len: must be at least 0"},
           {{"--max-tokens", "-1"}, "--max-tokens: must be at least 0"},
           {{"--range-ratio", "-0.1"}, "--range-ratio: must be >= 0"},
       }) {
    auto a = ParseBenchArgs(args);
    ASSERT_FALSE(a.ok()) << message;
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(a.status().message()).find(message), std::string::npos) << a.status();
  }
}

}  // namespace
}  // namespace moe::serve_bench
