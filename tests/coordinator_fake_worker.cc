#include "coordinator_fake_worker.h"

#include <grpcpp/generic/generic_stub.h>

#include "absl/strings/str_cat.h"

namespace moe::testing_fake {

FakeWorker::FakeWorker(int cluster_port, int rank, int world_size) : rank_(rank), world_size_(world_size) {
  channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", cluster_port), grpc::InsecureChannelCredentials());
  stub_ = v1::Cluster::NewStub(channel_);
}

FakeWorker::~FakeWorker() {
  StopHeartbeats();
  Drop();
  if (register_.valid()) register_.wait();
}

void FakeWorker::StartRegister(const std::string& model_dir) {
  register_ = std::async(std::launch::async, [this, model_dir] {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    v1::RegisterRequest r;
    r.set_rank(rank_);
    r.set_world_size(world_size_);
    r.set_host("fake-host");
    r.set_device("cpu");
    r.set_memory_bytes(1 << 30);
    r.set_model_dir(model_dir);
    v1::RegisterResponse resp;
    grpc::Status s = stub_->Register(&ctx, r, &resp);
    return std::make_pair(s, resp);
  });
}

grpc::Status FakeWorker::FinishRegister(v1::RegisterResponse* response) {
  auto [status, resp] = register_.get();
  job_id_ = resp.job_id();
  if (response) *response = resp;
  return status;
}

void FakeWorker::Connect(int64_t kv_blocks_total, bool prefix_caching, int64_t kv_block_size) {
  Join();
  SendLoaded(kv_blocks_total, prefix_caching, kv_block_size);
}

void FakeWorker::Join() {
  context_ = std::make_unique<grpc::ClientContext>();
  stream_ = stub_->Serve(context_.get());
  reader_ = std::thread([this] { ReadLoop(); });
  v1::WorkerMessage m;
  m.mutable_join()->set_rank(rank_);
  m.mutable_join()->set_job_id(job_id_);
  Send(m);
}

void FakeWorker::SendLoaded(int64_t kv_blocks_total, bool prefix_caching, int64_t kv_block_size) {
  v1::WorkerMessage m;
  m.mutable_loaded()->set_rank(rank_);
  m.mutable_loaded()->set_kv_blocks_total(kv_blocks_total);
  m.mutable_loaded()->set_weight_bytes(12345);
  m.mutable_loaded()->set_prefix_caching(prefix_caching);
  m.mutable_loaded()->set_kv_block_size(kv_block_size);
  m.mutable_loaded()->set_max_batch_tokens(2048);
  Send(m);
}

void FakeWorker::ReadLoop() {
  v1::CoordinatorMessage m;
  while (stream_->Read(&m)) {
    int auto_tokens;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto_tokens = auto_tokens_;
      if (auto_tokens < 0 || !m.has_assign()) inbox_.push_back(m);
    }
    if (auto_tokens >= 0 && m.has_assign()) Respond(m.assign(), auto_tokens);
    cv_.notify_all();
  }
  std::lock_guard<std::mutex> lock(mu_);
  ended_ = true;
  cv_.notify_all();
}

void FakeWorker::Respond(const v1::Assign& a, int tokens) {
  if (a.kind() == v1::Assign::KIND_SCORE) {
    v1::WorkerMessage m;
    v1::Scored* s = m.mutable_scored();
    s->set_seq_id(a.seq_id());
    for (int t = 1; t < a.prompt_size(); ++t) {
      s->add_logprobs(-0.1f * static_cast<float>(t));
      if (a.want_greedy()) {  // even ids are the argmax; an odd one's argmax is the id below it
        s->add_is_argmax(a.prompt(t) % 2 == 0);
        s->add_argmax_ids(a.prompt(t) - a.prompt(t) % 2);
        s->add_argmax_logprobs(-0.05f * static_cast<float>(t));
      }
    }
    Send(m);
  } else {
    for (int i = 0; i < tokens && i < static_cast<int>(a.max_tokens()); ++i) SendTokens(a.seq_id(), {100 + i});
  }
  SendFinished(a.seq_id(), v1::Finished::REASON_LENGTH);
}

