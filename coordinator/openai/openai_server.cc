#include "coordinator/openai/openai_server.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <variant>
#include <vector>

#include <civetweb.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include "clients/cpp/channel.h"
#include "clients/cpp/health_check.h"
#include "common/big_stack_thread.h"
#include "common/secret_token.h"
#include "common/json_util.h"
#include "common/model_name.h"
#include "common/request_id_metadata.h"
#include "common/status.h"
#include "common/utf8.h"
#include "coordinator/openai/http_io.h"
#include "coordinator/openai/openai_protocol.h"
#include "coordinator/openai/tgi_protocol.h"

namespace moe::openai {
namespace {

// When the request this thread serves began (civetweb's begin_request), for HttpMetrics.
thread_local std::optional<std::chrono::steady_clock::time_point> request_start;

using nlohmann::json;

constexpr long long kMaxBodyBytes = 16 << 20;

// TGI's routes (POST /generate, /generate_stream, / and /chat_tokenize, GET /info): their clients read
// TGI's error shape, whichever step refuses the request (the key check, the method, the body's size,
// a stop). /tokenize is vLLM's path too: TGI's body there gets TGI's errors from its handler.
bool IsTgiRoute(mg_connection* conn) {
  const char* uri = mg_get_request_info(conn)->local_uri;
  if (uri == nullptr) return false;
  return OpenAiServer::IsTgiPath(uri);
}

int SendError(mg_connection* conn, const HttpError& e, const std::string& extra_headers = "") {
  if (IsTgiRoute(conn)) {
    const TgiError t = TgiErrorFromHttp(e.status, e.message);
    SendJson(conn, t.status, t.ToJson(), extra_headers);
    return t.status;
  }
  SendJson(conn, e.status, e.ToJson(), extra_headers);
  return e.status;
}

// A Responses API event: named by its type ("event: response.output_text.delta"), as OpenAI sends them.
bool SendNamedEvent(mg_connection* conn, const nlohmann::ordered_json& e) {
  const std::string event = "event: " + e["type"].get<std::string>() + "\ndata: " + e.dump() + "\n\n";
  return mg_write(conn, event.data(), event.size()) == static_cast<int>(event.size());
}

bool IsMethod(mg_connection* conn, const char* method) {
  return std::string(mg_get_request_info(conn)->request_method) == method;
}

// OpenAI's answer for a response id the store does not hold (GET, DELETE, cancel, input_items).
HttpError ResponseNotFound(const std::string& id) {
  return HttpError{404, "Response with id '" + id + "' not found.", "invalid_request_error", std::string("response_id")};
}

// 405 with the Allow header HTTP requires on it (RFC 9110, 15.5.6); `allowed`: "GET" or "GET, DELETE".
int MethodNotAllowed(mg_connection* conn, const std::string& allowed) {
  std::string use = allowed;
  for (size_t at; (at = use.find(", ")) != std::string::npos;) use.replace(at, 2, " or ");
  return SendError(conn, HttpError{405, "use " + use, "invalid_request_error", {}}, "Allow: " + allowed + "\r\n");
}

// The request's body, or the answer that refuses it: 413 past 16 MiB; 400 for none at all, or for
// one that ended (the client stopped sending, the read timed out) before its Content-Length.
std::variant<std::string, HttpError> ReadBody(mg_connection* conn) {
  const mg_request_info* info = mg_get_request_info(conn);
  // Content-Length given twice with different values (civetweb reads the first): which body the
  // request has is ambiguous, and HTTP (RFC 9112, 6.3) has it refused.
  const char* first_length = nullptr;
  for (int i = 0; i < info->num_headers; ++i) {
    if (mg_strcasecmp(info->http_headers[i].name, "Content-Length") != 0) continue;
    if (first_length != nullptr && std::string_view(first_length) != info->http_headers[i].value) {
      return HttpError{400, "Content-Length is given twice with different values", "invalid_request_error", {}};
    }
    first_length = info->http_headers[i].value;
  }
  const long long length = info->content_length;
  const HttpError too_large{413, "the request body exceeds 16 MiB", "invalid_request_error", {}};
  if (length > kMaxBodyBytes) return too_large;
  std::string body;
  char buf[8192];
  while (static_cast<long long>(body.size()) <= kMaxBodyBytes) {
    const int n = mg_read(conn, buf, sizeof(buf));
    if (n <= 0) break;
    body.append(buf, static_cast<size_t>(n));
  }
  if (static_cast<long long>(body.size()) > kMaxBodyBytes) return too_large;
  if (length >= 0 && static_cast<long long>(body.size()) < length) {
    return HttpError{400, absl::StrCat("the request body ended after ", body.size(), " of its ", length,
                                       " bytes (Content-Length)"), "invalid_request_error", {}};
  }
  if (body.empty()) {
    return HttpError{400, "the request has no body: send a JSON object with Content-Length or chunked",
                     "invalid_request_error", {}};
  }
  return body;
}

// Threads joined when the group goes: should starting one fail (the process's thread limit), the
// ones already started are waited for instead of ending the process (a joinable std::thread
// destroyed calls std::terminate).
class ThreadGroup {
 public:
  ThreadGroup() = default;
  ThreadGroup(const ThreadGroup&) = delete;
  ThreadGroup& operator=(const ThreadGroup&) = delete;
  ~ThreadGroup() { Join(); }
  template <typename F>
  void Start(F&& f) {
    threads_.emplace_back(std::forward<F>(f));
  }
  void Join() {
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  std::vector<std::thread> threads_;
};

HttpError NoThread(const std::system_error& e) {
  return HttpError{503, std::string("the server cannot start a thread for this request (") + e.what() + "): try again",
                   "server_error", {}};
}

// Runs work(0) .. work(n - 1) at once, each on a thread of its own (one alone on the calling thread)
// that carries the request's ClientWatch, so their gRPC calls end with the client; returns once all
// have. Should a thread not start, the ones started finish first and the answer is that error.
std::optional<HttpError> RunEach(size_t n, const std::function<void(size_t)>& work) {
  if (n == 1) {
    work(0);
    return std::nullopt;
  }
  ThreadGroup threads;
  ClientWatch* watch = ClientWatch::current();
  try {
    for (size_t i = 0; i < n; ++i) {
      threads.Start([&work, i, watch] {
        const ClientWatch::Current current(watch);
        work(i);
      });
    }
  } catch (const std::system_error& e) {  // the group joins the ones started
    threads.Join();
    return NoThread(e);
  }
  threads.Join();
  return std::nullopt;
}

// An answer's id where no Generate call gave one (echo with max_tokens 0): the request's own
// request_id when it gave one, else 24 random hex digits.
std::string LocalRequestId(const CompletionCall& call) {
  if (!call.request.request_id().empty()) return call.request.request_id();
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  char id[25];
  std::snprintf(id, sizeof(id), "%016llx%08llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffffu));
  return id;
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpenAiServer>> OpenAiServer::Start(const ServerOptions& opts) {
  std::unique_ptr<OpenAiServer> s(new OpenAiServer());
  s->responses_store_ = std::make_unique<ResponseStore>(opts.responses_store);
  s->prompt_tokens_details_ = opts.prompt_tokens_details;
  s->trust_request_chat_template_ = opts.trust_request_chat_template;
  MOE_RETURN_IF_ERROR(CheckHttpsFlags(opts.https));
  if (opts.https.enabled()) {  // before anything else: a bad file stops the server at once
    MOE_RETURN_IF_ERROR(CheckTlsFiles(opts.https));
    MOE_RETURN_IF_ERROR(PrepareCivetwebTls());
    s->https_ = opts.https;
  }
  // The coordinator's limit (256 MiB) rather than gRPC's 4 MiB: a long text's token ids (/tokenize
  // of a few MB of text) or a batch's answers are bigger than that, and are not the client's error.
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(256 << 20);
  channel_args.SetMaxSendMessageSize(256 << 20);
  // MOE_API_KEY, when set, goes with every call: a coordinator started with it requires it; with
  // MOE_TLS_CA_FILE the channel is TLS (a coordinator with --tls-cert-file serves nothing else).
  MOE_ASSIGN_OR_RETURN(const client::ChannelSecurity security, client::SecurityFromEnv());
  s->channel_ = client::NewChannel(opts.coordinator, channel_args, security);
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
  // Without names of its own, the coordinator's (its --served-model-name, else the folder's).
  const std::string coordinator_name =
      info.served_model_name().empty() ? ModelNameOfDir(info.model_dir()) : info.served_model_name();
  s->served_ = ServedModel(opts.model_names.empty() ? std::vector<std::string>{coordinator_name} : opts.model_names);
  s->model_name_ = s->served_.name();
  s->max_model_len_ = info.max_context();
  if (info.default_sampling().has_max_tokens()) s->default_max_tokens_ = info.default_sampling().max_tokens();
  s->max_tokens_cap_ = info.max_tokens_cap();
  s->created_ = UnixNow();
  s->api_keys_ = opts.api_keys;
  s->allowed_origins_ = opts.allowed_origins;
  if (!opts.metrics_url.empty()) {
    absl::StatusOr<HttpUrl> url = ParseHttpUrl(opts.metrics_url);
    if (!url.ok()) return absl::InvalidArgumentError(absl::StrCat("--metrics-url: ", url.status().message()));
    s->metrics_url_ = *url;
  }
  s->bos_token_ = info.bos_token();
  s->eos_token_ = info.eos_token();
  s->eos_ids_.assign(info.eos_token_ids().begin(), info.eos_token_ids().end());
  s->max_concurrent_requests_ = opts.threads;
  if (info.special_token_ids_size() > 0) {  // their pieces, which TGI's token texts show
    v1::DetokenizeRequest request;
    request.mutable_token_ids()->Assign(info.special_token_ids().begin(), info.special_token_ids().end());
    request.set_return_pieces(true);
    v1::DetokenizeResponse pieces;
    grpc::ClientContext pctx;
    pctx.set_deadline(deadline);
    const grpc::Status st = s->stub_->Detokenize(&pctx, request, &pieces);
    if (!st.ok()) return absl::UnavailableError(absl::StrCat("Detokenize from ", opts.coordinator, ": ", st.error_message()));
    for (int i = 0; i < pieces.pieces_size() && i < info.special_token_ids_size(); ++i) {
      s->special_pieces_[info.special_token_ids(i)] = pieces.pieces(i);
    }
  }
  if (!opts.chat_template_file.empty()) {  // the operator's template: unusable is a start-up error
    absl::StatusOr<std::string> text = ReadTextFile(opts.chat_template_file);
    if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat("--chat-template: cannot read ", opts.chat_template_file));
    absl::StatusOr<ChatPrompt> parsed = ChatPrompt::Make(*text, s->bos_token_, s->eos_token_);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--chat-template ", opts.chat_template_file, ": ", parsed.status().message()));
    }
    s->chat_prompt_ = std::move(*parsed);
  } else if (info.chat_template().empty()) {
    s->chat_template_status_ = absl::FailedPreconditionError(
        "the model has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json): start "
        "moe-openai-server with --chat-template FILE (or with --trust-request-chat-template, and send chat_template "
        "in the request)");
  } else if (absl::StatusOr<ChatPrompt> parsed = ChatPrompt::Make(info.chat_template(), s->bos_token_, s->eos_token_);
             parsed.ok()) {
    s->chat_prompt_ = std::move(*parsed);
  } else {
    s->chat_template_status_ = absl::FailedPreconditionError(
        absl::StrCat("the model's chat template cannot be used here: ", parsed.status().message(),
                     " (start moe-openai-server with --chat-template FILE)"));
  }

  if (!opts.tool_call_parser.empty()) {
    // Mistral's parser: an answer of calls starts with the vocabulary's [TOOL_CALLS] control token.
    if (opts.tool_call_parser != "mistral") {
      return absl::InvalidArgumentError(
          absl::StrCat("--tool-call-parser: \"", opts.tool_call_parser, "\" is not known (mistral is)"));
    }
    v1::TokenizeRequest request;
    request.set_text("[TOOL_CALLS]");
    request.set_add_bos(false);
    request.set_parse_special_tokens(true);
    v1::TokenizeResponse ids;
    grpc::ClientContext tctx;
    tctx.set_deadline(deadline);
    const grpc::Status st = s->stub_->Tokenize(&tctx, request, &ids);
    if (!st.ok()) return absl::UnavailableError(absl::StrCat("Tokenize from ", opts.coordinator, ": ", st.error_message()));
    if (ids.token_ids_size() != 1) {
      return absl::InvalidArgumentError(
          "--tool-call-parser mistral: the model's vocabulary has no [TOOL_CALLS] control token (Mistral's v3 "
          "tokenizer and later have it)");
    }
    s->tool_calls_id_ = ids.token_ids(0);
  }

  if (!s->https()) mg_init_library(0);  // with TLS, PrepareCivetwebTls did
  const std::string threads = std::to_string(opts.threads);
  const std::string timeout_ms = std::to_string(static_cast<int64_t>(opts.request_timeout_s * 1000));
  const std::string listening = s->https() ? opts.listen + "s" : opts.listen;  // civetweb: "s" marks a TLS port
  // CORS is this server's (--allowed-origins, BeforeHandler): civetweb's own would answer every
  // preflight itself, allowing any origin, before the hook sees it.
  std::vector<const char*> options = {"listening_ports", listening.c_str(), "num_threads", threads.c_str(),
                                      "request_timeout_ms", timeout_ms.c_str(), "access_control_allow_methods", "",
                                      "access_control_allow_origin", ""};
  if (!opts.access_log.empty()) {
    options.push_back("access_log_file");
    options.push_back(opts.access_log.c_str());
  }
  options.push_back(nullptr);
  mg_callbacks callbacks{};
  // The front's own request metrics (http_metrics.h): civetweb serves a request on one thread from
  // its begin to its end, so the start time waits in a thread_local.
  callbacks.begin_request = [](mg_connection*) {
    request_start = std::chrono::steady_clock::now();
    (void)TakeHeadSent();
    return 0;  // civetweb goes on to the handlers
  };
  callbacks.end_request = [](const mg_connection* conn, int returned) {
    // What was sent (a refusal of the key check, a stream's 200) over what a handler returned.
    const HeadSent sent = TakeHeadSent();
    auto* server = static_cast<OpenAiServer*>(mg_get_user_data(mg_get_context(conn)));
    const mg_request_info* info = mg_get_request_info(conn);
    if (server == nullptr || info == nullptr || info->local_uri == nullptr || info->request_method == nullptr) return;
    const double seconds =
        request_start ? std::chrono::duration<double>(std::chrono::steady_clock::now() - *request_start).count() : 0.0;
    request_start.reset();
    // Sizes as vLLM's instrumentator takes them: the Content-Length headers, 0 without one.
    server->http_metrics_.Observe(info->local_uri, info->request_method, sent.status != 0 ? sent.status : returned, seconds,
                                  std::max<long long>(0, info->content_length), std::max<long long>(0, sent.length));
  };
  if (s->https()) {
    // The certificate and key go into the TLS context civetweb made (its own option wants both in
    // one file); checked above, so this fails only if the files changed meanwhile.
    callbacks.init_ssl = [](void* ssl_ctx, void* self) {
      const auto* server = static_cast<const OpenAiServer*>(self);
      return LoadTlsFiles(ssl_ctx, server->https_);
    };
  }
  mg_init_data init{};
  init.callbacks = &callbacks;
  init.user_data = s.get();
  init.configuration_options = options.data();
  char error_text[256] = "";
  mg_error_data error{};
  error.text = error_text;
  error.text_buffer_size = sizeof(error_text);
  s->ctx_ = mg_start2(&init, &error);
  if (s->ctx_ == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("cannot listen on ", opts.listen, " (bad address or port in use",
                                                   error_text[0] != '\0' ? absl::StrCat(": ", error_text) : "", ")"));
  }
  mg_server_port ports[4];
  const int n = mg_get_server_ports(s->ctx_, 4, ports);
  s->port_ = n > 0 ? ports[0].port : 0;
  // The key check first: no request may reach a handler before it is in place.
  if (!s->api_keys_.empty() || !s->allowed_origins_.empty()) {
    mg_set_auth_handler(s->ctx_, "/", &OpenAiServer::BeforeHandler, s.get());
  }
  const auto handle = [&](const std::string& pattern, const Route& r) {
    mg_set_request_handler(s->ctx_, pattern.c_str(), &OpenAiServer::RunRoute, const_cast<Route*>(&r));
  };
  for (const Route& r : ExactRoutes()) handle(std::string(r.path) + "$", r);  // "$": that path only
  static constexpr Route kStoredResponse{"/v1/responses/", &OpenAiServer::HandleStoredResponse};
  handle(kStoredResponse.path, kStoredResponse);  // and below
  static constexpr Route kModel{"/v1/models/", &OpenAiServer::HandleModel};
  handle(kModel.path, kModel);  // and below: a served name may hold slashes ("org/model")
  // civetweb prefers a handler whose URI equals the request's, so the rest is "/**", not "/".
  static constexpr Route kUnknown{"/**", &OpenAiServer::HandleUnknown};
  handle(kUnknown.path, kUnknown);  // registered last: the rest
  return s;
}

int OpenAiServer::RunRoute(mg_connection* conn, void* route) {
  void* self = mg_get_user_data(mg_get_context(conn));
  // The request fails, not the server; once an answer has begun, no second one is written.
  const auto fail = [conn](const HttpError& answer) {
    if (const HeadSent sent = TakeHeadSent(); sent.status != 0) {
      NoteHeadSent(sent);
      return sent.status;
    }
    return SendError(conn, answer);
  };
  try {
    return static_cast<const Route*>(route)->handler(conn, self);
  } catch (const std::system_error& e) {  // no thread for the request (the process's thread limit)
    return fail(NoThread(e));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe-openai-server: a request failed with an exception: %s\n", e.what());
    return fail(HttpError{500, std::string("internal error: ") + e.what(), "server_error", {}});
  }
}

std::span<const OpenAiServer::Route> OpenAiServer::ExactRoutes() {
  static constexpr Route kRoutes[] = {
      {"/v1/completions", &OpenAiServer::HandleCompletions},
      {"/v1/chat/completions", &OpenAiServer::HandleChat},
      {"/v1/responses", &OpenAiServer::HandleResponses},
      {"/invocations", &OpenAiServer::HandleInvocations},
      {"/tokenize", &OpenAiServer::HandleTokenize},
      {"/detokenize", &OpenAiServer::HandleDetokenize},
      {"/v1/models", &OpenAiServer::HandleModels},
      {"/health", &OpenAiServer::HandleHealth},
      {"/ping", &OpenAiServer::HandleHealth},  // vLLM's (SageMaker's) name
      {"/version", &OpenAiServer::HandleVersion},
      {"/metrics", &OpenAiServer::HandleMetrics},
      {"/generate", &OpenAiServer::HandleTgiGenerate, true},  // TGI's
      {"/generate_stream", &OpenAiServer::HandleTgiGenerateStream, true},
      {"/info", &OpenAiServer::HandleTgiInfo, true},
      {"/chat_tokenize", &OpenAiServer::HandleTgiChatTokenize, true},
      {"/", &OpenAiServer::HandleTgiRoot, true},  // the root alone
  };
  return kRoutes;
}

bool OpenAiServer::IsTgiPath(std::string_view path) {
  for (const Route& r : ExactRoutes()) {
    if (r.tgi && path == r.path) return true;
  }
  return false;
}

std::vector<std::string> OpenAiServer::ExactRoutePaths() {
  std::vector<std::string> paths;
  for (const Route& r : ExactRoutes()) paths.emplace_back(r.path);
  return paths;
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

OpenAiServer::CallScope::CallScope(OpenAiServer& s, grpc::ClientContext& ctx)
    : s_(s), ctx_(ctx), watch_(ClientWatch::current()) {
  {
    std::lock_guard<std::mutex> lock(s_.mu_);
    s_.calls_.insert(&ctx_);
    if (s_.stopping_) ctx_.TryCancel();  // admitted before the stop began, called after
  }
  if (watch_ != nullptr) watch_->Add(&ctx_);  // cancelled should the client go
}

OpenAiServer::CallScope::~CallScope() {
  if (watch_ != nullptr) watch_->Remove(&ctx_);
  std::lock_guard<std::mutex> lock(s_.mu_);
  s_.calls_.erase(&ctx_);
}

HttpError OpenAiServer::CallError(const grpc::Status& st, const CompletionCall* call, size_t prompt) {
  if (st.error_code() == grpc::StatusCode::CANCELLED) {
    if (ClientWatch* watch = ClientWatch::current(); watch != nullptr && watch->cancelled()) {
      return HttpError{kClientClosedRequest, kClientClosedMessage, "cancelled", {}};
    }
    if (Stopping()) return HttpError{503, "the server is stopping: the request was cancelled", "server_error", {}};
  }
  return call != nullptr ? FromGrpcError(*call, prompt, st.error_code(), st.error_message())
                         : FromGrpcError(st.error_code(), st.error_message());
}

TgiError OpenAiServer::TgiCallError(const grpc::Status& st) {
  if (st.error_code() != grpc::StatusCode::CANCELLED) return TgiErrorFromGrpc(st.error_code(), st.error_message());
  const HttpError e = CallError(st);
  return TgiErrorFromHttp(e.status, e.message);
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
    // Background responses: their calls were cancelled with the rest, so their threads end at once;
    // they use this server, so it waits for them however long that takes.
    while (!background_done_.wait_for(lock, std::chrono::seconds(10), [&] { return background_running_ == 0; })) {
      std::fprintf(stderr, "moe-openai-server: waiting for %d background responses to end\n", background_running_);
    }
  }
  if (ctx_ != nullptr) mg_stop(ctx_);
}

int OpenAiServer::HandleModels(mg_connection* conn, void* self) {
  if (!IsMethod(conn, "GET")) return MethodNotAllowed(conn, "GET");
  auto* s = static_cast<OpenAiServer*>(self);
  SendJson(conn, 200, ModelsJson(s->served_, s->max_model_len_, s->created_));
  return 200;
}

// OpenAI's retrieve (the SDKs' models.retrieve): the name after the prefix, as civetweb decoded it
// (the SDK sends "org/model" as org%2Fmodel).
int OpenAiServer::HandleModel(mg_connection* conn, void* self) {
  if (!IsMethod(conn, "GET")) return MethodNotAllowed(conn, "GET");
  auto* s = static_cast<OpenAiServer*>(self);
  const char* uri = mg_get_request_info(conn)->local_uri;
  const std::string name = std::string(uri != nullptr ? uri : "").substr(std::string("/v1/models/").size());
  if (std::optional<HttpError> e = UnknownModel(s->served_, name)) return SendError(conn, *e);
  SendJson(conn, 200, ModelJson(name, s->max_model_len_, s->created_));
  return 200;
}

int OpenAiServer::HandleUnknown(mg_connection* conn, void*) {
  const std::string uri = mg_get_request_info(conn)->local_uri != nullptr ? mg_get_request_info(conn)->local_uri : "";
  std::string ours, tgi;
  for (const Route& r : ExactRoutes()) {
    std::string& list = r.tgi ? tgi : ours;
    list += (list.empty() ? "" : ", ") + std::string(r.path);
    if (std::string_view(r.path) == "/v1/responses") list += ", /v1/responses/{id}";
    if (std::string_view(r.path) == "/v1/models") list += ", /v1/models/{model}";
  }
  return SendError(conn, HttpError{404, "no such endpoint: " + uri + " (this server has " + ours + ", and TGI's " + tgi + ")",
                                   "NotFoundError", {}});
}

int OpenAiServer::BeforeHandler(mg_connection* conn, void* self) {
  const auto* s = static_cast<const OpenAiServer*>(self);
  const mg_request_info* info = mg_get_request_info(conn);
  // A browser's CORS preflight (no key: browsers send none) is answered here.
  if (!s->allowed_origins_.empty() && std::string(info->request_method) == "OPTIONS") {
    const std::string cors = CorsHeaders(conn);
    mg_printf(conn,
              "HTTP/1.1 204 No Content\r\n%sAccess-Control-Allow-Methods: GET, POST, DELETE, OPTIONS\r\n"
              "Access-Control-Allow-Headers: Authorization, Content-Type\r\nAccess-Control-Max-Age: 600\r\n"
              "Content-Length: 0\r\nConnection: close\r\n\r\n",
              cors.c_str());
    NoteHeadSent({204, 0});
    return 0;
  }
  if (s->api_keys_.empty()) return 1;
  // Load balancers' probe, Prometheus' scrape, the version and TGI's /info and GET / come without a
  // key (vLLM guards /v1 only; TGI its generation routes).
  if (info->local_uri != nullptr) {
    const std::string uri = info->local_uri;
    if (uri == "/health" || uri == "/ping" || uri == "/metrics" || uri == "/version" || uri == "/info") return 1;
    if (uri == "/" && std::string(info->request_method) == "GET") return 1;  // TGI's health check
  }
  const char* header = mg_get_header(conn, "Authorization");
  if (header != nullptr && BearerMatches(header, s->api_keys_)) return 1;
  SendError(conn, HttpError{401,
                            header == nullptr ? "no API key: send the header \"Authorization: Bearer <key>\""
                                              : "the API key in the Authorization header is not one this server accepts",
                            "authentication_error", {}});
  return 0;
}

int OpenAiServer::HandleMetrics(mg_connection* conn, void* self) {
  if (!IsMethod(conn, "GET")) return MethodNotAllowed(conn, "GET");
  auto* s = static_cast<OpenAiServer*>(self);
  if (!s->metrics_url_) {  // the front's own only (the cluster's: --metrics-url, or the coordinator's endpoint)
    const std::string body = s->http_metrics_.Render();
    SendHead(conn, 200, "text/plain; version=0.0.4; charset=utf-8", static_cast<long long>(body.size()));
    mg_write(conn, body.data(), body.size());
    return 200;
  }
  const HttpUrl& url = *s->metrics_url_;
  char error[256] = {0};
  mg_connection* source = mg_connect_client(url.host.c_str(), url.port, 0, error, sizeof(error));
  if (source == nullptr) {
    return SendError(conn, HttpError{503, "the metrics source " + url.host + ":" + std::to_string(url.port) +
                                              " does not answer: " + error, "server_error", {}});
  }
  mg_printf(source, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", url.path.c_str(), url.host.c_str());
  std::string body;
  int status = 0;
  std::string type = "text/plain; version=0.0.4; charset=utf-8";
  if (mg_get_response(source, error, sizeof(error), 5000) >= 0) {
    const mg_response_info* info = mg_get_response_info(source);
    status = info->status_code;
    for (int i = 0; i < info->num_headers; ++i) {
      if (mg_strcasecmp(info->http_headers[i].name, "Content-Type") == 0) type = info->http_headers[i].value;
    }
    char buf[8192];
    int n = 0;
    while ((n = mg_read(source, buf, sizeof(buf))) > 0) body.append(buf, static_cast<size_t>(n));
  }
  mg_close_connection(source);
  if (status != 200) {
    return SendError(conn, HttpError{503, "the metrics source answered " + (status > 0 ? std::to_string(status) : std::string(error)),
                                     "server_error", {}});
  }
  if (!body.empty() && body.back() != '\n') body.push_back('\n');
  body += s->http_metrics_.Render();  // the front's own, beside the coordinator's
  SendHead(conn, 200, type, static_cast<long long>(body.size()));
  mg_write(conn, body.data(), body.size());
  return 200;
}

int OpenAiServer::HandleHealth(mg_connection* conn, void* self) {
  auto* s = static_cast<OpenAiServer*>(self);
  const absl::StatusOr<client::ServingStatus> h = client::CheckHealth(s->channel_, "", std::chrono::milliseconds(2000));
  const bool serving = h.ok() && *h == grpc::health::v1::HealthCheckResponse::SERVING;
  SendJson(conn, serving ? 200 : 503,
           {{"status", h.ok() ? client::ServingStatusName(*h) : std::string(h.status().message())}});
  return serving ? 200 : 503;
}

// vLLM's GET /version: {"version": this build's (the CMake project's)}.
int OpenAiServer::HandleVersion(mg_connection* conn, void*) {
  if (!IsMethod(conn, "GET")) return MethodNotAllowed(conn, "GET");
  SendJson(conn, 200, {{"version", MOE_VERSION}});
  return 200;
}

int OpenAiServer::ServePost(mg_connection* conn, int (OpenAiServer::*handle)(mg_connection*, const std::string&),
                            bool watch_client) {
  if (!IsMethod(conn, "POST")) return MethodNotAllowed(conn, "POST");
  const HandlerScope handler(*this);
  if (!handler.admitted()) return SendError(conn, HttpError{503, "the server is stopping", "server_error", {}});
  std::variant<std::string, HttpError> read = ReadBody(conn);
  if (const HttpError* e = std::get_if<HttpError>(&read)) return SendError(conn, *e);
  const std::string& body = std::get<std::string>(read);
  if (std::optional<HttpError> e = CheckBodyBeforeParsing(body)) return SendError(conn, *e);
  // The request runs on a thread with a full-size stack: civetweb's have ~100 KB, which a deeply
  // nested chat template or JSON schema, each bounded to a few hundred levels, would overflow (a
  // crash, not a 400). The parsers check every field and answer 400s; should one still throw
  // (nlohmann's accessors do on a type they do not expect), or no thread be had for the request,
  // RunRoute's catch answers.
  int status = 500;
  // A client that leaves cancels the request's gRPC calls. Finding the connection's socket reads
  // every open descriptor, so only requests that wait on the cluster are watched.
  std::optional<ClientWatch> watch;
  if (watch_client) watch.emplace(conn);
  HeadSent sent;
  std::exception_ptr failed;
  RunWithStack(kBigStackBytes, [&] {
    const ClientWatch::Current current(watch ? &*watch : nullptr);
    try {
      status = (this->*handle)(conn, body);
    } catch (...) {
      failed = std::current_exception();  // rethrown below, once the head this thread sent is handed back
    }
    sent = TakeHeadSent();  // that thread's; civetweb's end_request (and RunRoute's catch) read their own
  });
  if (sent.status != 0) NoteHeadSent(sent);
  if (failed) std::rethrow_exception(failed);
  return status;
}

int OpenAiServer::HandleCompletions(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::Completions, /*watch_client=*/true);
}

int OpenAiServer::HandleChat(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::Chat, /*watch_client=*/true);
}

int OpenAiServer::HandleInvocations(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::Invocations, /*watch_client=*/true);
}

