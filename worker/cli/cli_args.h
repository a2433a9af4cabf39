// Command-line parsing of moe-cli: every malformed flag is an error that names the flag.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "worker/sampler.h"

namespace moe {

struct CliOptions {
  std::string command;  // "generate" | "score" | "help" (--help / -h: print the usage, exit 0)
  std::string model_dir;
  // One sequence per --prompt / --text (text set) or --token-ids (token_ids set), in flag order.
  struct Input {
    bool is_text = false;
    std::string text;
    std::vector<int32_t> token_ids;
  };
  std::vector<Input> inputs;
  int64_t max_tokens = 64;
  SamplingParams sampling;  // greedy (temperature 0) unless --temperature is given
  bool ignore_eos = false;
  bool json = false;
  bool stats = false;     // add the expert load statistics to the JSON output
  bool verbose = false;   // progress lines on stderr
  int64_t kv_block_size = 16;
};

// argv without the program name. Every MPI rank parses the same argv, so all agree on the outcome.
// `default_model` is used when --model is absent.
absl::StatusOr<CliOptions> ParseCliArgs(const std::vector<std::string>& args, const std::string& default_model);

std::string CliUsage();

}  // namespace moe
