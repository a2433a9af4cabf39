// The most one gRPC message to or from the coordinator may take, and the tokeniser answers' sizes
// counted before they are built. gRPC refuses an oversized answer only once it is built and
// serialised ("Sent message larger than max"): a Detokenize of 30 M ids with pieces had taken ~2 GB
// of the coordinator's memory to fail so, without naming what was too big.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/status.h"
#include "common/text_span.h"

namespace moe {

// Both ways (coordinator_server.cc): prompts and score batches can be large.
inline constexpr size_t kMaxMessageBytes = size_t{256} << 20;

// RESOURCE_EXHAUSTED "FIELD: WHAT take N bytes, more than ... ADVICE" when `bytes` exceeds kMaxMessageBytes.
absl::Status CheckAnswerFits(size_t bytes, const std::string& field, const std::string& what, const std::string& advice);

// The serialised size of a TokenizeResponse of `ids` and (none if empty) `offsets`.
size_t TokenIdsBytes(std::span<const int32_t> ids);
size_t OffsetsBytes(std::span<const TextSpan> offsets);

// The serialised size of a string field of `bytes` bytes, one of a repeated string field's entries too.
size_t StringFieldBytes(size_t bytes);

}  // namespace moe
