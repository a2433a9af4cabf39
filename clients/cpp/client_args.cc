#include "clients/cpp/client_args.h"

#include <cmath>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/flag_arg.h"

namespace moe::client {
namespace {

const std::set<std::string> kCommands = {"generate", "score", "score-rolling", "tokenize", "detokenize",
                                         "info",     "stats", "health",        "list-services"};

// What a flag needs: whether it takes a value, and the commands it belongs to ("" = all).
struct FlagSpec {
  bool takes_value;
  std::set<std::string> commands;
};

const std::map<std::string, FlagSpec>& Flags() {
  static const auto* flags = new std::map<std::string, FlagSpec>{
      {"--server", {true, {}}},
      {"--timeout", {true, {}}},
      {"--json", {false, {"generate", "score", "score-rolling", "tokenize", "detokenize", "info"}}},
      {"--prompt", {true, {"generate"}}},
      {"--token-ids", {true, {"generate", "score-rolling", "detokenize"}}},
      {"--max-tokens", {true, {"generate"}}},
      {"--temperature", {true, {"generate"}}},
      {"--top-k", {true, {"generate"}}},
      {"--top-p", {true, {"generate"}}},
      {"--min-p", {true, {"generate"}}},
      {"--repetition-penalty", {true, {"generate"}}},
      {"--presence-penalty", {true, {"generate"}}},
      {"--frequency-penalty", {true, {"generate"}}},
      {"--min-tokens", {true, {"generate"}}},
      {"--n", {true, {"generate"}}},
      {"--logit-bias", {true, {"generate"}}},
      {"--seed", {true, {"generate"}}},
      {"--stop", {true, {"generate"}}},
      {"--stop-token-ids", {true, {"generate"}}},
      {"--logprobs", {true, {"generate"}}},
      {"--prompt-logprobs", {true, {"generate"}}},
      {"--ignore-eos", {false, {"generate"}}},
      {"--json-object", {false, {"generate"}}},
      {"--json-schema", {true, {"generate"}}},
      {"--regex", {true, {"generate"}}},
      {"--grammar", {true, {"generate"}}},
      {"--choice", {true, {"generate"}}},
      {"--compact-json", {false, {"generate"}}},
      {"--request-id", {true, {"generate"}}},
      {"--priority", {true, {"generate"}}},
      {"--include-stop-str", {false, {"generate"}}},
      {"--keep-special-tokens", {false, {"generate", "detokenize"}}},
      {"--allowed-token-ids", {true, {"generate"}}},
      {"--bad-word", {true, {"generate"}}},
      {"--context", {true, {"score"}}},
      {"--context-ids", {true, {"score"}}},
      {"--continuation", {true, {"score"}}},
      {"--continuation-ids", {true, {"score"}}},
      {"--text", {true, {"score-rolling", "tokenize"}}},
      {"--add-bos", {false, {"tokenize"}}},
      {"--no-bos", {false, {"tokenize"}}},
      {"--service", {true, {"health"}}},
  };
  return *flags;
}

absl::StatusOr<int64_t> ParseInt(const std::string& flag, const std::string& v, int64_t lo, int64_t hi) {
  int64_t x;
  if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected an integer in [", lo, ", ", hi, "], got '", v, "'"));
  }
  return x;
}

absl::StatusOr<float> ParseFloat(const std::string& flag, const std::string& v) {
  float x;
  if (!absl::SimpleAtof(v, &x) || !std::isfinite(x)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": expected a number, got '", v, "'"));
  }
  return x;
}

// Sets `p` from text or ids, refusing a second source for the same input.
absl::Status SetPrompt(moe::v1::Prompt& p, const std::string& flag, const std::string& value, bool ids) {
  if (p.kind_case() != moe::v1::Prompt::KIND_NOT_SET) {
    return absl::InvalidArgumentError(absl::StrCat(flag, ": the input is already given (use text or ids, once)"));
  }
  if (!ids) {
    p.set_text(value);
    return absl::OkStatus();
  }
  MOE_ASSIGN_OR_RETURN(std::vector<int32_t> list, ParseIdList(flag, value));
  p.mutable_token_ids()->mutable_ids()->Assign(list.begin(), list.end());
  return absl::OkStatus();
}