int OpenAiServer::HandleResponses(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::Responses, /*watch_client=*/true);
}

// A stored response: GET answers it, DELETE forgets it (OpenAI's {"id", "object", "deleted"}; a
// background response still running is cancelled first), POST .../cancel ends a background one.
int OpenAiServer::HandleStoredResponse(mg_connection* conn, void* self) {
  auto* s = static_cast<OpenAiServer*>(self);
  const char* uri = mg_get_request_info(conn)->local_uri;
  std::string id = std::string(uri != nullptr ? uri : "").substr(std::string("/v1/responses/").size());
  constexpr std::string_view kCancel = "/cancel", kInputItems = "/input_items";
  const bool cancel = id.size() > kCancel.size() && id.ends_with(kCancel);
  const bool input_items = id.size() > kInputItems.size() && id.ends_with(kInputItems);
  if (cancel) id.resize(id.size() - kCancel.size());
  if (input_items) id.resize(id.size() - kInputItems.size());
  if (id.empty() || id.find('/') != std::string::npos) {
    return SendError(conn, HttpError{404, "no such endpoint: /v1/responses/" + id +
                                              " (GET or DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items, "
                                              "POST /v1/responses/{id}/cancel)",
                                     "NotFoundError", {}});
  }
  if (cancel) return IsMethod(conn, "POST") ? s->CancelBackgroundResponse(conn, id) : MethodNotAllowed(conn, "POST");
  if (input_items) return IsMethod(conn, "GET") ? s->ListInputItems(conn, id) : MethodNotAllowed(conn, "GET");
  const bool get = IsMethod(conn, "GET");
  if (!get && !IsMethod(conn, "DELETE")) return MethodNotAllowed(conn, "GET, DELETE");
  if (!get) {
    bool was_running = false;  // then it is deleted even if the store dropped it meanwhile
    if (std::shared_ptr<BackgroundResponse> running = s->RunningBackgroundResponse(id)) {
      {
        std::lock_guard<std::mutex> lock(running->mu);
        was_running = running->state == BackgroundResponse::State::kRunning;
        running->state = BackgroundResponse::State::kDeleted;  // its thread stores nothing after this
      }
      running->watch.Cancel();
    }
    if (!s->responses_store_->Erase(id) && !was_running) return SendError(conn, ResponseNotFound(id));
    SendJson(conn, 200, {{"id", id}, {"object", "response"}, {"deleted", true}});
    return 200;
  }
  const std::optional<StoredResponse> stored = s->responses_store_->Get(id);
  if (!stored) return SendError(conn, ResponseNotFound(id));
  SendJsonText(conn, 200, stored->response.dump());
  return 200;
}

