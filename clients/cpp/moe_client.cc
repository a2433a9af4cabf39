// moe-client: a command-line client of the coordinator's public moe.v1.Inference service, plus
// the standard gRPC health check and server reflection.
//
// Exit status: 0 ok, 1 the server answered with an error (or the health check is not SERVING),
// 2 bad command line.
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <nlohmann/json.hpp>

#include "clients/cpp/channel.h"
#include "clients/cpp/client_args.h"
#include "clients/cpp/generation_result.h"
#include "clients/cpp/grpc_status.h"
#include "clients/cpp/health_check.h"
#include "clients/cpp/service_list.h"
#include "common/process_exit.h"
#include "moe/v1/inference.grpc.pb.h"

namespace moe::client {
namespace {

using nlohmann::json;
using Stub = moe::v1::Inference::Stub;

constexpr double kProbeTimeoutS = 5;  // health and list-services without --timeout

void SetDeadline(grpc::ClientContext& ctx, double timeout_s) {
  if (timeout_s > 0) {
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
  }
}

absl::Status Generate(Stub& stub, const ClientOptions& o) {
  moe::v1::GenerateRequest req;
  req.set_request_id(o.request_id);
  req.set_priority(o.priority);
  *req.mutable_prompt() = o.prompt;
  *req.mutable_sampling() = o.sampling;
  grpc::ClientContext ctx;
  SetDeadline(ctx, o.timeout_s);
  auto reader = stub.Generate(&ctx, req);
  const uint32_t n = o.sampling.has_n() ? o.sampling.n() : 1;
  std::vector<GenerationResult> results(n);  // per completion (index)
  moe::v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.index() >= n) return absl::InternalError(absl::StrCat("the server sent completion ", msg.index(), " of ", n));
    results[msg.index()].Add(msg);
    if (n == 1 && !msg.text().empty()) {  // one completion streams; several print once done
      std::fwrite(msg.text().data(), 1, msg.text().size(), stdout);
      std::fflush(stdout);
    }
  }
  const absl::Status status = FromGrpc(reader->Finish());
  if (n > 1 && status.ok() && !o.json) {
    for (uint32_t i = 0; i < n; ++i) std::printf("--- completion %u ---\n%s\n", i, results[i].text.c_str());
  }
  // End the streamed text with a newline so a JSON line or the shell prompt starts a line.
  if (n == 1 && !results[0].text.empty() && results[0].text.back() != '\n') std::fputc('\n', stdout);
  MOE_RETURN_IF_ERROR(status);
  const bool with_logprobs = o.sampling.has_logprobs() && o.sampling.logprobs() > 0;
  if (o.json && n == 1) std::cout << results[0].ToJson(with_logprobs).dump() << "\n";
  if (o.json && n > 1) {
    nlohmann::json choices = nlohmann::json::array();
    for (uint32_t i = 0; i < n; ++i) {
      choices.push_back(results[i].ToJson(with_logprobs));
      choices.back()["index"] = i;
    }
    std::cout << nlohmann::json{{"request_id", results[0].request_id}, {"choices", choices}}.dump() << "\n";
  }
  return absl::OkStatus();
}

absl::Status Score(Stub& stub, const ClientOptions& o) {
  moe::v1::ScoreRequest req;
  auto* item = req.add_items();
  *item->mutable_context() = o.context;
  *item->mutable_continuation() = o.continuation;
  grpc::ClientContext ctx;
  SetDeadline(ctx, o.timeout_s);
  moe::v1::ScoreResponse resp;
  MOE_RETURN_IF_ERROR(FromGrpc(stub.Score(&ctx, req, &resp)));
  if (resp.results_size() != 1) return absl::InternalError("the server answered with no score");
  const auto& r = resp.results(0);
  if (o.json) {
    std::cout << ScoreResultJson(r).dump() << "\n";
    return absl::OkStatus();
  }
  for (int i = 0; i < r.logprobs_size(); ++i) {
    std::printf("%d\t%.6f\n", i < r.continuation_token_ids_size() ? r.continuation_token_ids(i) : -1, r.logprobs(i));
  }
  std::printf("sum_logprob\t%.6f\nis_greedy\t%s\n", r.sum_logprob(), r.is_greedy() ? "true" : "false");
  return absl::OkStatus();
}

