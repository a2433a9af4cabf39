#include "clients/cpp/grpc_status.h"

namespace moe::client {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::string DescribeStatus(const absl::Status& s) {
  return absl::StrCat(absl::StatusCodeToString(s.code()), ": ", std::string(s.message()));
}

}  // namespace moe::client