int OpenAiServer::ListInputItems(mg_connection* conn, const std::string& id) {
  const std::optional<StoredResponse> stored = responses_store_->Get(id);
  if (!stored) return SendError(conn, ResponseNotFound(id));
  InputItemsQuery query;
  const char* qs = mg_get_request_info(conn)->query_string;
  const size_t qs_len = qs != nullptr ? std::strlen(qs) : 0;
  std::vector<char> value(qs_len + 1);  // a decoded value is never longer than the query string
  for (auto [name, field] : {std::pair{"limit", &query.limit}, {"order", &query.order}, {"after", &query.after}}) {
    if (qs != nullptr && mg_get_var(qs, qs_len, name, value.data(), value.size()) >= 0) *field = value.data();
  }
  std::variant<nlohmann::ordered_json, HttpError> page = InputItemsPage(stored->input_items, query);
  if (auto* e = std::get_if<HttpError>(&page)) return SendError(conn, *e);
  SendJsonText(conn, 200, std::get<nlohmann::ordered_json>(page).dump());
  return 200;
}

int OpenAiServer::HandleTokenize(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::Tokenize, /*watch_client=*/false);
}

int OpenAiServer::HandleDetokenize(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::Detokenize, /*watch_client=*/false);
}

uint32_t OpenAiServer::DefaultMaxTokens(size_t prompt_tokens) const {
  int64_t room = max_model_len_ - static_cast<int64_t>(prompt_tokens);
  if (default_max_tokens_ > 0) room = std::min<int64_t>(room, default_max_tokens_);  // the model's max_new_tokens, as vLLM
  return static_cast<uint32_t>(std::clamp<int64_t>(room, 1, UINT32_MAX));
}

