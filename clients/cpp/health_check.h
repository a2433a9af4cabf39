// grpc.health.v1.Health/Check: whether a server (or one of its services) is serving.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/channel.h>

#include "common/status.h"
#include "grpc_std/health_v1.pb.h"

namespace moe::client {

using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

// The status the server reports for `service` ("" = the whole server); an RPC failure (server
// unreachable, deadline passed) is returned as the error.
absl::StatusOr<ServingStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                                          std::chrono::milliseconds timeout);

// "SERVING", "NOT_SERVING", "UNKNOWN", "SERVICE_UNKNOWN".
std::string ServingStatusName(ServingStatus s);

}  // namespace moe::client
