// The initial metadata the coordinator's Generate sends once it has accepted a request (validated
// and queued), before any message: the request's id. A client learns from it that a refusal can no
// longer come (errors after it end the stream, as they would mid-answer); the OpenAI front starts
// its HTTP answer then, not at the first token, which a queued request may wait for.
// A binary key ("-bin": gRPC base64-encodes it on the wire): the id is the client's and may hold
// any bytes, where a plain metadata value must be printable ASCII (gRPC 1.51 aborts the process on
// another, and a request id "café" did so).
#pragma once

namespace moe {

inline constexpr char kRequestIdMetadata[] = "moe-request-id-bin";

}  // namespace moe
