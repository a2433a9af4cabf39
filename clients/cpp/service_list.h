// The services a server exposes, asked through gRPC server reflection (v1alpha list_services).
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "common/status.h"

namespace moe::client {

// Full service names ("moe.v1.Inference", "grpc.health.v1.Health", ...), sorted. A server without
// reflection answers UNIMPLEMENTED.
absl::StatusOr<std::vector<std::string>> ListServices(const std::shared_ptr<grpc::Channel>& channel,
                                                      std::chrono::milliseconds timeout);

}  // namespace moe::client