absl::Status ScoreRolling(Stub& stub, const ClientOptions& o) {
  moe::v1::ScoreRollingRequest req;
  *req.add_texts() = o.prompt;
  grpc::ClientContext ctx;
  SetDeadline(ctx, o.timeout_s);
  moe::v1::ScoreRollingResponse resp;
  MOE_RETURN_IF_ERROR(FromGrpc(stub.ScoreRolling(&ctx, req, &resp)));
  if (resp.results_size() != 1) return absl::InternalError("the server answered with no score");
  const auto& r = resp.results(0);
  if (o.json) {
    std::cout << ScoreRollingResultJson(r).dump() << "\n";
    return absl::OkStatus();
  }
  // Token i+1 is scored by logprobs[i]; the first token has no context.
  for (int i = 0; i < r.logprobs_size(); ++i) {
    std::printf("%d\t%.6f\n", i + 1 < r.token_ids_size() ? r.token_ids(i + 1) : -1, r.logprobs(i));
  }
  std::printf("sum_logprob\t%.6f\nnum_scored_tokens\t%u\n", r.sum_logprob(), r.num_scored_tokens());
  return absl::OkStatus();
}

absl::Status Tokenize(Stub& stub, const ClientOptions& o) {
  moe::v1::TokenizeRequest req;
  req.set_text(o.prompt.text());
  if (o.add_bos) req.set_add_bos(*o.add_bos);
  grpc::ClientContext ctx;
  SetDeadline(ctx, o.timeout_s);
  moe::v1::TokenizeResponse resp;
  MOE_RETURN_IF_ERROR(FromGrpc(stub.Tokenize(&ctx, req, &resp)));
  std::vector<int32_t> ids(resp.token_ids().begin(), resp.token_ids().end());
  if (o.json) {
    std::cout << json{{"token_ids", ids}}.dump() << "\n";
  } else {
    std::string line;
    for (int32_t id : ids) line += (line.empty() ? "" : ",") + std::to_string(id);
    std::cout << line << "\n";
  }
  return absl::OkStatus();
}

absl::Status Detokenize(Stub& stub, const ClientOptions& o) {
  moe::v1::DetokenizeRequest req;
  req.mutable_token_ids()->Assign(o.token_ids.begin(), o.token_ids.end());
  req.set_return_pieces(o.json);  // --json: each id's vocabulary entry too
  if (o.keep_special_tokens) req.set_skip_special_tokens(false);
  grpc::ClientContext ctx;
  SetDeadline(ctx, o.timeout_s);
  moe::v1::DetokenizeResponse resp;
  MOE_RETURN_IF_ERROR(FromGrpc(stub.Detokenize(&ctx, req, &resp)));
  if (o.json) {
    std::cout << json{{"text", resp.text()}, {"pieces", std::vector<std::string>(resp.pieces().begin(), resp.pieces().end())}}.dump()
              << "\n";
  } else {
    std::cout << resp.text() << "\n";
  }
  return absl::OkStatus();
}

void PrintInfoText(const moe::v1::ModelInfo& m, const moe::v1::ClusterInfo& c) {
  std::printf("model: %s (%s)\n", m.model_dir().c_str(), m.architecture().c_str());
  std::printf("  vocabulary %lld, context %lld, %lld layers, %lld experts (top-%lld)\n",
              static_cast<long long>(m.vocab_size()), static_cast<long long>(m.max_context()),
              static_cast<long long>(m.num_layers()), static_cast<long long>(m.num_experts()),
              static_cast<long long>(m.experts_per_token()));
  std::printf("  parameters: %lld total, %lld active per token\n", static_cast<long long>(m.total_parameters()),
              static_cast<long long>(m.active_parameters()));
  std::printf("cluster: %d ranks, %s\n", c.world_size(), c.serving() ? "serving" : "not serving");
  for (const auto& r : c.ranks()) {
    std::string experts;
    for (int64_t e : r.experts_layer0()) experts += (experts.empty() ? "" : ",") + std::to_string(e);
    std::printf("  rank %d: %s %s, weights %.1f MB, layer-0 experts [%s], %s, %s", r.rank(), r.host().c_str(),
                r.device().c_str(), static_cast<double>(r.weight_bytes()) / 1e6, experts.c_str(),
                r.loaded() ? "loaded" : "not loaded", r.alive() ? "alive" : "lost");
    if (r.kv_blocks_total() > 0) {
      std::printf(", KV cache %lld positions (%lld blocks)", static_cast<long long>(r.kv_blocks_total() * r.kv_block_size()),
                  static_cast<long long>(r.kv_blocks_total()));
    }
    if (r.max_batch_tokens() > 0) std::printf(", up to %lld tokens a step", static_cast<long long>(r.max_batch_tokens()));
    std::printf("\n");
  }
}

