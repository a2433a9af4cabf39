#include "coordinator/serving_stats.h"

#include <algorithm>
#include <string>

namespace moe {
namespace {

using prometheus::Histogram;

// Buckets as serving systems use them, extended downwards: a small model on CPU answers in ms.
const Histogram::BucketBoundaries kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                                  0.75,  1.0,   2.5,  5.0,  7.5,  10.0, 20.0, 40.0, 80.0};
const Histogram::BucketBoundaries kItlBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1,
                                                 0.15,  0.2,    0.3,   0.4,  0.5,   0.75, 1.0,   2.5};
const Histogram::BucketBoundaries kE2eBuckets = {0.01, 0.05, 0.1,  0.3,  0.5,  0.8,  1.0,  1.5,  2.0,
                                                 2.5,  5.0,  10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0};
// Token counts per request (prompt, generated): powers of two up to 128k positions.
const Histogram::BucketBoundaries kTokenCountBuckets = {1,    2,    4,    8,     16,    32,    64,    128,   256,
                                                        512,  1024, 2048, 4096,  8192,  16384, 32768, 65536, 131072};

// A request's phases (queue, prefill, decode, inference): vLLM's request_latency_buckets, extended
// downwards as above.
const Histogram::BucketBoundaries kPhaseBuckets = {0.001, 0.005, 0.01, 0.05, 0.1,  0.3,  0.5,   0.8,   1.0,
                                                   1.5,   2.0,   2.5,  5.0,  10.0, 15.0, 20.0,  30.0,  40.0,
                                                   50.0,  60.0,  120., 240., 480., 960., 1920., 7680.};
// A request's n (vLLM's buckets, then up to SamplingParams' 64).
const Histogram::BucketBoundaries kNBuckets = {1, 2, 5, 10, 20, 50};

constexpr v1::FinishReason kReasons[] = {v1::FINISH_REASON_STOP, v1::FINISH_REASON_LENGTH,
                                         v1::FINISH_REASON_STOP_SEQUENCE, v1::FINISH_REASON_CANCELLED,
                                         v1::FINISH_REASON_ERROR};

}  // namespace

const char* FinishReasonLabel(v1::FinishReason r) {
  switch (r) {
    case v1::FINISH_REASON_STOP:
      return "stop";
    case v1::FINISH_REASON_LENGTH:
      return "length";
    case v1::FINISH_REASON_STOP_SEQUENCE:
      return "stop_sequence";
    case v1::FINISH_REASON_CANCELLED:
      return "cancelled";
    default:
      return "error";
  }
}

