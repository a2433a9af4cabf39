// moe-openai-server: an OpenAI-compatible HTTP front end (POST /v1/completions,
// /v1/chat/completions and /v1/responses, streamed as server-sent events or whole; vLLM's POST /tokenize and
// /detokenize; GET /v1/models; GET /health) over the coordinator's public gRPC
// API, so OpenAI clients and tools built for vLLM's server (benchmark_serving, lm-evaluation-harness's
// generation tasks through local-completions) talk to the cluster unchanged. A separate process and a plain
// gRPC client: it adds no state, and the coordinator stays the one place where requests are checked
// and scheduled. The translation rules are in openai_protocol.h.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <span>
#include <vector>

#include <grpcpp/channel.h>

#include "common/status.h"
#include "coordinator/openai/beam_search.h"
#include "coordinator/openai/chat_prompt.h"
#include "coordinator/openai/civetweb_tls.h"
#include "coordinator/openai/client_watch.h"
#include "coordinator/openai/openai_protocol.h"
#include "coordinator/openai/response_store.h"
#include "coordinator/openai/responses_api.h"
#include "coordinator/openai/http_metrics.h"
#include "coordinator/openai/tgi_protocol.h"
#include "moe/v1/inference.grpc.pb.h"

struct mg_connection;
struct mg_context;

namespace moe::openai {

struct ServerOptions {
  std::string coordinator;            // HOST:PORT of the coordinator's public API
  std::string listen = "0.0.0.0:8000";
  // The names requests may give as "model" (vLLM's --served-model-name); answers and /v1/models
  // name the first. Empty: the model folder's name, from GetModelInfo.
  std::vector<std::string> model_names;
  // HTTP connections served at once (civetweb's worker threads, made at start). Each holds one
  // connection from accept to close, streams included, so this bounds the requests in flight, as
  // vLLM's benchmark drives them at 256 and more; one more connection waits for a free thread.
  int threads = 1024;
  // The longest a connection may take to send its request headers, and any one read of its body or
  // write of the answer (civetweb's request_timeout_ms): a client that connects and sends nothing,
  // or stops reading a stream, gives its thread back after this.
  double request_timeout_s = 30;
  // Not empty: a line per request (civetweb's access log: client, time, request line, status,
  // bytes) appended to this file ("/dev/stderr" for the process's own).
  std::string access_log;
  // Not empty: GET /metrics answers what this URL (http://HOST:PORT/PATH, the coordinator's
  // Prometheus endpoint) answers, so monitoring that scrapes vLLM's API port finds the cluster's
  // metrics there too. deploy/launch-cluster.sh passes the coordinator's.
  std::string metrics_url;
  // CORS: browser pages of these origins ("*": any, as vLLM's default) may read the answers;
  // preflights are answered. Empty (the default): no CORS headers, browsers keep pages out.
  std::vector<std::string> allowed_origins;
  double connect_timeout_s = 30;      // to reach the coordinator at start
  std::string chat_template_file;     // empty: the model folder's template (ModelInfo.chat_template)
  std::string tool_call_parser;       // "mistral": tool_choice "auto" answers are read for [TOOL_CALLS]
  // /v1/responses answers kept (store: true, OpenAI's default) for previous_response_id and GET /
  // DELETE /v1/responses/{id}, the least recently used dropped past it; 0: none kept.
  size_t responses_store = 1024;
  // vLLM's --enable-prompt-tokens-details: completions' and chat completions' usage says how many
  // prompt tokens the ranks' prefix caches held (prompt_tokens_details.cached_tokens).
  bool prompt_tokens_details = false;
  // vLLM's --trust-request-chat-template: a request's own chat_template is rendered. Off (the
  // default, as vLLM's), such a request is refused: a template is a program, and one request's could
  // hold a front thread for the render's whole time limit.
  bool trust_request_chat_template = false;
  // Not empty: every endpoint but GET /health, /metrics and /version answers 401 unless the request
  // carries "Authorization: Bearer <one of these>" (vLLM's --api-key; OpenAI clients send it).
  std::vector<std::string> api_keys;
  // Enabled: the API is served over HTTPS only (vLLM's --ssl-certfile / --ssl-keyfile, and
  // --ssl-ca-certs / --ssl-cert-reqs for clients' certificates).
  HttpsOptions https;
};

class OpenAiServer {
 public:
  // Checks the TLS files (when given), reads the model's name, context and chat template from the
  // coordinator, then listens. Unavailable when the coordinator does not answer in time;
  // InvalidArgument for a bad --listen or a port in use, a chat_template_file that cannot be read or
  // parsed, or TLS files that cannot be used (naming --ssl-certfile or --ssl-keyfile);
  // FailedPrecondition when HTTPS is asked of a build or system that cannot serve it. A model without a chat
  // template (or with one this server cannot parse) is served without chat completions: they are
  // refused with chat_template_status()'s message.
  static absl::StatusOr<std::unique_ptr<OpenAiServer>> Start(const ServerOptions& opts);
  // Cancels the gRPC calls in flight and waits (up to 10 s) for their handlers to finish their
  // answers (an error event and [DONE], or an error status), then stops listening: civetweb refuses
  // writes once it is stopping, so the handlers must be done first.
  ~OpenAiServer();