absl::Status Info(Stub& stub, const ClientOptions& o) {
  moe::v1::ModelInfo model;
  moe::v1::ClusterInfo cluster;
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, o.timeout_s);
    MOE_RETURN_IF_ERROR(FromGrpc(stub.GetModelInfo(&ctx, moe::v1::GetModelInfoRequest(), &model)));
  }
  {
    grpc::ClientContext ctx;
    SetDeadline(ctx, o.timeout_s);
    MOE_RETURN_IF_ERROR(FromGrpc(stub.GetClusterInfo(&ctx, moe::v1::GetClusterInfoRequest(), &cluster)));
  }
  if (o.json) {
    std::cout << json{{"model", ProtoToJson(model)}, {"cluster", ProtoToJson(cluster)}}.dump() << "\n";
  } else {
    PrintInfoText(model, cluster);
  }
  return absl::OkStatus();
}

absl::Status Stats(Stub& stub, const ClientOptions& o) {
  grpc::ClientContext ctx;
  SetDeadline(ctx, o.timeout_s);
  moe::v1::Stats stats;
  MOE_RETURN_IF_ERROR(FromGrpc(stub.GetStats(&ctx, moe::v1::GetStatsRequest(), &stats)));
  std::cout << ProtoToJson(stats).dump() << "\n";
  return absl::OkStatus();
}

std::chrono::milliseconds ProbeTimeout(const ClientOptions& o) {
  return std::chrono::milliseconds(static_cast<int64_t>((o.timeout_s > 0 ? o.timeout_s : kProbeTimeoutS) * 1000));
}

// Returns the exit status: 0 only when SERVING.
absl::StatusOr<int> Health(const std::shared_ptr<grpc::Channel>& channel, const ClientOptions& o) {
  MOE_ASSIGN_OR_RETURN(ServingStatus s, CheckHealth(channel, o.service, ProbeTimeout(o)));
  std::cout << ServingStatusName(s) << "\n";
  return s == grpc::health::v1::HealthCheckResponse::SERVING ? 0 : 1;
}

absl::Status ListServicesCommand(const std::shared_ptr<grpc::Channel>& channel, const ClientOptions& o) {
  MOE_ASSIGN_OR_RETURN(std::vector<std::string> names, ListServices(channel, ProbeTimeout(o)));
  for (const std::string& n : names) std::cout << n << "\n";
  return absl::OkStatus();
}

absl::StatusOr<int> Run(const ClientOptions& o) {
  MOE_ASSIGN_OR_RETURN(const ChannelSecurity security, SecurityFromEnv());  // MOE_API_KEY, MOE_TLS_CA_FILE
  auto channel = NewChannel(o.server, grpc::ChannelArguments(), security);
  if (o.command == "health") return Health(channel, o);
  if (o.command == "list-services") {
    MOE_RETURN_IF_ERROR(ListServicesCommand(channel, o));
    return 0;
  }
  auto stub = moe::v1::Inference::NewStub(channel);
  absl::Status s;
  if (o.command == "generate") s = Generate(*stub, o);
  else if (o.command == "score") s = Score(*stub, o);
  else if (o.command == "score-rolling") s = ScoreRolling(*stub, o);
  else if (o.command == "tokenize") s = Tokenize(*stub, o);
  else if (o.command == "detokenize") s = Detokenize(*stub, o);
  else if (o.command == "info") s = Info(*stub, o);
  else if (o.command == "stats") s = Stats(*stub, o);
  else s = absl::InternalError(absl::StrCat("unhandled command ", o.command));
  MOE_RETURN_IF_ERROR(s);
  return 0;
}

}  // namespace
}  // namespace moe::client

namespace {

int RunClient(const std::vector<std::string>& args) {
  absl::StatusOr<moe::client::ClientOptions> opts = moe::client::ParseClientArgs(args);
  if (!opts.ok() && opts.status().message() == "usage") {  // --help
    std::fputs(moe::client::ClientUsage().c_str(), stdout);
    return 0;
  }
  if (!opts.ok()) {
    std::fprintf(stderr, "moe-client: %s\n%s", std::string(opts.status().message()).c_str(),
                 moe::client::ClientUsage().c_str());
    return 2;
  }
  absl::StatusOr<int> rc = moe::client::Run(*opts);
  if (!rc.ok()) {
    std::fflush(stdout);
    std::fprintf(stderr, "moe-client: %s\n", moe::client::DescribeStatus(rc.status()).c_str());
    return 1;
  }
  return *rc;
}

}  // namespace

int main(int argc, char** argv) {
  moe::EndProcess(RunClient(std::vector<std::string>(argv + 1, argv + argc)));  // common/process_exit.h
}
