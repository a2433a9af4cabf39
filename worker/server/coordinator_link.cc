#include "worker/server/coordinator_link.h"

#include <utility>

#include "common/cluster_keepalive.h"
#include "common/secret_token.h"

namespace moe {
namespace {

absl::Status FromGrpc(const grpc::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), absl::StrCat(what, ": ", s.error_message()));
}

}  // namespace

CoordinatorLink::CoordinatorLink(std::string address, std::shared_ptr<grpc::Channel> channel, std::string cluster_token)
    : address_(std::move(address)),
      cluster_token_(std::move(cluster_token)),
      channel_(std::move(channel)),
      stub_(moe::v1::Cluster::NewStub(channel_)) {
  if (!cluster_token_.empty()) stream_ctx_.AddMetadata(kClusterTokenMetadata, cluster_token_);
}

absl::StatusOr<std::unique_ptr<CoordinatorLink>> CoordinatorLink::Connect(const std::string& address,
                                                                          std::chrono::milliseconds connect_timeout,
                                                                          std::string cluster_token,
                                                                          client::ChannelSecurity security) {
  grpc::ChannelArguments args;
  // Reconnect attempts while the coordinator is not listening yet: quick at first, at most 1 s apart.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // Keepalive pings (common/cluster_keepalive.h): a coordinator that vanished without closing the
  // connection breaks it, so the Serve stream ends UNAVAILABLE (also while this rank loads and the
  // stream is idle). Pings go on without data (gRPC stops after 2 by default) and without calls.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(kWorkerKeepAlive.time.count()));
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(kWorkerKeepAlive.timeout.count()));
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Coordinator messages are small, but a generous cap costs nothing.
  args.SetMaxReceiveMessageSize(64 << 20);
  security.api_key.clear();
  std::shared_ptr<grpc::Channel> channel = client::NewChannel(address, args, security);
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + connect_timeout)) {
    return absl::UnavailableError(absl::StrCat(
        "cannot reach the coordinator at ", address, " within ", connect_timeout.count() / 1000.0, " s",
        security.tls_ca_pem.empty()
            ? ""
            : " over TLS (is its cluster port's certificate one that --coordinator-tls-ca-file vouches for, for "
              "that host? Does it require a certificate of this rank, --cluster-tls-cert-file, that its "
              "--cluster-tls-client-ca-file vouches for?)"));
  }
  return std::unique_ptr<CoordinatorLink>(new CoordinatorLink(address, std::move(channel), std::move(cluster_token)));
}

// A rank that leaves on an error without Close (its load failed) still delivers what it queued, its
// Join above all: cancelled at once, the stream could end before the Join went out, leaving the
// coordinator no rank to count lost ("0 of N ranks loaded" again). Close's default flush time bounds
// it; a coordinator that answers ends the stream at once.
CoordinatorLink::~CoordinatorLink() { Close(); }

std::unique_ptr<CoordinatorLink::PendingRegister> CoordinatorLink::StartRegister(const moe::v1::RegisterRequest& req) {
  std::unique_ptr<PendingRegister> p(new PendingRegister);
  // No deadline: the answer waits for the slowest rank of the job to register. Not wait_for_ready:
  // Connect saw the coordinator; one gone since then fails the call (UNAVAILABLE, and with it the
  // job) instead of leaving every rank waiting for it for ever. A connection lost during the call
  // ends it UNAVAILABLE too.
  if (!cluster_token_.empty()) p->ctx_.AddMetadata(kClusterTokenMetadata, cluster_token_);
  p->thread_ = std::thread([this, call = p.get(), req] {
    absl::Status s = FromGrpc(stub_->Register(&call->ctx_, req, &call->response_), absl::StrCat("Register with ", address_));
    std::lock_guard<std::mutex> lock(call->mu_);
    call->status_ = std::move(s);
    call->cv_.notify_all();
  });
  return p;
}

CoordinatorLink::PendingRegister::~PendingRegister() {
  ctx_.TryCancel();  // nothing where the call has ended
  if (thread_.joinable()) thread_.join();
}

