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
};

// From MOE_API_KEY, MOE_TLS_CA_FILE (read here: an error names the variable and the file) and
// MOE_TLS_SERVER_NAME.
absl::StatusOr<ChannelSecurity> SecurityFromEnv();

// The PEM root certificates in `path`, for ChannelSecurity::tls_ca_pem; InvalidArgument starting
// with `source` (the flag or variable that named the file) when it cannot be read or holds none.
absl::StatusOr<std::string> ReadCaFile(const std::string& path, const std::string& source);

// A channel to `target` with `args` and `security`.
std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, const grpc::ChannelArguments& args,
                                          const ChannelSecurity& security);

// MOE_API_KEY from the environment, or "".
std::string ApiKeyFromEnv();

}  // namespace moe::client
