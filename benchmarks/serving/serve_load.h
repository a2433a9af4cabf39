// What moe-serve-bench measures, apart from the gRPC calls: when each request is sent (Poisson
// arrivals or all at once), the random token-id prompts, each request's timeline as its stream
// delivered it, and the summary serving users compare systems by, under vLLM benchmark_serving's
// names (TTFT, TPOT, ITL, end-to-end latency; request and token throughputs).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe::serve_bench {

// Seconds after the run's start at which each of `n` requests is sent: Poisson arrivals at `rate`
// requests a second (exponential gaps from a seeded generator), or all at 0 when rate is +inf.
std::vector<double> ArrivalTimes(int64_t n, double rate, uint64_t seed);

// `n` lengths drawn uniformly from the integers in [len * (1 - ratio), len * (1 + ratio)] (at least
// 1; all `len` when ratio is 0), as vLLM's random dataset draws with --random-range-ratio.
std::vector<int64_t> RandomLengths(int64_t n, int64_t len, double ratio, uint64_t seed);
// The shortest and longest of those lengths.
std::pair<int64_t, int64_t> LengthRange(int64_t len, double ratio);

// One prompt per length, of token ids drawn uniformly from [0, vocab) by a seeded generator.
std::vector<std::vector<int32_t>> RandomPrompts(const std::vector<int64_t>& lengths, int64_t vocab, uint64_t seed);

// One request as the client saw it; times in seconds from the run's start.
struct RequestRecord {
  int64_t index = 0;
  double sent_s = 0;               // the call started
  std::vector<double> token_message_s;  // arrival of each streamed message that carried tokens
  std::vector<int64_t> message_tokens;  // how many tokens each of those carried
  double end_s = 0;                // the stream finished (status read)
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;
  std::string finish_reason;       // "length", "stop", ... ("" when failed)
  std::string error;               // "CODE: message"; empty when the request succeeded

  bool ok() const { return error.empty(); }
};

// Linear interpolation between closest ranks (numpy's default); `sorted` ascending, non-empty.
double Percentile(const std::vector<double>& sorted, double q);

// {"count", "mean", "median", "p90", "p99", "min", "max"} of `values` times `scale` (seconds ->
// ms with 1e3); {"count": 0} when empty.
nlohmann::json Distribution(std::vector<double> values, double scale);

// The summary over the successful records: completed, failed (with a count per error), duration,
// token totals, throughputs, ttft_ms, tpot_ms (per request: (last token - first token) / (output
// tokens - 1), requests of one token left out), itl_ms (gaps between token-carrying messages),
// e2el_ms, and the most requests in flight at once. `duration_s`: first send to last end.
nlohmann::json Summarise(const std::vector<RequestRecord>& records);

// One record as JSON (times in ms).
nlohmann::json RecordJson(const RequestRecord& r);

}  // namespace moe::serve_bench