void FakeWorker::AutoRespond(int tokens) {
  std::deque<v1::CoordinatorMessage> pending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto_tokens_ = tokens;
    for (auto it = inbox_.begin(); it != inbox_.end();) {
      if (it->has_assign()) {
        pending.push_back(*it);
        it = inbox_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& m : pending) Respond(m.assign(), tokens);
}

bool FakeWorker::Send(const v1::WorkerMessage& m) {
  std::lock_guard<std::mutex> lock(write_mu_);
  return stream_ && stream_->Write(m);
}

void FakeWorker::SendTokens(uint64_t seq_id, const std::vector<int32_t>& ids) {
  v1::WorkerMessage m;
  m.mutable_tokens()->set_seq_id(seq_id);
  for (int32_t id : ids) {
    m.mutable_tokens()->add_token_ids(id);
    m.mutable_tokens()->add_logprobs(-1.0f);
  }
  Send(m);
}

void FakeWorker::SendFinished(uint64_t seq_id, v1::Finished::Reason reason, const std::string& error) {
  v1::WorkerMessage m;
  m.mutable_finished()->set_seq_id(seq_id);
  m.mutable_finished()->set_reason(reason);
  m.mutable_finished()->set_error(error);
  Send(m);
}

void FakeWorker::SendHeartbeat(int64_t kv_used, int64_t kv_total, const std::string& load_stats_json,
                               uint64_t steps, const std::vector<uint64_t>& evicted_prefix_keys) {
  v1::WorkerMessage m;
  v1::WorkerStats* s = m.mutable_heartbeat()->mutable_stats();
  s->set_rank(rank_);
  s->set_kv_blocks_used(kv_used);
  s->set_kv_blocks_total(kv_total);
  s->set_load_stats_json(load_stats_json);
  s->set_steps(steps);
  for (uint64_t k : evicted_prefix_keys) m.mutable_heartbeat()->add_evicted_prefix_keys(k);
  Send(m);
}

void FakeWorker::StartHeartbeats(Millis period) {
  heartbeating_ = true;
  heartbeats_ = std::thread([this, period] {
    std::unique_lock<std::mutex> lock(hb_mu_);
    while (!hb_cv_.wait_for(lock, period, [&] { return !heartbeating_; })) SendHeartbeat(0, 1000);
  });
}

void FakeWorker::StopHeartbeats() {
  {
    std::lock_guard<std::mutex> lock(hb_mu_);
    heartbeating_ = false;
  }
  hb_cv_.notify_all();
  if (heartbeats_.joinable()) heartbeats_.join();
}

std::optional<v1::CoordinatorMessage> FakeWorker::WaitFor(v1::CoordinatorMessage::KindCase kind, Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  std::optional<v1::CoordinatorMessage> found;
  cv_.wait_for(lock, timeout, [&] {
    for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
      if (it->kind_case() == kind) {
        found = *it;
        inbox_.erase(it);
        return true;
      }
    }
    return false;
  });
  return found;
}

bool FakeWorker::WaitStreamEnded(Millis timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return ended_; });
}

void FakeWorker::Drop() {
  if (!stream_) return;
  context_->TryCancel();
  if (reader_.joinable()) reader_.join();
  std::lock_guard<std::mutex> lock(write_mu_);
  stream_->Finish();
  stream_.reset();
}

grpc::Status FakeWorker::CloseGracefully() {
  if (!stream_) return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "not connected");
  {
    std::lock_guard<std::mutex> lock(write_mu_);
    stream_->WritesDone();
  }
  if (reader_.joinable()) reader_.join();
  std::lock_guard<std::mutex> lock(write_mu_);
  grpc::Status s = stream_->Finish();
  stream_.reset();
  return s;
}

int HealthStatus(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1);
  grpc::ByteBuffer response;
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(s); });
  grpc::Status s = done.get_future().get();
  if (!s.ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const grpc::Slice& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  // HealthCheckResponse { ServingStatus status = 1; }: tag 0x08 then the varint; absent = UNKNOWN.
  if (bytes.size() == 2 && bytes[0] == 0x08) return bytes[1];
  return bytes.empty() ? 0 : -1;
}

bool PollUntil(const std::function<bool()>& pred, Millis timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(Millis(10));
  }
  return pred();
}

std::string GenerateCall::text() const {
  std::string t;
  for (const auto& r : responses) t += r.text();
  return t;
}

std::vector<int32_t> GenerateCall::token_ids() const {
  std::vector<int32_t> ids;
  for (const auto& r : responses) ids.insert(ids.end(), r.token_ids().begin(), r.token_ids().end());
  return ids;
}

GenerateCall RunGenerate(v1::Inference::Stub& stub, const v1::GenerateRequest& request, Millis deadline,
                         grpc::ClientContext* context) {
  grpc::ClientContext own;
  grpc::ClientContext* ctx = context ? context : &own;
  ctx->set_deadline(std::chrono::system_clock::now() + deadline);
  GenerateCall call;
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub.Generate(ctx, request);
  v1::GenerateResponse r;
  while (reader->Read(&r)) call.responses.push_back(r);
  call.status = reader->Finish();
  return call;
}

v1::GenerateRequest IdsRequest(std::vector<int32_t> ids, uint32_t max_tokens) {
  v1::GenerateRequest r;
  r.mutable_prompt()->mutable_token_ids()->mutable_ids()->Assign(ids.begin(), ids.end());
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0);
  return r;
}

}  // namespace moe::testing_fake
