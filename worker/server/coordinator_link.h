// A worker rank's connection to the coordinator: Register, then the one bidirectional Serve stream.
// A reader thread feeds every CoordinatorMessage into an Inbox (and closes it when the stream ends);
// Send() queues WorkerMessages for a writer thread, which is the only caller of Write, so the
// serving loop never blocks on the network and writes never interleave.
#pragma once

#include "clients/cpp/channel.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "common/status.h"
#include "moe/v1/cluster.grpc.pb.h"
#include "worker/server/inbox.h"
#include "worker/server/outbox.h"

namespace moe {

class CoordinatorLink final : public Outbox {
 public:
  // Connects to `address` (HOST:PORT), retrying for up to `connect_timeout` so that workers may
  // start before the coordinator listens. Unavailable when it cannot be reached in time.
  // `cluster_token` not empty: sent with every call (metadata moe-cluster-token), as a coordinator
  // started with MOE_CLUSTER_TOKEN requires. `security.tls_ca_pem` not empty: TLS, the
  // coordinator's certificate verified against it (its api_key is not used: the cluster service
  // takes the cluster token).
  static absl::StatusOr<std::unique_ptr<CoordinatorLink>> Connect(const std::string& address,
                                                                  std::chrono::milliseconds connect_timeout,
                                                                  std::string cluster_token = "",
                                                                  client::ChannelSecurity security = {});
  ~CoordinatorLink() override;

  // A Register call under way. The coordinator answers it once every rank of the job has
  // registered, so it may wait for ever on a rank that failed: Wait polls it, and destroying it
  // cancels a call still waiting.
  class PendingRegister {
   public:
    ~PendingRegister();
    // The answer, where it came within `timeout`; nothing before.
    std::optional<absl::StatusOr<moe::v1::RegisterResponse>> Wait(std::chrono::milliseconds timeout);

   private:
    friend class CoordinatorLink;
    PendingRegister() = default;
    grpc::ClientContext ctx_;
    moe::v1::RegisterResponse response_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::optional<absl::Status> status_;  // set once the call ended
    std::thread thread_;
  };
  // Starts Register (no deadline: it waits for the job's other ranks). A coordinator that cannot
  // be reached when the call starts (it went away after Connect) fails it at once, UNAVAILABLE,
  // rather than leaving it waiting for a connection that may never come back. The call refers to
  // this link: the PendingRegister must not outlive it.
  std::unique_ptr<PendingRegister> StartRegister(const moe::v1::RegisterRequest& req);

  // Opens the Serve stream and starts the reader (into `inbox`, which must outlive the link) and
  // the writer threads. moe-worker opens it right after Register, before it loads. The channel
  // first gets up to `connect_timeout` to be ready (it may be reconnecting): a coordinator still
  // unreachable then fails it
  // (UNAVAILABLE); one lost once the call has started ends the stream (UNAVAILABLE, seen as the
  // inbox closing). Neither waits for the coordinator to come back.
  absl::Status OpenStream(Inbox& inbox, std::chrono::milliseconds connect_timeout);

  // Queues a message for the writer thread. Dropped once the stream has failed or is closing.
  void Send(moe::v1::WorkerMessage msg) override;

  // Writes what is queued (waiting at most `flush_timeout`), half-closes the stream, waits the same
  // time for the coordinator to end it, then cancels it and joins the threads. Idempotent.
  void Close(std::chrono::milliseconds flush_timeout = std::chrono::seconds(3));

  // After Close: why the Serve stream ended where it ended before Close (the coordinator refused
  // or ended it, or the connection was lost: its gRPC status, naming the coordinator); OK where
  // Close ended it, or no stream was opened.
  const absl::Status& stream_status() const { return stream_status_; }

 private:
  CoordinatorLink(std::string address, std::shared_ptr<grpc::Channel> channel, std::string cluster_token);
  void ReaderMain(Inbox* inbox);
  void WriterMain();

  std::string address_;
  std::string cluster_token_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<moe::v1::Cluster::Stub> stub_;
  grpc::ClientContext stream_ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<moe::v1::WorkerMessage, moe::v1::CoordinatorMessage>> stream_;
  std::thread reader_, writer_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<moe::v1::WorkerMessage> queue_;
  bool closing_ = false;       // Close() called: the writer drains the queue, then half-closes
  bool write_failed_ = false;  // the stream is broken: nothing more can be written
  bool writer_done_ = false;
  bool reader_done_ = false;
  bool closed_ = false;
  absl::Status stream_status_;  // set by Close
};

}  // namespace moe
