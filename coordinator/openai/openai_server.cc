#include "coordinator/openai/openai_server.h"

#include <chrono>
#include <ctime>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include <civetweb.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "clients/cpp/health_check.h"
#include "coordinator/openai/openai_protocol.h"

namespace moe::openai {
namespace {

using nlohmann::json;

constexpr long long kMaxBodyBytes = 16 << 20;

int64_t UnixNow() { return static_cast<int64_t>(std::time(nullptr)); }

void SendJson(mg_connection* conn, int status, const json& j) {
  const std::string body = j.dump();
  mg_printf(conn,
            "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
            status, mg_get_response_code_text(conn, status), body.size());
  mg_write(conn, body.data(), body.size());
}

int SendError(mg_connection* conn, const HttpError& e) {
  SendJson(conn, e.status, e.ToJson());
  return e.status;
}

// One server-sent event; false when the client has gone.
bool SendEvent(mg_connection* conn, const std::string& data) {
  const std::string event = "data: " + data + "\n\n";
  return mg_write(conn, event.data(), event.size()) == static_cast<int>(event.size());
}

bool IsMethod(mg_connection* conn, const char* method) {
  return std::string(mg_get_request_info(conn)->request_method) == method;
}

int MethodNotAllowed(mg_connection* conn, const char* allowed) {
  return SendError(conn, HttpError{405, std::string("use ") + allowed, "invalid_request_error", {}});
}

absl::StatusOr<std::string> ReadBody(mg_connection* conn) {
  const long long length = mg_get_request_info(conn)->content_length;
  if (length > kMaxBodyBytes) return absl::InvalidArgumentError("the request body exceeds 16 MiB");
  std::string body;
  char buf[8192];
  while (static_cast<long long>(body.size()) <= kMaxBodyBytes) {
    const int n = mg_read(conn, buf, sizeof(buf));
    if (n <= 0) break;
    body.append(buf, static_cast<size_t>(n));
  }
  if (static_cast<long long>(body.size()) > kMaxBodyBytes) return absl::InvalidArgumentError("the request body exceeds 16 MiB");
  return body;
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpenAiServer>> OpenAiServer::Start(const ServerOptions& opts) {
  std::unique_ptr<OpenAiServer> s(new OpenAiServer());
  s->channel_ = grpc::CreateChannel(opts.coordinator, grpc::InsecureChannelCredentials());
  s->stub_ = v1::Inference::NewStub(s->channel_);
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(opts.connect_timeout_s * 1000));
  if (!s->channel_->WaitForConnected(deadline)) {
    return absl::UnavailableError(absl::StrCat("the coordinator at ", opts.coordinator, " did not answer within ",
                                               opts.connect_timeout_s, " s"));
  }
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  v1::ModelInfo info;
  const grpc::Status got = s->stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info);
  if (!got.ok()) return absl::UnavailableError(absl::StrCat("GetModelInfo from ", opts.coordinator, ": ", got.error_message()));
  s->model_name_ = opts.model_name;
  if (s->model_name_.empty()) {
    std::string dir = info.model_dir();
    while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
    s->model_name_ = dir.substr(dir.find_last_of('/') + 1);
  }
  s->max_model_len_ = info.max_context();
  s->created_ = UnixNow();

