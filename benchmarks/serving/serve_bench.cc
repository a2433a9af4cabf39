// moe-serve-bench: a load generator for the coordinator's public API, what vLLM's
// benchmark_serving is to an OpenAI server. It sends random token-id prompts as streaming Generate
// calls on a Poisson schedule (or all at once), at most --max-concurrency in flight, each for
// exactly --output-len tokens (ignore_eos), and reports throughput and the latencies users feel:
// time to first token, time per output token, inter-token latency, end to end. See BenchUsage().
//
// Every request runs on its own thread over one of --connections channels (each its own TCP
// connection, so that a server's per-connection stream limit does not queue requests in the
// client). Times are the client's: from the call's start to each streamed message carrying tokens.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <nlohmann/json.hpp>

#include "benchmarks/serving/serve_bench_args.h"
#include "benchmarks/serving/serve_load.h"
#include "clients/cpp/channel.h"
#include "clients/cpp/generation_result.h"
#include "clients/cpp/grpc_status.h"
#include "clients/cpp/health_check.h"
#include "common/process_exit.h"
#include "moe/v1/inference.grpc.pb.h"

namespace moe::serve_bench {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double SecondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::chrono::system_clock::time_point Deadline(double s) {
  return std::chrono::system_clock::now() + std::chrono::microseconds(static_cast<int64_t>(s * 1e6));
}

// Counts requests in flight; Acquire blocks while `limit` (> 0) are.
class InFlight {
 public:
  explicit InFlight(int64_t limit) : limit_(limit) {}
  void Acquire() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return limit_ <= 0 || n_ < limit_; });
    ++n_;
  }
  void Release() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      --n_;
    }
    cv_.notify_one();
  }

 private:
  const int64_t limit_;
  int64_t n_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
};

// One request's prompt and how many tokens it asks for.
struct Work {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<int64_t> output_lens;
};

// `n` requests; the shared prefix is the same for every call with the same --seed.
Work RandomWork(const BenchArgs& a, int64_t n, int64_t vocab, uint64_t seed) {
  Work w;
  w.prompts = RandomPrompts(RandomLengths(n, a.input_len, a.range_ratio, seed), vocab, seed + 1);
  w.output_lens = RandomLengths(n, a.output_len, a.range_ratio, seed + 2);
  if (a.shared_prefix_len > 0) {
    const std::vector<int32_t> prefix = RandomPrompts({a.shared_prefix_len}, vocab, a.seed + 3)[0];
    for (auto& p : w.prompts) p.insert(p.begin(), prefix.begin(), prefix.end());
  }
  return w;
}

