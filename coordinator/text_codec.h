// The model's tokenizer as the coordinator uses it: encoding, decoding, incremental detokenisation
// and the vocabulary's texts (worker/tokenizer.h behind an interface, so the coordinator's code
// depends on what it needs of a tokenizer only).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "common/text_span.h"
#include "worker/tokenizer_file.h"

namespace moe {

// Incremental detokenisation of one sequence (StreamingDetokenizer semantics).
class TextStream {
 public:
  virtual ~TextStream() = default;
  virtual std::string Push(int32_t id) = 0;
  virtual std::string Flush() = 0;
};

// Tokenizer semantics (worker/tokenizer.h). Decode expects ids inside [0, vocab_size()).
class TextCodec {
 public:
  virtual ~TextCodec() = default;
  // BOS/EOS per config. `spans`, when given, gets each id's bytes of `text` (Tokenizer::Encode).
  virtual std::vector<int32_t> Encode(std::string_view text, std::vector<TextSpan>* spans = nullptr) const = 0;
  // No BOS/EOS added; `spans` as Encode's.
  virtual std::vector<int32_t> EncodeWithSpecialTokens(std::string_view text,
                                                       std::vector<TextSpan>* spans = nullptr) const = 0;
  virtual std::string Piece(int32_t id) const = 0;  // the vocabulary's text of `id`, e.g. "<s>"
  virtual std::vector<std::string> TokenTexts() const = 0;  // per id, the bytes it adds to a text
                                                            // (Tokenizer::TokenTexts)
  virtual std::string TokenBytes(int32_t id) const = 0;    // one of them
  // `skip_special_tokens` false: control and unknown tokens as their pieces' texts (Tokenizer::Decode).
  virtual std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = true) const = 0;
  // At least Decode(ids)'s size, counted without decoding (Tokenizer::DecodedSizeBound).
  virtual size_t DecodedSizeBound(std::span<const int32_t> ids) const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual bool add_bos() const = 0;
  virtual bool add_eos() const = 0;
  // The most bytes of text one token stands for (the longest piece or added token, or an unknown
  // token's character, 4 bytes at most): a text of N bytes encodes to at least
  // N / max_token_bytes() tokens, where runs of spaces count as one byte if collapses_spaces()
  // (normalising only lengthens text, but for that).
  virtual size_t max_token_bytes() const = 0;
  virtual bool collapses_spaces() const = 0;  // tokenizer.model's remove_extra_whitespaces
  // A detokenizer for text generated after `prompt_ids`; must not outlive this codec.
  virtual std::unique_ptr<TextStream> NewStream(std::span<const int32_t> prompt_ids,
                                                bool skip_special_tokens = true) const = 0;
};

// Loads DIR's tokenizer (Tokenizer::Load: tokenizer.json or tokenizer.model as `file` says).
// NotFound when DIR has no such file; other errors name the tokenizer file.
absl::StatusOr<std::shared_ptr<const TextCodec>> LoadTextCodec(const std::string& model_dir,
                                                               TokenizerFile file = TokenizerFile::kAuto);

}  // namespace moe
