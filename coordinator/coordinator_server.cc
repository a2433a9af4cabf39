#include "coordinator/coordinator_server.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/health_check_service_interface.h>
#include <prometheus/exposer.h>

#include "absl/strings/str_join.h"
#include "common/cluster_keepalive.h"
#include "common/json_util.h"
#include "common/model_name.h"
#include "common/pem_file.h"
#include "coordinator/answer_size.h"
#include "coordinator/expert_load.h"
#include "worker/model/generation_config.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

std::chrono::milliseconds Millis(double seconds) {
  return std::chrono::milliseconds(static_cast<int64_t>(seconds * 1000));
}

// Every streaming call holds a server thread (sync API): leave room for many concurrent streams
// plus the worker ranks' Register and Serve calls.
constexpr int kMaxServerThreads = 4096;

void ConfigureBuilder(grpc::ServerBuilder& b) {
  grpc::ResourceQuota quota("moe-coordinator");
  quota.SetMaxThreads(kMaxServerThreads);
  b.SetResourceQuota(quota);
  b.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 2);
  b.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 8);
  // A port another process listens on is an error ("cannot listen"), as it is for the metrics port:
  // gRPC's default SO_REUSEPORT let a second coordinator share the port, each answering part of
  // the requests, and workers register with either.
  b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  // Prompts and score batches can be large.
  b.SetMaxReceiveMessageSize(static_cast<int>(kMaxMessageBytes));
  b.SetMaxSendMessageSize(static_cast<int>(kMaxMessageBytes));  // tokeniser answers are sized before they are built (answer_size.h)
}

// A port's credentials: plaintext without files, else TLS only with the PEM certificate chain and
// private key they hold, and with `client_ca_file` mutual TLS: a client must show a certificate those
// roots vouch for. Errors name the flag (`flags` is its prefix: "--tls" -> --tls-cert-file).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const std::string& cert_file,
                                                                         const std::string& key_file,
                                                                         const std::string& client_ca_file,
                                                                         const std::string& flags) {
  if (cert_file.empty()) return grpc::InsecureServerCredentials();
  MOE_ASSIGN_OR_RETURN(const std::string cert, ReadPemFile(cert_file, PemKind::kCertificate, flags + "-cert-file"));
  MOE_ASSIGN_OR_RETURN(const std::string key, ReadPemFile(key_file, PemKind::kPrivateKey, flags + "-key-file"));
  grpc::SslServerCredentialsOptions ssl;
  ssl.pem_key_cert_pairs.push_back({key, cert});
  if (!client_ca_file.empty()) {
    MOE_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                         ReadPemFile(client_ca_file, PemKind::kCertificate, flags + "-client-ca-file"));
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

// What --generation-config names (vLLM's) for requests: the model folder's generation_config.json
// ("auto"), none ("vllm"), or DIR's, under --override-generation-config.
struct ModelDefaults {
  v1::SamplingParams sampling;  // the defaults of unset fields, logged as vLLM logs them
  uint32_t max_tokens_cap = 0;  // vLLM's, from DIR's or the override's max_new_tokens
  // DIR's eos_token_id beyond the model's own end ids (the workers read the model folder's): vLLM
  // adds them to every request's stop_token_ids.
  std::vector<int32_t> stop_token_ids;
};

absl::StatusOr<ModelDefaults> SamplingDefaults(const CoordinatorOptions& options, const ModelConfig& config) {
  ModelDefaults defaults;
  v1::SamplingParams& s = defaults.sampling;
  uint32_t& cap = defaults.max_tokens_cap;
  GenerationConfig g;
  const bool from_dir = options.generation_config != "auto" && options.generation_config != "vllm";
  const std::string dir = from_dir ? options.generation_config : options.model_dir;
  if (options.generation_config != "vllm") {
    std::error_code ec;
    if (from_dir && !std::filesystem::is_regular_file(std::filesystem::path(dir) / "generation_config.json", ec)) {
      return absl::NotFoundError(absl::StrCat("--generation-config: ", dir, " has no generation_config.json"));
    }
    MOE_ASSIGN_OR_RETURN(g, GenerationConfig::FromModelDir(dir));
  }
  if (from_dir) {
    for (int64_t id : g.eos_token_ids) {
      if (id < 0 || id >= config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("--generation-config: ", dir, "/generation_config.json: eos_token_id ",
                                                       id, " is outside the vocabulary [0, ", config.vocab_size, ")"));
      }
      if (!config.is_eos(static_cast<int32_t>(id))) defaults.stop_token_ids.push_back(static_cast<int32_t>(id));
    }
  }
  const GenerationConfig& over = options.override_generation_config;
  g.Override(over);
  const std::optional<int64_t> cap_from = from_dir ? g.max_new_tokens : over.max_new_tokens;
  cap = cap_from ? static_cast<uint32_t>(*cap_from) : 0;
  if (g.temperature) s.set_temperature(static_cast<float>(*g.temperature));
  if (g.top_p) s.set_top_p(static_cast<float>(*g.top_p));
  if (g.top_k) s.set_top_k(static_cast<int32_t>(*g.top_k));
  if (g.min_p) s.set_min_p(static_cast<float>(*g.min_p));
  if (g.repetition_penalty) s.set_repetition_penalty(static_cast<float>(*g.repetition_penalty));
  if (g.max_new_tokens) s.set_max_tokens(static_cast<uint32_t>(*g.max_new_tokens));
  if (g.has_sampling_defaults()) {
    std::fprintf(stderr,
                 "moe-coordinator: default sampling parameters from %s: %s (requests that leave them unset get "
                 "them%s; --generation-config vllm turns the folder's off)\n",
                 options.generation_config == "vllm" ? "--override-generation-config" : (dir + "/generation_config.json").c_str(),
                 g.SamplingDefaultsJson().dump().c_str(), cap > 0 ? absl::StrCat(", and max_tokens is at most ", cap).c_str() : "");
  }
  if (!defaults.stop_token_ids.empty()) {
    std::fprintf(stderr, "moe-coordinator: %s/generation_config.json's eos_token_id adds stop_token_ids [%s] to every request "
                 "(but those with ignore_eos)\n", dir.c_str(), absl::StrJoin(defaults.stop_token_ids, ", ").c_str());
  }
  return defaults;
}

