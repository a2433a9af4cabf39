#include "coordinator/inference_service.h"

#include <map>
#include <memory>
#include <optional>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "common/request_id_metadata.h"
#include "common/secret_token.h"
#include "coordinator/answer_size.h"
#include "coordinator/generate_output.h"
#include "coordinator/grpc_status.h"
#include "coordinator/score_windows.h"

namespace moe {
namespace {

using Clock = std::chrono::steady_clock;

// How often the calls waiting for results are checked for client cancellation and deadlines (by
// one thread for all of them: CancelWatch).
constexpr std::chrono::milliseconds kCancelPoll(20);

double SecondsSince(Clock::time_point t, Clock::time_point now = Clock::now()) {
  return std::chrono::duration<double>(now - t).count();
}

void FillSummary(const LatencySummaryValues& v, v1::LatencySummary* out) {
  out->set_count(v.count);
  out->set_p50_seconds(v.p50);
  out->set_p90_seconds(v.p90);
  out->set_p99_seconds(v.p99);
  out->set_mean_seconds(v.mean);
}

// Per-layer load from a worker's LoadStats::ToJson(); malformed JSON gives no layers.
void FillLayers(const std::string& load_stats_json, v1::Stats* out) {
  if (load_stats_json.empty()) return;
  const nlohmann::json j = nlohmann::json::parse(load_stats_json, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("layers") || !j["layers"].is_array()) return;
  try {
    for (const nlohmann::json& l : j["layers"]) {
      v1::LayerLoad* layer = out->add_layers();
      layer->set_layer(l.value("layer", int64_t{0}));
      for (const auto& x : l.value("expert_tokens", std::vector<int64_t>{})) layer->add_expert_tokens(x);
      for (const auto& x : l.value("rank_rows", std::vector<int64_t>{})) layer->add_rank_rows(x);
      if (l.contains("last_step")) {
        layer->set_last_imbalance(l["last_step"].value("imbalance", 0.0));
        layer->set_last_expert_cv2(l["last_step"].value("expert_cv2", 0.0));
      }
      if (l.contains("mean")) {
        layer->set_mean_imbalance(l["mean"].value("imbalance", 0.0));
        layer->set_mean_expert_cv2(l["mean"].value("expert_cv2", 0.0));
      }
    }
  } catch (const nlohmann::json::exception&) {
    out->clear_layers();
  }
}

absl::Status CheckQueueCapacity(size_t seqs, int64_t max_waiting, const std::string& field) {
  if (static_cast<int64_t>(seqs) > max_waiting) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", seqs, " sequences exceed the coordinator's queue of ",
                                                   max_waiting, " (--max-waiting); send fewer at a time"));
  }
  return absl::OkStatus();
}

}  // namespace

InferenceService::InferenceService(const RequestModel& model, ClusterState& state, ServingStats& stats,
                                   std::vector<std::string> api_keys)
    : model_(model), state_(state), stats_(stats), api_keys_(std::move(api_keys)), cancel_watch_(kCancelPoll) {}

grpc::Status InferenceService::Authorized(const grpc::ServerContext* context) const {
  if (api_keys_.empty()) return grpc::Status::OK;
  const auto& metadata = context->client_metadata();
  const auto it = metadata.find(kAuthorizationMetadata);
  if (it != metadata.end() && BearerMatches(std::string_view(it->second.data(), it->second.size()), api_keys_)) {
    return grpc::Status::OK;
  }
  return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                      it == metadata.end()
                          ? "no API key: this coordinator was started with MOE_API_KEY; send \"authorization: Bearer "
                            "<key>\" as metadata (moe-client, moe-serve-bench and the Python client send MOE_API_KEY "
                            "from their environment)"
                          : "the API key in the authorization metadata is not this coordinator's");
}