  int port() const { return port_; }
  bool https() const { return https_.enabled(); }
  const std::string& model_name() const { return model_name_; }
  const absl::Status& chat_template_status() const { return chat_template_status_; }
  const std::vector<std::string>& allowed_origins() const { return allowed_origins_; }

  // Whether `path` is one of TGI's routes (its errors are TGI's JSON shape).
  static bool IsTgiPath(std::string_view path);

 private:
  OpenAiServer() = default;
  // The routes served at exactly their paths: registered from this one list, which also names them
  // in the request metrics and the unknown path's answer (/v1/responses/{id} and the rest are
  // registered beside it).
  struct Route {
    const char* path;
    int (*handler)(mg_connection* conn, void* self);
    bool tgi = false;  // TGI's route
  };
  static std::span<const Route> ExactRoutes();
  static std::vector<std::string> ExactRoutePaths();
  // Every route's civetweb handler: runs the route's (`route`, a Route) on the server the context
  // holds; an exception it lets out fails the request with a 500, not the process.
  static int RunRoute(mg_connection* conn, void* route);
  static int HandleCompletions(mg_connection* conn, void* self);
  static int HandleChat(mg_connection* conn, void* self);
  static int HandleResponses(mg_connection* conn, void* self);
  static int HandleInvocations(mg_connection* conn, void* self);
  static int HandleStoredResponse(mg_connection* conn, void* self);  // GET, DELETE /v1/responses/{id}
  static int HandleTokenize(mg_connection* conn, void* self);
  static int HandleDetokenize(mg_connection* conn, void* self);
  static int HandleModels(mg_connection* conn, void* self);
  static int HandleModel(mg_connection* conn, void* self);  // GET /v1/models/{model}
  static int HandleHealth(mg_connection* conn, void* self);
  static int HandleVersion(mg_connection* conn, void* self);
  static int HandleMetrics(mg_connection* conn, void* self);
  static int HandleUnknown(mg_connection* conn, void* self);
  // civetweb's authorization hook, before every handler: with allowed_origins, a CORS preflight
  // (OPTIONS) is answered here; with api_keys, a request without one of them is answered 401 here.
  // Either way it reaches no handler.
  static int BeforeHandler(mg_connection* conn, void* self);
  // A POST admitted while the server runs (counted by a HandlerScope until it has answered), its
  // body read, handed to `handle`; otherwise the refusal (405, 503 while stopping, 413).
  // `watch_client`: the request waits on the cluster (completions): a ClientWatch cancels it should
  // the client leave meanwhile.
  int ServePost(mg_connection* conn, int (OpenAiServer::*handle)(mg_connection*, const std::string& body),
                bool watch_client);
  int Completions(mg_connection* conn, const std::string& body);
  int Chat(mg_connection* conn, const std::string& body);
  int Responses(mg_connection* conn, const std::string& body);
  int Invocations(mg_connection* conn, const std::string& body);
  // A chat completion request ready to run: parsed, its conversation rendered and tokenised into
  // the call's prompt, max_tokens defaulted to what the context leaves.
  std::variant<ChatCall, HttpError> PrepareChat(mg_connection* conn, const std::string& body);
  int Tokenize(mg_connection* conn, const std::string& body);
  int Detokenize(mg_connection* conn, const std::string& body);
  bool Stopping();
  // The answer for a failed call of the request this thread serves: a call the front cancelled is
  // 499 when the request's client left (its ClientWatch saw it go), 503 when the server is stopping;
  // anything else as FromGrpcError has it (with the call and prompt: FromGrpcError's per-call form).
  HttpError CallError(const grpc::Status& st, const CompletionCall* call = nullptr, size_t prompt = 0);
  // The same in TGI's shape: TgiErrorFromGrpc, but for a cancelled call.
  TgiError TgiCallError(const grpc::Status& st);
  // The token ids of a conversation through the chat template (the request's own, else the
  // server's) and the coordinator's tokenizer, special tokens written by the template parsed.
  std::variant<std::vector<int32_t>, HttpError> ChatPromptIds(const ChatCall& chat);
  // The conversation's text through the chat template, and how that text is tokenised (no BOS
  // added: the template writes it; the special tokens it writes parsed).
  std::variant<std::string, HttpError> ChatPromptText(const ChatCall& chat);
  static v1::TokenizeRequest ChatTokenizeRequest(const std::string& text);
  // A text's token ids from the coordinator's tokenizer: as a text prompt is encoded (special tokens
  // written in it parsed, as Hugging Face tokenizers do; BOS as the tokenizer config's add_bos_token
  // says), or with add_special_tokens false without BOS (or EOS).
  std::variant<std::vector<int32_t>, HttpError> TokenIds(const std::string& text, bool add_special_tokens);
  std::variant<std::vector<int32_t>, HttpError> TokenIds(const v1::TokenizeRequest& request);
  // The ids the model reads for `prompt`: a text tokenised as the coordinator tokenises a text prompt
  // (BOS per the tokenizer config; add_special_tokens false already sends ids), then the last
  // truncate_prompt_tokens of them when `sampling` asks.
  std::variant<std::vector<int32_t>, HttpError> PromptIds(const v1::Prompt& prompt, const v1::SamplingParams& sampling);
  // echo: each prompt's Echo, from one ScoreRolling call, or the HTTP error.
  std::variant<std::vector<Echo>, HttpError> Echoes(const CompletionCall& call, const std::vector<v1::Prompt>& prompts);
  // A streamed echo with max_tokens 0: each choice's prompt in one chunk, the usage when asked, [DONE].
  int StreamEchoOnly(mg_connection* conn, const CompletionCall& call, const std::vector<Echo>& echoes, int64_t created);
  // `responses`: the answer goes out as Responses API events (the chat chunks translated), not
  // chat chunks and [DONE].
  int StreamCompletion(mg_connection* conn, const CompletionCall& call, int64_t created, Api api,
                       ResponsesEvents* responses = nullptr);
  // Prompt `prompt`'s whole answer (its n choices; with echo, the prompt first), or the HTTP error.
  std::variant<nlohmann::json, HttpError> WholeAnswer(const CompletionCall& call, size_t prompt, int64_t created, Api api);
  // A request's max_tokens where it gives none (chat) or null (completions): what the context
  // leaves after `prompt_tokens`, within the model's max_new_tokens, at least 1 (a prompt that
  // fills the context is refused by the coordinator).
  uint32_t DefaultMaxTokens(size_t prompt_tokens) const;
  // OpenAI's background responses: the answer's cancel token, and under `mu` who decides what the
  // store holds: the thread while running (its answer makes it kDone), else the cancel (the
  // "cancelled" response) or the DELETE (nothing); the thread stores nothing after either.
  struct BackgroundResponse {
    enum class State { kRunning, kDone, kCancelled, kDeleted };
    ClientWatch watch;
    std::mutex mu;
    State state = State::kRunning;
    nlohmann::ordered_json cancelled_response;  // the response as a cancel leaves it
    nlohmann::ordered_json input_items;         // its request's (ResponsesCall::input_items)
  };
  // background: true: stores the response "queued" and answers it; a thread of its own runs the
  // chat completion and stores "in_progress", then the answer ("failed", "cancelled").
  int StartBackgroundResponse(mg_connection* conn, const ResponsesCall& responses, const ChatCall& chat,
                              const nlohmann::ordered_json& history, int64_t created);
  std::shared_ptr<BackgroundResponse> RunningBackgroundResponse(const std::string& id);
  int CancelBackgroundResponse(mg_connection* conn, const std::string& id);
  // GET /v1/responses/{id}/input_items: a page of a stored response's input items (InputItemsPage).
  int ListInputItems(mg_connection* conn, const std::string& id);
  // TGI's POST /generate, /generate_stream and / (tgi_endpoints.cc, tgi_protocol.h).
  static int HandleTgiGenerate(mg_connection* conn, void* self);
  static int HandleTgiGenerateStream(mg_connection* conn, void* self);
  static int HandleTgiRoot(mg_connection* conn, void* self);  // GET: health; POST: compat_generate
  static int HandleTgiInfo(mg_connection* conn, void* self);
  // TGI's POST /tokenize (Tokenize hands a body with "inputs" here) and /chat_tokenize: each token
  // with the characters of the text it came from.
  static int HandleTgiChatTokenize(mg_connection* conn, void* self);
  int TgiTokenize(mg_connection* conn, const std::string& body);
  int TgiChatTokenize(mg_connection* conn, const std::string& body);
  // Tokenize's answer to `request` in TGI's shape (`templated`: /chat_tokenize's, with the text), or
  // the coordinator's error in TGI's.
  int AnswerTgiTokens(mg_connection* conn, const v1::TokenizeRequest& request, bool templated);
  int TgiGenerateWhole(mg_connection* conn, const std::string& body);
  int TgiGenerateStream(mg_connection* conn, const std::string& body);
  int TgiGenerateCompat(mg_connection* conn, const std::string& body);
  int TgiGenerate(mg_connection* conn, const std::string& body, TgiRoute route);
  // A generated token as TGI writes it (a special token's text is its piece), and its alternatives.
  nlohmann::json TgiToken(int32_t id, const std::string& text, double logprob) const;
  nlohmann::json TgiToken(const v1::TokenLogprob& t) const;
  nlohmann::json TgiTopTokens(const v1::TokenLogprob& t) const;
  // A token's text decoded alone (a special token's: its piece).
  std::string TokenText(int32_t id);
  // use_beam_search: one prompt's answer, its n choices the best beams (beam_search.h), each step's
  // candidates from one-token Generate calls (one per beam, at once), or the HTTP error.
  std::variant<nlohmann::json, HttpError> BeamSearchAnswer(const CompletionCall& call, const v1::Prompt& prompt,
                                                           uint32_t max_tokens, int64_t created, Api api);
  // Each prefix's next-token candidates for the search: the 2 x width most probable tokens and the
  // one sampled, from a Generate call of one token with `call`'s temperature and seed.
  // `first_cached` (not null): the first prefix's cached prompt tokens (its usage's), there.
  std::variant<std::vector<std::vector<BeamCandidate>>, HttpError> BeamCandidates(
      const CompletionCall& call, const std::vector<std::vector<int32_t>>& prefixes, uint32_t* first_cached = nullptr);

