#include "coordinator/cluster_service.h"

#include <memory>
#include <optional>
#include <thread>

#include "common/secret_token.h"
#include "coordinator/grpc_status.h"
#include "coordinator/worker_link.h"

namespace moe {

grpc::Status ClusterService::CheckToken(const grpc::ServerContext& context) const {
  if (token_.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  const auto it = metadata.find(kClusterTokenMetadata);
  const std::string_view given = it == metadata.end() ? std::string_view() : std::string_view(it->second.data(), it->second.size());
  if (SecretMatches(given, token_)) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      it == metadata.end()
                          ? "no cluster token: this coordinator was started with MOE_CLUSTER_TOKEN, so every worker rank "
                            "must have the same MOE_CLUSTER_TOKEN in its environment (mpirun -x MOE_CLUSTER_TOKEN)"
                          : "wrong cluster token: the worker's MOE_CLUSTER_TOKEN is not the coordinator's");
}

grpc::Status ClusterService::Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                                      v1::RegisterResponse* response) {
  if (grpc::Status token = CheckToken(*context); !token.ok()) return token;
  absl::StatusOr<v1::RegisterResponse> r = state_.Register(*request, [context] { return context->IsCancelled(); });
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status ClusterService::Serve(grpc::ServerContext* context,
                                   grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream) {
  if (grpc::Status token = CheckToken(*context); !token.ok()) return token;
  auto link = std::make_shared<WorkerLink>();
  std::thread writer([&] {
    while (std::optional<v1::CoordinatorMessage> m = link->Next()) {
      if (!stream->Write(*m)) {
        // The stream broke; ending the call makes the reading side see it too.
        context->TryCancel();
        break;
      }
    }
  });
  grpc::Status status = grpc::Status::OK;
  std::optional<StreamBinding> binding;
  v1::WorkerMessage m;
  while (stream->Read(&m)) {
    if (binding) {
      state_.OnWorkerMessage(*binding, m);
      continue;
    }
    if (!m.has_join()) {
      status = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                            "the first message of a Serve stream must be Join (the rank and its RegisterResponse.job_id)");
      break;
    }
    absl::StatusOr<StreamBinding> b = state_.BindStream(m.join(), link);
    if (!b.ok()) {
      status = ToGrpcStatus(b.status());
      break;
    }
    binding = *b;
  }
  if (binding) state_.OnStreamClosed(*binding);
  link->Close();
  writer.join();
  return status;
}

}  // namespace moe
