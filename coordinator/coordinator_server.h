// The whole coordinator in one object: the model's config and tokenizer, the placement plan, the
// cluster state, the public server (moe.v1.Inference, health, reflection), the cluster server
// (moe.v1.Cluster), the Prometheus endpoint and the liveness monitor. main() starts it and, on a
// signal, shuts it down; tests run it in-process.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "common/status.h"
#include "coordinator/cluster_service.h"
#include "coordinator/cluster_state.h"
#include "coordinator/inference_service.h"
#include "coordinator/options.h"
#include "coordinator/ports_file.h"
#include "coordinator/serving_stats.h"
#include "coordinator/text_codec.h"

namespace prometheus {
class Exposer;
}

namespace moe {

class CoordinatorServer {
 public:
  // Loads the model's config (and tokenizer.model when the folder has one), computes the plan and
  // starts listening. Errors name the bad flag, file or address.
  static absl::StatusOr<std::unique_ptr<CoordinatorServer>> Start(const CoordinatorOptions& options);
  ~CoordinatorServer();

  const BoundPorts& ports() const { return ports_; }
  ClusterState& state() { return *state_; }

  // Graceful stop: health NOT_SERVING and new requests UNAVAILABLE; in-flight requests get up
  // to drain_timeout_s to finish, then end with UNAVAILABLE; every worker gets Shutdown; the
  // servers stop. Idempotent.
  void Shutdown();

 private:
  CoordinatorServer() = default;
  void MonitorLiveness();

  CoordinatorOptions options_;
  ModelConfig config_;
  std::shared_ptr<const TextCodec> tokenizer_;
  std::unique_ptr<RequestModel> request_model_;
  std::unique_ptr<ServingStats> stats_;
  std::unique_ptr<ClusterState> state_;
  std::unique_ptr<ClusterService> cluster_service_;
  std::unique_ptr<InferenceService> inference_service_;
  std::unique_ptr<grpc::Server> cluster_server_;
  std::unique_ptr<grpc::Server> public_server_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  BoundPorts ports_;

  std::mutex monitor_mu_;
  std::condition_variable monitor_cv_;
  bool stopping_ = false;
  std::thread monitor_;
  bool shut_down_ = false;
};

}  // namespace moe
