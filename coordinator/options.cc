#include "coordinator/options.h"

#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>

#include "absl/strings/numbers.h"
#include "common/flag_arg.h"

namespace moe {
namespace {

absl::Status FlagError(const std::string& flag, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(flag, ": ", what));
}

absl::StatusOr<int64_t> ParseInt(const std::string& flag, const std::string& v, int64_t min) {
  int64_t x = 0;
  if (!absl::SimpleAtoi(v, &x)) return FlagError(flag, absl::StrCat("not an integer: '", v, "'"));
  if (x < min) return FlagError(flag, absl::StrCat("must be at least ", min, ", got ", x));
  return x;
}

absl::StatusOr<double> ParseSeconds(const std::string& flag, const std::string& v, bool zero_ok) {
  double x = 0;
  if (!absl::SimpleAtod(v, &x) || !std::isfinite(x)) return FlagError(flag, absl::StrCat("not a number: '", v, "'"));
  if (x < 0 || (x == 0 && !zero_ok)) {
    return FlagError(flag, absl::StrCat(zero_ok ? "must not be negative" : "must be positive", ", got ", v));
  }
  return x;
}

// HOST:PORT, or a bare port on 127.0.0.1 (never every interface unless asked).
absl::StatusOr<std::string> ParseAddress(const std::string& flag, const std::string& v) {
  int64_t port = 0;
  if (absl::SimpleAtoi(v, &port)) {
    if (port < 0 || port > 65535) return FlagError(flag, absl::StrCat("port out of range: ", v));
    return absl::StrCat("127.0.0.1:", port);
  }
  const size_t colon = v.rfind(':');
  if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(v.substr(colon + 1), &port) || port < 0 ||
      port > 65535) {
    return FlagError(flag, absl::StrCat("expected HOST:PORT, got '", v, "'"));
  }
  return v;
}

}  // namespace

std::string CoordinatorUsage() {
  return "usage: moe-coordinator --model DIR --world-size N [--listen 127.0.0.1:50051]\n"
         "         [--cluster-listen 127.0.0.1:50052] [--metrics-listen 127.0.0.1:9400 | none]\n"
         "         [--ports-file FILE] [--max-waiting 1024] [--max-running-per-rank 256]\n"
         "         [--heartbeat-timeout-s 10] [--prefix-affinity-slack 4096] [--max-model-len N]\n"
         "         [--scheduling-policy fcfs|priority] [--resume-timeout-s 0] [--log-stats-interval-s 5]\n"
         "         [--served-model-name NAME] [--tokenizer DIR] [--tokenizer-mode auto|hf|slow|mistral]\n"
         "         [--generation-config auto|vllm|DIR] [--override-generation-config JSON] [--expert-load FILE]\n"
         "         [--tls-cert-file CERT.pem --tls-key-file KEY.pem]\n"
         "         [--cluster-tls-cert-file CERT.pem --cluster-tls-key-file KEY.pem [--cluster-tls-client-ca-file CA.pem]]\n"
         "Port 0 picks a free port; FILE then receives {\"public\":P,\"cluster\":C,\"metrics\":M}.\n"
         "When every worker caches prompt prefixes (moe-worker's default), a generation goes\n"
         "to the rank that holds the longest start of its prompt, unless that rank reserves more than\n"
         "--prefix-affinity-slack KV positions beyond the least loaded one (0: place by load only).\n"
         "--max-model-len N: a request's prompt + max_tokens (a scoring window) may take at most N positions,\n"
         "at most the model's context (as vLLM's: max_position_embeddings, times a linear RoPE scaling's factor,\n"
         "or YaRN's original_max_position_embeddings times its factor); GetModelInfo's max_context says N.\n"
         "--scheduling-policy priority (vLLM's): requests with a lower GenerateRequest.priority wait less, are\n"
         "admitted to a rank's KV cache first and preempted last; fcfs (the default) refuses priorities other than 0.\n"
         "--resume-timeout-s S: when a worker rank is lost, the requests in flight wait up to S seconds for a new\n"
         "worker job (e.g. deploy/launch-cluster.sh --restart-workers) and go on there where their streams stopped;\n"
         "0 (the default): they fail at once with UNAVAILABLE.\n"
         "--served-model-name NAME (vLLM's): the model's name in GetModelInfo, moe-openai-server's default name\n"
         "for it and the model_name label of the vllm: metrics; by default the model folder's name.\n"
         "--tokenizer DIR (vLLM's): the tokenizer and its tokenizer_config.json (BOS/EOS, chat template) come from\n"
         "DIR instead of the model folder (e.g. a folder of synthetic weights: config.json alone).\n"
         "--tokenizer-mode (vLLM's): auto (the default) encodes text with the folder's tokenizer.json where it has\n"
         "one (as vLLM's and TGI's fast tokenizers), else its tokenizer.model; hf only tokenizer.json; slow only\n"
         "tokenizer.model (SentencePiece's encoding, BOS/EOS as tokenizer_config.json names them, as transformers'\n"
         "slow tokenizer); mistral only tokenizer.model and nothing else, as mistral-common reads it.\n"
         "--generation-config (vLLM's): auto (the default) takes the sampling defaults the model folder's\n"
         "generation_config.json recommends (temperature, top_p, top_k, min_p, repetition_penalty; max_new_tokens\n"
         "as max_tokens) for requests that leave them unset; vllm ignores them; DIR reads DIR/generation_config.json.\n"
         "Its eos_token_id ends generation either way. --override-generation-config '{\"temperature\": 0.5}' (vLLM's)\n"
         "sets fields over those (with vllm: alone). A max_new_tokens from DIR or from the override also caps\n"
         "every request's max_tokens, as vLLM's.\n"
         "--expert-load FILE: place the experts by their load on an earlier run of the model: FILE is what\n"
         "`moe-client stats` printed then (its layers' expert_tokens). Each rank holds as many experts of each layer\n"
         "as without it (the same memory), grouped so that each layer's busiest rank is as light as a bounded search\n"
         "finds (the lightest possible for up to about 12 experts a layer); with more ranks than experts the busiest\n"
         "experts get the spare replicas (vLLM's EPLB idea, once at start).\n"
         "--log-stats-interval-s S: every S seconds while requests run, a line on stderr with the prompt and\n"
         "generation throughput, the running and waiting requests, KV cache use and prefix cache hits, as\n"
         "vLLM logs them; 0 turns it off.\n"
         "--tls-cert-file / --tls-key-file (PEM, both or neither): the public API serves TLS only; clients\n"
         "verify the certificate against MOE_TLS_CA_FILE (moe-client, moe-serve-bench, moe-openai-server, the\n"
         "Python client).\n"
         "--cluster-tls-cert-file / --cluster-tls-key-file (PEM, both or neither): the cluster port serves TLS\n"
         "only; workers verify it with moe-worker --coordinator-tls-ca-file. Without them it is plaintext (the\n"
         "cluster token, MOE_CLUSTER_TOKEN, still authenticates the ranks).\n"
         "--cluster-tls-client-ca-file CA.pem (with the cluster port's TLS): mutual TLS, the port serves only\n"
         "workers showing a certificate these PEM roots vouch for (moe-worker --cluster-tls-cert-file /\n"
         "--cluster-tls-key-file).\n";
}