int OpenAiServer::Completions(mg_connection* conn, const std::string& body) {
  std::variant<CompletionCall, HttpError> parsed = ParseCompletionRequest(body, served_);
  if (auto* e = std::get_if<HttpError>(&parsed)) return SendError(conn, *e);
  CompletionCall& call = std::get<CompletionCall>(parsed);
  if (const char* id = RequestIdHeader(conn)) call.request.set_request_id(id);  // over the body's, as vLLM
  call.prompt_tokens_details = prompt_tokens_details_;
  if (!call.add_special_tokens) {  // text prompts go as their token ids without BOS
    for (v1::Prompt& p : call.prompts) {
      if (!p.has_token_ids()) {
        std::variant<std::vector<int32_t>, HttpError> ids = TokenIds(p.text(), /*add_special_tokens=*/false);
        if (auto* e = std::get_if<HttpError>(&ids)) return SendError(conn, *e);
        const std::vector<int32_t>& got = std::get<std::vector<int32_t>>(ids);
        p.mutable_token_ids()->mutable_ids()->Assign(got.begin(), got.end());
      }
    }
    *call.request.mutable_prompt() = call.prompts.front();
  }
  if (call.max_tokens_to_context) {  // each prompt's room, from its token count
    for (const v1::Prompt& p : call.prompts) {
      std::variant<std::vector<int32_t>, HttpError> ids = PromptIds(p, call.request.sampling());
      if (auto* e = std::get_if<HttpError>(&ids)) return SendError(conn, *e);
      call.prompt_max_tokens.push_back(DefaultMaxTokens(std::get<std::vector<int32_t>>(ids).size()));
    }
  }
  const int64_t created = UnixNow();
  if (call.stream) return StreamCompletion(conn, call, created, Api::kCompletions);

  // Whole answers, the prompts of a batch at once (each its own gRPC call, so the cluster batches
  // them as it batches separate requests); the first error, in prompt order, is the answer.
  std::vector<std::variant<nlohmann::json, HttpError>> answers(call.prompts.size());
  if (std::optional<HttpError> e = RunEach(call.prompts.size(), [&](size_t i) {
        answers[i] = WholeAnswer(call, i, created, Api::kCompletions);
      })) {
    return SendError(conn, *e);
  }
  std::vector<nlohmann::json> whole;
  for (auto& a : answers) {
    if (auto* e = std::get_if<HttpError>(&a)) return SendError(conn, *e);
    whole.push_back(std::move(std::get<nlohmann::json>(a)));
  }
  SendJson(conn, 200, whole.size() == 1 ? whole[0] : MergeAnswers(whole, call.n));
  return 200;
}

std::variant<std::vector<int32_t>, HttpError> OpenAiServer::ChatPromptIds(const ChatCall& chat) {
  std::variant<std::string, HttpError> text = ChatPromptText(chat);
  if (auto* e = std::get_if<HttpError>(&text)) return *e;
  return TokenIds(ChatTokenizeRequest(std::get<std::string>(text)));
}

v1::TokenizeRequest OpenAiServer::ChatTokenizeRequest(const std::string& text) {
  v1::TokenizeRequest request;
  request.set_text(text);
  request.set_add_bos(false);  // the template writes BOS where the model wants it
  request.set_parse_special_tokens(true);
  return request;
}

std::variant<std::string, HttpError> OpenAiServer::ChatPromptText(const ChatCall& chat) {
  std::optional<ChatPrompt> own;
  if (chat.chat_template) {
    if (!trust_request_chat_template_) {  // vLLM's words
      return HttpError{400,
                       "chat_template: a chat template is passed with the request, but --trust-request-chat-template "
                       "is not set; refused a request with an untrusted chat template",
                       "invalid_request_error", "chat_template"};
    }
    absl::StatusOr<ChatPrompt> parsed = ChatPrompt::Make(*chat.chat_template, bos_token_, eos_token_);
    if (!parsed.ok()) return HttpError{400, "chat_template: " + std::string(parsed.status().message()), "invalid_request_error", "chat_template"};
    own = std::move(*parsed);
  } else if (!chat_prompt_) {
    return HttpError{400, std::string(chat_template_status_.message()), "invalid_request_error", "chat_template"};
  }
  const ChatPrompt& prompt = own ? *own : *chat_prompt_;
  absl::StatusOr<std::string> text = prompt.Render(chat);
  if (!text.ok()) return HttpError{400, "messages: " + std::string(text.status().message()), "invalid_request_error", "messages"};
  return *std::move(text);
}

std::variant<ChatCall, HttpError> OpenAiServer::PrepareChat(mg_connection* conn, const std::string& body) {
  std::variant<ChatCall, HttpError> parsed = ParseChatRequest(body, served_, tool_calls_id_);
  if (auto* e = std::get_if<HttpError>(&parsed)) return *e;
  ChatCall& chat = std::get<ChatCall>(parsed);
  std::variant<std::vector<int32_t>, HttpError> ids = ChatPromptIds(chat);
  if (auto* e = std::get_if<HttpError>(&ids)) return *e;
  const std::vector<int32_t>& prompt = std::get<std::vector<int32_t>>(ids);
  if (prompt.empty()) {  // the coordinator would name prompt.token_ids, which the request did not send
    return HttpError{400, std::string(chat.chat_template ? "chat_template" : "messages") +
                              ": the chat template renders these messages as no text: there is nothing to continue",
                     "invalid_request_error", chat.chat_template ? "chat_template" : "messages"};
  }

  CompletionCall& call = chat.completion;
  if (const char* id = RequestIdHeader(conn)) call.request.set_request_id(id);  // over the body's, as vLLM
  call.prompt_tokens_details = prompt_tokens_details_;
  v1::Prompt& p = *call.request.mutable_prompt();
  p.mutable_token_ids()->mutable_ids()->Assign(prompt.begin(), prompt.end());
  call.prompts = {p};
  if (!chat.max_tokens_given) {
    size_t n = prompt.size();
    if (call.request.sampling().has_truncate_prompt_tokens()) {  // what the coordinator keeps of it
      n = std::min<size_t>(n, call.request.sampling().truncate_prompt_tokens());
    }
    call.max_tokens = DefaultMaxTokens(n);
    call.request.mutable_sampling()->set_max_tokens(call.max_tokens);
  }
  return parsed;
}

int OpenAiServer::Chat(mg_connection* conn, const std::string& body) {
  std::variant<ChatCall, HttpError> chat = PrepareChat(conn, body);
  if (auto* e = std::get_if<HttpError>(&chat)) return SendError(conn, *e);
  const CompletionCall& call = std::get<ChatCall>(chat).completion;
  const int64_t created = UnixNow();
  if (call.stream) return StreamCompletion(conn, call, created, Api::kChat);
  std::variant<nlohmann::json, HttpError> answer = WholeAnswer(call, 0, created, Api::kChat);
  if (auto* e = std::get_if<HttpError>(&answer)) return SendError(conn, *e);
  SendJson(conn, 200, std::get<nlohmann::json>(answer));
  return 200;
}

// vLLM's POST /invocations (SageMaker's one endpoint): a chat completion request (with "messages")
// or a completion request (with "prompt"), answered as its own endpoint answers it.
int OpenAiServer::Invocations(mg_connection* conn, const std::string& body) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("messages")) return Chat(conn, body);
  if (j.is_object() && j.contains("prompt")) return Completions(conn, body);
  if (!j.is_object()) return SendError(conn, HttpError{400, "the request body must be a JSON object", "invalid_request_error", {}});
  return SendError(conn, BadParam("messages", "required: a chat completion request (messages) or a completion request (prompt)"));
}

