// Shared secrets in requests (an API key, the cluster token): compared so that the time taken
// says nothing about how much of the secret a guess got right.
#pragma once

#include <string>
#include <string_view>

namespace moe {

// True when `given` equals `secret`; the time depends on their lengths only.
inline bool SecretMatches(std::string_view given, std::string_view secret) {
  unsigned char diff = given.size() == secret.size() ? 0 : 1;
  for (size_t i = 0; i < secret.size(); ++i) {
    diff |= static_cast<unsigned char>(secret[i] ^ (i < given.size() ? given[i] : 0));
  }
  return diff == 0;
}

// The gRPC metadata key the worker ranks send the cluster token under (lower case, as gRPC
// requires), and the environment variable both sides read it from (deploy/launch-cluster.sh makes
// one per launch and gives it to the coordinator and, through mpirun -x, to every rank).
inline constexpr char kClusterTokenMetadata[] = "moe-cluster-token";
inline constexpr char kClusterTokenEnv[] = "MOE_CLUSTER_TOKEN";

}  // namespace moe
