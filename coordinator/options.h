// moe-coordinator's command line. Every malformed flag is an error naming the flag.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "coordinator/scheduler.h"
#include "worker/model/generation_config.h"
#include "worker/tokenizer_file.h"

namespace moe {

struct CoordinatorOptions {
  std::string model_dir;
  // The model's name (vLLM's --served-model-name): GetModelInfo's served_model_name, the HTTP
  // front's default name for it, and the model_name label of the vLLM metrics; empty: the folder's
  // name.
  std::string served_model_name;
  // Which tokenizer file of the model folder encodes text (vLLM's --tokenizer-mode).
  TokenizerFile tokenizer_file = TokenizerFile::kAuto;
  // vLLM's --tokenizer: a folder whose tokenizer files and tokenizer_config.json (BOS/EOS, chat
  // template) serve instead of the model folder's; empty: the model folder.
  std::string tokenizer_dir;
  // Where the sampling defaults come from (vLLM's --generation-config): "auto", the model folder's
  // generation_config.json; "vllm", none (the API's own defaults); else a folder holding one.
  std::string generation_config = "auto";
  // vLLM's --override-generation-config: sampling fields over those (read when the flag is parsed);
  // empty: none.
  GenerationConfig override_generation_config;
  int world_size = 0;
  // --expert-load FILE: an earlier run's GetStats (moe-client stats), whose expert load the
  // placement plan is balanced by (PlacementPlan::Balanced); empty: Make's plan.
  std::string expert_load_file;
  std::string listen = "127.0.0.1:50051";          // public moe.v1.Inference (+ health, reflection)
  std::string cluster_listen = "127.0.0.1:50052";  // internal moe.v1.Cluster
  std::string metrics_listen = "127.0.0.1:9400";   // Prometheus /metrics; empty: none
  std::string ports_file;                          // empty: none
  // --max-waiting, --max-running-per-rank, --prefix-affinity-slack (their defaults are the
  // scheduler's).
  SchedulerLimits limits;
  int64_t max_model_len = 0;  // positions a request may use (vLLM's --max-model-len); 0: the model's context
  bool priority_scheduling = false;  // --scheduling-policy priority (vLLM's); fcfs otherwise
  double heartbeat_timeout_s = 10.0;
  // How long requests in flight when a rank is lost wait for a new worker job; 0: they fail at once.
  double resume_timeout_s = 0.0;
  // Shutdown: how long in-flight requests may take to finish before they are cancelled.
  double drain_timeout_s = 3.0;
  // Seconds between the stats lines on stderr (throughput, queue, KV use: StatsLog); 0: none.
  double log_stats_interval_s = 5.0;
  // Not empty: a worker rank's Register and Serve calls must carry it (metadata
  // moe-cluster-token), else UNAUTHENTICATED. main() reads it from MOE_CLUSTER_TOKEN, never from
  // the command line (which `ps` shows).
  std::string cluster_token;
  // Not empty: every moe.v1.Inference call must carry "authorization: Bearer <one of these>" as
  // metadata, else UNAUTHENTICATED (health checking and reflection stay open). main() reads
  // MOE_API_KEY.
  std::vector<std::string> api_keys;
  // Both or neither (PEM files): the public API (moe.v1.Inference, health, reflection) serves TLS
  // only, with this certificate chain and private key (vLLM's --ssl-certfile / --ssl-keyfile).
  // Clients verify it against MOE_TLS_CA_FILE (clients/cpp/channel.h; the Python client's
  // tls_ca_file). The cluster port has its own (below).
  std::string tls_cert_file, tls_key_file;
  // Both or neither: the cluster port (the workers' Register and Serve) serves TLS only, with this
  // certificate chain and key; workers verify it with moe-worker --coordinator-tls-ca-file. Without
  // them it is plaintext (the cluster token still authenticates the ranks).
  std::string cluster_tls_cert_file, cluster_tls_key_file;
  // Not empty (with the cluster port's TLS): the port serves only workers that show a certificate
  // these PEM roots vouch for (mutual TLS; moe-worker --cluster-tls-cert-file / --cluster-tls-key-file).
  std::string cluster_tls_client_ca_file;
};

// argv without the program name. A bare port ("50051") listens on 127.0.0.1; "none" turns the
// metrics endpoint off.
absl::StatusOr<CoordinatorOptions> ParseCoordinatorArgs(const std::vector<std::string>& args);

std::string CoordinatorUsage();

}  // namespace moe