void RunOne(moe::v1::Inference::Stub& stub, const BenchArgs& a, const std::vector<int32_t>& prompt,
            int64_t output_len, Clock::time_point t0, RequestRecord& rec) {
  moe::v1::GenerateRequest req;
  req.mutable_prompt()->mutable_token_ids()->mutable_ids()->Assign(prompt.begin(), prompt.end());
  auto* s = req.mutable_sampling();
  // With --max-tokens above the output length, the stream is ended here once it has output_len tokens.
  const bool client_stops = a.max_tokens > output_len;
  s->set_max_tokens(static_cast<uint32_t>(client_stops ? a.max_tokens : output_len));
  s->set_temperature(a.temperature);
  s->set_seed(a.seed + static_cast<uint64_t>(rec.index));
  s->set_ignore_eos(true);
  if (a.repetition_penalty != 1) s->set_repetition_penalty(a.repetition_penalty);
  if (a.frequency_penalty != 0) s->set_frequency_penalty(a.frequency_penalty);
  if (a.top_logprobs >= 0) s->set_logprobs(static_cast<uint32_t>(a.top_logprobs));
  if (a.json_object) s->mutable_response_format()->set_type(moe::v1::ResponseFormat::TYPE_JSON_OBJECT);
  if (!a.regex.empty()) {
    s->mutable_response_format()->set_type(moe::v1::ResponseFormat::TYPE_REGEX);
    s->mutable_response_format()->set_regex(a.regex);
  }
  if (!a.grammar.empty()) {
    s->mutable_response_format()->set_type(moe::v1::ResponseFormat::TYPE_GRAMMAR);
    s->mutable_response_format()->set_grammar(a.grammar);
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(a.timeout_s));
  rec.prompt_tokens = static_cast<int64_t>(prompt.size());
  rec.sent_s = SecondsSince(t0);
  auto reader = stub.Generate(&ctx, req);
  client::GenerationResult result;
  moe::v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.token_ids_size() > 0) {
      rec.token_message_s.push_back(SecondsSince(t0));
      rec.message_tokens.push_back(msg.token_ids_size());
    }
    result.Add(msg);
    if (client_stops && static_cast<int64_t>(result.token_ids.size()) >= output_len) {
      ctx.TryCancel();
      break;
    }
  }
  const absl::Status status = client::FromGrpc(reader->Finish());
  rec.end_s = SecondsSince(t0);
  rec.output_tokens = static_cast<int64_t>(result.token_ids.size());
  if (client_stops && rec.output_tokens >= output_len) {
    rec.finish_reason = "client_stop";
  } else if (!status.ok()) {
    rec.error = client::DescribeStatus(status);
  } else if (!result.finished()) {
    rec.error = "the stream ended without a finish reason";
  } else {
    rec.finish_reason = client::FinishReasonName(result.finish_reason);
  }
}

// Runs `work` on the schedule `arrivals`; one record per request, in order.
std::vector<RequestRecord> RunLoad(const std::vector<std::unique_ptr<moe::v1::Inference::Stub>>& stubs,
                                   const BenchArgs& a, const Work& work, const std::vector<double>& arrivals) {
  const std::vector<std::vector<int32_t>>& prompts = work.prompts;
  std::vector<RequestRecord> records(prompts.size());
  InFlight in_flight(a.max_concurrency);
  std::vector<std::thread> threads;
  threads.reserve(prompts.size());
  const Clock::time_point t0 = Clock::now();
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(arrivals[i])));
    in_flight.Acquire();
    records[i].index = static_cast<int64_t>(i);
    threads.emplace_back([&, i] {
      RunOne(*stubs[i % stubs.size()], a, prompts[i], work.output_lens[i], t0, records[i]);
      in_flight.Release();
    });
  }
  for (std::thread& t : threads) t.join();
  return records;
}

