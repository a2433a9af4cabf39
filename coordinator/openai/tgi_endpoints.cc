// TGI's own endpoints on moe-openai-server (tgi_protocol.h): POST /generate, /generate_stream and /,
// /tokenize (with /generate's body; vLLM's has the other bodies) and /chat_tokenize, GET /info. Each
// generation request is one Generate call; its messages become TGI's answer, or its events.
#include <civetweb.h>
#include <grpcpp/client_context.h>

#include <algorithm>
#include <string>
#include <variant>
#include <vector>

#include "common/random_seed.h"
#include "coordinator/openai/http_io.h"
#include "coordinator/openai/openai_server.h"
#include "coordinator/openai/tgi_protocol.h"

namespace moe::openai {
namespace {

using nlohmann::json;

int SendTgiError(mg_connection* conn, const TgiError& e) {
  SendJson(conn, e.status, e.ToJson());
  return e.status;
}

}  // namespace

int OpenAiServer::HandleTgiGenerate(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::TgiGenerateWhole, /*watch_client=*/true);
}

int OpenAiServer::HandleTgiGenerateStream(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::TgiGenerateStream, /*watch_client=*/true);
}

// GET / is TGI's health check; POST / its compat_generate (what huggingface_hub's InferenceClient posts).
int OpenAiServer::HandleTgiRoot(mg_connection* conn, void* self) {
  if (std::string(mg_get_request_info(conn)->request_method) == "GET") return HandleHealth(conn, self);
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::TgiGenerateCompat, /*watch_client=*/true);
}

int OpenAiServer::TgiGenerateWhole(mg_connection* conn, const std::string& body) {
  return TgiGenerate(conn, body, TgiRoute::kGenerate);
}
int OpenAiServer::TgiGenerateStream(mg_connection* conn, const std::string& body) {
  return TgiGenerate(conn, body, TgiRoute::kGenerateStream);
}
int OpenAiServer::TgiGenerateCompat(mg_connection* conn, const std::string& body) {
  return TgiGenerate(conn, body, TgiRoute::kCompat);
}

nlohmann::json OpenAiServer::TgiToken(int32_t id, const std::string& text, double logprob) const {
  // A special token's text is its piece ("</s>"), as TGI decodes each token; the others' the delta.
  const auto special = special_pieces_.find(id);
  const bool is_special = special != special_pieces_.end();
  return TgiTokenJson(id, is_special ? special->second : text, logprob, is_special);
}

nlohmann::json OpenAiServer::TgiToken(const v1::TokenLogprob& t) const { return TgiToken(t.token_id(), t.text(), t.logprob()); }

std::string OpenAiServer::TokenText(int32_t id) {
  if (const auto special = special_pieces_.find(id); special != special_pieces_.end()) return special->second;
  v1::DetokenizeRequest request;
  request.add_token_ids(id);
  v1::DetokenizeResponse text;
  grpc::ClientContext ctx;
  const CallScope scope(*this, ctx);
  return stub_->Detokenize(&ctx, request, &text).ok() ? text.text() : std::string();
}

nlohmann::json OpenAiServer::TgiTopTokens(const v1::TokenLogprob& t) const {
  json top = json::array();
  for (const v1::TopLogprob& a : t.top()) top.push_back(TgiToken(a.token_id(), a.text(), a.logprob()));
  return top;
}

