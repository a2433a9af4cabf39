// Request-level statistics of the coordinator, kept twice over: as Prometheus metrics (prefix
// moe_, base units) for scraping, and as windows the GetStats RPC summarises (latency percentiles,
// recent throughput). The metrics go out under vLLM's names too (vllm:num_requests_running, ...,
// labelled model_name as vLLM labels them), so dashboards and autoscalers made for vLLM read them,
// and under Hugging Face TGI's where the coordinator has their figures (tgi_queue_size,
// tgi_request_count, ...), for TGI's.
// Thread-safe: request handlers and the cluster state report here.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/status/status.h"
#include "coordinator/latency_stats.h"
#include "coordinator/stats_log.h"
#include "moe/v1/inference.pb.h"

namespace moe {

struct ServingSnapshot {
  uint64_t requests_finished = 0;
  uint64_t prompt_tokens = 0;
  uint64_t generation_tokens = 0;
  double generation_tokens_per_second = 0;
  LatencySummaryValues time_to_first_token, inter_token_latency, e2e_request_latency;
};

// One completion of a request, as it ended: its tokens and, where it got a first token, how long it
// spent in each phase (vLLM's per-request times): queued (from the coordinator's admission to its
// first step on a rank, the rank's report), prefill (then to its first token at the coordinator)
// and decode (from its first token to its last).
struct CompletionCourse {
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  bool timed = false;  // the phases below hold
  double queue_seconds = 0, prefill_seconds = 0, decode_seconds = 0;
  double inference_seconds() const { return prefill_seconds + decode_seconds; }  // vLLM's RUNNING phase
};

// A Generate request that ran, as it ended with `code`.
struct RequestCourse {
  double seconds = 0;          // from its arrival to its end
  double validation_seconds = 0;  // from its arrival to its admission (checks, tokenization)
  int64_t input_tokens = 0;    // its prompt's
  uint32_t max_tokens = 0;     // what each completion could generate
  std::vector<CompletionCourse> completions;  // its n
  absl::StatusCode code = absl::StatusCode::kOk;
};

// A finish reason's label value: "stop", "length", "stop_sequence", "cancelled", "error".
const char* FinishReasonLabel(v1::FinishReason r);

class ServingStats {
 public:
  using Clock = std::chrono::steady_clock;
  // `model_name`: vLLM's metrics' model_name label (the model folder's name).
  explicit ServingStats(const std::string& model_name = "model");

  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  void AddPromptTokens(int64_t n);
  void AddGenerationTokens(int64_t n, Clock::time_point now);
  void ObserveTimeToFirstToken(double seconds);
  // `tokens` tokens that reached the client together, `seconds` after the previous ones: each
  // counts as seconds/tokens, so every token after a request's first is one sample.
  void ObserveInterToken(double seconds, int64_t tokens);
  // A Generate call reached the coordinator with a valid key (tgi_request_count: refused ones
  // included; what the HTTP front refuses itself never gets here).
  void CountRequest();
  // A Generate request refused before it ran, with the status it got (tgi_request_failure: err
  // "overloaded" for RESOURCE_EXHAUSTED, "generation" for UNAVAILABLE (the cluster cannot serve),
  // else "validation", as TGI's).
  void CountRefused(absl::StatusCode code);
  // A Generate request that ran has ended: where it ended OK (vLLM records finished requests
  // only), its latency (e2e), its parameters (vLLM's request_params_n, per request, and
  // request_params_max_tokens, per completion) and its completions' courses (vLLM's per-request
  // token counts, phase times and mean time per output token: every completion's, the phases of
  // those that got a token); its prompt
  // length (tgi_request_input_length, as TGI records every validated request's), and by the code a
  // success (OK: its latency, validation time, generated tokens (all its completions'), queue and
  // inference times and mean time per token (its first completion's) into TGI's histograms, which
  // count successes only), a failure (tgi_request_failure{err="generation"}) or, CANCELLED, neither.
  void ObserveRequest(const RequestCourse& request);
  // A request ended with `reason` (moe_request_success_total{finish_reason}).
  void CountFinished(v1::FinishReason reason);
  // Sequences waiting in the coordinator and running on the ranks; KV use over all ranks.
  void SetQueue(int64_t waiting, int64_t running);
  void SetKvCacheUsage(double ratio);
  // Prompt tokens the ranks looked up in their prefix caches and found, since they started.
  void SetPrefixCache(int64_t queried_tokens, int64_t hit_tokens);
  // Sequences the ranks preempted for KV room since they started.
  void SetPreemptions(uint64_t n);

  ServingSnapshot Snapshot(Clock::time_point now);
  // The totals, queue, KV use and rank counters as last reported: the periodic stats line's input.
  StatsCounters Counters();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Histogram* ttft_;
  prometheus::Histogram* itl_;
  prometheus::Histogram* e2e_;
  prometheus::Gauge* waiting_;
  prometheus::Gauge* running_;
  prometheus::Gauge* kv_usage_;
  prometheus::Gauge* prefix_queried_;
  prometheus::Gauge* prefix_hits_;
  prometheus::Gauge* preemptions_;
  prometheus::Counter* prompt_tokens_;
  prometheus::Counter* generation_tokens_;
  prometheus::Family<prometheus::Counter>* success_;
  // Per request and per completion (RequestCourse), under the project's names and vLLM's.
  struct CourseMetrics {
    prometheus::Histogram *queue, *prefill, *decode, *inference, *time_per_output_token;
    prometheus::Histogram *prompt_tokens, *generation_tokens, *max_generation_tokens;
    prometheus::Histogram *params_n, *params_max_tokens;
  } course_{}, vllm_course_{};
  // vLLM's names for the same. Its prefix cache and preemption counts are counters: they grow by
  // the ranks' reports' growth (a rank that starts again reports less, which adds nothing).
  struct VllmMetrics {
    prometheus::Histogram *ttft, *itl, *tpot, *e2e;
    prometheus::Gauge *waiting, *running, *kv_usage, *gpu_cache_usage;
    prometheus::Counter *prompt_tokens, *generation_tokens, *preemptions, *prefix_queries, *prefix_hits;
    prometheus::Counter *success_stop, *success_length, *success_abort;
  } vllm_{};
  // TGI's names, per request (TGI's requests have one sequence each, best_of aside).
  struct TgiMetrics {
    prometheus::Gauge *queue_size, *batch_current_size;
    prometheus::Counter *request_count, *request_success;
    prometheus::Counter *failure_validation, *failure_overloaded, *failure_generation;
    prometheus::Histogram *request_duration, *input_length, *generated_tokens;
    prometheus::Histogram *validation_duration, *queue_duration, *inference_duration, *mean_time_per_token;
  } tgi_{};
  double last_prefix_queried_ = 0, last_prefix_hits_ = 0, last_preemptions_ = 0;  // under mu_

  std::mutex mu_;
  uint64_t finished_ = 0, prompt_total_ = 0, generation_total_ = 0;
  LatencyWindow ttft_window_, itl_window_, e2e_window_;
  RateWindow generation_rate_;
};

}  // namespace moe