absl::Status WaitServing(const std::shared_ptr<grpc::Channel>& channel, const BenchArgs& a) {
  const Clock::time_point t0 = Clock::now();
  std::string last = "no answer";
  while (true) {
    absl::StatusOr<client::ServingStatus> s = client::CheckHealth(channel, "", std::chrono::milliseconds(2000));
    if (s.ok() && *s == grpc::health::v1::HealthCheckResponse::SERVING) return absl::OkStatus();
    last = s.ok() ? client::ServingStatusName(*s) : client::DescribeStatus(s.status());
    if (SecondsSince(t0) >= a.wait_serving_s) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  return absl::UnavailableError(
      absl::StrCat("the server at ", a.server, " was not SERVING within ", a.wait_serving_s, " s (last: ", last, ")"));
}

void PrintSummary(const json& s) {
  const auto dist = [&](const char* name, const char* key) {
    const json& d = s[key];
    if (d["count"].get<int64_t>() == 0) return;
    std::printf("%-26s mean %9.2f  median %9.2f  p90 %9.2f  p99 %9.2f\n", name, d["mean"].get<double>(),
                d["median"].get<double>(), d["p90"].get<double>(), d["p99"].get<double>());
  };
  std::printf("completed %lld, failed %lld in %.2f s (at most %lld in flight)\n",
              static_cast<long long>(s["completed"].get<int64_t>()), static_cast<long long>(s["failed"].get<int64_t>()),
              s["duration_s"].get<double>(), static_cast<long long>(s["max_in_flight"].get<int64_t>()));
  std::printf("requests/s %.2f, output tokens/s %.1f, total tokens/s %.1f\n", s["request_throughput"].get<double>(),
              s["output_throughput"].get<double>(), s["total_token_throughput"].get<double>());
  dist("time to first token (ms)", "ttft_ms");
  dist("time per output token (ms)", "tpot_ms");
  dist("inter-token latency (ms)", "itl_ms");
  dist("end to end (ms)", "e2el_ms");
  if (s.contains("prefix_cache") && s["prefix_cache"]["queried_tokens"].get<int64_t>() > 0) {
    const json& pc = s["prefix_cache"];
    std::printf("prefix cache: %lld of %lld prompt tokens found (%.1f%%)\n",
                static_cast<long long>(pc["hit_tokens"].get<int64_t>()),
                static_cast<long long>(pc["queried_tokens"].get<int64_t>()), 100.0 * pc["hit_ratio"].get<double>());
  }
  for (const auto& [error, n] : s["errors"].items()) std::printf("error x%lld: %s\n", static_cast<long long>(n.get<int64_t>()), error.c_str());
}

// The ranks' prefix-cache counters, summed over the ranks; nullopt when the server cannot be read.
struct CacheCounters {
  int64_t queried = 0, hits = 0;
};
std::optional<CacheCounters> ReadCacheCounters(moe::v1::Inference::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(5));
  moe::v1::Stats s;
  if (!stub.GetStats(&ctx, moe::v1::GetStatsRequest(), &s).ok()) return std::nullopt;
  CacheCounters c;
  for (const auto& r : s.ranks()) {
    c.queried += r.prefix_cache_queried_tokens();
    c.hits += r.prefix_cache_hit_tokens();
  }
  return c;
}

