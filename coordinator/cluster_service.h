// The internal moe.v1.Cluster service the worker ranks talk to (sync gRPC API: one thread per
// call). Register waits for the whole job; Serve binds a rank's stream on its first message, Join
// (the rank and its job's id, sent before the rank loads), then feeds everything the rank sends to the ClusterState while a writer thread sends what the
// coordinator queued for it.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>
#include <utility>

#include "coordinator/cluster_state.h"
#include "moe/v1/cluster.grpc.pb.h"

namespace moe {

class ClusterService final : public v1::Cluster::Service {
 public:
  // `token` not empty: every call must carry it as metadata moe-cluster-token.
  ClusterService(ClusterState& state, std::string token) : state_(state), token_(std::move(token)) {}

  grpc::Status Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                        v1::RegisterResponse* response) override;
  grpc::Status Serve(grpc::ServerContext* context,
                     grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream) override;

 private:
  // OK, or UNAUTHENTICATED when the call lacks the cluster token.
  grpc::Status CheckToken(const grpc::ServerContext& context) const;

  ClusterState& state_;
  std::string token_;
};

}  // namespace moe