  // A completions handler at work: counted until it has written its answer; not admitted once the
  // server is stopping.
  class HandlerScope {
   public:
    explicit HandlerScope(OpenAiServer& s);
    ~HandlerScope();
    bool admitted() const { return admitted_; }

   private:
    OpenAiServer& s_;
    bool admitted_;
  };
  // A gRPC call registered for cancellation while it is in flight: at shutdown, and when the client
  // of the request the calling thread serves leaves (ClientWatch::current()).
  class CallScope {
   public:
    CallScope(OpenAiServer& s, grpc::ClientContext& ctx);
    ~CallScope();

   private:
    OpenAiServer& s_;
    grpc::ClientContext& ctx_;
    ClientWatch* watch_;
  };
  std::mutex mu_;
  std::condition_variable handlers_done_;
  int handlers_ = 0;                      // HandlerScopes alive
  std::set<grpc::ClientContext*> calls_;  // in flight
  bool stopping_ = false;
  std::unordered_map<std::string, std::shared_ptr<BackgroundResponse>> background_;  // running, by response id
  int background_running_ = 0;  // their threads (detached), waited for when the server stops
  std::condition_variable background_done_;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
  std::string model_name_;                // what answers call the model: served_'s first name
  ServedModel served_{std::string()};     // every name a request may give
  int64_t max_model_len_ = 0;
  // The model's generation_config.json max_new_tokens (ModelInfo.default_sampling): a chat's
  // max_tokens where the request gives none, if less than what the context leaves; 0: none.
  uint32_t default_max_tokens_ = 0;
  uint32_t max_tokens_cap_ = 0;  // ModelInfo.max_tokens_cap: beam search's steps too; 0: none
  int32_t tool_calls_id_ = -1;  // --tool-call-parser mistral: the [TOOL_CALLS] token
  std::vector<int32_t> eos_ids_;  // the model's end-of-sequence ids (config.json), which end a beam
  std::unordered_map<int32_t, std::string> special_pieces_;  // the vocabulary's special tokens and their pieces
  int max_concurrent_requests_ = 0;  // --threads
  std::unique_ptr<ResponseStore> responses_store_;
  bool prompt_tokens_details_ = false;  // ServerOptions::prompt_tokens_details
  bool trust_request_chat_template_ = false;  // ServerOptions::trust_request_chat_template
  std::optional<ChatPrompt> chat_prompt_;  // absent: chat completions refused, chat_template_status_ says why
  absl::Status chat_template_status_;
  std::string bos_token_, eos_token_;      // for a request's own chat_template
  int64_t created_ = 0;
  std::vector<std::string> api_keys_;
  std::vector<std::string> allowed_origins_;
  std::optional<HttpUrl> metrics_url_;
  HttpMetrics http_metrics_{ExactRoutePaths()};  // every request the front answers (civetweb's begin/end_request callbacks)
  mg_context* ctx_ = nullptr;
  int port_ = 0;
  HttpsOptions https_;  // enabled: HTTPS (civetweb's init_ssl callback loads its files)
};

}  // namespace moe::openai
