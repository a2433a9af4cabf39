// Command-line flags of moe-worker: every malformed flag is an error that names the flag.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/model/config.h"
#include "worker/server/batch_planner.h"

namespace moe {

struct WorkerFlags {
  std::string coordinator;  // HOST:PORT of the coordinator's cluster service (required)
  // Not empty: the cluster service is TLS (moe-coordinator --cluster-tls-cert-file), its certificate
  // verified against these PEM roots for the --coordinator host (or MOE_TLS_SERVER_NAME).
  std::string coordinator_tls_ca_file;
  // Both or neither (with coordinator_tls_ca_file): the certificate chain and key this rank shows the
  // cluster port, for a coordinator that requires one (--cluster-tls-client-ca-file, mutual TLS).
  std::string cluster_tls_cert_file, cluster_tls_key_file;
  std::string model_dir;    // empty: the coordinator's RegisterResponse.model_dir
  int64_t kv_tokens = 0;    // KV cache positions per rank; 0: the GPU's memory budget, or DefaultKvTokens
  double gpu_memory_utilization = 0.9;  // the fraction of a GPU's memory this rank may use
  int64_t kv_block_size = 16;
  int64_t max_batch_tokens = 2048;
  std::string device = "cpu";  // "cpu" or "gpu" (one GPU per rank: the node-local rank's)
  // Seeded random weights generated on the GPU for the model's config.json instead of reading a
  // checkpoint (full-size serving benchmarks without one); GPU ranks only.
  std::optional<uint64_t> synthetic_seed;
  // Keep filled KV blocks for later prompts that start with the same tokens (KvBlockAllocator).
  bool enable_prefix_caching = true;  // --no-enable-prefix-caching turns it off (vLLM's names)
  // How sequences are admitted to the KV cache (BatchPlanner): on demand with preemption, or with
  // their worst case reserved.
  KvAdmission kv_admission = KvAdmission::kOnDemand;
  // GPU ranks over NCCL on one node: the decode steps' MoE rows written straight into the other
  // GPUs' memory (worker/gpu/peer_exchange.h). Off by default until measured on several GPUs.
  bool enable_peer_exchange = false;
  // --device-exchange-experts cublas|wgmma (GPU ranks, expert-parallel decode above 48 routed rows
  // per expert): how the experts run behind the device exchange (ExpertGemmTuning::
  // device_exchange_wgmma). cuBLAS (the default) waits for the counts on the host once a layer;
  // wgmma reads them on the device, so such steps are CUDA graphs too.
  std::string device_exchange_experts = "cublas";
  // A serving loop that has sent no heartbeat of its own for this many seconds (a step that does not
  // end, e.g. in a collective a peer never joins) is taken for stuck: the rank stops heartbeating
  // (KeepAliveOutbox), so the coordinator counts it lost. 0: never, else at least 10 (the loop
  // heartbeats about once a second). As vLLM's VLLM_ENGINE_ITERATION_TIMEOUT_S, but generous: a CPU
  // rank's step of a large model may take minutes.
  int64_t step_timeout_s = 600;
  bool help = false;
};

// argv without the program name; accepts "--flag VALUE" and "--flag=VALUE".
absl::StatusOr<WorkerFlags> ParseWorkerFlags(const std::vector<std::string>& args);
std::string WorkerUsage();

// A CPU rank's KV positions without --kv-tokens: 64 sequences of the full context, at most 262144.
int64_t DefaultKvTokens(const ModelConfig& c);

}  // namespace moe