// Make's plan, or with --expert-load one balanced by that load; the log says how even each is.
absl::StatusOr<PlacementPlan> PlanFor(const CoordinatorOptions& options, const ModelConfig& config) {
  MOE_ASSIGN_OR_RETURN(PlacementPlan even, PlacementPlan::Make(config.num_layers, config.num_experts, options.world_size));
  if (options.expert_load_file.empty()) return even;
  MOE_ASSIGN_OR_RETURN(const std::vector<std::vector<double>> load, ReadExpertLoad(options.expert_load_file, config));
  MOE_ASSIGN_OR_RETURN(PlacementPlan balanced, PlacementPlan::Balanced(load, options.world_size));
  // The step waits for its busiest rank: the mean over layers of (busiest rank's load / mean rank load).
  auto mean_imbalance = [&](const PlacementPlan& plan) {
    double sum = 0;
    for (int64_t l = 0; l < config.num_layers; ++l) sum += plan.Imbalance(l, load[l]);
    return sum / static_cast<double>(config.num_layers);
  };
  std::fprintf(stderr,
               "moe-coordinator: experts placed by the load in %s: busiest rank / mean rank, mean over layers, "
               "%.3f (without it %.3f)\n%s",
               options.expert_load_file.c_str(), mean_imbalance(balanced), mean_imbalance(even),
               balanced.Describe().c_str());
  return balanced;
}

}  // namespace

