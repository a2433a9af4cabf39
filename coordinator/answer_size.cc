#include "coordinator/answer_size.h"

#include <google/protobuf/io/coded_stream.h>

#include "absl/strings/str_cat.h"

namespace moe {
namespace {

using google::protobuf::io::CodedOutputStream;

constexpr size_t kTagBytes = 1;  // field numbers below 16

size_t LengthDelimited(size_t payload) { return kTagBytes + CodedOutputStream::VarintSize64(payload) + payload; }

size_t Uint32Field(uint32_t v) { return v == 0 ? 0 : kTagBytes + CodedOutputStream::VarintSize32(v); }  // proto3: 0 is not sent

}  // namespace

absl::Status CheckAnswerFits(size_t bytes, const std::string& field, const std::string& what, const std::string& advice) {
  if (bytes <= kMaxMessageBytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(field, ": ", what, " take ", bytes, " bytes, more than the ",
                                                   kMaxMessageBytes, " (256 MiB) the coordinator sends in one message; ",
                                                   advice));
}

size_t TokenIdsBytes(std::span<const int32_t> ids) {
  if (ids.empty()) return 0;
  size_t payload = 0;  // packed
  for (int32_t id : ids) payload += CodedOutputStream::VarintSize32SignExtended(id);
  return LengthDelimited(payload);
}

size_t OffsetsBytes(std::span<const TextSpan> offsets) {
  size_t bytes = 0;
  for (const TextSpan& s : offsets) {
    bytes += LengthDelimited(Uint32Field(static_cast<uint32_t>(s.begin)) + Uint32Field(static_cast<uint32_t>(s.end)));
  }
  return bytes;
}

size_t StringFieldBytes(size_t bytes) { return LengthDelimited(bytes); }

}  // namespace moe
