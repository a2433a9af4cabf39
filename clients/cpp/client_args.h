// Command line of moe-client: `moe-client [--server HOST:PORT] COMMAND [flags]`. Every malformed or
// misplaced flag is an error that names it (the program exits 2 on it).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "moe/v1/inference.pb.h"

namespace moe::client {

struct ClientOptions {
  std::string server = "127.0.0.1:50051";
  std::string command;  // generate | score | score-rolling | tokenize | detokenize | info | stats | health | list-services
  double timeout_s = 0;  // deadline of the call; 0: none (health and list-services: 5 s)
  bool json = false;

  // generate: prompt; score-rolling: the text; tokenize: text (prompt.text)
  moe::v1::Prompt prompt;
  moe::v1::SamplingParams sampling;
  std::string request_id;
  int32_t priority = 0;  // GenerateRequest.priority (a coordinator scheduling by priority)

  // score
  moe::v1::Prompt context;
  moe::v1::Prompt continuation;

  // tokenize
  std::optional<bool> add_bos;
  // detokenize
  std::vector<int32_t> token_ids;
  bool keep_special_tokens = false;  // control tokens' pieces in the text
  // health
  std::string service;
};

// argv without the program name.
absl::StatusOr<ClientOptions> ParseClientArgs(const std::vector<std::string>& args);

std::string ClientUsage();

// "1,2,3" -> {1, 2, 3}; the error names `flag`.
absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& flag, const std::string& value);

}  // namespace moe::client
