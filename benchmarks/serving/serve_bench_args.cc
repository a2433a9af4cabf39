#include "benchmarks/serving/serve_bench_args.h"

#include <cmath>
#include <functional>
#include <limits>
#include <map>

#include "absl/strings/numbers.h"
#include "common/flag_arg.h"

namespace moe::serve_bench {
namespace {

absl::Status FlagError(const std::string& flag, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", what));
}

absl::StatusOr<int64_t> Int(const std::string& flag, const std::string& v, int64_t lo) {
  int64_t x = 0;
  if (!absl::SimpleAtoi(v, &x)) return FlagError(flag, absl::StrCat("expected an integer, got '", v, "'"));
  if (x < lo) return FlagError(flag, absl::StrCat("must be at least ", lo, ", got ", x));
  return x;
}

absl::StatusOr<double> NonNegative(const std::string& flag, const std::string& v) {
  double x = 0;
  if (!absl::SimpleAtod(v, &x) || std::isnan(x)) return FlagError(flag, absl::StrCat("expected a number, got '", v, "'"));
  if (x < 0) return FlagError(flag, absl::StrCat("must be >= 0, got ", v));
  return x;
}

}  // namespace

std::string BenchUsage() {
  return "usage: moe-serve-bench [--server 127.0.0.1:50051] [--requests 100] [--rate inf] [--max-concurrency 0]\n"
         "         [--input-len 128] [--output-len 128] [--max-tokens 0] [--range-ratio 0] [--shared-prefix-len 0]\n"
         "         [--temperature 0] [--seed 0] [--warmup 0] [--connections 4] [--timeout 600]\n"
         "         [--wait-serving 0] [--out FILE] [--commit SHA] [--no-records] [--json-object | --regex RE | --grammar GBNF]\n"
         "         [--repetition-penalty 1] [--frequency-penalty 0] [--logprobs N]\n"
         "Sends --requests Generate calls of random token-id prompts (--input-len ids, uniform over the\n"
         "vocabulary) for exactly --output-len tokens each (ignore_eos) to a moe-coordinator, at --rate\n"
         "requests a second (Poisson arrivals; inf: all at once), at most --max-concurrency in flight\n"
         "(0: no limit). --range-ratio R draws each request's lengths uniformly from [len * (1 - R),\n"
         "len * (1 + R)] (vLLM's --random-range-ratio). --shared-prefix-len P starts every prompt with\n"
         "the same P random tokens (a shared system prompt, what prefix caching serves from cache).\n"
         "It reports what serving benchmarks report, under vLLM benchmark_serving's names: request and\n"
         "token throughput, time to first token (TTFT), time per output token after the first (TPOT),\n"
         "inter-token latency (ITL) and end-to-end latency (mean, median, p90, p99); and how many of the\n"
         "run's prompt tokens the ranks' prefix caches served. --warmup N runs N requests the same way\n"
         "first and leaves them out. --out writes the JSON (arguments, the server's model and cluster,\n"
         "the summary and, unless --no-records, every request's timeline). Exit status: 0 every request\n"
         "completed, 1 some failed or the server could not be reached, 2 bad command line or a request\n"
         "the model cannot take. --json-object asks every request for response_format json_object (a\n"
         "rank samples each step's row under the grammar's mask; a request ends when its object has closed and\n"
         "the whitespace after it runs out, which can be before --output-len; the model needs a\n"
         "tokenizer). --regex RE asks every request for guided_regex RE the same way (one that never\n"
         "ends, \"[a-z ,.]+\", keeps every request to --output-len); --grammar GBNF asks for guided_grammar\n"
         "(\"root ::= [a-z ,.]+\" never ends either). --max-tokens N (above --output-len)\n"
         "asks every request for max_tokens N and ends its stream once it has its output length (the\n"
         "client cancels it, as an answer that stops early: what a large max_tokens, or none in OpenAI's\n"
         "chat API, costs the server's KV admission). --repetition-penalty and --frequency-penalty set\n"
         "every request's (what penalised rows cost a step); --logprobs N asks every request for its\n"
         "tokens' logprobs with N top alternatives (0-20).\n";
}

absl::StatusOr<BenchArgs> ParseBenchArgs(const std::vector<std::string>& args) {
  BenchArgs a;
  a.rate = std::numeric_limits<double>::infinity();
  using Setter = std::function<absl::Status(const std::string& flag, const std::string& v)>;
  const auto int_flag = [](int64_t* dst, int64_t lo) -> Setter {
    return [dst, lo](const std::string& flag, const std::string& v) -> absl::Status {
      MOE_ASSIGN_OR_RETURN(*dst, Int(flag, v, lo));
      return absl::OkStatus();
    };
  };
  const std::map<std::string, Setter> with_value = {
      {"--server",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         if (v.empty() || v.find(':') == std::string::npos) return FlagError(flag, "expected HOST:PORT, got '" + v + "'");
         a.server = v;
         return absl::OkStatus();
       }},
      {"--requests", int_flag(&a.requests, 1)},
      {"--max-concurrency", int_flag(&a.max_concurrency, 0)},
      {"--input-len", int_flag(&a.input_len, 1)},
      {"--output-len", int_flag(&a.output_len, 1)},
      {"--max-tokens", int_flag(&a.max_tokens, 0)},
      {"--warmup", int_flag(&a.warmup, 0)},
      {"--shared-prefix-len", int_flag(&a.shared_prefix_len, 0)},
      {"--connections", int_flag(&a.connections, 1)},
      {"--rate",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         if (v == "inf") {
           a.rate = std::numeric_limits<double>::infinity();
           return absl::OkStatus();
         }
         MOE_ASSIGN_OR_RETURN(a.rate, NonNegative(flag, v));
         if (a.rate == 0) return FlagError(flag, "must be positive (requests a second) or inf");
         return absl::OkStatus();
       }},
      {"--range-ratio",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(a.range_ratio, NonNegative(flag, v));
         if (a.range_ratio >= 1) return FlagError(flag, "must be in [0, 1), got " + v);
         return absl::OkStatus();
       }},
      {"--temperature",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(double t, NonNegative(flag, v));
         if (std::isinf(t)) return FlagError(flag, "must be finite");
         a.temperature = static_cast<float>(t);
         return absl::OkStatus();
       }},
      {"--seed",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         if (!absl::SimpleAtoi(v, &a.seed)) return FlagError(flag, "expected an unsigned integer, got '" + v + "'");
         return absl::OkStatus();
       }},
      {"--timeout",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(a.timeout_s, NonNegative(flag, v));
         if (a.timeout_s == 0 || std::isinf(a.timeout_s)) return FlagError(flag, "must be a positive number of seconds");
         return absl::OkStatus();
       }},
      {"--wait-serving",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(a.wait_serving_s, NonNegative(flag, v));
         if (std::isinf(a.wait_serving_s)) return FlagError(flag, "must be finite");
         return absl::OkStatus();
       }},
      {"--out",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         if (v.empty()) return FlagError(flag, "empty path");
         a.out = v;
         return absl::OkStatus();
       }},
      {"--regex",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         if (v.empty()) return FlagError(flag, "empty regex");
         a.regex = v;
         return absl::OkStatus();
       }},
      {"--grammar",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         if (v.empty()) return FlagError(flag, "empty grammar");
         a.grammar = v;
         return absl::OkStatus();
       }},
      {"--repetition-penalty",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(double r, NonNegative(flag, v));
         if (r == 0 || std::isinf(r)) return FlagError(flag, "must be finite and > 0, got " + v);
         a.repetition_penalty = static_cast<float>(r);
         return absl::OkStatus();
       }},
      {"--frequency-penalty",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         double f = 0;
         if (!absl::SimpleAtod(v, &f) || !(f >= -2 && f <= 2)) {
           return FlagError(flag, "expected a number in [-2, 2], got '" + v + "'");
         }
         a.frequency_penalty = static_cast<float>(f);
         return absl::OkStatus();
       }},
      {"--logprobs",
       [&](const std::string& flag, const std::string& v) -> absl::Status {
         if (!absl::SimpleAtoi(v, &a.top_logprobs) || a.top_logprobs < 0 || a.top_logprobs > 20) {
           return FlagError(flag, "expected an integer in [0, 20], got '" + v + "'");
         }
         return absl::OkStatus();
       }},
      {"--commit",
       [&](const std::string&, const std::string& v) -> absl::Status {
         a.commit = v;
         return absl::OkStatus();
       }},
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const FlagArg arg = SplitFlagArg(args[i]);
    const std::string& flag = arg.name;
    const bool has_inline = arg.value.has_value();
    std::string val = arg.value.value_or("");
    if ((flag == "--help" || flag == "-h") && !has_inline) {
      a.help = true;
      continue;
    }
    if (flag == "--no-records" && !has_inline) {
      a.save_records = false;
      continue;
    }
    if (flag == "--json-object" && !has_inline) {
      a.json_object = true;
      continue;
    }
    const auto it = with_value.find(flag);
    if (it == with_value.end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag '", flag, "'"));
    if (!has_inline) {
      if (i + 1 >= args.size()) return FlagError(flag, "missing value");
      val = args[++i];
    }
    MOE_RETURN_IF_ERROR(it->second(flag, val));
  }
  if (static_cast<int>(a.json_object) + static_cast<int>(!a.regex.empty()) + static_cast<int>(!a.grammar.empty()) > 1) {
    return absl::InvalidArgumentError("--json-object, --regex and --grammar: one of them");
  }
  return a;
}

}  // namespace moe::serve_bench