  mg_init_library(0);
  const std::string threads = std::to_string(opts.threads);
  const char* options[] = {"listening_ports", opts.listen.c_str(), "num_threads", threads.c_str(),
                           "request_timeout_ms", "600000", nullptr};
  mg_callbacks callbacks{};
  s->ctx_ = mg_start(&callbacks, s.get(), options);
  if (s->ctx_ == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot listen on ", opts.listen, " (bad address or port in use)"));
  }
  mg_server_port ports[4];
  const int n = mg_get_server_ports(s->ctx_, 4, ports);
  s->port_ = n > 0 ? ports[0].port : 0;
  mg_set_request_handler(s->ctx_, "/v1/completions$", &OpenAiServer::HandleCompletions, s.get());
  mg_set_request_handler(s->ctx_, "/v1/models$", &OpenAiServer::HandleModels, s.get());
  mg_set_request_handler(s->ctx_, "/health$", &OpenAiServer::HandleHealth, s.get());
  mg_set_request_handler(s->ctx_, "/", &OpenAiServer::HandleUnknown, s.get());  // registered last: the rest
  return s;
}

OpenAiServer::HandlerScope::HandlerScope(OpenAiServer& s) : s_(s) {
  std::lock_guard<std::mutex> lock(s_.mu_);
  admitted_ = !s_.stopping_;
  if (admitted_) ++s_.handlers_;
}

OpenAiServer::HandlerScope::~HandlerScope() {
  if (!admitted_) return;
  std::lock_guard<std::mutex> lock(s_.mu_);
  if (--s_.handlers_ == 0) s_.handlers_done_.notify_all();
}

OpenAiServer::CallScope::CallScope(OpenAiServer& s, grpc::ClientContext& ctx) : s_(s), ctx_(ctx) {
  std::lock_guard<std::mutex> lock(s_.mu_);
  s_.calls_.insert(&ctx_);
  if (s_.stopping_) ctx_.TryCancel();  // admitted before the stop began, called after
}

OpenAiServer::CallScope::~CallScope() {
  std::lock_guard<std::mutex> lock(s_.mu_);
  s_.calls_.erase(&ctx_);
}

bool OpenAiServer::Stopping() {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

OpenAiServer::~OpenAiServer() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    stopping_ = true;
    for (grpc::ClientContext* c : calls_) c->TryCancel();
    handlers_done_.wait_for(lock, std::chrono::seconds(10), [&] { return handlers_ == 0; });
  }
  if (ctx_ != nullptr) mg_stop(ctx_);
}

int OpenAiServer::HandleModels(mg_connection* conn, void* self) {
  if (!IsMethod(conn, "GET")) return MethodNotAllowed(conn, "GET");
  auto* s = static_cast<OpenAiServer*>(self);
  SendJson(conn, 200, ModelsJson(s->model_name_, s->max_model_len_, s->created_));
  return 200;
}

int OpenAiServer::HandleUnknown(mg_connection* conn, void*) {
  const std::string uri = mg_get_request_info(conn)->local_uri != nullptr ? mg_get_request_info(conn)->local_uri : "";
  return SendError(conn, HttpError{404, "no such endpoint: " + uri + " (this server has /v1/completions, /v1/models, /health)",
                                   "NotFoundError", {}});
}

int OpenAiServer::HandleHealth(mg_connection* conn, void* self) {
  auto* s = static_cast<OpenAiServer*>(self);
  const absl::StatusOr<client::ServingStatus> h = client::CheckHealth(s->channel_, "", std::chrono::milliseconds(2000));
  const bool serving = h.ok() && *h == grpc::health::v1::HealthCheckResponse::SERVING;
  SendJson(conn, serving ? 200 : 503,
           {{"status", h.ok() ? client::ServingStatusName(*h) : std::string(h.status().message())}});
  return serving ? 200 : 503;
}

int OpenAiServer::HandleCompletions(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->Completions(conn);
}

int OpenAiServer::Completions(mg_connection* conn) {
  if (!IsMethod(conn, "POST")) return MethodNotAllowed(conn, "POST");
  const HandlerScope handler(*this);
  if (!handler.admitted()) return SendError(conn, HttpError{503, "the server is stopping", "server_error", {}});
  absl::StatusOr<std::string> body = ReadBody(conn);
  if (!body.ok()) return SendError(conn, HttpError{413, std::string(body.status().message()), "invalid_request_error", {}});
  std::variant<CompletionCall, HttpError> parsed = ParseCompletionRequest(*body, model_name_);
  if (auto* e = std::get_if<HttpError>(&parsed)) return SendError(conn, *e);
  const CompletionCall& call = std::get<CompletionCall>(parsed);
  const int64_t created = UnixNow();
  if (call.stream) return StreamCompletion(conn, call, created);

  // Whole answers, the prompts of a batch at once (each its own gRPC call, so the cluster batches
  // them as it batches separate requests); the first error, in prompt order, is the answer.
  std::vector<std::variant<nlohmann::json, HttpError>> answers(call.prompts.size());
  if (call.prompts.size() == 1) {
    answers[0] = WholeAnswer(call, call.prompts[0], created);
  } else {
    std::vector<std::thread> threads;
    for (size_t i = 0; i < call.prompts.size(); ++i) {
      threads.emplace_back([&, i] { answers[i] = WholeAnswer(call, call.prompts[i], created); });
    }
    for (std::thread& t : threads) t.join();
  }
  std::vector<nlohmann::json> whole;
  for (auto& a : answers) {
    if (auto* e = std::get_if<HttpError>(&a)) return SendError(conn, *e);
    whole.push_back(std::move(std::get<nlohmann::json>(a)));
  }
  SendJson(conn, 200, whole.size() == 1 ? whole[0] : MergeAnswers(whole, call.n));
  return 200;
}