std::optional<absl::StatusOr<moe::v1::RegisterResponse>> CoordinatorLink::PendingRegister::Wait(
    std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return status_.has_value(); })) return std::nullopt;
  if (!status_->ok()) return absl::StatusOr<moe::v1::RegisterResponse>(*status_);
  return absl::StatusOr<moe::v1::RegisterResponse>(response_);
}

absl::Status CoordinatorLink::OpenStream(Inbox& inbox, std::chrono::milliseconds connect_timeout) {
  if (stream_) return absl::FailedPreconditionError("the Serve stream is already open");
  // Not wait_for_ready: a coordinator that went away (after Register, while the other ranks
  // registered) would otherwise keep the call (and this rank, and its job) waiting for ever for a
  // connection. But the channel may be idle (gRPC's client idle timeout, after a long Register) or
  // between reconnection attempts after a connection dropped, and a call started while an attempt
  // has just failed fails at once. So the channel gets Connect's time to be ready first; a coordinator still
  // unreachable after it ends the job, as one lost during the call does (UNAVAILABLE: the reader
  // closes the inbox and the rank leaves, naming the status).
  if (!channel_->WaitForConnected(std::chrono::system_clock::now() + connect_timeout)) {
    return absl::UnavailableError(absl::StrCat("cannot reach the coordinator at ", address_, " within ",
                                               connect_timeout.count() / 1000.0,
                                               " s to open the Serve stream (it went away after Register?)"));
  }
  auto stream = stub_->Serve(&stream_ctx_);
  if (!stream) return absl::UnavailableError(absl::StrCat("cannot open the Serve stream to ", address_));
  {
    std::lock_guard<std::mutex> lock(mu_);  // Send reads it under the lock, from any thread
    stream_ = std::move(stream);
  }
  reader_ = std::thread(&CoordinatorLink::ReaderMain, this, &inbox);
  writer_ = std::thread(&CoordinatorLink::WriterMain, this);
  return absl::OkStatus();
}

void CoordinatorLink::Send(moe::v1::WorkerMessage msg) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (write_failed_ || closing_ || !stream_) return;
    queue_.push_back(std::move(msg));
  }
  cv_.notify_all();
}

void CoordinatorLink::ReaderMain(Inbox* inbox) {
  moe::v1::CoordinatorMessage msg;
  while (stream_->Read(&msg)) inbox->Push(std::move(msg));
  // reader_done_ before the inbox closes: a rank that saw the close and then calls Close must find
  // the stream ended by the coordinator, or its exit line loses the stream's status (a race seen
  // with a rank leaving its load on the close).
  {
    std::lock_guard<std::mutex> lock(mu_);
    reader_done_ = true;
  }
  cv_.notify_all();
  inbox->Close();
}

void CoordinatorLink::WriterMain() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait(lock, [this] { return !queue_.empty() || closing_; });
    if (queue_.empty()) break;  // closing, and everything is written
    moe::v1::WorkerMessage msg = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    const bool ok = stream_->Write(msg);
    lock.lock();
    if (!ok) {
      write_failed_ = true;
      queue_.clear();
      break;
    }
  }
  if (!write_failed_) {
    lock.unlock();
    stream_->WritesDone();
    lock.lock();
  }
  writer_done_ = true;
  cv_.notify_all();
}

void CoordinatorLink::Close(std::chrono::milliseconds flush_timeout) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return;
    closed_ = true;
    closing_ = true;
  }
  cv_.notify_all();
  if (!stream_) return;
  bool ended_by_coordinator = false, ended = false;
  {
    // Let the writer flush and the coordinator end the stream; past the timeout, cancel it (which
    // unblocks a Write or Read stuck on a coordinator that stopped reading or never ends the call).
    std::unique_lock<std::mutex> lock(mu_);
    ended_by_coordinator = reader_done_;  // the stream had ended before Close: its status says why
    ended = cv_.wait_for(lock, flush_timeout, [this] { return writer_done_ && reader_done_; });
  }
  // (Not where it has ended: a cancel before Finish would replace the status the call ended with.)
  if (!ended) stream_ctx_.TryCancel();
  if (writer_.joinable()) writer_.join();
  if (reader_.joinable()) reader_.join();
  const absl::Status finished = FromGrpc(stream_->Finish(), absl::StrCat("the Serve stream to ", address_));
  if (ended_by_coordinator) stream_status_ = finished;
}

}  // namespace moe
