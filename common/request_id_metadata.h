// The initial metadata the coordinator's Generate sends once it has accepted a request (validated
// and queued), before any message: the request's id. A client learns from it that a refusal can no
// longer come (errors after it end the stream, as they would mid-answer); the OpenAI front starts
// its HTTP answer then, not at the first token, which a queued request may wait for.
#pragma once

namespace moe {

inline constexpr char kRequestIdMetadata[] = "moe-request-id";

}  // namespace moe
