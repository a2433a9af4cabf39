// The public moe.v1.Inference service (sync gRPC API: one thread per call). Requests are
// validated, turned into sequences for the ClusterState, and their results streamed back;
// tokenisation, model and cluster information and statistics are answered locally.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "coordinator/cancel_watch.h"
#include "coordinator/cluster_state.h"
#include "coordinator/serving_stats.h"
#include "coordinator/validation.h"
#include "moe/v1/inference.grpc.pb.h"

namespace moe {

class InferenceService final : public v1::Inference::Service {
 public:
  // `api_keys` not empty: every call must carry "authorization: Bearer <one of them>" as metadata.
  InferenceService(const RequestModel& model, ClusterState& state, ServingStats& stats,
                   std::vector<std::string> api_keys = {});

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override;
  grpc::Status Score(grpc::ServerContext* context, const v1::ScoreRequest* request,
                     v1::ScoreResponse* response) override;
  grpc::Status ScoreRolling(grpc::ServerContext* context, const v1::ScoreRollingRequest* request,
                            v1::ScoreRollingResponse* response) override;
  grpc::Status Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                        v1::TokenizeResponse* response) override;
  grpc::Status Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                          v1::DetokenizeResponse* response) override;
  grpc::Status GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest* request,
                            v1::ModelInfo* response) override;
  grpc::Status GetClusterInfo(grpc::ServerContext* context, const v1::GetClusterInfoRequest* request,
                              v1::ClusterInfo* response) override;
  grpc::Status GetStats(grpc::ServerContext* context, const v1::GetStatsRequest* request,
                        v1::Stats* response) override;

 private:
  // Runs KIND_SCORE sequences to completion: their Scored messages, in submission order.
  absl::StatusOr<std::vector<v1::Scored>> RunScoring(grpc::ServerContext* context,
                                                     std::vector<SeqSubmission> seqs);

  // OK, or UNAUTHENTICATED when api_keys_ is set and the call does not carry one of them.
  grpc::Status Authorized(const grpc::ServerContext* context) const;

  const RequestModel& model_;
  ClusterState& state_;
  ServingStats& stats_;
  std::vector<std::string> api_keys_;
  // Wakes Generate and scoring handlers waiting for results once their call is cancelled.
  CancelWatch cancel_watch_;
};

}  // namespace moe
