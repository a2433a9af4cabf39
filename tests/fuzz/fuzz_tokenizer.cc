// Fuzz target: the tokenizers on client text and client ids. The first byte picks the tokenizer
// (the default model's tokenizer.model, Mistral's v3 tokenizer.json) and the operation: encoding a
// text (plain, with special tokens, with offsets), or decoding the rest as little-endian int32 ids
// (whole, skipping special tokens or not, and streamed id by id as generation decodes). Ids outside
// the vocabulary are what the coordinator refuses before decoding (validation.h CheckTokenIds), so
// they are taken modulo its size.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <stdlib.h>
#include <unistd.h>

#include "coordinator/text_codec.h"

namespace {

// The default model's folder; Mistral's v3 tokenizer.json through a folder of its own (a link in a
// temporary directory), as LoadTextCodec reads a model folder.
const moe::TextCodec& Codec(int which) {
  static const std::shared_ptr<const moe::TextCodec>* codecs = [] {
    char tmp[] = "/tmp/fuzz_tokenizer.XXXXXX";
    if (mkdtemp(tmp) == nullptr) std::abort();
    const std::string json = std::string(MOE_SOURCE_DIR) + "/tests/data/tokenizers/mistral-v3.tokenizer.json";
    if (symlink(json.c_str(), (std::string(tmp) + "/tokenizer.json").c_str()) != 0) std::abort();
    auto* c = new std::shared_ptr<const moe::TextCodec>[2];
    for (int i = 0; i < 2; ++i) {
      absl::StatusOr<std::shared_ptr<const moe::TextCodec>> loaded =
          moe::LoadTextCodec(i == 0 ? std::string(MOE_SOURCE_DIR) + "/models/shakespeare-moe" : std::string(tmp));
      if (!loaded.ok()) std::abort();  // the harness's own data: a broken checkout
      c[i] = *std::move(loaded);
    }
    unlink((std::string(tmp) + "/tokenizer.json").c_str());  // loaded: the folder is not needed again
    rmdir(tmp);
    return c;
  }();
  return *codecs[which];
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > 16 * 1024) return 0;
  const moe::TextCodec& codec = Codec(data[0] & 1);
  const std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  switch ((data[0] >> 1) % 3) {
    case 0: {
      std::vector<moe::TextSpan> spans;
      (void)codec.Encode(text, (data[0] & 8) ? &spans : nullptr);
      break;
    }
    case 1:
      (void)codec.EncodeWithSpecialTokens(text);
      break;
    default: {
      std::vector<int32_t> ids(text.size() / 4);
      for (size_t i = 0; i < ids.size(); ++i) {
        uint32_t v;
        std::memcpy(&v, text.data() + 4 * i, 4);
        ids[i] = static_cast<int32_t>(v % static_cast<uint32_t>(codec.vocab_size()));
      }
      const bool skip = (data[0] & 8) != 0;
      const std::string whole = codec.Decode(ids, skip);
      if (codec.DecodedSizeBound(ids) < codec.Decode(ids, false).size()) std::abort();  // the bound it promises
      const size_t prompt = ids.size() / 3;
      std::unique_ptr<moe::TextStream> stream =
          codec.NewStream(std::span<const int32_t>(ids.data(), prompt), skip);
      for (size_t i = prompt; i < ids.size(); ++i) (void)stream->Push(ids[i]);
      (void)stream->Flush();
      (void)whole;
      break;
    }
  }
  return 0;
}
