// The channel every client of the coordinator's public API opens (moe-client, moe-serve-bench,
// moe-openai-server): with MOE_API_KEY in the environment, each call carries it as metadata
// "authorization: Bearer <key>" (a client interceptor, so no call site can forget it), as a
// coordinator started with the same MOE_API_KEY requires.
#pragma once

#include <memory>
#include <string>

#include <grpcpp/channel.h>
#include <grpcpp/support/channel_arguments.h>

namespace moe::client {

// An insecure channel to `target` with `args`; `api_key` not empty: sent with every call.
std::shared_ptr<grpc::Channel> NewChannel(const std::string& target, const grpc::ChannelArguments& args,
                                          const std::string& api_key);

// MOE_API_KEY from the environment, or "".
std::string ApiKeyFromEnv();

}  // namespace moe::client
