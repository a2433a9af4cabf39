// Test helper: the worker side of moe.v1.Cluster played over a real loopback gRPC connection, so
// the coordinator's logic (registration barrier, health, scheduling, cancellation, loss) can be
// tested without an engine. Scripted: the test sends Tokens / Scored / Finished itself, or lets
// the worker answer every Assign automatically.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "moe/v1/cluster.grpc.pb.h"
#include "moe/v1/inference.grpc.pb.h"

namespace moe::testing_fake {

using Millis = std::chrono::milliseconds;

class FakeWorker {
 public:
  FakeWorker(int cluster_port, int rank, int world_size);
  ~FakeWorker();

  // Register runs in the background: it returns only once every rank registered.
  void StartRegister(const std::string& model_dir = "");
  grpc::Status FinishRegister(v1::RegisterResponse* response = nullptr);

  // Join, then SendLoaded.
  void Connect(int64_t kv_blocks_total = 1000, bool prefix_caching = false, int64_t kv_block_size = 16);
  // Opens the Serve stream and sends Join with the job id its Register answer carried (as a rank
  // does before it loads).
  void Join();
  // Loaded (with prefix caching: the rank caches prompt prefixes in KV blocks of `kv_block_size`
  // tokens).
  void SendLoaded(int64_t kv_blocks_total = 1000, bool prefix_caching = false, int64_t kv_block_size = 16);
  bool Send(const v1::WorkerMessage& m);
  void SendTokens(uint64_t seq_id, const std::vector<int32_t>& ids);
  void SendFinished(uint64_t seq_id, v1::Finished::Reason reason, const std::string& error = "");
  void SendHeartbeat(int64_t kv_used, int64_t kv_total, const std::string& load_stats_json = "", uint64_t steps = 0,
                     const std::vector<uint64_t>& evicted_prefix_keys = {});
  // Heartbeats from a background thread until StopHeartbeats().
  void StartHeartbeats(Millis period);
  void StopHeartbeats();

  // From now on every Assign is answered by the reader thread: KIND_GENERATE with `tokens`
  // tokens (ids 100, 101, ...) in one Tokens message each, then Finished(LENGTH); KIND_SCORE with
  // a Scored of logprob -0.1*t for token t and is_argmax = (id even), then Finished(LENGTH).
  void AutoRespond(int tokens);

  // The next coordinator message of `kind` (other kinds stay queued), or nullopt at the timeout.
  std::optional<v1::CoordinatorMessage> WaitFor(v1::CoordinatorMessage::KindCase kind, Millis timeout);
  // True once the coordinator ended the stream (before the timeout).
  bool WaitStreamEnded(Millis timeout);

  // A crash: the stream is cancelled without a goodbye.
  void Drop();
  // A clean exit after Shutdown: half-close and wait for the coordinator to end the call.
  grpc::Status CloseGracefully();

  int rank() const { return rank_; }

 private:
  void ReadLoop();
  void Respond(const v1::Assign& a, int tokens);

  int rank_, world_size_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Cluster::Stub> stub_;
  std::future<std::pair<grpc::Status, v1::RegisterResponse>> register_;
  uint64_t job_id_ = 0;  // from FinishRegister's answer

  std::unique_ptr<grpc::ClientContext> context_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::WorkerMessage, v1::CoordinatorMessage>> stream_;
  std::thread reader_;
  std::mutex write_mu_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<v1::CoordinatorMessage> inbox_;
  bool ended_ = false;
  int auto_tokens_ = -1;  // < 0: scripted

  std::thread heartbeats_;
  bool heartbeating_ = false;
  std::mutex hb_mu_;
  std::condition_variable hb_cv_;
};

// grpc.health.v1.Health/Check for the overall status, without the health proto: the request is
// an empty message, the response field 1 is the status (1 SERVING, 2 NOT_SERVING). -1 on error.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel);
constexpr int kServing = 1;
constexpr int kNotServing = 2;

// Polls `pred` every 10 ms until it holds or `timeout` passes.
bool PollUntil(const std::function<bool()>& pred, Millis timeout);

struct GenerateCall {
  grpc::Status status;
  std::vector<v1::GenerateResponse> responses;
  std::string text() const;
  std::vector<int32_t> token_ids() const;
};

// A whole Generate call. `context` may be given to cancel it from another thread.
GenerateCall RunGenerate(v1::Inference::Stub& stub, const v1::GenerateRequest& request, Millis deadline,
                         grpc::ClientContext* context = nullptr);

v1::GenerateRequest IdsRequest(std::vector<int32_t> ids, uint32_t max_tokens);

}  // namespace moe::testing_fake