// The counters once they account for `prompt_tokens` more prompt tokens than `since` (every
// generation a rank admits is looked up once; the ranks report with heartbeats, which trail the
// streams' ends a little), or as they stand when the ranks look nothing up after 0.5 s (they do
// not cache) or after 5 s (other clients' requests); nullopt when the server cannot be read.
std::optional<CacheCounters> SettledCacheCounters(moe::v1::Inference::Stub& stub, const CacheCounters& since,
                                                  int64_t prompt_tokens) {
  const Clock::time_point t0 = Clock::now();
  while (true) {
    const std::optional<CacheCounters> c = ReadCacheCounters(stub);
    const double waited = SecondsSince(t0);
    if (!c || c->queried - since.queried >= prompt_tokens || (c->queried == since.queried && waited >= 0.5) ||
        waited >= 5) {
      return c;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

// Prompt tokens of the requests that completed.
int64_t CompletedPromptTokens(const std::vector<RequestRecord>& records) {
  int64_t n = 0;
  for (const RequestRecord& r : records) n += r.ok() ? r.prompt_tokens : 0;
  return n;
}

std::string HostName() {
  char buf[256] = {};
  return gethostname(buf, sizeof(buf) - 1) == 0 ? buf : "unknown";
}

int Run(const std::vector<std::string>& argv) {
  absl::StatusOr<BenchArgs> parsed = ParseBenchArgs(argv);
  if (!parsed.ok()) {
    std::fprintf(stderr, "moe-serve-bench: %s\n%s", std::string(parsed.status().message()).c_str(), BenchUsage().c_str());
    return 2;
  }
  const BenchArgs& a = *parsed;
  if (a.help) {
    std::fputs(BenchUsage().c_str(), stdout);
    return 0;
  }
  const absl::StatusOr<client::ChannelSecurity> security = client::SecurityFromEnv();  // MOE_API_KEY, MOE_TLS_CA_FILE
  if (!security.ok()) {
    std::fprintf(stderr, "moe-serve-bench: %s\n", std::string(security.status().message()).c_str());
    return 2;
  }
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  std::vector<std::unique_ptr<moe::v1::Inference::Stub>> stubs;
  for (int64_t c = 0; c < a.connections; ++c) {
    grpc::ChannelArguments ch_args;
    ch_args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a connection of its own
    channels.push_back(client::NewChannel(a.server, ch_args, *security));
    stubs.push_back(moe::v1::Inference::NewStub(channels.back()));
  }
  if (a.wait_serving_s > 0) {
    if (absl::Status s = WaitServing(channels[0], a); !s.ok()) {
      std::fprintf(stderr, "moe-serve-bench: %s\n", std::string(s.message()).c_str());
      return 1;
    }
  }
  moe::v1::ModelInfo model;
  moe::v1::ClusterInfo cluster;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(10));
    absl::Status s = client::FromGrpc(stubs[0]->GetModelInfo(&ctx, moe::v1::GetModelInfoRequest(), &model));
    if (s.ok()) {
      grpc::ClientContext ctx2;
      ctx2.set_deadline(Deadline(10));
      s = client::FromGrpc(stubs[0]->GetClusterInfo(&ctx2, moe::v1::GetClusterInfoRequest(), &cluster));
    }
    if (!s.ok()) {
      std::fprintf(stderr, "moe-serve-bench: cannot reach the server at %s: %s\n", a.server.c_str(),
                   client::DescribeStatus(s).c_str());
      return 1;
    }
  }
  // Every connection is opened (gRPC retrying a failed attempt) before the clock starts: neither a
  // TCP or TLS handshake in the first requests' latency, nor a request failed by a connect attempt
  // that a retry would have made.
  for (size_t c = 0; c < channels.size(); ++c) {
    if (!channels[c]->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10))) {
      std::fprintf(stderr, "moe-serve-bench: cannot open connection %zu of %zu to %s within 10 s\n", c + 1,
                   channels.size(), a.server.c_str());
      return 1;
    }
  }
  // The longest lengths --range-ratio can draw.
  const int64_t max_input = a.shared_prefix_len + LengthRange(a.input_len, a.range_ratio).second;
  const int64_t longest_output = LengthRange(a.output_len, a.range_ratio).second;
  const bool asks_more = a.max_tokens > longest_output;  // --max-tokens is what each request asks for
  const int64_t max_output = asks_more ? a.max_tokens : longest_output;
  if (max_input + max_output > model.max_context()) {
    std::fprintf(stderr,
                 "moe-serve-bench: --shared-prefix-len %lld + --input-len %lld + %s %lld (at most %lld + %lld "
                 "with --range-ratio %g) exceed the model's context of %lld tokens\n",
                 static_cast<long long>(a.shared_prefix_len), static_cast<long long>(a.input_len),
                 asks_more ? "--max-tokens" : "--output-len", static_cast<long long>(asks_more ? a.max_tokens : a.output_len),
                 static_cast<long long>(max_input), static_cast<long long>(max_output), a.range_ratio,
                 static_cast<long long>(model.max_context()));
    return 2;
  }
  std::printf("moe-serve-bench: %lld requests of %lld + %lld tokens to %s (%s, %d ranks), rate %s, concurrency %s\n",
              static_cast<long long>(a.requests), static_cast<long long>(a.input_len),
              static_cast<long long>(a.output_len), a.server.c_str(), model.model_dir().c_str(), cluster.world_size(),
              std::isinf(a.rate) ? "inf" : std::to_string(a.rate).c_str(),
              a.max_concurrency > 0 ? std::to_string(a.max_concurrency).c_str() : "unlimited");
  std::fflush(stdout);

  // The prefix-cache counters before the measured run (the server is taken to be idle at the start).
  std::optional<CacheCounters> cache_before = ReadCacheCounters(*stubs[0]);
  json warmup_summary = nullptr;
  if (a.warmup > 0) {
    const Work warmup = RandomWork(a, a.warmup, model.vocab_size(), a.seed ^ 0x9e3779b97f4a7c15ull);
    const std::vector<RequestRecord> warmup_records =
        RunLoad(stubs, a, warmup, ArrivalTimes(a.warmup, a.rate, a.seed + 1));
    warmup_summary = Summarise(warmup_records);
    if (cache_before) cache_before = SettledCacheCounters(*stubs[0], *cache_before, CompletedPromptTokens(warmup_records));
  }
  const Work work = RandomWork(a, a.requests, model.vocab_size(), a.seed);
  const std::vector<RequestRecord> records = RunLoad(stubs, a, work, ArrivalTimes(a.requests, a.rate, a.seed));
  json summary = Summarise(records);
  // What the ranks' prefix caches served of this run's prompts (0 of 0 when they do not cache).
  const std::optional<CacheCounters> after =
      cache_before ? SettledCacheCounters(*stubs[0], *cache_before, CompletedPromptTokens(records)) : std::nullopt;
  if (after) {
    const int64_t queried = after->queried - cache_before->queried, hits = after->hits - cache_before->hits;
    summary["prefix_cache"] = {{"queried_tokens", queried},
                               {"hit_tokens", hits},
                               {"hit_ratio", queried > 0 ? json(static_cast<double>(hits) / queried) : json(nullptr)}};
  }
  PrintSummary(summary);

  if (!a.out.empty()) {
    moe::v1::Stats stats;
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(10));
    const absl::Status stats_status = client::FromGrpc(stubs[0]->GetStats(&ctx, moe::v1::GetStatsRequest(), &stats));
    std::string command = "moe-serve-bench";
    for (const std::string& s : argv) command += " " + s;
    json model_json = client::ProtoToJson(model);
    model_json.erase("config_json");
    json result = {{"benchmark", "moe-serve-bench"},
                   {"commit", a.commit.empty() ? "unknown" : a.commit},
                   {"command", command},
                   {"client_host", HostName()},
                   {"args",
                    {{"server", a.server},
                     {"requests", a.requests},
                     {"rate", std::isinf(a.rate) ? json("inf") : json(a.rate)},
                     {"max_concurrency", a.max_concurrency},
                     {"input_len", a.input_len},
                     {"output_len", a.output_len},
                     {"max_tokens", a.max_tokens},
                     {"range_ratio", a.range_ratio},
                     {"shared_prefix_len", a.shared_prefix_len},
                     {"json_object", a.json_object},
                     {"regex", a.regex},
                     {"grammar", a.grammar},
                     {"repetition_penalty", a.repetition_penalty},
                     {"frequency_penalty", a.frequency_penalty},
                     {"logprobs", a.top_logprobs},
                     {"temperature", a.temperature},
                     {"seed", a.seed},
                     {"warmup", a.warmup},
                     {"connections", a.connections}}},
                   {"model", model_json},
                   {"model_config", json::parse(model.config_json(), nullptr, false)},
                   {"cluster", client::ProtoToJson(cluster)},
                   {"warmup_summary", warmup_summary},
                   {"summary", summary},
                   {"server_stats_after", stats_status.ok() ? client::ProtoToJson(stats) : json(client::DescribeStatus(stats_status))}};
    if (a.save_records) {
      json recs = json::array();
      for (const RequestRecord& r : records) recs.push_back(RecordJson(r));
      result["records"] = std::move(recs);
    }
    std::ofstream f(a.out);
    f << result.dump(1) << "\n";
    if (!f) {
      std::fprintf(stderr, "moe-serve-bench: cannot write %s\n", a.out.c_str());
      return 1;
    }
  }
  return summary["failed"].get<int64_t>() == 0 ? 0 : 1;
}

}  // namespace
}  // namespace moe::serve_bench

int main(int argc, char** argv) {
  moe::EndProcess(moe::serve_bench::Run(std::vector<std::string>(argv + 1, argv + argc)));  // common/process_exit.h
}
