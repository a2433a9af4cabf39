// Command line of moe-serve-bench. Every malformed flag is an error that names it (exit 2).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace moe::serve_bench {

struct BenchArgs {
  std::string server = "127.0.0.1:50051";
  int64_t requests = 100;
  double rate = 0;             // requests a second (Poisson); +inf: all at once (the default)
  int64_t max_concurrency = 0;  // requests in flight at most; 0: no limit
  int64_t input_len = 128;      // prompt tokens
  int64_t output_len = 128;     // generated tokens (max_tokens with ignore_eos)
  // When above a request's output length: its max_tokens, the client ending the stream once it has
  // its output length (an answer that stops early under a large max_tokens); 0: off.
  int64_t max_tokens = 0;
  double range_ratio = 0;       // lengths uniform in [len * (1 - r), len * (1 + r)]; r in [0, 1)
  int64_t shared_prefix_len = 0;  // tokens every prompt starts with (before its own --input-len)
  float temperature = 0;        // 0: greedy
  uint64_t seed = 0;            // prompts and arrivals
  int64_t warmup = 0;           // requests run (and left out) before the measured ones
  int64_t connections = 4;      // gRPC connections the requests are spread over
  double timeout_s = 600;       // each request's deadline
  double wait_serving_s = 0;    // wait this long for the server's health to say SERVING
  std::string out;              // JSON results (optional)
  std::string commit;           // recorded in the JSON
  bool save_records = true;     // per-request records in the JSON
  bool json_object = false;     // response_format json_object (a request may end when its object does)
  std::string regex;            // guided_regex for every request (empty: none)
  std::string grammar;          // guided_grammar (GBNF) for every request (empty: none)
  float repetition_penalty = 1;  // every request's (1: off)
  float frequency_penalty = 0;   // every request's (0: off)
  int64_t top_logprobs = -1;     // every request's logprobs (top alternatives; -1: none asked)
  bool help = false;
};

// argv without the program name; "--flag VALUE" or "--flag=VALUE".
absl::StatusOr<BenchArgs> ParseBenchArgs(const std::vector<std::string>& args);
std::string BenchUsage();

}  // namespace moe::serve_bench
