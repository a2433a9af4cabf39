// The coordinator's request metrics under each family's names and rules (serving_stats.h): the
// project's, vLLM's (labelled model_name) and TGI's (per request: refusals by kind, histograms of
// successes only, cancelled requests neither success nor failure), read back from the registry a
// Prometheus scrape serialises.
#include "coordinator/serving_stats.h"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include <prometheus/metric_family.h>

namespace moe {
namespace {

// The registry's samples as "name{label=value,...}" -> value (counters, gauges; histograms by
// their _count and _sum).
std::map<std::string, double> Samples(const ServingStats& stats) {
  std::map<std::string, double> out;
  for (const prometheus::MetricFamily& family : stats.registry()->Collect()) {
    for (const prometheus::ClientMetric& m : family.metric) {
      std::string labels;
      for (const prometheus::ClientMetric::Label& l : m.label) {
        labels += (labels.empty() ? "" : ",") + l.name + "=" + l.value;
      }
      const std::string key = family.name + (labels.empty() ? "" : "{" + labels + "}");
      switch (family.type) {
        case prometheus::MetricType::Counter: out[key] = m.counter.value; break;
        case prometheus::MetricType::Gauge: out[key] = m.gauge.value; break;
        case prometheus::MetricType::Histogram:
          out[family.name + "_count" + (labels.empty() ? "" : "{" + labels + "}")] =
              static_cast<double>(m.histogram.sample_count);
          out[family.name + "_sum" + (labels.empty() ? "" : "{" + labels + "}")] = m.histogram.sample_sum;
          break;
        default: break;
      }
    }
  }
  return out;
}

TEST(ServingStatsTest, TgisRequestMetricsCountEachOutcomeOnce) {
  ServingStats stats("mixtral");
  // Five requests: one refused by validation, one by a full queue, then three that ran: a success
  // (7 prompt tokens, 5 generated, 0.5 s), a cancelled one and a failed one.
  for (int i = 0; i < 5; ++i) stats.CountRequest();
  stats.CountRefused(absl::StatusCode::kInvalidArgument);
  stats.CountRefused(absl::StatusCode::kResourceExhausted);
  const auto request = [](double seconds, int64_t input, int64_t generated, absl::StatusCode code) {
    RequestCourse r{.seconds = seconds, .input_tokens = input, .max_tokens = 16, .completions = {}, .code = code};
    r.completions.push_back({.prompt_tokens = input, .generated_tokens = generated});
    return r;
  };
  stats.ObserveRequest(request(0.5, 7, 5, absl::StatusCode::kOk));
  stats.ObserveRequest(request(0.25, 3, 2, absl::StatusCode::kCancelled));
  stats.ObserveRequest(request(0.125, 4, 1, absl::StatusCode::kInternal));
  stats.SetQueue(3, 9);
  std::map<std::string, double> s = Samples(stats);
  EXPECT_EQ(s["tgi_request_count"], 5);
  EXPECT_EQ(s["tgi_request_success"], 1);
  EXPECT_EQ(s["tgi_request_failure{err=validation}"], 1);
  EXPECT_EQ(s["tgi_request_failure{err=overloaded}"], 1);
  EXPECT_EQ(s["tgi_request_failure{err=generation}"], 1);  // the cancelled one is not a failure
  EXPECT_EQ(s["tgi_request_duration_count"], 1);           // successes only, as TGI's
  EXPECT_EQ(s["tgi_request_duration_sum"], 0.5);
  EXPECT_EQ(s["tgi_request_generated_tokens_sum"], 5);
  EXPECT_EQ(s["tgi_request_input_length_count"], 3);  // every request that ran
  EXPECT_EQ(s["tgi_request_input_length_sum"], 14);
  EXPECT_EQ(s["tgi_queue_size"], 3);
  EXPECT_EQ(s["tgi_batch_current_size"], 9);
  // vLLM's and the project's e2e latency see the requests that ended OK, as vLLM's finished ones.
  EXPECT_EQ(s["vllm:e2e_request_latency_seconds_count{model_name=mixtral}"], 1);
  EXPECT_EQ(s["moe_e2e_request_latency_seconds_count"], 1);
  EXPECT_EQ(s["vllm:num_requests_waiting{model_name=mixtral}"], 3);
  // A cluster that cannot serve is a generation failure in TGI's kinds.
  stats.CountRefused(absl::StatusCode::kUnavailable);
  EXPECT_EQ(Samples(stats)["tgi_request_failure{err=generation}"], 2);
}

// vLLM's per-request figures (and the project's under moe_), of requests that ended OK: token
// counts, max_tokens and phases of every completion, the phases only of those that got a token; n
// and the most tokens per request. TGI's queue and inference durations come from a success's first
// completion.
TEST(ServingStatsTest, RequestCoursesFillThePerRequestHistograms) {
  ServingStats stats("mixtral");
  RequestCourse r{.seconds = 2.0, .validation_seconds = 0.25, .input_tokens = 10, .max_tokens = 64, .completions = {}};
  r.completions.push_back({.prompt_tokens = 10, .generated_tokens = 5, .timed = true, .queue_seconds = 0.5,
                           .prefill_seconds = 0.25, .decode_seconds = 1.0});
  r.completions.push_back({.prompt_tokens = 10, .generated_tokens = 9, .timed = true, .queue_seconds = 0.125,
                           .prefill_seconds = 0.5, .decode_seconds = 1.25});
  stats.ObserveRequest(r);
  RequestCourse unserved{
      .seconds = 1.0, .input_tokens = 4, .max_tokens = 8, .completions = {}, .code = absl::StatusCode::kCancelled};
  unserved.completions.push_back({.prompt_tokens = 4, .generated_tokens = 2, .timed = true, .queue_seconds = 0.5,
                                  .prefill_seconds = 0.5, .decode_seconds = 0.5});  // cancelled: not counted
  stats.ObserveRequest(unserved);
  RequestCourse queued{.seconds = 1.0, .input_tokens = 3, .max_tokens = 8, .completions = {}};
  queued.completions.push_back({.prompt_tokens = 3, .generated_tokens = 0});  // e.g. echo alone: no token
  stats.ObserveRequest(queued);
  std::map<std::string, double> s = Samples(stats);
  for (const std::string& prefix : {std::string("vllm:"), std::string("moe_")}) {
    const std::string label = prefix == "vllm:" ? "{model_name=mixtral}" : "";
    const auto at = [&](const std::string& name) { return s[prefix + name + label]; };
    EXPECT_EQ(at("request_queue_time_seconds_count"), 2) << prefix << ": the completions that got a token";
    EXPECT_EQ(at("request_queue_time_seconds_sum"), 0.625);
    EXPECT_EQ(at("request_prefill_time_seconds_sum"), 0.75);
    EXPECT_EQ(at("request_decode_time_seconds_sum"), 2.25);
    EXPECT_EQ(at("request_inference_time_seconds_sum"), 3.0);
    EXPECT_EQ(at("request_time_per_output_token_seconds_sum"), 1.0 / 4 + 1.25 / 8);
    EXPECT_EQ(at("request_time_per_output_token_seconds_count"), 2);
    EXPECT_EQ(at("request_prompt_tokens_count"), 3) << "every completion";
    EXPECT_EQ(at("request_prompt_tokens_sum"), 23);
    EXPECT_EQ(at("request_generation_tokens_sum"), 14);
    EXPECT_EQ(at("request_max_num_generation_tokens_count"), 2) << "every request";
    EXPECT_EQ(at("request_max_num_generation_tokens_sum"), 9);
    EXPECT_EQ(at("request_params_n_sum"), 3);
    EXPECT_EQ(at("request_params_max_tokens_sum"), 64 + 64 + 8) << "per completion";
  }
  EXPECT_EQ(s["tgi_request_validation_duration_sum"], 0.25);
  EXPECT_EQ(s["tgi_request_queue_duration_count"], 1) << "successes only";
  EXPECT_EQ(s["tgi_request_queue_duration_sum"], 0.5);
  EXPECT_EQ(s["tgi_request_inference_duration_sum"], 1.25);
  EXPECT_EQ(s["tgi_request_mean_time_per_token_duration_sum"], 0.25) << "inference over the tokens";
}

}  // namespace
}  // namespace moe