// OpenAI's Responses API: the chat completion the request amounts to (responses_api.h), its answer
// as a response object or as Responses events.
int OpenAiServer::Responses(mg_connection* conn, const std::string& body) {
  std::variant<ResponsesCall, HttpError> parsed = ParseResponsesRequest(body);
  if (auto* e = std::get_if<HttpError>(&parsed)) return SendError(conn, *e);
  ResponsesCall& responses = std::get<ResponsesCall>(parsed);
  // previous_response_id: the conversation that response ended goes first.
  nlohmann::ordered_json history = nlohmann::ordered_json::array();
  if (!responses.previous_response_id.empty()) {
    std::optional<StoredResponse> previous = responses_store_->Get(responses.previous_response_id);
    if (!previous) {
      return SendError(conn, HttpError{404, "previous_response_id: Response with id '" + responses.previous_response_id +
                                                "' not found (not stored, or dropped: --responses-store keeps the latest " +
                                                std::to_string(responses_store_->capacity()) + ").",
                                       "invalid_request_error", std::string("previous_response_id")});
    }
    if (previous->conversation.is_null()) {  // a background response not finished, failed or cancelled
      return SendError(conn, HttpError{400, "previous_response_id: Response with id '" + responses.previous_response_id +
                                                "' has no answer to go on from (status " +
                                                previous->response.value("status", std::string("unknown")) + ").",
                                       "invalid_request_error", std::string("previous_response_id")});
    }
    history = std::move(previous->conversation);
  }
  const bool keep = responses.store && responses_store_->capacity() > 0;
  responses.echo["store"] = keep;
  std::variant<ChatCall, HttpError> chat = PrepareChat(conn, ChatBody(responses, history));
  if (auto* e = std::get_if<HttpError>(&chat)) return SendError(conn, ResponsesError(*e));
  std::get<ChatCall>(chat).completion.prompt_tokens_details = true;  // a response's usage always says them
  const CompletionCall& call = std::get<ChatCall>(chat).completion;
  const int64_t created = UnixNow();
  auto remember = [&](const nlohmann::ordered_json& response) {
    if (keep && !response.is_null()) {
      responses_store_->Put(response["id"].get<std::string>(),
                            StoredResponse{response, ConversationAfter(responses, history, response),
                                           responses.input_items});
    }
  };
  if (responses.background) return StartBackgroundResponse(conn, responses, std::get<ChatCall>(chat), history, created);
  if (call.stream) {
    ResponsesEvents events(responses, model_name_, created);
    const int status = StreamCompletion(conn, call, created, Api::kChat, &events);
    remember(events.final_response());
    return status;
  }
  std::variant<nlohmann::json, HttpError> answer = WholeAnswer(call, 0, created, Api::kChat);
  if (auto* e = std::get_if<HttpError>(&answer)) return SendError(conn, ResponsesError(*e));
  const nlohmann::ordered_json response = ResponseFromChat(responses, std::get<nlohmann::json>(answer), model_name_, created);
  remember(response);
  SendJsonText(conn, 200, response.dump());
  return 200;
}

int OpenAiServer::StartBackgroundResponse(mg_connection* conn, const ResponsesCall& responses, const ChatCall& chat,
                                          const nlohmann::ordered_json& history, int64_t created) {
  if (responses_store_->capacity() == 0) {
    return SendError(conn, BadParam("background", "needs stored responses: this server keeps none (--responses-store 0)"));
  }
  const std::string id = "resp_" + responses.id;
  auto job = std::make_shared<BackgroundResponse>();
  job->cancelled_response = ResponseWithStatus(responses, model_name_, created, "cancelled");
  job->input_items = responses.input_items;
  const nlohmann::ordered_json queued = ResponseWithStatus(responses, model_name_, created, "queued");
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return SendError(conn, HttpError{503, "the server is stopping", "server_error", {}});
    if (background_running_ >= max_concurrent_requests_) {  // each holds a thread, as a connection does
      return SendError(conn, HttpError{429, "too many background responses running (" + std::to_string(background_running_) +
                                                "; --threads bounds them): try again later",
                                       "rate_limit_error", {}});
    }
    background_[id] = job;
    ++background_running_;
  }
  responses_store_->Put(id, StoredResponse{queued, nullptr, responses.input_items});  // no conversation until it has an answer
  // Ends the job's registration whichever way its thread ends.
  struct Finished {
    OpenAiServer* s;
    std::string id;
    ~Finished() {
      std::lock_guard<std::mutex> lock(s->mu_);
      s->background_.erase(id);
      --s->background_running_;
      s->background_done_.notify_all();
    }
  };
  try {
    // Detached: the server's destructor cancels its calls and waits for background_running_ to reach 0.
    std::thread([this, job, id, responses, chat, history, created] {
      const Finished finished{this, id};
      const ClientWatch::Current current(&job->watch);  // the job's gRPC calls, which its cancel ends
      // What the thread stores, unless a cancel or DELETE has decided the response's state first.
      const auto store = [&](const nlohmann::ordered_json& response, nlohmann::ordered_json conversation, bool last) {
        std::lock_guard<std::mutex> lock(job->mu);
        if (job->state != BackgroundResponse::State::kRunning) return;
        if (last) job->state = BackgroundResponse::State::kDone;
        responses_store_->Put(id, StoredResponse{response, std::move(conversation), job->input_items});
      };
      try {
        store(ResponseWithStatus(responses, model_name_, created, "in_progress"), nullptr, false);
        const CompletionCall& call = chat.completion;
        std::variant<nlohmann::json, HttpError> answer = WholeAnswer(call, 0, created, Api::kChat);
        if (const HttpError* e = std::get_if<HttpError>(&answer)) {
          const HttpError error = ResponsesError(*e);
          store(ResponseWithStatus(responses, model_name_, created, "failed", &error), nullptr, true);
        } else {
          const nlohmann::ordered_json response =
              ResponseFromChat(responses, std::get<nlohmann::json>(answer), model_name_, created);
          store(response, ConversationAfter(responses, history, response), true);
        }
      } catch (const std::exception& e) {  // as ServePost's: the response fails, not the server
        const HttpError error{500, std::string("internal error: ") + e.what(), "server_error", {}};
        store(ResponseWithStatus(responses, model_name_, created, "failed", &error), nullptr, true);
      }
    }).detach();
  } catch (const std::system_error& e) {
    Finished{this, id};
    responses_store_->Erase(id);
    return SendError(conn, NoThread(e));
  }
  SendJsonText(conn, 200, queued.dump());
  return 200;
}

std::shared_ptr<OpenAiServer::BackgroundResponse> OpenAiServer::RunningBackgroundResponse(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto found = background_.find(id);
  return found != background_.end() ? found->second : nullptr;
}

// OpenAI's POST /v1/responses/{id}/cancel: a background response still running is cancelled (its
// generation stops) and answered "cancelled"; one that has ended is answered as it is.
int OpenAiServer::CancelBackgroundResponse(mg_connection* conn, const std::string& id) {
  const HandlerScope handler(*this);
  if (std::shared_ptr<BackgroundResponse> running = RunningBackgroundResponse(id)) {
    std::unique_lock<std::mutex> lock(running->mu);
    if (running->state == BackgroundResponse::State::kRunning) {
      running->state = BackgroundResponse::State::kCancelled;
      responses_store_->Put(id, StoredResponse{running->cancelled_response, nullptr, running->input_items});
      lock.unlock();
      running->watch.Cancel();
      SendJsonText(conn, 200, running->cancelled_response.dump());
      return 200;
    }
  }
  std::optional<StoredResponse> stored = responses_store_->Get(id);
  if (!stored) return SendError(conn, ResponseNotFound(id));
  if (stored->response.value("background", false) != true) {
    return SendError(conn, HttpError{400, "Cannot cancel a synchronous response.", "invalid_request_error",
                                     std::string("response_id")});
  }
  SendJsonText(conn, 200, stored->response.dump());
  return 200;
}

std::variant<std::vector<int32_t>, HttpError> OpenAiServer::TokenIds(const std::string& text, bool add_special_tokens) {
  v1::TokenizeRequest request;
  request.set_text(text);
  request.set_parse_special_tokens(true);  // as Hugging Face tokenizers (vLLM's, TGI's) encode a prompt
  if (!add_special_tokens) {
    request.set_add_bos(false);
    request.set_add_eos(false);
  }
  return TokenIds(request);
}

std::variant<std::vector<int32_t>, HttpError> OpenAiServer::PromptIds(const v1::Prompt& prompt,
                                                                   const v1::SamplingParams& sampling) {
  std::vector<int32_t> ids(prompt.token_ids().ids().begin(), prompt.token_ids().ids().end());
  if (!prompt.has_token_ids()) {
    std::variant<std::vector<int32_t>, HttpError> got = TokenIds(prompt.text(), /*add_special_tokens=*/true);
    if (HttpError* e = std::get_if<HttpError>(&got)) return *e;
    ids = std::move(std::get<std::vector<int32_t>>(got));
  }
  if (sampling.has_truncate_prompt_tokens() && ids.size() > sampling.truncate_prompt_tokens()) {
    ids.erase(ids.begin(), ids.end() - static_cast<std::ptrdiff_t>(sampling.truncate_prompt_tokens()));
  }
  return ids;
}

std::variant<std::vector<int32_t>, HttpError> OpenAiServer::TokenIds(const v1::TokenizeRequest& request) {
  v1::TokenizeResponse ids;
  grpc::ClientContext ctx;
  const CallScope scope(*this, ctx);
  const grpc::Status st = stub_->Tokenize(&ctx, request, &ids);
  if (!st.ok()) return CallError(st);
  return std::vector<int32_t>(ids.token_ids().begin(), ids.token_ids().end());
}