int OpenAiServer::TgiGenerate(mg_connection* conn, const std::string& body, TgiRoute route) {
  std::variant<TgiCall, TgiError> parsed = ParseTgiRequest(body, route);
  // TGI answers a stream's refusal as an event of a 200 stream; a body that is not JSON cannot say
  // it wanted one.
  const bool streaming = route == TgiRoute::kGenerateStream ||
                         (std::holds_alternative<TgiCall>(parsed) && std::get<TgiCall>(parsed).stream);
  const auto refuse = [&](const TgiError& e) {
    if (!streaming) return SendTgiError(conn, e);
    SendHead(conn, 200, "text/event-stream", -1);
    SendEvent(conn, e.ToJson().dump());
    return 200;
  };
  if (const TgiError* e = std::get_if<TgiError>(&parsed)) return refuse(*e);
  const TgiCall& call = std::get<TgiCall>(parsed);

  v1::GenerateRequest request = call.request;
  if (const char* id = RequestIdHeader(conn)) request.set_request_id(id);
  v1::SamplingParams& s = *request.mutable_sampling();
  // The inputs' ids, once, where the request needs them here: without BOS they go as ids (as the
  // completions API sends them); with max_new_tokens null their count sizes the answer.
  std::vector<int32_t> input_ids;
  if (!call.add_special_tokens || call.max_new_tokens_to_context) {
    std::variant<std::vector<int32_t>, HttpError> ids = TokenIds(call.inputs, call.add_special_tokens);
    if (const HttpError* e = std::get_if<HttpError>(&ids)) return refuse(TgiErrorFromHttp(e->status, e->message));
    input_ids = std::move(std::get<std::vector<int32_t>>(ids));
  }
  if (!call.add_special_tokens) {
    request.mutable_prompt()->mutable_token_ids()->mutable_ids()->Assign(input_ids.begin(), input_ids.end());
  }
  if (call.max_new_tokens_to_context) {  // max_new_tokens: null, what the context leaves after the inputs
    size_t n = input_ids.size();
    if (s.has_truncate_prompt_tokens()) n = std::min<size_t>(n, s.truncate_prompt_tokens());
    const int64_t room = max_model_len_ - static_cast<int64_t>(n);
    if (room < 1) {
      return refuse(TgiValidationError("`inputs` must have less than " + std::to_string(max_model_len_) +
                                       " tokens. Given: " + std::to_string(n)));
    }
    s.set_max_tokens(static_cast<uint32_t>(room));
  }
  std::optional<uint64_t> seed = call.seed;
  if (call.sampling && !seed) seed = RandomSeed();  // TGI's: reported in details
  if (seed) s.set_seed(*seed);
  // Every streamed token carries its logprob, and so do the details' tokens; best_of ranks by them.
  if (call.stream || call.details || call.top_n_tokens > 0 || call.best_of > 1) s.set_logprobs(call.top_n_tokens);
  if (call.best_of > 1) s.set_n(call.best_of);
  if (call.decoder_input_details) {
    s.set_prompt_logprobs(0);
    request.set_return_prompt_token_ids(true);
  }

  grpc::ClientContext ctx;
  const CallScope scope(*this, ctx);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader = stub_->Generate(&ctx, request);
  const std::string prefix = call.return_full_text ? call.inputs : std::string();
  v1::GenerateResponse msg;

  if (call.stream) {
    // Each token one event; the last carries generated_text and (with details) the details, so an
    // event waits until the next token or the end shows whether it is the last.
    bool head_sent = false, client_gone = false;
    std::optional<json> pending;
    uint32_t index = 0;
    const auto send = [&](const json& event) {
      if (!head_sent) {
        SendHead(conn, 200, "text/event-stream", -1);
        head_sent = true;
      }
      if (!SendEvent(conn, event.dump())) {
        client_gone = true;
        ctx.TryCancel();
      }
    };
    std::string text;
    v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
    uint32_t generated = 0, input_length = 0;
    while (!client_gone && reader->Read(&msg)) {
      text += msg.text();
      generated += static_cast<uint32_t>(msg.token_ids_size());
      if (msg.has_usage()) input_length = msg.usage().prompt_tokens();
      for (const v1::TokenLogprob& t : msg.logprobs()) {
        if (pending) send(*pending);
        pending = json{{"index", ++index}, {"token", TgiToken(t)}, {"generated_text", nullptr}, {"details", nullptr}};
        if (call.top_n_tokens > 0) (*pending)["top_tokens"] = TgiTopTokens(t);
      }
      if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) finish = msg.finish_reason();
    }
    const grpc::Status st = reader->Finish();
    if (client_gone) return 200;
    if (!st.ok()) {
      if (pending) send(*pending);
      send(TgiCallError(st).ToJson());
      return 200;
    }
    if (pending) {
      (*pending)["generated_text"] = prefix + text;
      if (call.details) {
        (*pending)["details"] = {{"finish_reason", TgiFinishReason(finish)},
                                 {"generated_tokens", generated},
                                 {"seed", call.sampling ? json(*seed) : json(nullptr)},
                                 {"input_length", input_length}};
      }
      send(*pending);
    } else if (!head_sent) {
      SendHead(conn, 200, "text/event-stream", -1);
    }
    return 200;
  }

  // Whole: each of the best_of sequences (one unless asked) gathered by its index.
  json prefill = json::array();
  std::vector<int32_t> prompt_ids;
  std::vector<v1::TokenLogprob> prompt_logprobs;
  struct Sequence {
    std::string text;
    v1::FinishReason finish = v1::FINISH_REASON_UNSPECIFIED;
    uint32_t generated = 0;
    double logprob_sum = 0;
    json tokens = json::array(), top_tokens = json::array();
  };
  std::vector<Sequence> sequences(call.best_of);
  while (reader->Read(&msg)) {
    if (msg.index() >= sequences.size()) continue;
    Sequence& q = sequences[msg.index()];
    q.text += msg.text();
    q.generated += static_cast<uint32_t>(msg.token_ids_size());
    if (msg.prompt_token_ids_size() > 0) prompt_ids.assign(msg.prompt_token_ids().begin(), msg.prompt_token_ids().end());
    prompt_logprobs.insert(prompt_logprobs.end(), msg.prompt_logprobs().begin(), msg.prompt_logprobs().end());
    for (const v1::TokenLogprob& t : msg.logprobs()) {
      q.logprob_sum += t.logprob();
      q.tokens.push_back(TgiToken(t));
      if (call.top_n_tokens > 0) q.top_tokens.push_back(TgiTopTokens(t));
    }
    if (msg.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) q.finish = msg.finish_reason();
  }
  const grpc::Status st = reader->Finish();
  if (!st.ok()) return SendTgiError(conn, TgiCallError(st));
  // TGI's best of several: the highest mean logprob of its generated tokens (the first on a tie).
  size_t best = 0;
  for (size_t i = 1; i < sequences.size(); ++i) {
    const auto mean = [](const Sequence& q) { return q.generated > 0 ? q.logprob_sum / q.generated : -1e300; };
    if (mean(sequences[i]) > mean(sequences[best])) best = i;
  }
  if (call.decoder_input_details && !prompt_ids.empty()) {
    // The first input token has no logprob (TGI's NaN, written null); the others' come with their texts.
    prefill.push_back({{"id", prompt_ids[0]}, {"text", TokenText(prompt_ids[0])}, {"logprob", nullptr}});
    for (const v1::TokenLogprob& t : prompt_logprobs) {
      json token = TgiToken(t);
      token.erase("special");
      prefill.push_back(std::move(token));
    }
  }
  // Sequence i sampled with seed + i (Generate's n completions).
  const auto details = [&](size_t i) {
    const Sequence& q = sequences[i];
    json d = {{"finish_reason", TgiFinishReason(q.finish)},
              {"generated_tokens", q.generated},
              {"seed", call.sampling ? json(*seed + i) : json(nullptr)},
              {"prefill", prefill},
              {"tokens", q.tokens}};
    if (call.top_n_tokens > 0) d["top_tokens"] = q.top_tokens;
    return d;
  };
  json answer = {{"generated_text", prefix + sequences[best].text}};
  if (call.details) {
    answer["details"] = details(best);
    if (sequences.size() > 1) {
      json others = json::array();
      for (size_t i = 0; i < sequences.size(); ++i) {
        if (i == best) continue;
        json other = details(i);
        other["generated_text"] = prefix + sequences[i].text;
        others.push_back(std::move(other));
      }
      answer["details"]["best_of_sequences"] = std::move(others);
    }
  }
  SendJson(conn, 200, route == TgiRoute::kCompat ? json::array({answer}) : answer);
  return 200;
}