absl::Status Apply(ClientOptions& o, const std::string& flag, const std::string& v) {
  auto* s = &o.sampling;
  if (flag == "--server") {
    if (v.empty()) return absl::InvalidArgumentError("--server: expected HOST:PORT");
    o.server = v;
  } else if (flag == "--timeout") {
    MOE_ASSIGN_OR_RETURN(float t, ParseFloat(flag, v));
    if (t < 0) return absl::InvalidArgumentError("--timeout: must be >= 0 seconds");
    o.timeout_s = t;
  } else if (flag == "--json") {
    o.json = true;
  } else if (flag == "--prompt" || flag == "--text") {
    return SetPrompt(o.prompt, flag, v, false);
  } else if (flag == "--token-ids") {
    if (o.command == "detokenize") {
      MOE_ASSIGN_OR_RETURN(o.token_ids, ParseIdList(flag, v));
      return absl::OkStatus();
    }
    return SetPrompt(o.prompt, flag, v, true);
  } else if (flag == "--max-tokens") {
    MOE_ASSIGN_OR_RETURN(int64_t x, ParseInt(flag, v, 0, UINT32_MAX));
    s->set_max_tokens(static_cast<uint32_t>(x));
  } else if (flag == "--temperature") {
    MOE_ASSIGN_OR_RETURN(float x, ParseFloat(flag, v));
    s->set_temperature(x);
  } else if (flag == "--top-k") {
    MOE_ASSIGN_OR_RETURN(int64_t x, ParseInt(flag, v, INT32_MIN, INT32_MAX));
    s->set_top_k(static_cast<int32_t>(x));
  } else if (flag == "--top-p") {
    MOE_ASSIGN_OR_RETURN(float x, ParseFloat(flag, v));
    s->set_top_p(x);
  } else if (flag == "--min-p") {
    MOE_ASSIGN_OR_RETURN(float x, ParseFloat(flag, v));
    s->set_min_p(x);
  } else if (flag == "--repetition-penalty") {
    MOE_ASSIGN_OR_RETURN(float x, ParseFloat(flag, v));
    s->set_repetition_penalty(x);
  } else if (flag == "--presence-penalty") {
    MOE_ASSIGN_OR_RETURN(float x, ParseFloat(flag, v));
    s->set_presence_penalty(x);
  } else if (flag == "--frequency-penalty") {
    MOE_ASSIGN_OR_RETURN(float x, ParseFloat(flag, v));
    s->set_frequency_penalty(x);
  } else if (flag == "--min-tokens") {
    MOE_ASSIGN_OR_RETURN(int64_t x, ParseInt(flag, v, 0, UINT32_MAX));
    s->set_min_tokens(static_cast<uint32_t>(x));
  } else if (flag == "--logit-bias") {  // ID:BIAS[,ID:BIAS...], repeatable
    for (absl::string_view item : absl::StrSplit(v, ',')) {
      const std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits(':', 1));
      int32_t id;
      float bias;
      if (!absl::SimpleAtoi(kv.first, &id) || !absl::SimpleAtof(kv.second, &bias)) {
        return absl::InvalidArgumentError(absl::StrCat("--logit-bias: expected ID:BIAS[,ID:BIAS...], got '", v, "'"));
      }
      (*s->mutable_logit_bias())[id] = bias;
    }
  } else if (flag == "--n") {
    MOE_ASSIGN_OR_RETURN(int64_t x, ParseInt(flag, v, 0, UINT32_MAX));
    s->set_n(static_cast<uint32_t>(x));
  } else if (flag == "--seed") {
    uint64_t x;
    if (!absl::SimpleAtoi(v, &x)) return absl::InvalidArgumentError(absl::StrCat("--seed: expected an unsigned integer, got '", v, "'"));
    s->set_seed(x);
  } else if (flag == "--stop") {
    s->add_stop(v);
  } else if (flag == "--priority") {
    MOE_ASSIGN_OR_RETURN(int64_t x, ParseInt(flag, v, INT32_MIN, INT32_MAX));
    o.priority = static_cast<int32_t>(x);
  } else if (flag == "--include-stop-str") {
    s->set_include_stop_str_in_output(true);
  } else if (flag == "--keep-special-tokens") {  // vLLM's skip_special_tokens false
    if (o.command == "detokenize") {
      o.keep_special_tokens = true;
    } else {
      s->set_skip_special_tokens(false);
    }
  } else if (flag == "--allowed-token-ids") {
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdList(flag, v));
    for (int32_t id : ids) s->add_allowed_token_ids(id);
  } else if (flag == "--bad-word") {
    s->add_bad_words(v);
  } else if (flag == "--stop-token-ids") {
    MOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, ParseIdList(flag, v));
    for (int32_t id : ids) s->add_stop_token_ids(id);
  } else if (flag == "--logprobs") {
    MOE_ASSIGN_OR_RETURN(int64_t x, ParseInt(flag, v, 0, UINT32_MAX));
    s->set_logprobs(static_cast<uint32_t>(x));
  } else if (flag == "--prompt-logprobs") {
    MOE_ASSIGN_OR_RETURN(int64_t x, ParseInt(flag, v, 0, UINT32_MAX));
    s->set_prompt_logprobs(static_cast<uint32_t>(x));
  } else if (flag == "--ignore-eos") {
    s->set_ignore_eos(true);
  } else if (flag == "--json-object") {
    s->mutable_response_format()->set_type(moe::v1::ResponseFormat::TYPE_JSON_OBJECT);
  } else if (flag == "--json-schema") {  // the schema's JSON text (the coordinator checks it)
    s->mutable_response_format()->set_type(moe::v1::ResponseFormat::TYPE_JSON_SCHEMA);
    s->mutable_response_format()->set_json_schema(v);
  } else if (flag == "--choice") {  // repeated: the output is exactly one of them
    s->mutable_response_format()->set_type(moe::v1::ResponseFormat::TYPE_CHOICE);
    s->mutable_response_format()->add_choices(v);
  } else if (flag == "--compact-json") {  // no whitespace between the JSON's tokens
    s->mutable_response_format()->set_compact(true);
  } else if (flag == "--regex") {  // the whole output matches it (the coordinator checks it)
    s->mutable_response_format()->set_type(moe::v1::ResponseFormat::TYPE_REGEX);
    s->mutable_response_format()->set_regex(v);
  } else if (flag == "--grammar") {  // the whole output is a text of this GBNF grammar (the coordinator parses it)
    s->mutable_response_format()->set_type(moe::v1::ResponseFormat::TYPE_GRAMMAR);
    s->mutable_response_format()->set_grammar(v);
  } else if (flag == "--request-id") {
    o.request_id = v;
  } else if (flag == "--context" || flag == "--context-ids") {
    return SetPrompt(o.context, flag, v, flag == "--context-ids");
  } else if (flag == "--continuation" || flag == "--continuation-ids") {
    return SetPrompt(o.continuation, flag, v, flag == "--continuation-ids");
  } else if (flag == "--add-bos" || flag == "--no-bos") {
    o.add_bos = flag == "--add-bos";
  } else if (flag == "--service") {
    o.service = v;
  }
  return absl::OkStatus();
}