// vLLM's POST /tokenize: {"prompt": text, "add_special_tokens": true} as /v1/completions encodes a
// text prompt, or {"messages": [...], ...} as /v1/chat/completions encodes a conversation; answers
// {"count", "max_model_len", "tokens"}.
int OpenAiServer::Tokenize(mg_connection* conn, const std::string& body) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return SendError(conn, HttpError{400, "the request body must be a JSON object", "invalid_request_error", {}});
  // TGI's /tokenize takes /generate's body {"inputs", "parameters"}; vLLM's never has "inputs".
  if (j.contains("inputs")) return TgiTokenize(conn, body);
  std::vector<int32_t> tokens;
  if (j.contains("messages")) {
    std::variant<ChatCall, HttpError> parsed = ParseChatRequest(body, served_, tool_calls_id_);
    if (auto* e = std::get_if<HttpError>(&parsed)) return SendError(conn, *e);
    std::variant<std::vector<int32_t>, HttpError> ids = ChatPromptIds(std::get<ChatCall>(parsed));
    if (auto* e = std::get_if<HttpError>(&ids)) return SendError(conn, *e);
    tokens = std::move(std::get<std::vector<int32_t>>(ids));
  } else {
    if (!j.contains("prompt") || !j["prompt"].is_string()) {
      return SendError(conn, HttpError{400, "prompt: required: a string (or send messages)", "invalid_request_error", "prompt"});
    }
    const bool special = !(j.contains("add_special_tokens") && j["add_special_tokens"] == false);
    std::variant<std::vector<int32_t>, HttpError> ids = TokenIds(j["prompt"].get<std::string>(), special);
    if (auto* e = std::get_if<HttpError>(&ids)) return SendError(conn, *e);
    tokens = std::move(std::get<std::vector<int32_t>>(ids));
  }
  nlohmann::json answer = {{"count", tokens.size()}, {"max_model_len", max_model_len_}, {"tokens", tokens}};
  if (j.contains("return_token_strs") && !j["return_token_strs"].is_null()) {
    if (!j["return_token_strs"].is_boolean()) {
      return SendError(conn, HttpError{400, "return_token_strs: expected true or false", "invalid_request_error", "return_token_strs"});
    }
    if (j["return_token_strs"].get<bool>()) {
      // The vocabulary's entry of each token, as vLLM's (convert_ids_to_tokens).
      v1::DetokenizeRequest request;
      request.mutable_token_ids()->Assign(tokens.begin(), tokens.end());
      request.set_return_pieces(true);
      v1::DetokenizeResponse pieces;
      grpc::ClientContext ctx;
      const CallScope scope(*this, ctx);
      const grpc::Status st = stub_->Detokenize(&ctx, request, &pieces);
      if (!st.ok()) return SendError(conn, CallError(st));
      answer["token_strs"] = std::vector<std::string>(pieces.pieces().begin(), pieces.pieces().end());
    }
  }
  SendJson(conn, 200, answer);
  return 200;
}

// vLLM's POST /detokenize: {"tokens": [ids]} -> {"prompt": text}.
int OpenAiServer::Detokenize(mg_connection* conn, const std::string& body) {
  const nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  v1::DetokenizeRequest request;
  if (!j.is_object() || !j.contains("tokens") || !j["tokens"].is_array() ||
      !std::all_of(j["tokens"].begin(), j["tokens"].end(),
                   [](const nlohmann::json& x) { return x.is_number_integer() && x.get<int64_t>() >= INT32_MIN && x.get<int64_t>() <= INT32_MAX; })) {
    return SendError(conn, HttpError{400, "tokens: required: an array of token ids", "invalid_request_error", "tokens"});
  }
  for (const nlohmann::json& x : j["tokens"]) request.add_token_ids(x.get<int32_t>());
  request.set_skip_special_tokens(false);  // as vLLM's: Hugging Face's decode, "<s>" and "</s>" written out
  v1::DetokenizeResponse text;
  grpc::ClientContext ctx;
  const CallScope scope(*this, ctx);
  const grpc::Status st = stub_->Detokenize(&ctx, request, &text);
  if (!st.ok()) return SendError(conn, CallError(st));
  SendJson(conn, 200, {{"prompt", text.text()}});
  return 200;
}

std::variant<std::vector<Echo>, HttpError> OpenAiServer::Echoes(const CompletionCall& call,
                                                                const std::vector<v1::Prompt>& prompts_in) {
  // truncate_prompt_tokens: the echo is the prompt the model reads, its last this many tokens (as vLLM
  // echoes it).
  std::vector<v1::Prompt> prompts = prompts_in;
  const v1::SamplingParams& sampling = call.request.sampling();
  if (sampling.has_truncate_prompt_tokens()) {
    for (v1::Prompt& p : prompts) {
      std::variant<std::vector<int32_t>, HttpError> ids = PromptIds(p, sampling);
      if (HttpError* e = std::get_if<HttpError>(&ids)) return *e;
      const std::vector<int32_t>& read = std::get<std::vector<int32_t>>(ids);
      p.mutable_token_ids()->mutable_ids()->Assign(read.begin(), read.end());
    }
  }
  v1::ScoreRollingRequest score;
  for (const v1::Prompt& p : prompts) *score.add_texts() = p;
  // logprobs k: the prompt's positions carry k alternatives, as the completion's tokens do (k = 0:
  // the most probable token alone, which lm-evaluation-harness reads as is_greedy).
  if (call.logprobs) score.set_top_logprobs(call.request.sampling().logprobs());
  v1::ScoreRollingResponse scored;
  grpc::ClientContext ctx;
  const CallScope scope(*this, ctx);
  const grpc::Status st = stub_->ScoreRolling(&ctx, score, &scored);
  if (!st.ok()) return CallError(st);
  if (scored.results_size() != static_cast<int>(prompts.size())) {
    return HttpError{500, "ScoreRolling answered " + std::to_string(scored.results_size()) + " results for " +
                              std::to_string(prompts.size()) + " prompts", "server_error", {}};
  }
  std::vector<Echo> echoes;
  for (size_t i = 0; i < prompts.size(); ++i) echoes.push_back(EchoOf(prompts[i], scored.results(static_cast<int>(i)), call.logprobs, call.tokens_as_ids));
  return echoes;
}

