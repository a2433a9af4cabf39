#include "clients/cpp/generation_result.h"

#include <google/protobuf/util/json_util.h>

namespace moe::client {

using nlohmann::json;

std::string FinishReasonName(moe::v1::FinishReason r) {
  switch (r) {
    case moe::v1::FINISH_REASON_STOP: return "stop";
    case moe::v1::FINISH_REASON_LENGTH: return "length";
    case moe::v1::FINISH_REASON_STOP_SEQUENCE: return "stop_sequence";
    case moe::v1::FINISH_REASON_CANCELLED: return "cancelled";
    case moe::v1::FINISH_REASON_ERROR: return "error";
    default: return "";
  }
}

void GenerationResult::Add(const moe::v1::GenerateResponse& r) {
  if (!r.request_id().empty()) request_id = r.request_id();
  token_ids.insert(token_ids.end(), r.token_ids().begin(), r.token_ids().end());
  text += r.text();
  logprobs.insert(logprobs.end(), r.logprobs().begin(), r.logprobs().end());
  prompt_logprobs.insert(prompt_logprobs.end(), r.prompt_logprobs().begin(), r.prompt_logprobs().end());
  if (r.finish_reason() != moe::v1::FINISH_REASON_UNSPECIFIED) finish_reason = r.finish_reason();
  if (r.has_usage()) usage = r.usage();
  if (r.has_stop_string()) stop_reason = r.stop_string();
  if (r.has_stop_token_id()) stop_reason = r.stop_token_id();
}

json GenerationResult::ToJson(bool with_logprobs) const {
  json j = {{"request_id", request_id},
            {"token_ids", token_ids},
            {"text", text},
            {"finish_reason", FinishReasonName(finish_reason)},
            {"stop_reason", stop_reason},
            {"usage",
             {{"prompt_tokens", usage.prompt_tokens()},
              {"completion_tokens", usage.completion_tokens()},
              {"cached_prompt_tokens", usage.cached_prompt_tokens()}}}};
  auto list = [](const std::vector<moe::v1::TokenLogprob>& v, bool rank) {
    json lps = json::array();
    for (const auto& lp : v) {
      json top = json::array();
      for (const auto& t : lp.top()) top.push_back({{"token_id", t.token_id()}, {"logprob", t.logprob()}, {"text", t.text()}});
      lps.push_back({{"token_id", lp.token_id()}, {"text", lp.text()}, {"logprob", lp.logprob()}, {"top", top}});
      if (rank) lps.back()["rank"] = lp.rank();
    }
    return lps;
  };
  if (with_logprobs) j["logprobs"] = list(logprobs, false);
  if (!prompt_logprobs.empty()) j["prompt_logprobs"] = list(prompt_logprobs, true);
  return j;
}

json ScoreResultJson(const moe::v1::ScoreResult& r) {
  return {{"continuation_token_ids", std::vector<int32_t>(r.continuation_token_ids().begin(), r.continuation_token_ids().end())},
          {"logprobs", std::vector<float>(r.logprobs().begin(), r.logprobs().end())},
          {"sum_logprob", r.sum_logprob()},
          {"is_greedy", r.is_greedy()}};
}

json ScoreRollingResultJson(const moe::v1::ScoreRollingResult& r) {
  return {{"token_ids", std::vector<int32_t>(r.token_ids().begin(), r.token_ids().end())},
          {"logprobs", std::vector<float>(r.logprobs().begin(), r.logprobs().end())},
          {"sum_logprob", r.sum_logprob()},
          {"num_scored_tokens", r.num_scored_tokens()}};
}

json ProtoToJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  opts.always_print_primitive_fields = true;
  std::string s;
  if (!google::protobuf::util::MessageToJsonString(m, &s, opts).ok()) return json(m.ShortDebugString());
  return json::parse(s);
}

}  // namespace moe::client