ServingStats::ServingStats(const std::string& model_name)
    : registry_(std::make_shared<prometheus::Registry>()),
      generation_rate_(std::chrono::seconds(10), Clock::now()) {
  prometheus::Registry& r = *registry_;
  ttft_ = &prometheus::BuildHistogram()
               .Name("moe_time_to_first_token_seconds")
               .Help("Time from request arrival to its first generated token")
               .Register(r)
               .Add({}, kTtftBuckets);
  itl_ = &prometheus::BuildHistogram()
              .Name("moe_inter_token_latency_seconds")
              .Help("Time between consecutive generated tokens of a request")
              .Register(r)
              .Add({}, kItlBuckets);
  e2e_ = &prometheus::BuildHistogram()
              .Name("moe_e2e_request_latency_seconds")
              .Help("Time from request arrival to its last response, of requests that end OK")
              .Register(r)
              .Add({}, kE2eBuckets);
  waiting_ = &prometheus::BuildGauge()
                  .Name("moe_num_requests_waiting")
                  .Help("Sequences queued in the coordinator, not yet assigned to a rank")
                  .Register(r)
                  .Add({});
  running_ = &prometheus::BuildGauge()
                  .Name("moe_num_requests_running")
                  .Help("Sequences assigned to ranks and not finished")
                  .Register(r)
                  .Add({});
  kv_usage_ = &prometheus::BuildGauge()
                   .Name("moe_kv_cache_usage_ratio")
                   .Help("KV cache blocks in use over all ranks, as a fraction of all blocks")
                   .Register(r)
                   .Add({});
  // Gauges, not counters: the ranks' own counts, which start again with a new worker job.
  prefix_queried_ = &prometheus::BuildGauge()
                         .Name("moe_prefix_cache_queried_tokens")
                         .Help("Prompt tokens the ranks looked up in their prefix caches since they started")
                         .Register(r)
                         .Add({});
  prefix_hits_ = &prometheus::BuildGauge()
                      .Name("moe_prefix_cache_hit_tokens")
                      .Help("Prompt tokens found in the ranks' prefix caches (not computed again) since they started")
                      .Register(r)
                      .Add({});
  preemptions_ = &prometheus::BuildGauge()
                     .Name("moe_num_preemptions")
                     .Help("Sequences the ranks preempted for KV cache room (computed again later) since they started")
                     .Register(r)
                     .Add({});
  prompt_tokens_ = &prometheus::BuildCounter()
                        .Name("moe_prompt_tokens_total")
                        .Help("Prompt tokens of admitted requests (generation and scoring)")
                        .Register(r)
                        .Add({});
  generation_tokens_ = &prometheus::BuildCounter()
                            .Name("moe_generation_tokens_total")
                            .Help("Tokens generated and streamed to clients")
                            .Register(r)
                            .Add({});
  success_ = &prometheus::BuildCounter()
                  .Name("moe_request_success_total")
                  .Help("Finished generation requests by finish reason")
                  .Register(r);
  // Every label value exists from the start, so rates work before the first request of a kind.
  for (v1::FinishReason reason : kReasons) success_->Add({{"finish_reason", FinishReasonLabel(reason)}});

  // The per-request figures, under the project's names (unlabelled) and vLLM's (labelled
  // model_name), with vLLM's help texts.
  const prometheus::Labels model = {{"model_name", model_name}};
  const auto course_pair = [&](const std::string& name, const char* help, const Histogram::BucketBoundaries& b,
                               prometheus::Histogram* CourseMetrics::*member) {
    course_.*member = &prometheus::BuildHistogram().Name("moe_" + name).Help(help).Register(r).Add({}, b);
    vllm_course_.*member = &prometheus::BuildHistogram().Name("vllm:" + name).Help(help).Register(r).Add(model, b);
  };
  course_pair("request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", kPhaseBuckets,
              &CourseMetrics::queue);
  course_pair("request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", kPhaseBuckets,
              &CourseMetrics::prefill);
  course_pair("request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", kPhaseBuckets,
              &CourseMetrics::decode);
  course_pair("request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", kPhaseBuckets,
              &CourseMetrics::inference);
  course_pair("request_time_per_output_token_seconds", "Histogram of time_per_output_token_seconds per request.",
              kItlBuckets, &CourseMetrics::time_per_output_token);
  course_pair("request_prompt_tokens", "Number of prefill tokens processed.", kTokenCountBuckets,
              &CourseMetrics::prompt_tokens);
  course_pair("request_generation_tokens", "Number of generation tokens processed.", kTokenCountBuckets,
              &CourseMetrics::generation_tokens);
  course_pair("request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.",
              kTokenCountBuckets, &CourseMetrics::max_generation_tokens);
  course_pair("request_params_n", "Histogram of the n request parameter.", kNBuckets, &CourseMetrics::params_n);
  course_pair("request_params_max_tokens", "Histogram of the max_tokens request parameter.", kTokenCountBuckets,
              &CourseMetrics::params_max_tokens);

  // vLLM's names (its v1 engine's), labelled model_name.
  const auto histogram = [&](const char* name, const char* help, const prometheus::Histogram::BucketBoundaries& b) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add(model, b);
  };
  const auto gauge = [&](const char* name, const char* help) {
    return &prometheus::BuildGauge().Name(name).Help(help).Register(r).Add(model);
  };
  const auto counter = [&](const char* name, const char* help) {
    return &prometheus::BuildCounter().Name(name).Help(help).Register(r).Add(model);
  };
  vllm_.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", kTtftBuckets);
  vllm_.itl = histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", kItlBuckets);
  vllm_.tpot = histogram("vllm:time_per_output_token_seconds",
                         "Histogram of time per output token in seconds (vLLM's older name).", kItlBuckets);
  vllm_.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", kE2eBuckets);
  vllm_.waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.");
  vllm_.running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.");
  vllm_.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.");
  vllm_.gpu_cache_usage = gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (vLLM's older name). 1 means 100 percent usage.");
  vllm_.prompt_tokens = counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.");
  vllm_.generation_tokens = counter("vllm:generation_tokens_total", "Number of generation tokens processed.");
  vllm_.preemptions = counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.");
  vllm_.prefix_queries = counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.");
  vllm_.prefix_hits = counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.");
  auto& success = prometheus::BuildCounter()
                      .Name("vllm:request_success_total")
                      .Help("Count of successfully processed requests.")
                      .Register(r);
  vllm_.success_stop = &success.Add({{"model_name", model_name}, {"finished_reason", "stop"}});
  vllm_.success_length = &success.Add({{"model_name", model_name}, {"finished_reason", "length"}});
  vllm_.success_abort = &success.Add({{"model_name", model_name}, {"finished_reason", "abort"}});

  // TGI's names (its router's), unlabelled as TGI's are.
  tgi_.queue_size = &prometheus::BuildGauge().Name("tgi_queue_size").Help("Current queue size").Register(r).Add({});
  tgi_.batch_current_size =
      &prometheus::BuildGauge().Name("tgi_batch_current_size").Help("Current batch size").Register(r).Add({});
  tgi_.request_count =
      &prometheus::BuildCounter().Name("tgi_request_count").Help("Total number of requests").Register(r).Add({});
  tgi_.request_success = &prometheus::BuildCounter()
                              .Name("tgi_request_success")
                              .Help("Number of successful requests")
                              .Register(r)
                              .Add({});
  auto& failure = prometheus::BuildCounter().Name("tgi_request_failure").Help("Number of failed requests").Register(r);
  tgi_.failure_validation = &failure.Add({{"err", "validation"}});
  tgi_.failure_overloaded = &failure.Add({{"err", "overloaded"}});
  tgi_.failure_generation = &failure.Add({{"err", "generation"}});
  const auto tgi_histogram = [&](const char* name, const char* help, const Histogram::BucketBoundaries& b) {
    return &prometheus::BuildHistogram().Name(name).Help(help).Register(r).Add({}, b);
  };
  tgi_.request_duration =
      tgi_histogram("tgi_request_duration", "Total time spent processing the request (e2e latency)", kE2eBuckets);
  tgi_.input_length = tgi_histogram("tgi_request_input_length", "Input token length per request", kTokenCountBuckets);
  tgi_.generated_tokens = tgi_histogram("tgi_request_generated_tokens", "Generated tokens per request", kTokenCountBuckets);
  tgi_.validation_duration = tgi_histogram("tgi_request_validation_duration", "Time spent validating the request", kPhaseBuckets);
  tgi_.queue_duration = tgi_histogram("tgi_request_queue_duration", "Time spent in the queue per request", kPhaseBuckets);
  tgi_.inference_duration = tgi_histogram("tgi_request_inference_duration", "Request inference duration", kPhaseBuckets);
  tgi_.mean_time_per_token =
      tgi_histogram("tgi_request_mean_time_per_token_duration", "Mean time per token per request", kItlBuckets);
}