absl::StatusOr<std::unique_ptr<CoordinatorServer>> CoordinatorServer::Start(const CoordinatorOptions& options) {
  std::unique_ptr<CoordinatorServer> s(new CoordinatorServer());
  s->options_ = options;
  MOE_ASSIGN_OR_RETURN(s->config_, ModelConfig::FromModelDir(options.model_dir));
  // Without a tokenizer file only token-id prompts work (text gets INVALID_ARGUMENT).
  const std::string& tokenizer_dir = options.tokenizer_dir.empty() ? options.model_dir : options.tokenizer_dir;
  absl::StatusOr<std::shared_ptr<const TextCodec>> codec = LoadTextCodec(tokenizer_dir, options.tokenizer_file);
  if (codec.ok()) {
    s->tokenizer_ = std::move(*codec);
  } else if (!absl::IsNotFound(codec.status()) || options.tokenizer_file != TokenizerFile::kAuto ||
             !options.tokenizer_dir.empty()) {
    // A file asked for by --tokenizer-mode or --tokenizer must be there.
    return options.tokenizer_dir.empty() ? codec.status()
                                         : absl::Status(codec.status().code(), absl::StrCat("--tokenizer: ", codec.status().message()));
  }
  // A tokenizer's ids past the model's embedding rows would reach the workers from any text.
  if (s->tokenizer_ != nullptr) {
    MOE_RETURN_IF_ERROR(CheckTokenizerVocabulary(s->tokenizer_->vocab_size(), s->config_, tokenizer_dir));
  }
  MOE_ASSIGN_OR_RETURN(PlacementPlan plan, PlanFor(options, s->config_));
  MOE_ASSIGN_OR_RETURN(ChatTemplateInfo chat, LoadChatTemplateInfo(tokenizer_dir, s->tokenizer_.get()));
  if (options.max_model_len > s->config_.context_length()) {
    return absl::InvalidArgumentError(absl::StrCat("--max-model-len: ", options.max_model_len,
                                                   " exceeds the model's context of ", s->config_.context_length(),
                                                   " positions"));
  }
  const std::string name =
      options.served_model_name.empty() ? ModelNameOfDir(options.model_dir) : options.served_model_name;
  MOE_ASSIGN_OR_RETURN(ModelDefaults defaults, SamplingDefaults(options, s->config_));
  // A fine-tune's "<|im_end|>" (validation adds each extra id to a request's stop ids once).
  if (const std::optional<int32_t> eos = TokenizerEosBeyondConfig(s->config_, s->tokenizer_.get())) {
    defaults.stop_token_ids.push_back(*eos);
    std::fprintf(stderr, "moe-coordinator: the tokenizer's EOS (id %d) ends generation too; config.json does not list it\n", *eos);
  }
  s->request_model_ = std::make_unique<RequestModel>(RequestModel{
      s->config_, s->tokenizer_.get(), std::move(chat), options.max_model_len, options.priority_scheduling, name,
      std::move(defaults.sampling), defaults.max_tokens_cap, std::move(defaults.stop_token_ids)});
  // vLLM's model_name label: the model's name (GetModelInfo's served_model_name, the HTTP front's
  // default; a --served-model-name given to the front alone does not reach it).
  s->stats_ = std::make_unique<ServingStats>(name);

  ClusterSetup setup{options.model_dir, s->config_, std::move(plan),
                     options.limits,
                     std::chrono::duration<double>(options.heartbeat_timeout_s)};
  setup.resume_timeout = std::chrono::duration<double>(options.resume_timeout_s);
  if (s->tokenizer_ != nullptr) setup.token_texts = s->tokenizer_->TokenTexts();
  s->state_ = std::make_unique<ClusterState>(std::move(setup), *s->stats_);
  s->cluster_service_ = std::make_unique<ClusterService>(*s->state_, options.cluster_token);
  s->inference_service_ =
      std::make_unique<InferenceService>(*s->request_model_, *s->state_, *s->stats_, options.api_keys);

  // Both are process-wide switches that apply to servers built afterwards.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  // TLS files are read before anything listens.
  MOE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> public_credentials,
                       ServerCredentials(options.tls_cert_file, options.tls_key_file, "", "--tls"));
  MOE_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> cluster_credentials,
                       ServerCredentials(options.cluster_tls_cert_file, options.cluster_tls_key_file,
                                         options.cluster_tls_client_ca_file, "--cluster-tls"));
  {
    grpc::ServerBuilder b;
    ConfigureBuilder(b);
    // Keepalive pings to the ranks (common/cluster_keepalive.h): a rank whose host vanished breaks
    // its connection and so ends its Serve stream, a loss also while its job loads (no heartbeats
    // then); pings go on while the coordinator sends the rank nothing (gRPC stops after 2 by default).
    // And the ranks' own pings are welcome, with or without calls.
    const ClusterKeepAlive keepalive = CoordinatorKeepAlive(options.heartbeat_timeout_s);
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(keepalive.time.count()));
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(keepalive.timeout.count()));
    b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                         static_cast<int>(kMinWorkerPingInterval.count()));
    b.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    b.AddListeningPort(options.cluster_listen, cluster_credentials, &s->ports_.cluster_port);
    b.RegisterService(s->cluster_service_.get());
    s->cluster_server_ = b.BuildAndStart();
    if (!s->cluster_server_ || s->ports_.cluster_port == 0) {
      return absl::UnavailableError(absl::StrCat("--cluster-listen: cannot listen on ", options.cluster_listen,
                                                 options.cluster_tls_cert_file.empty()
                                                     ? ""
                                                     : absl::StrCat(" (or --cluster-tls-key-file is not the key of "
                                                                    "--cluster-tls-cert-file",
                                                                    options.cluster_tls_client_ca_file.empty()
                                                                        ? ""
                                                                        : ", or --cluster-tls-client-ca-file holds no "
                                                                          "usable certificate",
                                                                    ")")));
    }
  }
  {
    grpc::ServerBuilder b;
    ConfigureBuilder(b);
    b.AddListeningPort(options.listen, public_credentials, &s->ports_.public_port);
    b.RegisterService(s->inference_service_.get());
    s->public_server_ = b.BuildAndStart();
    if (!s->public_server_ || s->ports_.public_port == 0) {
      s->cluster_server_->Shutdown();
      return absl::UnavailableError(absl::StrCat("--listen: cannot listen on ", options.listen,
                                                 options.tls_cert_file.empty()
                                                     ? ""
                                                     : " (or --tls-key-file is not the key of --tls-cert-file)"));
    }
  }
  grpc::HealthCheckServiceInterface* health = s->public_server_->GetHealthCheckService();
  s->state_->SetServingListener([health](bool serving) {
    if (health == nullptr) return;
    health->SetServingStatus(serving);  // the overall status "" and every registered service
    health->SetServingStatus("moe.v1.Inference", serving);
  });

  if (!options.metrics_listen.empty()) {
    try {
      s->exposer_ = std::make_unique<prometheus::Exposer>(options.metrics_listen, 2);
      s->exposer_->RegisterCollectable(s->stats_->registry());
      const std::vector<int> ports = s->exposer_->GetListeningPorts();
      s->ports_.metrics_port = ports.empty() ? 0 : ports.front();
    } catch (const std::exception& e) {
      s->Shutdown();
      return absl::UnavailableError(
          absl::StrCat("--metrics-listen: cannot listen on ", options.metrics_listen, ": ", e.what()));
    }
  }
  s->monitor_ = std::thread([p = s.get()] { p->MonitorLiveness(); });
  return s;
}

