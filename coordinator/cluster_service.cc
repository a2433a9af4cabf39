#include "coordinator/cluster_service.h"

#include <memory>
#include <optional>
#include <thread>

#include "coordinator/grpc_status.h"
#include "coordinator/worker_link.h"

namespace moe {

grpc::Status ClusterService::Register(grpc::ServerContext* context, const v1::RegisterRequest* request,
                                      v1::RegisterResponse* response) {
  absl::StatusOr<v1::RegisterResponse> r = state_.Register(*request, [context] { return context->IsCancelled(); });
  if (!r.ok()) return ToGrpcStatus(r.status());
  *response = std::move(*r);
  return grpc::Status::OK;
}

grpc::Status ClusterService::Serve(grpc::ServerContext* context,
                                   grpc::ServerReaderWriter<v1::CoordinatorMessage, v1::WorkerMessage>* stream) {
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
    if (!m.has_loaded()) {
      status = grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "the first message of a Serve stream must be Loaded");
      break;
    }
    absl::StatusOr<StreamBinding> b = state_.BindStream(m.loaded(), link);
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