void ServingStats::AddPromptTokens(int64_t n) {
  prompt_tokens_->Increment(static_cast<double>(n));
  vllm_.prompt_tokens->Increment(static_cast<double>(n));
  std::lock_guard<std::mutex> lock(mu_);
  prompt_total_ += static_cast<uint64_t>(n);
}

void ServingStats::AddGenerationTokens(int64_t n, Clock::time_point now) {
  generation_tokens_->Increment(static_cast<double>(n));
  vllm_.generation_tokens->Increment(static_cast<double>(n));
  std::lock_guard<std::mutex> lock(mu_);
  generation_total_ += static_cast<uint64_t>(n);
  generation_rate_.Add(now, n);
}

void ServingStats::ObserveTimeToFirstToken(double seconds) {
  ttft_->Observe(seconds);
  vllm_.ttft->Observe(seconds);
  std::lock_guard<std::mutex> lock(mu_);
  ttft_window_.Add(seconds);
}

void ServingStats::ObserveInterToken(double seconds, int64_t tokens) {
  if (tokens <= 0) return;
  const double each = seconds / static_cast<double>(tokens);
  std::lock_guard<std::mutex> lock(mu_);
  for (int64_t i = 0; i < tokens; ++i) {
    itl_->Observe(each);
    vllm_.itl->Observe(each);
    vllm_.tpot->Observe(each);
    itl_window_.Add(each);
  }
}