int OpenAiServer::StreamCompletion(mg_connection* conn, const CompletionCall& call, int64_t created, Api api,
                                   ResponsesEvents* responses) {
  // A refusal before anything streams: the client's HTTP status (named as the Responses request's).
  const auto refuse = [&](const HttpError& e) { return SendError(conn, responses != nullptr ? ResponsesError(e) : e); };
  // A chunk of the answer: its event, or the Responses events it makes.
  const auto emit = [&](const nlohmann::json& chunk) {
    if (responses == nullptr) return SendEvent(conn, chunk.dump());
    for (const nlohmann::ordered_json& e : responses->Chunk(chunk)) {
      if (!SendNamedEvent(conn, e)) return false;
    }
    return true;
  };
  // echo: the prompts' texts (and logprobs) before anything streams, so a refusal is still the
  // client's HTTP status; with max_tokens 0 they are the whole answer.
  std::vector<Echo> echoes;
  if (call.echo) {
    std::variant<std::vector<Echo>, HttpError> got = Echoes(call, call.prompts);
    if (HttpError* e = std::get_if<HttpError>(&got)) return refuse(*e);
    echoes = std::move(std::get<std::vector<Echo>>(got));
    if (call.max_tokens == 0) return StreamEchoOnly(conn, call, echoes, created);
  }
  // One Generate stream per prompt, each read on its own thread into one queue; prompt i's completion
  // j is choice i * n + j of the answer, as in a whole answer.
  struct Item {
    size_t prompt = 0;
    std::optional<v1::GenerateResponse> msg;  // absent: the stream ended with `end`, or `accepted`
    grpc::Status end;
    std::optional<std::string> accepted;  // the coordinator accepted the prompt: its request id
  };
  const size_t prompts = call.prompts.size();
  std::mutex mu;
  std::condition_variable ready;
  std::deque<Item> queue;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<CallScope>> scopes;
  for (size_t i = 0; i < prompts; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    scopes.push_back(std::make_unique<CallScope>(*this, *contexts.back()));
  }
  auto cancel_all = [&] {
    for (auto& c : contexts) c->TryCancel();
  };
  auto read_prompt = [&](size_t i) {  // prompt i's stream into the queue, then how it ended
    v1::GenerateRequest request = call.request;
    *request.mutable_prompt() = call.prompts[i];
    request.mutable_sampling()->set_max_tokens(call.MaxTokens(i));
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(contexts[i].get(), request);
    // Accepted (common/request_id_metadata.h): no refusal can come any more. A refused call ends
    // without it.
    reader->WaitForInitialMetadata();
    const auto& metadata = contexts[i]->GetServerInitialMetadata();
    if (const auto id = metadata.find(kRequestIdMetadata); id != metadata.end()) {
      std::lock_guard<std::mutex> lock(mu);
      queue.push_back(Item{i, std::nullopt, {}, std::string(id->second.data(), id->second.size())});
      ready.notify_one();
    }
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      std::lock_guard<std::mutex> lock(mu);
      queue.push_back(Item{i, msg, {}});
      ready.notify_one();
    }
    grpc::Status end = reader->Finish();
    std::lock_guard<std::mutex> lock(mu);
    queue.push_back(Item{i, std::nullopt, std::move(end)});
    ready.notify_one();
  };
  ThreadGroup readers;
  try {
    for (size_t i = 0; i < prompts; ++i) readers.Start([&read_prompt, i] { read_prompt(i); });
  } catch (const std::system_error& e) {
    cancel_all();
    readers.Join();
    return refuse(NoThread(e));
  }
  auto next = [&] {
    std::unique_lock<std::mutex> lock(mu);
    ready.wait(lock, [&] { return !queue.empty(); });
    Item item = std::move(queue.front());
    queue.pop_front();
    return item;
  };
  auto join = [&] { readers.Join(); };

  // The coordinator checks a request before it accepts it: until every prompt is accepted (or has
  // sent a message), an error is the client's HTTP status (the others cancelled), not an event. The
  // answer starts then, as vLLM's does once a request is checked, not when every prompt has its
  // first token (a queued prompt held back the others' tokens, and the headers, until it ran).
  std::vector<Item> held;
  std::vector<bool> started(prompts, false);
  size_t started_count = 0;
  std::string request_id;  // the first prompt's, for every event of the answer
  while (started_count < prompts) {
    Item item = next();
    if (item.accepted || item.msg) {
      if (item.prompt == 0 && request_id.empty()) request_id = item.accepted ? *item.accepted : item.msg->request_id();
      if (!started[item.prompt]) {
        started[item.prompt] = true;
        ++started_count;
      }
    } else if (!started[item.prompt]) {
      const grpc::Status& st = item.end;
      cancel_all();
      join();
      if (st.ok()) return refuse(HttpError{500, "the coordinator sent no completion", "server_error", {}});
      return refuse(CallError(st, &call, item.prompt));
    }
    if (!item.accepted) held.push_back(std::move(item));
  }
  SendHead(conn, 200, "text/event-stream", -1);
  // The Responses API's response.created and response.in_progress, at once as OpenAI's.
  if (responses != nullptr && !emit(nlohmann::json::object())) {
    cancel_all();
    join();
    return 200;
  }
  std::vector<uint32_t> prompt_tokens(prompts, 0);
  std::vector<std::optional<uint32_t>> cached_tokens(prompts);  // per prompt, from its completions' usage
  // The usage's prompt_tokens_details when the call reports them: the prompts' cached tokens summed.
  const auto cached_total = [&]() -> std::optional<uint64_t> {
    if (!call.prompt_tokens_details) return std::nullopt;
    uint64_t total = 0;
    for (const std::optional<uint32_t>& t : cached_tokens) total += t.value_or(0);
    return total;
  };
  uint32_t completion_tokens = 0;
  const size_t choices = prompts * call.n;
  std::vector<size_t> offsets(choices, 0);     // text_offset per choice (with echo, from past the prompt)
  std::vector<bool> echo_sent(echoes.empty() ? 0 : choices, false);  // echo: on a choice's first chunk
  for (size_t c = 0; c < echo_sent.size(); ++c) offsets[c] = CharCount(echoes[c / call.n].text);
  std::vector<bool> role_sent(choices, false);  // chat: the assistant-role chunk before a choice's text
  // return_token_ids: each prompt's ids (the first message of its stream), on each of its choices'
  // first chunk.
  std::vector<std::vector<int32_t>> prompt_ids(prompts);
  std::vector<bool> prompt_ids_sent(call.return_token_ids ? choices : 0, false);
  // continuous_usage_stats: each chunk's usage, its prompt's tokens and its choice's so far.
  std::vector<uint32_t> choice_tokens(choices, 0);
  auto with_usage = [&](nlohmann::json& chunk, size_t prompt, uint32_t completion) {
    if (!call.continuous_usage) return;
    chunk["usage"] = UsageJson(prompt_ids[prompt].size(), completion);
  };
  // prompt_logprobs arrive in messages of their own (at most 1,024 positions each) before the first
  // token: they go out whole with the choice's next chunk.
  std::vector<std::vector<v1::TokenLogprob>> pending_prompt_logprobs(choices);
  // They come with a prompt's completion 0 only, and every choice of the prompt carries them: with
  // n > 1 the other completions' messages wait until completion 0's first token (or the prompt's
  // stream end) says they have all come; another completion may run first (on another rank, or
  // with completion 0 queued), and its chunks, its last included, went out without them.
  const bool prompt_logprobs_wanted = call.request.sampling().has_prompt_logprobs() && call.n > 1;
  std::vector<bool> awaits_prompt_logprobs(prompts, prompt_logprobs_wanted);
  std::vector<std::vector<Item>> deferred(prompts);
  size_t held_next = 0;  // the next of `held` to read (the messages read before the head, then these)
  auto release_prompt_logprobs_wait = [&](size_t prompt) {
    awaits_prompt_logprobs[prompt] = false;
    // Read next, before what is still held: those came after them (a choice's chunks stay in order).
    held.insert(held.begin() + static_cast<std::ptrdiff_t>(held_next), std::make_move_iterator(deferred[prompt].begin()),
                std::make_move_iterator(deferred[prompt].end()));
    deferred[prompt].clear();
  };
  // A choice answering with tool calls: a named function's arguments, "required"'s calls, and
  // "auto"'s once its first token is [TOOL_CALLS], stream as they come (OpenAI's deltas: a call's id
  // and name first, then arguments text). "auto"'s text is free: when it does not read as calls
  // after all, its last delta carries it as content, and the finish reason is not "tool_calls".
  const bool tool_calls = api == Api::kChat && call.tool_choice.kind != ToolChoice::Kind::kNone;
  const bool named = call.tool_choice.kind == ToolChoice::Kind::kNamed;
  const bool required = api == Api::kChat && call.tool_choice.kind == ToolChoice::Kind::kRequired;
  const bool automatic = api == Api::kChat && call.tool_choice.kind == ToolChoice::Kind::kAuto;
  std::vector<ToolCallsStream> call_streams(
      required || automatic ? choices : 0,
      ToolCallsStream(required ? "parameters" : "arguments", call.tool_choice.single_call ? 1 : 0));
  std::vector<std::string> held_text(automatic ? choices : 0);  // "auto": read whole once it ends
  std::vector<int8_t> holds(tool_calls ? choices : 0, -1);  // -1: not known before its first token
  std::vector<bool> call_started(named ? choices : 0, false);  // a named call's first delta was sent
  bool client_gone = false;
  std::optional<HttpError> failure;
  size_t ended_count = 0;
  while (held_next < held.size() || ended_count < prompts) {
    Item item = held_next < held.size() ? std::move(held[held_next++]) : next();
    if (item.accepted) continue;  // (each prompt's comes before its messages, read above)
    if (!item.msg) {
      ++ended_count;
      release_prompt_logprobs_wait(item.prompt);
      if (!item.end.ok() && !failure && !client_gone) {
        failure = CallError(item.end, &call, item.prompt);
        cancel_all();  // one prompt failed: the answer is that error
      }
      continue;
    }
    v1::GenerateResponse& msg = *item.msg;
    if (awaits_prompt_logprobs[item.prompt]) {
      if (msg.index() == 0 && (msg.token_ids_size() > 0 || msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED)) {
        release_prompt_logprobs_wait(item.prompt);  // completion 0's prompt logprobs have all come
      } else if (msg.index() > 0) {
        deferred[item.prompt].push_back(std::move(item));
        continue;
      }
    }
    if (msg.has_usage()) {
      prompt_tokens[item.prompt] = msg.usage().prompt_tokens();
      completion_tokens += msg.usage().completion_tokens();
      // The prompt is counted once: the fewest tokens any of its completions found cached.
      const uint32_t cached = msg.usage().cached_prompt_tokens();
      cached_tokens[item.prompt] = std::min(cached_tokens[item.prompt].value_or(cached), cached);
    }
    if (client_gone || failure || msg.index() >= call.n) continue;
    const uint32_t choice = static_cast<uint32_t>(item.prompt * call.n + msg.index());
    msg.set_index(choice);
    msg.set_request_id(request_id);
    if (msg.prompt_token_ids_size() > 0) {  // a message of its own, before anything else
      prompt_ids[item.prompt].assign(msg.prompt_token_ids().begin(), msg.prompt_token_ids().end());
      continue;
    }
    choice_tokens[choice] += static_cast<uint32_t>(msg.token_ids_size());
    // They come with the prompt's completion 0; every choice of the prompt carries them, as in a
    // whole answer (CompletionAccumulator).
    if (msg.prompt_logprobs_size() > 0) {
      for (uint32_t j = 0; j < call.n; ++j) {
        std::vector<v1::TokenLogprob>& p = pending_prompt_logprobs[item.prompt * call.n + j];
        p.insert(p.end(), msg.prompt_logprobs().begin(), msg.prompt_logprobs().end());
      }
      msg.clear_prompt_logprobs();
    }
    std::vector<v1::TokenLogprob>& pending = pending_prompt_logprobs[choice];
    if (!pending.empty()) {
      if (msg.token_ids_size() == 0 && msg.finish_reason() == v1::FINISH_REASON_UNSPECIFIED) continue;
      msg.mutable_prompt_logprobs()->Assign(pending.begin(), pending.end());
      pending.clear();
    }
    // return_token_ids: the prompt's ids on the choice's first chunk (chat: its role chunk, at the top
    // level as vLLM puts them; completions: in the choice).
    const bool with_prompt_ids = call.return_token_ids && !prompt_ids_sent[choice];
    if (with_prompt_ids) prompt_ids_sent[choice] = true;
    if (api == Api::kChat && !role_sent[choice]) {
      role_sent[choice] = true;
      nlohmann::json role = ChatRoleChunkJson(request_id, choice, model_name_, created);
      if (with_prompt_ids) role["prompt_token_ids"] = prompt_ids[item.prompt];
      with_usage(role, item.prompt, 0);  // before the choice's first tokens
      client_gone = !emit(role);
      if (!call.chat_echo.empty() && !client_gone) {  // vLLM's chat echo: its own delta after the role's
        nlohmann::json echo = role;
        echo.erase("prompt_token_ids");
        echo["choices"][0]["delta"] = {{"content", call.chat_echo}};
        client_gone = !emit(echo);
      }
    }
    nlohmann::json chunk =
        StreamChunkJson(msg, model_name_, created, call.logprobs, offsets[choice], api, TokenReportOf(call));
    if (with_prompt_ids && api == Api::kCompletions) chunk["choices"][0]["prompt_token_ids"] = prompt_ids[item.prompt];
    if (!echo_sent.empty() && !echo_sent[choice]) {  // completions only: the parser refuses chat's echo
      echo_sent[choice] = true;
      PrependEcho(chunk["choices"][0], echoes[item.prompt], 0);
    }
    if (tool_calls && holds[choice] < 0 && (msg.token_ids_size() > 0 || msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED)) {
      holds[choice] = AnswersWithCalls(call.tool_choice, msg.token_ids_size() > 0 ? msg.token_ids(0) : -1) ? 1 : 0;
    }
    if (named) {
      chunk["choices"][0]["delta"] = NamedToolCallDelta(call.tool_choice, msg.text(), !call_started[choice]);
      call_started[choice] = true;
    } else if (tool_calls && holds[choice] == 1) {
      if (automatic) held_text[choice] += msg.text();
      nlohmann::json entries = call_streams[choice].Feed(msg.text());
      const bool last = msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED;
      if (entries.empty() && !last) {  // nothing to send yet: the prompt's logprobs wait for the next chunk
        pending.assign(msg.prompt_logprobs().begin(), msg.prompt_logprobs().end());
        continue;
      }
      nlohmann::json delta = entries.empty() ? nlohmann::json::object() : nlohmann::json{{"tool_calls", entries}};
      if (last && automatic) {
        if (ToolCallsJson(call.tool_choice, held_text[choice]).is_null()) {
          delta["content"] = held_text[choice];  // not calls after all: the text, as "auto" answers it whole
        } else {
          chunk["choices"][0]["finish_reason"] = "tool_calls";
        }
      }
      chunk["choices"][0]["delta"] = std::move(delta);
    }
    with_usage(chunk, item.prompt, choice_tokens[choice]);
    if (!client_gone && !emit(chunk)) client_gone = true;
    if (client_gone) cancel_all();  // the coordinator cancels the sequences and frees their KV blocks
  }
  join();
  if (client_gone) return 200;
  if (responses != nullptr) {  // no [DONE]: the last event is response.completed (or .incomplete, .failed)
    uint32_t prompt_total = 0;
    for (uint32_t t : prompt_tokens) prompt_total += t;
    for (const nlohmann::ordered_json& e : failure ? responses->Failed(*failure)
                                                   : responses->Finish(UsageJson(prompt_total, completion_tokens,
                                                                                 cached_total()))) {
      if (!SendNamedEvent(conn, e)) break;
    }
    return 200;
  }
  if (failure) {
    SendEvent(conn, failure->ToJson().dump());
  } else if (call.include_usage) {
    uint32_t prompt_total = 0;
    for (uint32_t t : prompt_tokens) prompt_total += t;
    SendEvent(conn,
              StreamUsageJson(request_id, model_name_, created, prompt_total, completion_tokens, api, cached_total())
                  .dump());
  }
  SendEvent(conn, "[DONE]");
  return 200;
}

