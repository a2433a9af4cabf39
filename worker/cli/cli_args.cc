#include "worker/cli/cli_args.h"

#include <charconv>
#include <cmath>

#include "absl/strings/str_split.h"

namespace moe {
namespace {

absl::Status FlagError(const std::string& flag, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", what));
}

template <typename T>
absl::StatusOr<T> ParseInt(const std::string& flag, const std::string& s) {
  T v{};
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return FlagError(flag, "expected an integer, got '" + s + "'");
  return v;
}

absl::StatusOr<float> ParseFloat(const std::string& flag, const std::string& s) {
  try {
    size_t used = 0;
    float v = std::stof(s, &used);
    if (used == s.size() && std::isfinite(v)) return v;
  } catch (const std::exception&) {
  }
  return FlagError(flag, "expected a number, got '" + s + "'");
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& flag, const std::string& s) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    MOE_ASSIGN_OR_RETURN(int32_t id, ParseInt<int32_t>(flag, std::string(part)));
    ids.push_back(id);
  }
  return ids;
}

}  // namespace

std::string CliUsage() {
  return "usage:\n"
         "  moe-cli generate [--model DIR] (--prompt TEXT | --token-ids 5,17,9)... [--max-tokens N]\n"
         "                   [--greedy | --temperature T [--top-k K] [--top-p P] [--seed S]] [--ignore-eos]\n"
         "                   [--json [--stats]] [--verbose]\n"
         "  moe-cli score [--model DIR] (--text TEXT | --token-ids 5,17,9)... [--json [--stats]] [--verbose]\n"
         "  moe-cli --help\n"
         "Under `mpirun -np N` the same command runs as an N-rank expert-parallel job; rank 0 prints.\n"
         "--prompt/--text/--token-ids may be repeated: each gives one sequence, spread over the ranks.\n"
         "Without --temperature, generation is greedy, unless --top-k or --top-p asks for sampling (at\n"
         "temperature 1). The default model is the embedded shakespeare-moe.\n";
}

absl::StatusOr<CliOptions> ParseCliArgs(const std::vector<std::string>& args, const std::string& default_model) {
  CliOptions o;
  o.model_dir = default_model;
  o.sampling.temperature = 0.0f;
  if (args.empty()) return absl::InvalidArgumentError("missing command (generate or score)");
  o.command = args[0];
  // --help / -h as the command or as a flag: the caller prints the usage and exits 0.
  if (o.command == "--help" || o.command == "-h") {
    o.command = "help";
    return o;
  }
  if (o.command != "generate" && o.command != "score") {
    return absl::InvalidArgumentError("unknown command '" + o.command + "' (expected generate or score)");
  }
  const bool gen = o.command == "generate";
  bool greedy_flag = false, sampling_flag = false, temperature_given = false;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    auto value = [&]() -> absl::StatusOr<std::string> {
      if (i + 1 >= args.size()) return FlagError(a, "missing value");
      return args[++i];
    };
    if (a == "--help" || a == "-h") {
      o.command = "help";
      return o;
    } else if (a == "--model") {
      MOE_ASSIGN_OR_RETURN(o.model_dir, value());
    } else if ((gen && a == "--prompt") || (!gen && a == "--text")) {
      MOE_ASSIGN_OR_RETURN(std::string t, value());
      if (t.empty()) return FlagError(a, "empty text");
      o.inputs.push_back({true, t, {}});
    } else if (a == "--token-ids") {
      MOE_ASSIGN_OR_RETURN(std::string t, value());
      MOE_ASSIGN_OR_RETURN(auto ids, ParseIds(a, t));
      o.inputs.push_back({false, "", std::move(ids)});
    } else if (gen && a == "--max-tokens") {
      MOE_ASSIGN_OR_RETURN(std::string t, value());
      MOE_ASSIGN_OR_RETURN(o.max_tokens, ParseInt<int64_t>(a, t));
      if (o.max_tokens < 0) return FlagError(a, "must be >= 0");
    } else if (gen && a == "--greedy") {
      greedy_flag = true;
    } else if (gen && a == "--temperature") {
      MOE_ASSIGN_OR_RETURN(std::string t, value());
      MOE_ASSIGN_OR_RETURN(o.sampling.temperature, ParseFloat(a, t));
      sampling_flag = temperature_given = true;
    } else if (gen && a == "--top-k") {
      MOE_ASSIGN_OR_RETURN(std::string t, value());
      MOE_ASSIGN_OR_RETURN(o.sampling.top_k, ParseInt<int32_t>(a, t));
      sampling_flag = true;
    } else if (gen && a == "--top-p") {
      MOE_ASSIGN_OR_RETURN(std::string t, value());
      MOE_ASSIGN_OR_RETURN(o.sampling.top_p, ParseFloat(a, t));
      sampling_flag = true;
    } else if (gen && a == "--seed") {
      MOE_ASSIGN_OR_RETURN(std::string t, value());
      MOE_ASSIGN_OR_RETURN(o.sampling.seed, ParseInt<uint64_t>(a, t));
    } else if (gen && a == "--ignore-eos") {
      o.ignore_eos = true;
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--stats") {
      o.stats = true;
    } else if (a == "--verbose") {
      o.verbose = true;
    } else if (a == "--kv-block-size") {
      MOE_ASSIGN_OR_RETURN(std::string t, value());
      MOE_ASSIGN_OR_RETURN(o.kv_block_size, ParseInt<int64_t>(a, t));
      if (o.kv_block_size <= 0) return FlagError(a, "must be positive");
    } else {
      return absl::InvalidArgumentError("unknown flag '" + a + "' for " + o.command);
    }
  }
  if (o.stats && !o.json) {  // the statistics go into the JSON object; without it they were dropped silently
    return FlagError("--stats", "needs --json (the load statistics are part of its JSON object)");
  }
  if (greedy_flag && sampling_flag) {
    return FlagError("--greedy", "cannot be combined with --temperature/--top-k/--top-p");
  }
  // Without --temperature: greedy, unless --top-k/--top-p ask for sampling (then temperature 1,
  // vLLM's default). --temperature 0 is greedy, as in vLLM.
  if (sampling_flag && !temperature_given) o.sampling.temperature = 1.0f;
  MOE_RETURN_IF_ERROR(o.sampling.Validate());
  if (o.inputs.empty()) {
    return absl::InvalidArgumentError(gen ? "give --prompt TEXT or --token-ids IDS" : "give --text TEXT or --token-ids IDS");
  }

  return o;
}

}  // namespace moe
