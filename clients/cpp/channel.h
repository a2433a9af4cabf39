// The channel every client of the coordinator's public API opens (moe-client, moe-serve-bench,
// moe-openai-server): with MOE_API_KEY in the environment, each call carries it as metadata
// "authorization: Bearer <key>" (a client interceptor, so no call site can forget it), as a
// coordinator started with the same MOE_API_KEY requires. With MOE_TLS_CA_FILE (PEM root
// certificates) the channel is TLS, verifying the coordinator's certificate (moe-coordinator
// --tls-cert-file) against them, for the target's host name or MOE_TLS_SERVER_NAME when set.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/support/channel_arguments.h>

#include "common/status.h"

namespace moe::client {

// How a client reaches the coordinator's public API.
struct ChannelSecurity {
  std::string api_key;          // not empty: sent with every call
  std::string tls_ca_pem;       // not empty: TLS, the server's certificate verified against these roots
  std::string tls_server_name;  // not empty: the name the certificate must carry (else the target's host)
  // Not empty (with tls_ca_pem): the certificate chain and key this client shows a server that
  // asks for one (mutual TLS; a worker to moe-coordinator --cluster-tls-client-ca-file).
  std::string tls_cert_pem, tls_key_pem;
};

// From MOE_API_KEY, MOE_TLS_CA_FILE (read here: an error names the variable and the file) and
// MOE_TLS_SERVER_NAME.
absl::StatusOr<ChannelSecurity> SecurityFromEnv();

// A channel to `target` with `args` and `security`.
std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, const grpc::ChannelArguments& args,
                                          const ChannelSecurity& security);

// MOE_API_KEY from the environment, or "".
std::string ApiKeyFromEnv();

}  // namespace moe::client
