// moe-openai-server: an OpenAI-compatible HTTP server in front of a coordinator (openai_server.h).
//
//   moe-openai-server --coordinator HOST:PORT [--listen ADDR (default 0.0.0.0:8000)]
//                     [--model-name NAME] [--threads N] [--request-timeout-s S] [--chat-template FILE]
//                     [--tool-call-parser mistral] [--api-key KEY ...] [--enable-prompt-tokens-details]
//                     [--trust-request-chat-template]
//                     [--ssl-certfile CERT.pem --ssl-keyfile KEY.pem [--ssl-ca-certs CA.pem --ssl-cert-reqs 0|1|2]]
//
// Exit status: 0 after SIGINT/SIGTERM, 1 when it cannot start (coordinator unreachable, address in
// use, TLS files that cannot be used), 2 for a bad command line.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "common/flag_arg.h"
#include "common/open_file_limit.h"
#include "common/process_exit.h"
#include "common/secret_token.h"
#include "coordinator/openai/openai_server.h"

namespace {

const char kUsage[] =
    "usage: moe-openai-server --coordinator HOST:PORT [--listen ADDR (default 0.0.0.0:8000; port 0 picks one)]\n"
    "                         [--model-name NAME (default: the coordinator's --served-model-name, else the model\n"
    "                          folder's name; repeatable: every name is\n"
    "                          served, answers give the first)]\n"
    "                         [--served-model-name NAME [NAME ...] (vLLM's: the same, several names at once)]\n"
    "                         [--threads N (default 1024: requests in flight; one more waits for a thread)]\n"
    "                         [--responses-store N (default 1024: /v1/responses answers kept, least recently used\n"
    "                          dropped, for previous_response_id and GET / DELETE /v1/responses/ID; 0: none kept)]\n"
    "                         [--enable-prompt-tokens-details (vLLM's: usage.prompt_tokens_details.cached_tokens,\n"
    "                          the prompt tokens the ranks' prefix caches held)]\n"
    "                         [--request-timeout-s S (default 30: to send the request headers, and for any one\n"
    "                          read of the body or write of the answer)]\n"
    "                         [--access-log FILE (a line per request: client, time, request, status, bytes;\n"
    "                          /dev/stderr for the process's own)]\n"
    "                         [--metrics-url http://HOST:PORT/metrics (GET /metrics answers what it answers:\n"
    "                          the coordinator's Prometheus endpoint, on the API port as vLLM serves it,\n"
    "                          beside the front's own request metrics, which it answers alone without)]\n"
    "                         [--allowed-origins ORIGIN (repeatable; * for any: CORS, so browser pages of\n"
    "                          these origins may call the API; default none)]\n"
    "                         [--chat-template FILE (default: the model folder's, from the coordinator)]\n"
    "                         [--trust-request-chat-template (vLLM's: render a request's own chat_template;\n"
    "                          without it such a request is refused)]\n"
    "                         [--tool-call-parser mistral (tool_choice \"auto\": answers starting with\n"
    "                          [TOOL_CALLS] become tool_calls)]\n"
    "                         [--api-key KEY (repeatable; default: $MOE_API_KEY if set): every endpoint but\n"
    "                          /health, /ping, /metrics, /version, TGI's /info and GET / then needs the header\n"
    "                          \"Authorization: Bearer KEY\", else 401]\n"
    "                         [--ssl-certfile CERT.pem --ssl-keyfile KEY.pem (both or neither: HTTPS only;\n"
    "                          the certificate chain, the server's first, and its unencrypted private key)]\n"
    "                         [--ssl-ca-certs CA.pem (with HTTPS: PEM roots for clients' certificates)]\n"
    "                         [--ssl-cert-reqs 0|1|2 (0 none, the default; 1 asked for and verified if given;\n"
    "                          2 required: mutual TLS)]\n"
    "Serves POST /v1/completions, /v1/chat/completions and /v1/responses (stream or whole; /invocations takes\n"
    "either of the first two; stored responses: GET and DELETE /v1/responses/{id}, GET .../input_items, POST\n"
    ".../cancel), POST /tokenize and /detokenize, GET /v1/models (and /v1/models/{name}), GET /health (and /ping),\n"
    "GET /metrics and GET /version, and Hugging Face TGI's POST /generate, /generate_stream, /chat_tokenize and /\n"
    "and GET /info, over the coordinator's gRPC API.\n";

int BadFlag(const std::string& message) {
  std::fprintf(stderr, "moe-openai-server: %s\n%s", message.c_str(), kUsage);
  return 2;
}

int Serve(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // taken by sigwait below; every thread inherits the mask
  std::signal(SIGPIPE, SIG_IGN);

  moe::RaiseOpenFileLimit();  // a descriptor per connection, and one per request that waits
  moe::openai::ServerOptions opts;
  const std::vector<std::string> args(argv + 1, argv + argc);
  for (size_t i = 0; i < args.size(); ++i) {
    const moe::FlagArg f = moe::SplitFlagArg(args[i]);
    if (f.name == "--help" || f.name == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (f.name == "--enable-prompt-tokens-details") {  // vLLM's; a switch, no value
      if (f.value) return BadFlag("--enable-prompt-tokens-details takes no value");
      opts.prompt_tokens_details = true;
      continue;
    }
    if (f.name == "--trust-request-chat-template") {  // vLLM's; a switch, no value
      if (f.value) return BadFlag("--trust-request-chat-template takes no value");
      opts.trust_request_chat_template = true;
      continue;
    }
    if (f.name != "--coordinator" && f.name != "--listen" && f.name != "--model-name" &&
        f.name != "--served-model-name" && f.name != "--threads" &&
        f.name != "--request-timeout-s" && f.name != "--access-log" && f.name != "--metrics-url" &&
        f.name != "--allowed-origins" &&
        f.name != "--chat-template" && f.name != "--tool-call-parser" && f.name != "--api-key" &&
        f.name != "--ssl-certfile" && f.name != "--ssl-keyfile" && f.name != "--ssl-ca-certs" &&
        f.name != "--ssl-cert-reqs" && f.name != "--responses-store") {
      return BadFlag("unknown flag '" + args[i] + "'");
    }
    std::string value;
    if (f.value) {
      value = *f.value;
    } else if (i + 1 < args.size()) {
      value = args[++i];
    } else {
      return BadFlag(f.name + ": needs a value");
    }
    if (f.name == "--coordinator") {
      opts.coordinator = value;
    } else if (f.name == "--listen") {
      opts.listen = value;
    } else if (f.name == "--model-name" || f.name == "--served-model-name") {
      if (value.empty()) return BadFlag(f.name + ": empty");
      opts.model_names.push_back(value);
      // vLLM's --served-model-name takes several names: the arguments up to the next flag.
      while (f.name == "--served-model-name" && !f.value && i + 1 < args.size() && !args[i + 1].starts_with("-")) {
        opts.model_names.push_back(args[++i]);
      }
    } else if (f.name == "--chat-template") {
      opts.chat_template_file = value;
    } else if (f.name == "--tool-call-parser") {
      opts.tool_call_parser = value;
    } else if (f.name == "--api-key") {
      if (value.empty()) return BadFlag("--api-key: empty (a key is at least one character)");
      opts.api_keys.push_back(value);
    } else if (f.name == "--ssl-certfile" || f.name == "--ssl-keyfile" || f.name == "--ssl-ca-certs") {
      if (value.empty()) return BadFlag(f.name + ": empty path");
      (f.name == "--ssl-certfile" ? opts.https.certfile
                                  : f.name == "--ssl-keyfile" ? opts.https.keyfile : opts.https.ca_certs) = value;
    } else if (f.name == "--ssl-cert-reqs") {
      if (!absl::SimpleAtoi(value, &opts.https.cert_reqs)) {
        return BadFlag("--ssl-cert-reqs: expected 0, 1 or 2, got '" + value + "'");
      }
    } else if (f.name == "--allowed-origins") {
      opts.allowed_origins.push_back(value);
    } else if (f.name == "--metrics-url") {
      opts.metrics_url = value;
    } else if (f.name == "--access-log") {
      opts.access_log = value;
    } else if (f.name == "--responses-store") {
      int64_t n = 0;
      if (!absl::SimpleAtoi(value, &n) || n < 0 || n > 10'000'000) {
        return BadFlag("--responses-store: expected a count of responses from 0 to 10000000, got '" + value + "'");
      }
      opts.responses_store = static_cast<size_t>(n);
    } else if (f.name == "--request-timeout-s") {
      if (!absl::SimpleAtod(value, &opts.request_timeout_s) || !(opts.request_timeout_s >= 0.001) ||
          opts.request_timeout_s > 86400) {
        return BadFlag("--request-timeout-s: expected seconds in [0.001, 86400], got '" + value + "'");
      }
    } else if (!absl::SimpleAtoi(value, &opts.threads) || opts.threads < 1) {
      return BadFlag("--threads: expected a positive integer, got '" + value + "'");
    }
  }
  // vLLM reads VLLM_API_KEY the same way: a key kept off the command line (and out of `ps`).
  const char* env_key = std::getenv(moe::kApiKeyEnv);
  if (opts.api_keys.empty() && env_key != nullptr && *env_key != '\0') opts.api_keys.push_back(env_key);
  if (opts.coordinator.empty()) return BadFlag("--coordinator: required (HOST:PORT of the coordinator's public API)");
  if (absl::Status https = moe::openai::CheckHttpsFlags(opts.https); !https.ok()) {
    return BadFlag(std::string(https.message()));
  }

  absl::StatusOr<std::unique_ptr<moe::openai::OpenAiServer>> server = moe::openai::OpenAiServer::Start(opts);
  if (!server.ok()) {
    std::fprintf(stderr, "moe-openai-server: %s\n", std::string(server.status().message()).c_str());
    return 1;
  }
  if (!(*server)->chat_template_status().ok()) {
    std::fprintf(stderr, "moe-openai-server: warning: chat completions are refused: %s\n",
                 std::string((*server)->chat_template_status().message()).c_str());
  }
  std::printf("moe-openai-server: listening on port %d, model %s, coordinator %s%s%s\n", (*server)->port(),
              (*server)->model_name().c_str(), opts.coordinator.c_str(), (*server)->https() ? ", HTTPS only" : "",
              opts.api_keys.empty() ? "" : ", API key required");
  std::fflush(stdout);
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "moe-openai-server: %s received, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  server->reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) { moe::EndProcess(Serve(argc, argv)); }  // common/process_exit.h