absl::StatusOr<CoordinatorOptions> ParseCoordinatorArgs(const std::vector<std::string>& args) {
  CoordinatorOptions o;
  bool have_world = false;
  // A flag naming a file: any non-empty path.
  auto path_flag = [](const char* name, std::string& field) {
    return [name, &field](const std::string& v) {
      if (v.empty()) return FlagError(name, "empty path");
      field = v;
      return absl::OkStatus();
    };
  };
  std::map<std::string, std::function<absl::Status(const std::string&)>> flags = {
      {"--model", [&](const std::string& v) { o.model_dir = v; return absl::OkStatus(); }},
      {"--served-model-name",
       [&](const std::string& v) {
         if (v.empty()) return FlagError("--served-model-name", "empty name");
         o.served_model_name = v;
         return absl::OkStatus();
       }},
      {"--tokenizer-mode",
       [&](const std::string& v) -> absl::Status {
         absl::StatusOr<TokenizerFile> file = ParseTokenizerMode(v);
         if (!file.ok()) return FlagError("--tokenizer-mode", std::string(file.status().message()));
         o.tokenizer_file = *file;
         return absl::OkStatus();
       }},
      {"--tokenizer", path_flag("--tokenizer", o.tokenizer_dir)},
      {"--expert-load", path_flag("--expert-load", o.expert_load_file)},
      {"--generation-config", path_flag("--generation-config", o.generation_config)},
      {"--override-generation-config",
       [&](const std::string& v) -> absl::Status {
         const nlohmann::json j = nlohmann::json::parse(v, nullptr, /*allow_exceptions=*/false);
         if (j.is_discarded()) return FlagError("--override-generation-config", "not valid JSON: " + v);
         absl::StatusOr<GenerationConfig> g = GenerationConfig::FromOverride(j);
         if (!g.ok()) return FlagError("--override-generation-config", std::string(g.status().message()));
         o.override_generation_config = *std::move(g);
         return absl::OkStatus();
       }},
      {"--world-size",
       [&](const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(int64_t n, ParseInt("--world-size", v, 1));
         if (n > 1 << 20) return FlagError("--world-size", "too large");
         o.world_size = static_cast<int>(n);
         have_world = true;
         return absl::OkStatus();
       }},
      {"--listen",
       [&](const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(o.listen, ParseAddress("--listen", v));
         return absl::OkStatus();
       }},
      {"--cluster-listen",
       [&](const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(o.cluster_listen, ParseAddress("--cluster-listen", v));
         return absl::OkStatus();
       }},
      {"--metrics-listen",
       [&](const std::string& v) -> absl::Status {
         if (v == "none") {
           o.metrics_listen.clear();
           return absl::OkStatus();
         }
         MOE_ASSIGN_OR_RETURN(o.metrics_listen, ParseAddress("--metrics-listen", v));
         return absl::OkStatus();
       }},
      {"--ports-file", [&](const std::string& v) { o.ports_file = v; return absl::OkStatus(); }},
      {"--max-waiting",
       [&](const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(o.limits.max_waiting, ParseInt("--max-waiting", v, 1));
         return absl::OkStatus();
       }},
      {"--max-running-per-rank",
       [&](const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(o.limits.max_running_per_rank, ParseInt("--max-running-per-rank", v, 1));
         return absl::OkStatus();
       }},
      {"--scheduling-policy",
       [&](const std::string& v) {
         if (v != "fcfs" && v != "priority") {
           return FlagError("--scheduling-policy", absl::StrCat("expected fcfs or priority, got '", v, "'"));
         }
         o.priority_scheduling = v == "priority";
         return absl::OkStatus();
       }},
      {"--max-model-len",
       [&](const std::string& v) {
         MOE_ASSIGN_OR_RETURN(o.max_model_len, ParseInt("--max-model-len", v, 2));
         return absl::OkStatus();
       }},
      {"--prefix-affinity-slack",
       [&](const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(o.limits.prefix_affinity_slack, ParseInt("--prefix-affinity-slack", v, 0));
         return absl::OkStatus();
       }},
      {"--heartbeat-timeout-s",
       [&](const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(o.heartbeat_timeout_s, ParseSeconds("--heartbeat-timeout-s", v, false));
         return absl::OkStatus();
       }},
      {"--log-stats-interval-s",
       [&](const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(o.log_stats_interval_s, ParseSeconds("--log-stats-interval-s", v, true));
         return absl::OkStatus();
       }},
      {"--tls-cert-file", path_flag("--tls-cert-file", o.tls_cert_file)},
      {"--tls-key-file", path_flag("--tls-key-file", o.tls_key_file)},
      {"--cluster-tls-cert-file", path_flag("--cluster-tls-cert-file", o.cluster_tls_cert_file)},
      {"--cluster-tls-key-file", path_flag("--cluster-tls-key-file", o.cluster_tls_key_file)},
      {"--cluster-tls-client-ca-file", path_flag("--cluster-tls-client-ca-file", o.cluster_tls_client_ca_file)},
      {"--resume-timeout-s",
       [&](const std::string& v) -> absl::Status {
         MOE_ASSIGN_OR_RETURN(o.resume_timeout_s, ParseSeconds("--resume-timeout-s", v, true));
         return absl::OkStatus();
       }},
  };
  for (size_t i = 0; i < args.size(); ++i) {
    const FlagArg arg = SplitFlagArg(args[i]);
    const std::string& name = arg.name;
    const bool inline_value = arg.value.has_value();
    std::string value = arg.value.value_or("");
    auto it = flags.find(name);
    if (it == flags.end()) return absl::InvalidArgumentError(absl::StrCat("unknown argument '", args[i], "'"));
    if (!inline_value) {
      if (i + 1 >= args.size()) return FlagError(name, "needs a value");
      value = args[++i];
    }
    MOE_RETURN_IF_ERROR(it->second(value));
  }
  if (o.model_dir.empty()) return FlagError("--model", "required");
  if (!have_world) return FlagError("--world-size", "required");
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return o.tls_cert_file.empty() ? FlagError("--tls-cert-file", "required with --tls-key-file")
                                   : FlagError("--tls-key-file", "required with --tls-cert-file");
  }
  if (o.cluster_tls_cert_file.empty() != o.cluster_tls_key_file.empty()) {
    return o.cluster_tls_cert_file.empty() ? FlagError("--cluster-tls-cert-file", "required with --cluster-tls-key-file")
                                           : FlagError("--cluster-tls-key-file", "required with --cluster-tls-cert-file");
  }
  if (!o.cluster_tls_client_ca_file.empty() && o.cluster_tls_cert_file.empty()) {
    return FlagError("--cluster-tls-client-ca-file", "needs the cluster port's TLS (--cluster-tls-cert-file and "
                                                     "--cluster-tls-key-file)");
  }
  return o;
}

}  // namespace moe