grpc::Status InferenceService::Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                                        grpc::ServerWriter<v1::GenerateResponse>* writer) {
  if (grpc::Status key = Authorized(context); !key.ok()) return key;
  const Clock::time_point arrival = Clock::now();
  stats_.CountRequest();
  auto refused = [&](const absl::Status& s) {  // before the request runs
    stats_.CountRefused(s.code());
    return ToGrpcStatus(s);
  };
  absl::StatusOr<GenerateJob> job = ValidateGenerate(*request, model_);
  if (!job.ok()) return refused(job.status());
  const uint32_t n = job->n;
  const absl::Status fits = CheckQueueCapacity(n, state_.setup().limits.max_waiting, "sampling.n");
  if (!fits.ok()) return refused(fits);
  std::vector<SeqSubmission> seqs;
  for (uint32_t i = 0; i < n; ++i) seqs.push_back({job->CompletionAssign(i), job->reserve_positions()});
  auto mailbox = std::make_shared<Mailbox>();
  const CancelWatch::Registration watched(cancel_watch_, context, mailbox);
  // Its completions' queue times count from their Submit, just after this.
  const Clock::time_point admitted = Clock::now();
  absl::StatusOr<std::vector<uint64_t>> ids = state_.Submit(std::move(seqs), mailbox);
  if (!ids.ok()) return refused(ids.status());
  stats_.AddPromptTokens(static_cast<int64_t>(job->assign.prompt_size()) * n);
  const std::string request_id = request->request_id().empty() ? absl::StrCat("req-", ids->front()) : request->request_id();
  // Accepted: the client may start its answer now (common/request_id_metadata.h).
  context->AddInitialMetadata(kRequestIdMetadata, request_id);
  writer->SendInitialMetadata();

  // One output per completion; a completion is done once its finish reason is known.
  std::vector<std::unique_ptr<GenerateOutput>> outs;
  std::unordered_map<uint64_t, uint32_t> index_of;
  for (uint32_t i = 0; i < n; ++i) {
    outs.push_back(std::make_unique<GenerateOutput>(*job, model_, request_id));
    index_of[(*ids)[i]] = i;
  }
  std::vector<std::optional<v1::FinishReason>> finished(n);
  // Per completion: when its first and last tokens came, and how long it was queued (the rank's
  // report with its first token).
  std::vector<std::optional<Clock::time_point>> first_token_at(n), last_token_at(n);
  std::vector<double> queued(n, 0.0);
  uint32_t remaining = n;
  auto cancel_rest = [&] {
    for (uint32_t i = 0; i < n; ++i) {
      if (!finished[i]) state_.Cancel((*ids)[i]);
    }
  };
  // Counts every completion's finish reason (`unfinished` for those cut short), and the request's
  // latency, tokens and outcome (the status it answers).
  auto end = [&](v1::FinishReason unfinished, grpc::Status status) {
    for (const std::optional<v1::FinishReason>& r : finished) stats_.CountFinished(r.value_or(unfinished));
    RequestCourse course;
    course.seconds = SecondsSince(arrival);
    course.validation_seconds = SecondsSince(arrival, admitted);
    course.input_tokens = job->assign.prompt_size();
    course.max_tokens = job->assign.max_tokens();
    course.code = static_cast<absl::StatusCode>(status.error_code());
    for (uint32_t i = 0; i < n; ++i) {
      CompletionCourse& c = course.completions.emplace_back();
      c.prompt_tokens = job->assign.prompt_size();
      c.generated_tokens = outs[i]->completion_tokens();
      if (first_token_at[i]) {
        c.timed = true;
        c.queue_seconds = queued[i];
        c.prefill_seconds = std::max(0.0, SecondsSince(admitted, *first_token_at[i]) - queued[i]);
        c.decode_seconds = SecondsSince(*first_token_at[i], *last_token_at[i]);
      }
    }
    stats_.ObserveRequest(course);
    return status;
  };
  if (request->return_prompt_token_ids()) {  // before anything else, as the field promises
    v1::GenerateResponse first;
    first.set_request_id(request_id);
    first.mutable_prompt_token_ids()->Assign(job->assign.prompt().begin(), job->assign.prompt().end());
    if (!writer->Write(first)) {
      cancel_rest();
      return end(v1::FINISH_REASON_CANCELLED, grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
    }
  }
  std::optional<Clock::time_point> last_tokens_at;
  while (remaining > 0) {
    std::vector<SeqEvent> events = mailbox->Take();
    if (context->IsCancelled()) {  // the client cancelled or its deadline passed
      cancel_rest();
      return end(v1::FINISH_REASON_CANCELLED, grpc::Status(grpc::StatusCode::CANCELLED, "request cancelled"));
    }
    std::map<uint32_t, v1::GenerateResponse> responses;  // this round's message per completion
    auto finish = [&](uint32_t i, v1::FinishReason reason) {
      outs[i]->Finish(reason, responses[i]);
      finished[i] = reason;
      --remaining;
    };
    for (const SeqEvent& e : events) {
      if (!e.failure.ok()) {
        cancel_rest();
        return end(v1::FINISH_REASON_ERROR, ToGrpcStatus(e.failure));
      }
      const uint32_t i = index_of.at(e.seq_id);
      if (finished[i]) continue;  // what a stopped completion's worker sent before its cancel
      if (e.message.has_tokens()) {
        if (e.message.tokens().token_ids_size() > 0) {
          if (!first_token_at[i]) {
            first_token_at[i] = e.posted;
            queued[i] = e.message.tokens().queued_seconds();
          }
          last_token_at[i] = e.posted;
        }
        absl::StatusOr<bool> stopped = outs[i]->AddTokens(e.message.tokens(), responses[i]);
        if (!stopped.ok()) {
          cancel_rest();
          return end(v1::FINISH_REASON_ERROR, ToGrpcStatus(stopped.status()));
        }
        if (*stopped) {
          state_.Cancel(e.seq_id);  // the worker would otherwise go on to max_tokens
          finish(i, v1::FINISH_REASON_STOP_SEQUENCE);
        }
      } else if (e.message.has_prompt_logprobs()) {
        // Their own messages, before any token, in pieces that stay far below gRPC's default 4 MiB
        // receive limit (20 alternatives are ~400 bytes a position; a prompt may have 32k).
        v1::GenerateResponse all;
        if (absl::Status added = outs[i]->AddPromptLogprobs(e.message.prompt_logprobs(), all); !added.ok()) {
          cancel_rest();
          return end(v1::FINISH_REASON_ERROR, ToGrpcStatus(added));
        }
        for (int at = 0; at < all.prompt_logprobs_size(); at += kPromptLogprobsPerMessage) {
          v1::GenerateResponse piece;
          piece.set_request_id(all.request_id());
          piece.set_index(i);
          const int end_at = std::min(all.prompt_logprobs_size(), at + kPromptLogprobsPerMessage);
          piece.mutable_prompt_logprobs()->Assign(all.prompt_logprobs().begin() + at, all.prompt_logprobs().begin() + end_at);
          if (!writer->Write(piece)) {
            cancel_rest();
            return end(v1::FINISH_REASON_CANCELLED, grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
          }
        }
      } else if (e.message.has_finished()) {
        const v1::Finished& f = e.message.finished();
        if (f.reason() == v1::Finished::REASON_ERROR) {
          cancel_rest();
          return end(v1::FINISH_REASON_ERROR,
                     grpc::Status(grpc::StatusCode::INTERNAL, absl::StrCat("worker error: ", f.error())));
        }
        finish(i, PublicFinishReason(f.reason()));
      }
    }
    int new_tokens = 0;
    for (const auto& [i, response] : responses) new_tokens += response.token_ids_size();
    if (new_tokens > 0) {
      const Clock::time_point now = Clock::now();
      if (!last_tokens_at) {
        stats_.ObserveTimeToFirstToken(SecondsSince(arrival, now));
        // Tokens that came with the first reach the client at the same moment.
        stats_.ObserveInterToken(0.0, new_tokens - 1);
      } else {
        stats_.ObserveInterToken(SecondsSince(*last_tokens_at, now), new_tokens);
      }
      last_tokens_at = now;
      stats_.AddGenerationTokens(new_tokens, now);
    }
    for (auto& [i, response] : responses) {
      if (response.token_ids_size() == 0 && response.finish_reason() == v1::FINISH_REASON_UNSPECIFIED) continue;
      response.set_index(i);
      if (!writer->Write(response)) {
        cancel_rest();
        return end(v1::FINISH_REASON_CANCELLED, grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      }
    }
  }
  return end(v1::FINISH_REASON_UNSPECIFIED, grpc::Status::OK);
}

absl::StatusOr<std::vector<v1::Scored>> InferenceService::RunScoring(grpc::ServerContext* context,
                                                                     std::vector<SeqSubmission> seqs) {
  std::vector<int> expected(seqs.size()), expected_top(seqs.size());
  int64_t tokens = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    expected[i] = seqs[i].assign.prompt_size() - 1;
    expected_top[i] = seqs[i].assign.prompt_logprobs() > 0 ? expected[i] : 0;
    tokens += seqs[i].assign.prompt_size();
  }
  auto mailbox = std::make_shared<Mailbox>();
  const CancelWatch::Registration watched(cancel_watch_, context, mailbox);
  MOE_ASSIGN_OR_RETURN(std::vector<uint64_t> ids, state_.Submit(std::move(seqs), mailbox));
  stats_.AddPromptTokens(tokens);
  std::unordered_map<uint64_t, size_t> index;
  for (size_t i = 0; i < ids.size(); ++i) index[ids[i]] = i;
  std::vector<v1::Scored> results(ids.size());
  std::vector<char> scored(ids.size(), 0), finished(ids.size(), 0);
  size_t remaining = ids.size();
  auto cancel_rest = [&] {
    for (size_t i = 0; i < ids.size(); ++i) {
      if (!finished[i]) state_.Cancel(ids[i]);
    }
  };
  while (remaining > 0) {
    std::vector<SeqEvent> events = mailbox->Take();
    if (context->IsCancelled()) {
      cancel_rest();
      return absl::CancelledError("request cancelled");
    }
    for (SeqEvent& e : events) {
      if (!e.failure.ok()) {  // this item failed (a rank lost, a cache that no longer holds it)
        cancel_rest();          // the others, queued or held, would run for nobody
        return e.failure;
      }
      const size_t i = index.at(e.seq_id);
      if (e.message.has_scored()) {
        const v1::Scored& s = e.message.scored();
        if (s.logprobs_size() != expected[i] || s.is_argmax_size() != expected[i] ||
            s.argmax_ids_size() != expected[i] || s.argmax_logprobs_size() != expected[i] ||
            s.top_size() != expected_top[i]) {
          cancel_rest();
          return absl::InternalError(absl::StrCat("worker sent ", s.logprobs_size(), " logprobs, ",
                                                  s.is_argmax_size(), " argmax flags and ", s.top_size(),
                                                  " top lists for ", expected[i], " scored tokens"));
        }
        results[i] = s;
        scored[i] = 1;
      } else if (e.message.has_finished()) {
        finished[i] = 1;
        --remaining;
        const v1::Finished& f = e.message.finished();
        if (f.reason() == v1::Finished::REASON_ERROR) {
          cancel_rest();
          return absl::InternalError(absl::StrCat("worker error: ", f.error()));
        }
        if (!scored[i]) {
          cancel_rest();
          return absl::InternalError("a scoring sequence finished without its Scored result");
        }
      }
    }
  }
  return results;
}

grpc::Status InferenceService::Score(grpc::ServerContext* context, const v1::ScoreRequest* request,
                                     v1::ScoreResponse* response) {
  if (grpc::Status key = Authorized(context); !key.ok()) return key;
  absl::StatusOr<std::vector<ScoreJob>> jobs = ValidateScore(*request, model_);
  if (!jobs.ok()) return ToGrpcStatus(jobs.status());
  const absl::Status fits = CheckQueueCapacity(jobs->size(), state_.setup().limits.max_waiting, "items");
  if (!fits.ok()) return ToGrpcStatus(fits);
  std::vector<SeqSubmission> seqs;
  for (const ScoreJob& job : *jobs) {
    SeqSubmission s;
    s.assign.set_kind(v1::Assign::KIND_SCORE);
    s.assign.mutable_prompt()->Assign(job.tokens.begin(), job.tokens.end());
    s.assign.set_want_greedy(true);
    s.reserve_positions = static_cast<int64_t>(job.tokens.size());
    seqs.push_back(std::move(s));
  }
  absl::StatusOr<std::vector<v1::Scored>> scored = RunScoring(context, std::move(seqs));
  if (!scored.ok()) return ToGrpcStatus(scored.status());
  for (size_t i = 0; i < jobs->size(); ++i) {
    const ScoreJob& job = (*jobs)[i];
    const v1::Scored& s = (*scored)[i];
    v1::ScoreResult* r = response->add_results();
    double sum = 0;
    bool greedy = true;
    // Scored lists tokens 1..n-1, so token t is at t - 1.
    for (size_t t = static_cast<size_t>(job.context_tokens); t < job.tokens.size(); ++t) {
      r->add_continuation_token_ids(job.tokens[t]);
      r->add_logprobs(s.logprobs(static_cast<int>(t - 1)));
      sum += s.logprobs(static_cast<int>(t - 1));
      greedy = greedy && s.is_argmax(static_cast<int>(t - 1));
    }
    r->set_sum_logprob(sum);
    r->set_is_greedy(greedy);
  }
  return grpc::Status::OK;
}

grpc::Status InferenceService::ScoreRolling(grpc::ServerContext* context, const v1::ScoreRollingRequest* request,
                                            v1::ScoreRollingResponse* response) {
  if (grpc::Status key = Authorized(context); !key.ok()) return key;
  // Refused at the first text whose windows overflow the queue, before the rest are encoded.
  absl::StatusOr<std::vector<RollingText>> texts = ValidateScoreRolling(*request, model_, state_.setup().limits.max_waiting);
  if (!texts.ok()) return ToGrpcStatus(texts.status());
  std::vector<SeqSubmission> seqs;
  for (const auto& [ids, windows] : *texts) {
    for (const ScoreWindow& w : windows) {
      SeqSubmission s;
      s.assign.set_kind(v1::Assign::KIND_SCORE);
      s.assign.mutable_prompt()->Assign(ids.begin() + w.begin, ids.begin() + w.end);
      s.assign.set_want_greedy(true);
      if (request->top_logprobs() > 0) s.assign.set_prompt_logprobs(request->top_logprobs());
      s.reserve_positions = w.end - w.begin;
      seqs.push_back(std::move(s));
    }
  }
  std::vector<v1::Scored> scored;
  if (!seqs.empty()) {  // texts of one token have nothing to score
    absl::StatusOr<std::vector<v1::Scored>> r = RunScoring(context, std::move(seqs));
    if (!r.ok()) return ToGrpcStatus(r.status());
    scored = std::move(*r);
  }
  size_t next = 0;
  for (size_t i = 0; i < texts->size(); ++i) {
    const auto& [ids, windows] = (*texts)[i];
    v1::ScoreRollingResult* r = response->add_results();
    r->mutable_token_ids()->Assign(ids.begin(), ids.end());
    double sum = 0;
    for (const ScoreWindow& w : windows) {
      const v1::Scored& s = scored[next++];
      for (int64_t t = w.first_target; t < w.end; ++t) {
        const int k = static_cast<int>(t - w.begin - 1);
        r->add_logprobs(s.logprobs(k));
        r->add_argmax_ids(s.argmax_ids(k));
        r->add_argmax_logprobs(s.argmax_logprobs(k));
        if (request->top_logprobs() > 0) {
          v1::TopLogprobs* top = r->add_top();
          for (const v1::WorkerTopLogprob& a : s.top(k).alternatives()) {
            v1::TopLogprob* t = top->add_top();
            t->set_token_id(a.token_id());
            t->set_logprob(a.logprob());
            if (model_.tokenizer != nullptr) t->set_text(model_.tokenizer->Decode(std::vector<int32_t>{a.token_id()}));
          }
        }
        sum += s.logprobs(k);
      }
    }
    if (model_.tokenizer != nullptr) {
      std::unique_ptr<TextStream> detok = model_.tokenizer->NewStream({});
      for (int32_t id : ids) r->add_token_texts(detok->Push(id));
      if (!ids.empty()) r->mutable_token_texts()->rbegin()->append(detok->Flush());
      for (int32_t id : r->argmax_ids()) r->add_argmax_texts(model_.tokenizer->Decode(std::vector<int32_t>{id}));
    }
    r->set_sum_logprob(sum);
    r->set_num_scored_tokens(static_cast<uint32_t>(r->logprobs_size()));
  }
  return grpc::Status::OK;
}

grpc::Status InferenceService::Tokenize(grpc::ServerContext* context, const v1::TokenizeRequest* request,
                                        v1::TokenizeResponse* response) {
  if (grpc::Status key = Authorized(context); !key.ok()) return key;
  if (model_.tokenizer == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "model has no tokenizer");
  }
  std::vector<TextSpan> spans;
  const std::vector<int32_t> ids =
      moe::Tokenize(*model_.tokenizer, request->text(),
                    request->has_add_bos() ? std::optional<bool>(request->add_bos()) : std::nullopt,
                    request->parse_special_tokens(), request->return_offsets() ? &spans : nullptr,
                    !request->has_add_eos() || request->add_eos());
  // Sized before it is built: a ByteSpan message a token takes ~60 bytes of memory.
  const size_t id_bytes = TokenIdsBytes(ids);
  const absl::Status fits = CheckAnswerFits(id_bytes, "text", absl::StrCat("its ", ids.size(), " token ids"),
                                            "send the text in parts");
  if (!fits.ok()) return ToGrpcStatus(fits);
  const absl::Status offsets_fit =
      CheckAnswerFits(id_bytes + OffsetsBytes(spans), "return_offsets",
                      absl::StrCat("the ", ids.size(), " token ids of the text and their offsets"),
                      "send the text in parts, or without return_offsets");
  if (!offsets_fit.ok()) return ToGrpcStatus(offsets_fit);
  response->mutable_token_ids()->Assign(ids.begin(), ids.end());
  response->mutable_offsets()->Reserve(static_cast<int>(spans.size()));
  for (const TextSpan& s : spans) {
    v1::ByteSpan* o = response->add_offsets();
    o->set_start(static_cast<uint32_t>(s.begin));
    o->set_end(static_cast<uint32_t>(s.end));
  }
  return grpc::Status::OK;
}

grpc::Status InferenceService::Detokenize(grpc::ServerContext* context, const v1::DetokenizeRequest* request,
                                          v1::DetokenizeResponse* response) {
  if (grpc::Status key = Authorized(context); !key.ok()) return key;
  if (model_.tokenizer == nullptr) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "model has no tokenizer");
  }
  const std::vector<int32_t> ids(request->token_ids().begin(), request->token_ids().end());
  const absl::Status valid = CheckTokenIds(ids, model_.config.vocab_size, "token_ids");
  if (!valid.ok()) return ToGrpcStatus(valid);
  // Sized before it is built: the text from a bound (Decode's bytes), the pieces exactly.
  const size_t text_bytes = StringFieldBytes(model_.tokenizer->DecodedSizeBound(ids));
  const absl::Status fits = CheckAnswerFits(text_bytes, "token_ids", absl::StrCat("the text of its ", ids.size(), " ids may"),
                                            "send fewer ids at a time");
  if (!fits.ok()) return ToGrpcStatus(fits);
  if (request->return_pieces()) {
    size_t piece_bytes = 0;
    for (int32_t id : ids) piece_bytes += StringFieldBytes(model_.tokenizer->Piece(id).size());
    const absl::Status pieces_fit =
        CheckAnswerFits(text_bytes + piece_bytes, "return_pieces",
                        absl::StrCat("the text of the ", ids.size(), " ids and their pieces may"),
                        "send fewer ids at a time, or without return_pieces");
    if (!pieces_fit.ok()) return ToGrpcStatus(pieces_fit);
  }
  response->set_text(model_.tokenizer->Decode(ids, !request->has_skip_special_tokens() || request->skip_special_tokens()));
  if (request->return_pieces()) {
    response->mutable_pieces()->Reserve(static_cast<int>(ids.size()));
    for (int32_t id : ids) response->add_pieces(model_.tokenizer->Piece(id));
  }
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetModelInfo(grpc::ServerContext* context, const v1::GetModelInfoRequest*,
                                            v1::ModelInfo* response) {
  if (grpc::Status key = Authorized(context); !key.ok()) return key;
  const ModelConfig& c = model_.config;
  response->set_model_dir(state_.setup().model_dir);
  response->set_served_model_name(model_.name);
  response->set_architecture("MixtralForCausalLM");
  response->set_config_json(c.ToJson().dump());
  response->set_vocab_size(c.vocab_size);
  response->set_max_context(model_.context());
  response->set_num_layers(c.num_layers);
  response->set_num_experts(c.num_experts);
  response->set_experts_per_token(c.experts_per_token);
  response->set_total_parameters(c.replicated_params() + c.num_layers * c.num_experts * c.expert_params());
  response->set_active_parameters(c.replicated_params() + c.num_layers * c.experts_per_token * c.expert_params());
  response->set_bos_token_id(static_cast<int32_t>(c.bos_token_id));
  for (int64_t e : c.eos_token_ids) response->add_eos_token_ids(static_cast<int32_t>(e));
  if (const std::optional<int32_t> eos = TokenizerEosBeyondConfig(c, model_.tokenizer)) response->add_eos_token_ids(*eos);
  response->set_chat_template(model_.chat.chat_template);
  response->set_bos_token(model_.chat.bos_token);
  response->set_eos_token(model_.chat.eos_token);
  *response->mutable_default_sampling() = model_.default_sampling;
  response->set_max_tokens_cap(model_.max_tokens_cap);
  if (model_.tokenizer != nullptr) {
    const std::vector<std::string> texts = model_.tokenizer->TokenTexts();  // empty: control and unknown pieces
    for (size_t id = 0; id < texts.size(); ++id) {
      if (texts[id].empty()) response->add_special_token_ids(static_cast<int32_t>(id));
    }
  }
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetClusterInfo(grpc::ServerContext* context, const v1::GetClusterInfoRequest*,
                                              v1::ClusterInfo* response) {
  if (grpc::Status key = Authorized(context); !key.ok()) return key;
  *response = state_.ClusterInfo();
  return grpc::Status::OK;
}

grpc::Status InferenceService::GetStats(grpc::ServerContext* context, const v1::GetStatsRequest*, v1::Stats* response) {
  if (grpc::Status key = Authorized(context); !key.ok()) return key;
  const ClusterSnapshot c = state_.Snapshot();
  const ServingSnapshot s = stats_.Snapshot(Clock::now());
  response->set_requests_waiting(c.waiting);
  response->set_requests_running(c.running);
  response->set_requests_finished(s.requests_finished);
  response->set_prompt_tokens_total(s.prompt_tokens);
  response->set_generation_tokens_total(s.generation_tokens);
  response->set_kv_cache_usage(c.kv_cache_usage);
  response->set_generation_tokens_per_second(s.generation_tokens_per_second);
  FillSummary(s.time_to_first_token, response->mutable_time_to_first_token());
  FillSummary(s.inter_token_latency, response->mutable_inter_token_latency());
  FillSummary(s.e2e_request_latency, response->mutable_e2e_request_latency());
  for (const RankStatsView& r : c.ranks) {
    v1::RankStats* rs = response->add_ranks();
    rs->set_rank(r.rank);
    rs->set_running_sequences(r.running_sequences);
    rs->set_kv_blocks_used(r.kv_blocks_used);
    rs->set_kv_blocks_total(r.kv_blocks_total);
    rs->set_prefix_cache_queried_tokens(r.prefix_cache_queried_tokens);
    rs->set_prefix_cache_hit_tokens(r.prefix_cache_hit_tokens);
    rs->set_kv_blocks_cached(r.kv_blocks_cached);
    rs->set_preemptions(r.preemptions);
  }
  FillLayers(c.load_stats_json, response);
  response->set_engine_steps(c.engine_steps);
  return grpc::Status::OK;
}

}  // namespace moe