int OpenAiServer::StreamCompletion(mg_connection* conn, const CompletionCall& call, int64_t created) {
  grpc::ClientContext ctx;
  const CallScope scope(*this, ctx);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&ctx, call.request);
  v1::GenerateResponse msg;
  // The coordinator checks the request before it sends anything: a stream that ends without a
  // message is an error the client gets as an HTTP status, not as an event.
  if (!reader->Read(&msg)) {
    const grpc::Status st = reader->Finish();
    if (st.ok()) return SendError(conn, HttpError{500, "the coordinator sent no completion", "server_error", {}});
    return SendError(conn, FromGrpcError(st.error_code(), st.error_message()));
  }
  mg_printf(conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n");
  std::string request_id;
  uint32_t prompt_tokens = 0, completion_tokens = 0;
  std::vector<size_t> offsets(call.n, 0);  // text_offset per completion
  bool client_gone = false;
  do {
    request_id = msg.request_id();
    if (msg.has_usage()) {
      prompt_tokens = msg.usage().prompt_tokens();
      completion_tokens += msg.usage().completion_tokens();
    }
    size_t scratch = 0;
    size_t& offset = msg.index() < offsets.size() ? offsets[msg.index()] : scratch;
    if (!client_gone && !SendEvent(conn, StreamChunkJson(msg, model_name_, created, call.logprobs, offset).dump())) {
      client_gone = true;
      ctx.TryCancel();  // the coordinator cancels the sequences and frees their KV blocks
    }
  } while (reader->Read(&msg));
  const grpc::Status st = reader->Finish();
  if (client_gone) return 200;
  if (!st.ok()) {
    const HttpError e = Stopping() ? HttpError{503, "the server is stopping: the completion was cancelled", "server_error", {}}
                                   : FromGrpcError(st.error_code(), st.error_message());
    SendEvent(conn, e.ToJson().dump());
  } else if (call.include_usage) {
    SendEvent(conn, StreamUsageJson(request_id, model_name_, created, prompt_tokens, completion_tokens).dump());
  }
  SendEvent(conn, "[DONE]");
  return 200;
}

std::variant<nlohmann::json, HttpError> OpenAiServer::WholeAnswer(const CompletionCall& call, const v1::Prompt& prompt_in,
                                                                  int64_t created) {
  v1::GenerateRequest request = call.request;
  *request.mutable_prompt() = prompt_in;
  // echo: the prompt's logprobs (and its most probable tokens) first, from ScoreRolling, as
  // lm-evaluation-harness scores a text.
  v1::ScoreRollingResponse scored;
  if (call.echo) {
    v1::ScoreRollingRequest score;
    *score.add_texts() = prompt_in;
    grpc::ClientContext ctx;
    const CallScope scope(*this, ctx);
    const grpc::Status st = stub_->ScoreRolling(&ctx, score, &scored);
    if (!st.ok()) return FromGrpcError(st.error_code(), st.error_message());
    if (scored.results_size() != 1) return HttpError{500, "ScoreRolling answered no result", "server_error", {}};
  }

  CompletionAccumulator acc(call.n, call.logprobs);
  if (call.max_tokens > 0) {
    grpc::ClientContext ctx;
    const CallScope scope(*this, ctx);
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&ctx, request);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (!acc.Add(msg)) ctx.TryCancel();
    }
    const grpc::Status st = reader->Finish();
    if (!st.ok()) return FromGrpcError(st.error_code(), st.error_message());
  } else {  // echo of the prompt alone: no completion, "length" as max_tokens 0 says
    v1::GenerateResponse none;
    none.set_finish_reason(v1::FINISH_REASON_LENGTH);
    none.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(scored.results(0).token_ids_size()));
    acc.Add(none);
  }
  nlohmann::json answer = acc.ToJson(model_name_, created);
  if (call.echo) {
    const v1::ScoreRollingResult& prompt = scored.results(0);
    std::string prompt_text = prompt_in.text();
    if (prompt_in.has_token_ids()) {
      prompt_text.clear();
      for (const std::string& t : prompt.token_texts()) prompt_text += t;
    }
    PrependEcho(answer, prompt, prompt_text, call.logprobs);
  }
  return answer;
}

}  // namespace moe::openai
