// gRPC statuses as absl::Status (the two code sets are numerically identical), and the one-line
// form the client prints for an error: "CODE: message".
#pragma once

#include <string>

#include <grpcpp/support/status.h>

#include "common/status.h"

namespace moe::client {

absl::Status FromGrpc(const grpc::Status& s);

// "INVALID_ARGUMENT: top_p must be in (0, 1]".
std::string DescribeStatus(const absl::Status& s);

}  // namespace moe::client