int OpenAiServer::StreamEchoOnly(mg_connection* conn, const CompletionCall& call, const std::vector<Echo>& echoes,
                                 int64_t created) {
  SendHead(conn, 200, "text/event-stream", -1);
  const std::string request_id = LocalRequestId(call);
  uint32_t prompt_tokens = 0;
  for (size_t i = 0; i < echoes.size(); ++i) {
    prompt_tokens += echoes[i].tokens;
    for (uint32_t j = 0; j < call.n; ++j) {
      const uint32_t index = static_cast<uint32_t>(i * call.n + j);
      nlohmann::json chunk = EchoOnlyChunkJson(echoes[i], request_id, index, model_name_, created);
      if (call.return_token_ids) {
        chunk["choices"][0]["token_ids"] = nlohmann::json::array();
        chunk["choices"][0]["prompt_token_ids"] = echoes[i].token_ids;
      }
      if (call.continuous_usage) {
        chunk["usage"] = UsageJson(echoes[i].tokens, 0);
      }
      if (!SendEvent(conn, chunk.dump())) return 200;
    }
  }
  if (call.include_usage) {  // nothing ran: no prompt token was looked up in a cache
    SendEvent(conn, StreamUsageJson(request_id, model_name_, created, prompt_tokens, 0, Api::kCompletions,
                                    call.prompt_tokens_details ? std::optional<uint64_t>(0) : std::nullopt)
                        .dump());
  }
  SendEvent(conn, "[DONE]");
  return 200;
}

std::variant<nlohmann::json, HttpError> OpenAiServer::WholeAnswer(const CompletionCall& call, size_t prompt,
                                                                  int64_t created, Api api) {
  const v1::Prompt& prompt_in = call.prompts[prompt];
  if (call.beam_search) return BeamSearchAnswer(call, prompt_in, call.MaxTokens(prompt), created, api);
  v1::GenerateRequest request = call.request;
  *request.mutable_prompt() = prompt_in;
  request.mutable_sampling()->set_max_tokens(call.MaxTokens(prompt));
  // echo: the prompt's logprobs (and its most probable tokens) first, from ScoreRolling, as
  // lm-evaluation-harness scores a text.
  std::optional<Echo> echo;
  if (call.echo) {
    std::variant<std::vector<Echo>, HttpError> echoes = Echoes(call, {prompt_in});
    if (HttpError* e = std::get_if<HttpError>(&echoes)) return *e;
    echo = std::move(std::get<std::vector<Echo>>(echoes).front());
  }

  CompletionAccumulator acc(call.n, call.logprobs, api, call.prompt_logprobs, TokenReportOf(call));
  if (call.max_tokens > 0) {
    grpc::ClientContext ctx;
    const CallScope scope(*this, ctx);
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&ctx, request);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (!acc.Add(msg)) ctx.TryCancel();
    }
    const grpc::Status st = reader->Finish();
    if (!st.ok()) return CallError(st, &call, prompt);
  } else {  // echo of the prompt alone: no completion, "length" as max_tokens 0 says
    const std::string request_id = LocalRequestId(call);
    for (uint32_t i = 0; i < call.n; ++i) {
      v1::GenerateResponse none;
      none.set_index(i);
      none.set_request_id(request_id);
      none.set_finish_reason(v1::FINISH_REASON_LENGTH);
      none.mutable_usage()->set_prompt_tokens(echo->tokens);
      if (i == 0) none.mutable_prompt_token_ids()->Assign(echo->token_ids.begin(), echo->token_ids.end());
      acc.Add(none);
    }
  }
  nlohmann::json answer = acc.ToJson(model_name_, created);
  if (api == Api::kChat) ApplyToolCalls(call.tool_choice, answer, acc.FirstTokens());
  if (api == Api::kChat && !call.chat_echo.empty()) {  // vLLM's chat echo: before every choice's content
    for (nlohmann::json& choice : answer["choices"]) {
      nlohmann::json& content = choice["message"]["content"];
      content = call.chat_echo + (content.is_string() ? content.get<std::string>() : std::string());
    }
  }
  if (echo) {
    for (nlohmann::json& choice : answer["choices"]) PrependEcho(choice, *echo, CharCount(echo->text));
  }
  return answer;
}

std::variant<std::vector<std::vector<BeamCandidate>>, HttpError> OpenAiServer::BeamCandidates(
    const CompletionCall& call, const std::vector<std::vector<int32_t>>& prefixes, uint32_t* first_cached) {
  std::vector<std::variant<std::vector<BeamCandidate>, HttpError>> got(prefixes.size());
  const auto candidates = [&](size_t i) -> std::variant<std::vector<BeamCandidate>, HttpError> {
    v1::GenerateRequest request;
    request.set_cache_salt(call.request.cache_salt());  // the beams share the prompt's cached blocks
    request.set_priority(call.request.priority());
    request.mutable_prompt()->mutable_token_ids()->mutable_ids()->Assign(prefixes[i].begin(), prefixes[i].end());
    v1::SamplingParams& s = *request.mutable_sampling();
    const v1::SamplingParams& asked = call.request.sampling();
    s.set_max_tokens(1);
    s.set_logprobs(2 * call.n);
    s.set_ignore_eos(true);  // the search decides what an end-of-sequence token does
    if (asked.has_temperature()) s.set_temperature(asked.temperature());
    if (asked.has_seed()) s.set_seed(asked.seed());
    grpc::ClientContext ctx;
    const CallScope scope(*this, ctx);
    std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&ctx, request);
    std::vector<BeamCandidate> out;
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (i == 0 && first_cached != nullptr && msg.has_usage()) *first_cached = msg.usage().cached_prompt_tokens();
      for (const v1::TokenLogprob& lp : msg.logprobs()) {  // the one token: its alternatives, then itself
        for (const v1::TopLogprob& t : lp.top()) out.push_back({t.token_id(), t.logprob()});
        const bool listed = std::any_of(out.begin(), out.end(), [&](const BeamCandidate& c) { return c.token_id == lp.token_id(); });
        if (!listed) out.push_back({lp.token_id(), lp.logprob()});
      }
    }
    const grpc::Status st = reader->Finish();
    if (!st.ok()) return CallError(st);
    return out;
  };
  if (std::optional<HttpError> e = RunEach(prefixes.size(), [&](size_t i) { got[i] = candidates(i); })) return *e;
  std::vector<std::vector<BeamCandidate>> lists;
  for (auto& g : got) {
    if (HttpError* e = std::get_if<HttpError>(&g)) return *e;
    lists.push_back(std::move(std::get<std::vector<BeamCandidate>>(g)));
  }
  return lists;
}

std::variant<nlohmann::json, HttpError> OpenAiServer::BeamSearchAnswer(const CompletionCall& call, const v1::Prompt& prompt_in,
                                                                       uint32_t max_tokens, int64_t created, Api api) {
  const v1::SamplingParams& asked = call.request.sampling();
  std::variant<std::vector<int32_t>, HttpError> ids = PromptIds(prompt_in, asked);
  if (HttpError* e = std::get_if<HttpError>(&ids)) return *e;
  const std::vector<int32_t> prompt = std::move(std::get<std::vector<int32_t>>(ids));
  if (static_cast<int64_t>(prompt.size()) + max_tokens > max_model_len_) {
    return BadParam("max_tokens", absl::StrCat("the prompt's ", prompt.size(), " tokens and max_tokens ", max_tokens,
                                               " exceed the model's context of ", max_model_len_, " tokens"));
  }
  BeamSearchOptions options;
  options.beam_width = call.n;
  options.max_tokens = max_tokens_cap_ > 0 ? std::min(max_tokens, max_tokens_cap_) : max_tokens;
  options.length_penalty = call.length_penalty;
  options.ignore_eos = asked.ignore_eos();
  options.include_stop = asked.include_stop_str_in_output();
  options.eos_ids = eos_ids_;
  uint32_t prompt_cached = 0;  // the first step's, on the prompt alone: what the prefix cache held of it
  bool first_step = true;
  std::variant<std::vector<Beam>, HttpError> searched =
      BeamSearch(prompt, options, [&](const std::vector<std::vector<int32_t>>& prefixes) {
        uint32_t* cached = first_step ? &prompt_cached : nullptr;
        first_step = false;
        return BeamCandidates(call, prefixes, cached);
      });
  if (HttpError* e = std::get_if<HttpError>(&searched)) return *e;
  const std::vector<Beam>& beams = std::get<std::vector<Beam>>(searched);

  // The answer as the Generate messages of n completions would make it.
  CompletionAccumulator acc(call.n, /*logprobs=*/false, api, /*prompt_logprobs=*/false, TokenReportOf(call));
  const std::string request_id = LocalRequestId(call);
  for (size_t i = 0; i < beams.size(); ++i) {
    const Beam& b = beams[i];
    v1::GenerateResponse msg;
    msg.set_index(static_cast<uint32_t>(i));
    msg.set_request_id(request_id);
    if (i == 0) msg.mutable_prompt_token_ids()->Assign(prompt.begin(), prompt.end());
    const std::vector<int32_t> generated(b.tokens.begin() + static_cast<std::ptrdiff_t>(prompt.size()), b.tokens.end());
    msg.mutable_token_ids()->Assign(generated.begin(), generated.end());
    v1::DetokenizeRequest text_of;  // its text: without an end-of-sequence token it keeps, as vLLM's
    text_of.mutable_token_ids()->Assign(generated.begin(), generated.end() - (b.ended_by_eos && options.include_stop ? 1 : 0));
    if (asked.has_skip_special_tokens()) text_of.set_skip_special_tokens(asked.skip_special_tokens());
    v1::DetokenizeResponse text;
    grpc::ClientContext ctx;
    const CallScope scope(*this, ctx);
    if (const grpc::Status st = stub_->Detokenize(&ctx, text_of, &text); !st.ok()) {
      return CallError(st);
    }
    msg.set_text(text.text());
    msg.set_finish_reason(b.ended_by_eos ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH);
    msg.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(prompt.size()));
    msg.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(generated.size()));
    msg.mutable_usage()->set_cached_prompt_tokens(prompt_cached);
    acc.Add(msg);
  }
  return acc.ToJson(model_name_, created);
}

}  // namespace moe::openai
