#include "clients/cpp/service_list.h"

#include <algorithm>

#include <grpcpp/client_context.h>

#include "clients/cpp/grpc_status.h"
#include "grpc_std/reflection_v1alpha.grpc.pb.h"

namespace moe::client {

namespace refl = grpc::reflection::v1alpha;

absl::StatusOr<std::vector<std::string>> ListServices(const std::shared_ptr<grpc::Channel>& channel,
                                                      std::chrono::milliseconds timeout) {
  auto stub = refl::ServerReflection::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + timeout);
  auto stream = stub->ServerReflectionInfo(&ctx);

  refl::ServerReflectionRequest req;
  req.set_list_services("*");
  refl::ServerReflectionResponse resp;
  // One request, one answer; a failed write or read shows up in Finish().
  const bool exchanged = stream->Write(req) && stream->Read(&resp);
  stream->WritesDone();
  if (exchanged) {
    // Drain, so Finish() does not wait on unread messages.
    refl::ServerReflectionResponse extra;
    while (stream->Read(&extra)) {
    }
  }
  MOE_RETURN_IF_ERROR(FromGrpc(stream->Finish()));
  if (!exchanged) return absl::UnavailableError("the reflection stream closed without an answer");
  if (resp.has_error_response()) {
    return absl::Status(static_cast<absl::StatusCode>(resp.error_response().error_code()),
                        resp.error_response().error_message());
  }
  if (!resp.has_list_services_response()) {
    return absl::InternalError("the reflection answer carries no service list");
  }
  std::vector<std::string> names;
  for (const auto& s : resp.list_services_response().service()) names.push_back(s.name());
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace moe::client