int OpenAiServer::HandleTgiChatTokenize(mg_connection* conn, void* self) {
  return static_cast<OpenAiServer*>(self)->ServePost(conn, &OpenAiServer::TgiChatTokenize, /*watch_client=*/false);
}

int OpenAiServer::TgiTokenize(mg_connection* conn, const std::string& body) {
  std::variant<TgiTokenizeCall, TgiError> parsed = ParseTgiTokenizeRequest(body);
  if (const TgiError* e = std::get_if<TgiError>(&parsed)) return SendTgiError(conn, *e);
  return AnswerTgiTokens(conn, std::get<TgiTokenizeCall>(parsed).request, /*templated=*/false);
}

int OpenAiServer::AnswerTgiTokens(mg_connection* conn, const v1::TokenizeRequest& request, bool templated) {
  v1::TokenizeResponse tokens;
  grpc::ClientContext ctx;
  const CallScope scope(*this, ctx);
  const grpc::Status st = stub_->Tokenize(&ctx, request, &tokens);
  if (!st.ok()) return SendTgiError(conn, TgiCallError(st));
  json answer = TgiTokenizeAnswer(request.text(), tokens);
  if (templated) answer = {{"tokenize_response", std::move(answer)}, {"templated_text", request.text()}};
  SendJson(conn, 200, answer);
  return 200;
}