void ServingStats::CountRequest() { tgi_.request_count->Increment(); }

void ServingStats::CountRefused(absl::StatusCode code) {
  (code == absl::StatusCode::kResourceExhausted ? tgi_.failure_overloaded
   : code == absl::StatusCode::kUnavailable     ? tgi_.failure_generation
                                                : tgi_.failure_validation)
      ->Increment();
}

void ServingStats::ObserveRequest(const RequestCourse& request) {
  const double seconds = request.seconds;
  tgi_.input_length->Observe(static_cast<double>(request.input_tokens));
  if (request.code == absl::StatusCode::kOk) {
    // vLLM records finished requests only (a cancelled or failed one is dropped): its e2e latency,
    // each completion (its n children) apart, n and the most tokens per request.
    int64_t generated = 0, most = 0;
    for (const CompletionCourse& c : request.completions) {
      generated += c.generated_tokens;
      most = std::max(most, c.generated_tokens);
    }
    e2e_->Observe(seconds);
    vllm_.e2e->Observe(seconds);
    for (CourseMetrics* m : {&course_, &vllm_course_}) {
      for (const CompletionCourse& c : request.completions) {
        m->prompt_tokens->Observe(static_cast<double>(c.prompt_tokens));
        m->generation_tokens->Observe(static_cast<double>(c.generated_tokens));
        if (request.max_tokens > 0) m->params_max_tokens->Observe(static_cast<double>(request.max_tokens));  // vLLM skips 0
        if (c.timed) {
          m->queue->Observe(c.queue_seconds);
          m->prefill->Observe(c.prefill_seconds);
          m->decode->Observe(c.decode_seconds);
          m->inference->Observe(c.inference_seconds());
          // vLLM's: the decode time over the tokens after the first, 0 with one token.
          m->time_per_output_token->Observe(
              c.generated_tokens > 1 ? c.decode_seconds / static_cast<double>(c.generated_tokens - 1) : 0.0);
        }
      }
      m->params_n->Observe(static_cast<double>(request.completions.size()));
      m->max_generation_tokens->Observe(static_cast<double>(most));
    }
    // TGI's, of successes.
    tgi_.request_success->Increment();
    tgi_.request_duration->Observe(seconds);
    tgi_.validation_duration->Observe(request.validation_seconds);
    tgi_.generated_tokens->Observe(static_cast<double>(generated));
    if (!request.completions.empty() && request.completions.front().timed) {  // TGI's requests have one sequence
      const CompletionCourse& c = request.completions.front();
      tgi_.queue_duration->Observe(c.queue_seconds);
      tgi_.inference_duration->Observe(c.inference_seconds());
      // TGI's: its inference time over its tokens.
      tgi_.mean_time_per_token->Observe(c.inference_seconds() / static_cast<double>(std::max<int64_t>(1, c.generated_tokens)));
    }
  } else if (request.code != absl::StatusCode::kCancelled) {
    tgi_.failure_generation->Increment();
  }
  std::lock_guard<std::mutex> lock(mu_);
  e2e_window_.Add(seconds);
}

