// The expert load a balanced placement plan is made from (moe-coordinator --expert-load FILE):
// what GetStats reported on an earlier run of the same model, as `moe-client stats` prints it (or
// any JSON form of the Stats message: the Python client's, proto3's camelCase names, int64 counts as
// strings or numbers). Its layers' expert_tokens (token-slots routed to each expert since the
// cluster started) are the load; nothing else of it is read.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "worker/model/config.h"

namespace moe {

// expert_tokens[layer][expert] of the file at `path`, as numbers. InvalidArgument names the file
// and what is wrong: unreadable, not JSON of a Stats message, not one entry per layer of `config` in order, not
// one count per expert, no tokens at all (the run served nothing).
absl::StatusOr<std::vector<std::vector<double>>> ReadExpertLoad(const std::string& path, const ModelConfig& config);

}  // namespace moe
