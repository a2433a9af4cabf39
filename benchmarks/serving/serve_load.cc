#include "benchmarks/serving/serve_load.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <random>

namespace moe::serve_bench {

std::vector<double> ArrivalTimes(int64_t n, double rate, uint64_t seed) {
  std::vector<double> t(static_cast<size_t>(std::max<int64_t>(n, 0)), 0.0);
  if (std::isinf(rate)) return t;
  std::mt19937_64 gen(seed);
  std::exponential_distribution<double> gap(rate);
  double now = 0;
  for (double& x : t) {
    now += gap(gen);
    x = now;
  }
  return t;
}

std::pair<int64_t, int64_t> LengthRange(int64_t len, double ratio) {
  const int64_t lo = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(static_cast<double>(len) * (1 - ratio))));
  const int64_t hi = std::max(lo, static_cast<int64_t>(std::floor(static_cast<double>(len) * (1 + ratio))));
  return {lo, hi};
}

std::vector<int64_t> RandomLengths(int64_t n, int64_t len, double ratio, uint64_t seed) {
  const auto [lo, hi] = LengthRange(len, ratio);
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int64_t> pick(lo, hi);
  std::vector<int64_t> lengths(static_cast<size_t>(n));
  for (int64_t& l : lengths) l = pick(gen);
  return lengths;
}

std::vector<std::vector<int32_t>> RandomPrompts(const std::vector<int64_t>& lengths, int64_t vocab, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(vocab - 1));
  std::vector<std::vector<int32_t>> prompts(lengths.size());
  for (size_t i = 0; i < lengths.size(); ++i) {
    prompts[i].resize(static_cast<size_t>(lengths[i]));
    for (int32_t& x : prompts[i]) x = id(gen);
  }
  return prompts;
}

double Percentile(const std::vector<double>& sorted, double q) {
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - static_cast<double>(lo));
}

nlohmann::json Distribution(std::vector<double> values, double scale) {
  if (values.empty()) return {{"count", 0}};
  for (double& v : values) v *= scale;
  std::sort(values.begin(), values.end());
  const double sum = std::accumulate(values.begin(), values.end(), 0.0);
  return {{"count", values.size()},
          {"mean", sum / static_cast<double>(values.size())},
          {"median", Percentile(values, 50)},
          {"p90", Percentile(values, 90)},
          {"p99", Percentile(values, 99)},
          {"min", values.front()},
          {"max", values.back()}};
}

namespace {

// The most intervals [sent, end) that overlap at one time.
int64_t MostInFlight(const std::vector<RequestRecord>& records) {
  std::vector<std::pair<double, int>> events;
  for (const RequestRecord& r : records) {
    events.emplace_back(r.sent_s, +1);
    events.emplace_back(r.end_s, -1);
  }
  std::sort(events.begin(), events.end());  // an end sorts before a send at the same time
  int64_t now = 0, most = 0;
  for (const auto& e : events) most = std::max(most, now += e.second);
  return most;
}

}  // namespace

nlohmann::json Summarise(const std::vector<RequestRecord>& records) {
  std::vector<double> ttft, tpot, itl, e2el;
  std::map<std::string, int64_t> errors;
  int64_t completed = 0, input_tokens = 0, output_tokens = 0;
  double first = std::numeric_limits<double>::infinity(), last = 0;
  for (const RequestRecord& r : records) {
    first = std::min(first, r.sent_s);
    last = std::max(last, r.end_s);
    if (!r.ok()) {
      ++errors[r.error];
      continue;
    }
    ++completed;
    input_tokens += r.prompt_tokens;
    output_tokens += r.output_tokens;
    e2el.push_back(r.end_s - r.sent_s);
    if (r.token_message_s.empty()) continue;
    ttft.push_back(r.token_message_s.front() - r.sent_s);
    for (size_t i = 1; i < r.token_message_s.size(); ++i) itl.push_back(r.token_message_s[i] - r.token_message_s[i - 1]);
    if (r.output_tokens > 1) {
      tpot.push_back((r.token_message_s.back() - r.token_message_s.front()) / static_cast<double>(r.output_tokens - 1));
    }
  }
  const double duration = records.empty() ? 0.0 : last - first;
  const auto per_s = [&](double x) { return duration > 0 ? x / duration : 0.0; };
  return {{"completed", completed},
          {"failed", static_cast<int64_t>(records.size()) - completed},
          {"errors", errors},
          {"duration_s", duration},
          {"total_input_tokens", input_tokens},
          {"total_output_tokens", output_tokens},
          {"request_throughput", per_s(static_cast<double>(completed))},
          {"output_throughput", per_s(static_cast<double>(output_tokens))},
          {"total_token_throughput", per_s(static_cast<double>(input_tokens + output_tokens))},
          {"max_in_flight", MostInFlight(records)},
          {"ttft_ms", Distribution(ttft, 1e3)},
          {"tpot_ms", Distribution(tpot, 1e3)},
          {"itl_ms", Distribution(itl, 1e3)},
          {"e2el_ms", Distribution(e2el, 1e3)}};
}

nlohmann::json RecordJson(const RequestRecord& r) {
  std::vector<double> msg_ms;
  for (double t : r.token_message_s) msg_ms.push_back(t * 1e3);
  nlohmann::json j = {{"index", r.index},
                      {"sent_ms", r.sent_s * 1e3},
                      {"end_ms", r.end_s * 1e3},
                      {"prompt_tokens", r.prompt_tokens},
                      {"output_tokens", r.output_tokens},
                      {"token_message_ms", msg_ms},
                      {"message_tokens", r.message_tokens}};
  if (r.ok()) {
    j["finish_reason"] = r.finish_reason;
  } else {
    j["error"] = r.error;
  }
  return j;
}

}  // namespace moe::serve_bench