void ServingStats::CountFinished(v1::FinishReason reason) {
  success_->Add({{"finish_reason", FinishReasonLabel(reason)}}).Increment();
  // vLLM's reasons: a stop string ends as "stop", a cancelled or failed request as "abort".
  (reason == v1::FINISH_REASON_LENGTH                                               ? vllm_.success_length
   : reason == v1::FINISH_REASON_STOP || reason == v1::FINISH_REASON_STOP_SEQUENCE ? vllm_.success_stop
                                                                                   : vllm_.success_abort)
      ->Increment();
  std::lock_guard<std::mutex> lock(mu_);
  ++finished_;
}

void ServingStats::SetQueue(int64_t waiting, int64_t running) {
  waiting_->Set(static_cast<double>(waiting));
  running_->Set(static_cast<double>(running));
  vllm_.waiting->Set(static_cast<double>(waiting));
  vllm_.running->Set(static_cast<double>(running));
  tgi_.queue_size->Set(static_cast<double>(waiting));
  tgi_.batch_current_size->Set(static_cast<double>(running));
}

void ServingStats::SetKvCacheUsage(double ratio) {
  kv_usage_->Set(ratio);
  vllm_.kv_usage->Set(ratio);
  vllm_.gpu_cache_usage->Set(ratio);
}

namespace {

// A vLLM counter that follows a reported total: it grows by the total's growth since `last`.
void Follow(prometheus::Counter& counter, double total, double& last) {
  if (total > last) counter.Increment(total - last);
  last = total;
}

}  // namespace

void ServingStats::SetPreemptions(uint64_t n) {
  preemptions_->Set(static_cast<double>(n));
  std::lock_guard<std::mutex> lock(mu_);
  Follow(*vllm_.preemptions, static_cast<double>(n), last_preemptions_);
}

void ServingStats::SetPrefixCache(int64_t queried_tokens, int64_t hit_tokens) {
  prefix_queried_->Set(static_cast<double>(queried_tokens));
  prefix_hits_->Set(static_cast<double>(hit_tokens));
  std::lock_guard<std::mutex> lock(mu_);
  Follow(*vllm_.prefix_queries, static_cast<double>(queried_tokens), last_prefix_queried_);
  Follow(*vllm_.prefix_hits, static_cast<double>(hit_tokens), last_prefix_hits_);
}

StatsCounters ServingStats::Counters() {
  StatsCounters c;
  // The gauges hold the queue, KV use and rank counters as last reported (whole numbers, exact in a
  // double far beyond any count here).
  c.waiting = static_cast<int64_t>(waiting_->Value());
  c.running = static_cast<int64_t>(running_->Value());
  c.kv_cache_usage = kv_usage_->Value();
  c.preemptions = static_cast<uint64_t>(preemptions_->Value());
  c.prefix_queried_tokens = static_cast<int64_t>(prefix_queried_->Value());
  c.prefix_hit_tokens = static_cast<int64_t>(prefix_hits_->Value());
  std::lock_guard<std::mutex> lock(mu_);
  c.prompt_tokens = prompt_total_;
  c.generation_tokens = generation_total_;
  return c;
}

ServingSnapshot ServingStats::Snapshot(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  ServingSnapshot s;
  s.requests_finished = finished_;
  s.prompt_tokens = prompt_total_;
  s.generation_tokens = generation_total_;
  s.generation_tokens_per_second = generation_rate_.PerSecond(now);
  s.time_to_first_token = ttft_window_.Summary();
  s.inter_token_latency = itl_window_.Summary();
  s.e2e_request_latency = e2e_window_.Summary();
  return s;
}

}  // namespace moe