// The inputs each command requires.
absl::Status CheckComplete(const ClientOptions& o) {
  using K = moe::v1::Prompt;
  if (o.command == "generate" && o.prompt.kind_case() == K::KIND_NOT_SET) {
    return absl::InvalidArgumentError("generate needs --prompt TEXT or --token-ids IDS");
  }
  if (o.command == "score-rolling" && o.prompt.kind_case() == K::KIND_NOT_SET) {
    return absl::InvalidArgumentError("score-rolling needs --text TEXT or --token-ids IDS");
  }
  if (o.command == "tokenize" && o.prompt.kind_case() == K::KIND_NOT_SET) {
    return absl::InvalidArgumentError("tokenize needs --text TEXT");
  }
  if (o.command == "score" && o.context.kind_case() == K::KIND_NOT_SET) {
    return absl::InvalidArgumentError("score needs --context TEXT or --context-ids IDS");
  }
  if (o.command == "score" && o.continuation.kind_case() == K::KIND_NOT_SET) {
    return absl::InvalidArgumentError("score needs --continuation TEXT or --continuation-ids IDS");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> ParseIdList(const std::string& flag, const std::string& value) {
  std::vector<int32_t> ids;
  for (absl::string_view part : absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    int32_t id;
    if (!absl::SimpleAtoi(part, &id)) {
      return absl::InvalidArgumentError(absl::StrCat(flag, ": '", std::string(part), "' is not a token id (expected e.g. 1,2,3)"));
    }
    ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<ClientOptions> ParseClientArgs(const std::vector<std::string>& args) {
  ClientOptions o;
  // First pass: find the command, so flags can be checked against it in flag order below.
  std::vector<std::pair<std::string, std::string>> flags;  // (flag, value)
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "-h" || a == "--help") return absl::InvalidArgumentError("usage");
    if (a.rfind("--", 0) != 0) {
      if (!o.command.empty()) return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", a, "'"));
      if (!kCommands.count(a)) return absl::InvalidArgumentError(absl::StrCat("unknown command '", a, "'"));
      o.command = a;
      continue;
    }
    const FlagArg arg = SplitFlagArg(a);
    const std::string& name = arg.name;
    const bool inline_value = arg.value.has_value();
    std::string value = arg.value.value_or("");
    auto it = Flags().find(name);
    if (it == Flags().end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag ", name));
    if (it->second.takes_value && !inline_value) {
      if (i + 1 >= args.size()) return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
      value = args[++i];
    } else if (!it->second.takes_value && inline_value) {
      return absl::InvalidArgumentError(absl::StrCat(name, " takes no value"));
    }
    flags.emplace_back(name, value);
  }
  if (o.command.empty()) return absl::InvalidArgumentError("no command given");
  for (const auto& [name, value] : flags) {
    const auto& commands = Flags().at(name).commands;
    if (!commands.empty() && !commands.count(o.command)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " is not a flag of '", o.command, "'"));
    }
    MOE_RETURN_IF_ERROR(Apply(o, name, value));
  }
  MOE_RETURN_IF_ERROR(CheckComplete(o));
  return o;
}

std::string ClientUsage() {
  return R"(usage: moe-client [--server HOST:PORT (default 127.0.0.1:50051)] [--timeout S] COMMAND [flags]
commands:
  generate (--prompt TEXT | --token-ids 1,2,3) [--max-tokens N] [--temperature T] [--top-k K]
           [--top-p P] [--min-p P] [--repetition-penalty R] [--presence-penalty P]
           [--frequency-penalty F] [--min-tokens N] [--logit-bias ID:BIAS,...] [--n N] [--seed S]
           [--stop STR]... [--stop-token-ids IDS] [--logprobs N] [--ignore-eos] [--json-object] [--json-schema JSON] [--regex RE]
           [--grammar GBNF] [--choice TEXT]... [--compact-json] [--request-id ID] [--priority N] [--include-stop-str]
           [--allowed-token-ids IDS] [--bad-word WORD]... [--prompt-logprobs N] [--keep-special-tokens]
           [--json]
      streams the completion's text to stdout; with --json the last line is one JSON object
      (--n N > 1: N completions, completion i sampled with seed + i, printed once all are done;
      JSON {"request_id", "choices": [... each with "index"]})
  score (--context TEXT | --context-ids IDS) (--continuation TEXT | --continuation-ids IDS) [--json]
  score-rolling (--text TEXT | --token-ids IDS) [--json]
  tokenize --text TEXT [--add-bos | --no-bos] [--json]
  detokenize --token-ids IDS [--keep-special-tokens] [--json]   (--json: {"text", "pieces": each id's vocabulary entry})
      --keep-special-tokens: control tokens written out in the text ("<s>", "</s>"; vLLM's
      skip_special_tokens false)
  info [--json]            model and cluster
  stats                    serving statistics (JSON)
  health [--service NAME]  prints SERVING / NOT_SERVING; exit 0 only when SERVING
  list-services            services the server exposes (server reflection)
exit status: 0 ok, 1 the server answered with an error (printed as "moe-client: CODE: message"),
2 bad command line
)";
}

}  // namespace moe::client