void CoordinatorServer::MonitorLiveness() {
  // A quarter of the timeout keeps detection within 1.25 timeouts, without spinning for short ones.
  auto period = std::clamp(Millis(options_.heartbeat_timeout_s / 4), std::chrono::milliseconds(20),
                           std::chrono::milliseconds(1000));
  // The stats line rides on the same thread: it wakes at least as often as the line is due.
  const bool log_stats = options_.log_stats_interval_s > 0;
  const auto stats_interval = Millis(options_.log_stats_interval_s);
  if (log_stats) period = std::min(period, std::max(stats_interval, std::chrono::milliseconds(20)));
  StatsLog stats_log(stats_->Counters(), Clock::now());
  auto stats_due = Clock::now() + stats_interval;
  std::unique_lock<std::mutex> lock(monitor_mu_);
  while (!monitor_cv_.wait_for(lock, period, [&] { return stopping_; })) {
    lock.unlock();
    const auto now = Clock::now();
    state_->CheckLiveness(now);
    if (log_stats && now >= stats_due) {
      stats_due = now + stats_interval;
      if (std::optional<std::string> line = stats_log.Tick(stats_->Counters(), now)) {
        std::fprintf(stderr, "moe-coordinator: %s\n", line->c_str());
      }
    }
    lock.lock();
  }
}

void CoordinatorServer::Shutdown() {
  if (shut_down_ || !state_) return;
  shut_down_ = true;
  state_->BeginDrain();
  if (!state_->WaitIdle(Clock::now() + Millis(options_.drain_timeout_s))) {
    std::fprintf(stderr, "moe-coordinator: cancelling the requests still running after %.1f s\n",
                 options_.drain_timeout_s);
  }
  state_->FailAll(absl::UnavailableError("coordinator is shutting down"));
  state_->ShutdownWorkers();
  if (!state_->WaitWorkersGone(Clock::now() + std::chrono::seconds(3))) {
    std::fprintf(stderr, "moe-coordinator: some worker ranks did not leave after Shutdown\n");
  }
  // FailAll above woke every handler waiting for results (they no longer poll on a timer); calls
  // still open at the deadline are cancelled, which ends a blocked Write and, through the
  // InferenceService's CancelWatch (every 20 ms), a handler waiting in its Mailbox.
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(2);
  if (public_server_) public_server_->Shutdown(deadline);
  if (cluster_server_) cluster_server_->Shutdown(deadline);
  {
    std::lock_guard<std::mutex> lock(monitor_mu_);
    stopping_ = true;
  }
  monitor_cv_.notify_all();
  if (monitor_.joinable()) monitor_.join();
  exposer_.reset();
}

CoordinatorServer::~CoordinatorServer() { Shutdown(); }

}  // namespace moe
