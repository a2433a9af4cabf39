// A Generate stream folded into one result (what `moe-client generate --json` prints last), and the
// JSON forms of the other answers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moe/v1/inference.pb.h"

namespace moe::client {

// "stop", "length", "stop_sequence", "cancelled", "error" ("" while unfinished).
std::string FinishReasonName(moe::v1::FinishReason r);

struct GenerationResult {
  std::string request_id;
  std::vector<int32_t> token_ids;
  std::string text;
  moe::v1::FinishReason finish_reason = moe::v1::FINISH_REASON_UNSPECIFIED;
  moe::v1::Usage usage;
  std::vector<moe::v1::TokenLogprob> logprobs;
  std::vector<moe::v1::TokenLogprob> prompt_logprobs;  // SamplingParams.prompt_logprobs: prompt tokens 1..n-1
  nlohmann::json stop_reason;  // the stop string or stop token id that ended it (null: neither)

  // Appends one streamed message.
  void Add(const moe::v1::GenerateResponse& r);
  bool finished() const { return finish_reason != moe::v1::FINISH_REASON_UNSPECIFIED; }

  // {"request_id", "token_ids", "text", "finish_reason", "stop_reason", "usage", "logprobs" (with_logprobs),
  // "prompt_logprobs" (when there are any)}.
  nlohmann::json ToJson(bool with_logprobs) const;
};

nlohmann::json ScoreResultJson(const moe::v1::ScoreResult& r);
nlohmann::json ScoreRollingResultJson(const moe::v1::ScoreRollingResult& r);

// A message in the proto3 JSON mapping, with the proto's field names and default values shown.
nlohmann::json ProtoToJson(const google::protobuf::Message& m);

}  // namespace moe::client
