// Shared secrets in requests (an API key, the cluster token): compared so that the time taken
// says nothing about how much of the secret a guess got right.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace moe {

// True when `given` equals `secret`; the time depends on their lengths only.
inline bool SecretMatches(std::string_view given, std::string_view secret) {
  unsigned char diff = given.size() == secret.size() ? 0 : 1;
  for (size_t i = 0; i < secret.size(); ++i) {
    diff |= static_cast<unsigned char>(secret[i] ^ (i < given.size() ? given[i] : 0));
  }
  return diff == 0;
}

// "Bearer <key>" (an HTTP Authorization header, or gRPC's authorization metadata) with one of
// `keys`, each compared in constant time.
inline bool BearerMatches(std::string_view header, const std::vector<std::string>& keys) {
  constexpr std::string_view kScheme = "Bearer ";
  const std::string_view given = header.substr(0, kScheme.size()) == kScheme ? header.substr(kScheme.size())
                                                                             : std::string_view();
  bool match = false;
  for (const std::string& key : keys) match |= SecretMatches(given, key);
  return match;
}

// The API key of the cluster's front doors (vLLM's VLLM_API_KEY): with it in their environment the
// coordinator's public gRPC API and moe-openai-server require it, and the clients (moe-client,
// moe-serve-bench, the Python client, moe-openai-server towards the coordinator) send it, as gRPC
// metadata "authorization: Bearer <key>".
inline constexpr char kApiKeyEnv[] = "MOE_API_KEY";
inline constexpr char kAuthorizationMetadata[] = "authorization";
// The clients' TLS towards the public API (moe-coordinator --tls-cert-file): the PEM root
// certificates to verify the coordinator against, and optionally the name its certificate carries.
inline constexpr char kTlsCaFileEnv[] = "MOE_TLS_CA_FILE";
inline constexpr char kTlsServerNameEnv[] = "MOE_TLS_SERVER_NAME";

// The gRPC metadata key the worker ranks send the cluster token under (lower case, as gRPC
// requires), and the environment variable both sides read it from (deploy/launch-cluster.sh makes
// one per launch and gives it to the coordinator and, through mpirun -x, to every rank).
inline constexpr char kClusterTokenMetadata[] = "moe-cluster-token";
inline constexpr char kClusterTokenEnv[] = "MOE_CLUSTER_TOKEN";

}  // namespace moe