// TGI's /chat_tokenize: the chat request's conversation through the chat template, tokenised as
// /v1/chat/completions tokenises it: {"tokenize_response": [tokens], "templated_text"}.
int OpenAiServer::TgiChatTokenize(mg_connection* conn, const std::string& body) {
  // TGI ignores the request's model name (its clients send "tgi"); an unparsable body is refused below.
  nlohmann::json j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object()) j.erase("model");
  std::variant<ChatCall, HttpError> parsed = ParseChatRequest(j.is_object() ? j.dump() : body, served_, tool_calls_id_);
  if (auto* e = std::get_if<HttpError>(&parsed)) return SendTgiError(conn, TgiErrorFromHttp(e->status, e->message));
  std::variant<std::string, HttpError> text = ChatPromptText(std::get<ChatCall>(parsed));
  if (auto* e = std::get_if<HttpError>(&text)) return SendTgiError(conn, TgiErrorFromHttp(e->status, e->message));
  v1::TokenizeRequest request = ChatTokenizeRequest(std::get<std::string>(text));
  request.set_return_offsets(true);
  return AnswerTgiTokens(conn, request, /*templated=*/true);
}

// GET /info: TGI's model and limits, the union of its versions' fields.
int OpenAiServer::HandleTgiInfo(mg_connection* conn, void* self) {
  auto* s = static_cast<OpenAiServer*>(self);
  // The ranks as they are now (they may register after this front started).
  v1::ClusterInfo cluster;
  grpc::ClientContext ctx;
  const CallScope scope(*s, ctx);
  const bool gpu = s->stub_->GetClusterInfo(&ctx, v1::GetClusterInfoRequest(), &cluster).ok() &&
                   std::any_of(cluster.ranks().begin(), cluster.ranks().end(),
                               [](const v1::RankInfo& r) { return !r.device().empty() && r.device() != "cpu"; });
  SendJson(conn, 200,
           {{"model_id", s->model_name_},
            {"model_sha", nullptr},
            {"model_dtype", gpu ? "bfloat16" : "float32"},  // the weights as the ranks hold them (CPU ranks: float32)
            {"model_device_type", gpu ? "cuda" : "cpu"},
            {"model_pipeline_tag", "text-generation"},
            {"max_concurrent_requests", s->max_concurrent_requests_},
            {"max_best_of", kTgiMaxBestOf},
            {"max_stop_sequences", kTgiMaxStopSequences},
            {"max_input_tokens", s->max_model_len_ - 1},
            {"max_input_length", s->max_model_len_ - 1},
            {"max_total_tokens", s->max_model_len_},
            {"validation_workers", 1},
            {"max_client_batch_size", 1},
            {"router", "moe-openai-server"},
            {"version", MOE_VERSION},
            {"sha", nullptr},
            {"docker_label", nullptr}});
  return 200;
}

}  // namespace moe::openai
