#include "clients/cpp/health_check.h"

#include <grpcpp/client_context.h>

#include "clients/cpp/grpc_status.h"
#include "grpc_std/health_v1.grpc.pb.h"

namespace moe::client {

absl::StatusOr<ServingStatus> CheckHealth(const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
                                          std::chrono::milliseconds timeout) {
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  MOE_RETURN_IF_ERROR(FromGrpc(stub->Check(&ctx, req, &resp)));
  return resp.status();
}

std::string ServingStatusName(ServingStatus s) {
  return grpc::health::v1::HealthCheckResponse::ServingStatus_Name(s);
}

}  // namespace moe::client
