// Tokenisation for Mistral-family models (their tokenizer.json or SentencePiece tokenizer.model),
// and incremental detokenisation of generated ids into UTF-8 text deltas for streaming.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "worker/sentencepiece_bpe.h"
#include "worker/tokenizer_file.h"


namespace moe {

class Tokenizer {
 public:
  // Loads DIR's tokenizer file (`file`) and, when present, DIR/tokenizer_config.json for
  // add_bos_token (default: a tokenizer.json's post-processor's, else true, as for Mistral models),
  // add_eos_token (likewise, else false), legacy (tokenizer.model only, default true; see
  // EncodeWithSpecialTokens) and bos_token / eos_token (which of its tokens BOS and EOS are: a
  // tokenizer.json's, default "<s>" and "</s>"; a tokenizer.model's where given, as transformers'
  // slow tokenizer, else the model's own ids). A tokenizer.model's added tokens
  // (added_tokens_decoder, added_tokens.json) must be its own special pieces. TokenizerFile::kMistral
  // reads tokenizer.model as mistral-common does: its own BOS/EOS, no added tokens.
  // Errors name the offending file; a missing tokenizer file is NotFound.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& model_dir,
                                                         TokenizerFile file = TokenizerFile::kAuto);

  // Loads a tokenizer file directly (a tokenizer.json where the name ends in ".json", else a
  // SentencePiece model) with explicit BOS/EOS behaviour; `legacy` applies to SentencePiece models.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& model_path,
                                                           bool add_bos, bool add_eos = false, bool legacy = true);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Plain text to ids (no special-token parsing): BOS prepended when add_bos(), EOS appended
  // when add_eos(). A tokenizer.json's non-special added tokens are still split out (as Hugging
  // Face tokenizers do with special tokens encoded as text). `spans`, when given, gets each id's
  // bytes of `text` (Hugging Face tokenizers' offsets: SentencePieceBpe::Encode's; BOS and EOS
  // [0, 0)).
  std::vector<int32_t> Encode(std::string_view text, std::vector<TextSpan>* spans = nullptr) const;

  // Text in which special tokens may be written out (a rendered chat template: "<s>[INST] Hi
  // [/INST]"), to ids as Hugging Face tokenizers encode it: every control piece of the model (`<s>`,
  // `</s>`, and e.g. `[INST]` in Mistral's v3 vocabulary) and `<unk>` written in the text becomes its
  // id, longest first (a tokenizer.json's: every added token); the text between them is encoded
  // as Encode encodes a text but without adding BOS or EOS. Legacy tokenizers (Mixtral 8x7B's
  // tokenizer.json) give every part SentencePiece's leading "▁"; non-legacy ones
  // (tokenizer_config.json "legacy": false, Mistral's v3 Instruct models, or a tokenizer.json whose
  // Metaspace prepends to the first part only) only the text's start, so "[INST] Hi" is [INST]
  // "▁Hi", what mistral-common encodes.
  // `spans` as Encode's; a special token written in the text gets its text's bytes.
  std::vector<int32_t> EncodeWithSpecialTokens(std::string_view text, std::vector<TextSpan>* spans = nullptr) const;

  // Ids to text; control tokens (BOS/EOS) produce no text and incomplete byte-fallback
  // sequences become U+FFFD. `skip_special_tokens` false: control and unknown tokens appear as their
  // pieces' texts ("<s>", "[INST]"), as Hugging Face tokenizers decode with that flag (vLLM's
  // request field). Ids past the vocabulary (a model's embedding rows padded beyond its tokenizer)
  // add no text, as Hugging Face tokenizers decode them. Precondition: no negative id; throws
  // InternalError otherwise.
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens = true) const;

  // At least the bytes Decode(ids) gives, skipping special tokens or not, counted without decoding:
  // per id SentencePieceBpe::DecodedSizeBound (its piece's bytes; a byte piece U+FFFD's 3; the
  // unknown piece's surface), nothing past the vocabulary. Precondition: no negative id.
  size_t DecodedSizeBound(std::span<const int32_t> ids) const;

  // InvalidArgument naming the first id outside [0, vocab_size()) and its index.
  absl::Status CheckIds(std::span<const int32_t> ids) const;

  // The vocabulary's text of `id` ("<s>", "▁the"); "" for an id past it (a padded embedding row).
  // Precondition: id >= 0.
  std::string Piece(int32_t id) const;
  // Per id, the bytes it adds to a decoded text after other text: "▁" as a space, a byte-fallback
  // piece ("<0x0A>") as its byte, and nothing for control, unknown and unused pieces (constrained
  // generation masks tokens by these).
  std::vector<std::string> TokenTexts() const;
  std::string TokenBytes(int32_t id) const;  // TokenTexts' entry of `id`; "" past the vocabulary
  int32_t bos_id() const;
  int32_t eos_id() const;
  int32_t vocab_size() const;
  bool add_bos() const { return add_bos_; }
  bool add_eos() const { return add_eos_; }
  // Whether encoding collapses runs of spaces into one (SentencePieceBpe::collapses_spaces).
  bool collapses_spaces() const { return sp_->collapses_spaces(); }

 private:
  Tokenizer(std::unique_ptr<SentencePieceBpe> sp, bool add_bos, bool add_eos, bool legacy);

  // Tokens split out of a text before the parts between them are encoded.
  struct SplitToken {
    std::string text;
    int32_t id;
    bool special;  // split out only where special tokens are parsed
  };
  struct SplitSet {
    std::vector<SplitToken> tokens;  // longest text first
    std::array<bool, 256> starts{};  // by the first byte, to skip most positions at once
    void Add(const std::string& text, int32_t id, bool special);
  };

  // Appends the BPE pieces of `text` (none for an empty text), no BOS or EOS; with `spans`, their
  // bytes, `text` starting at byte `offset` of what is encoded.
  void AppendPieces(std::string_view text, std::vector<int32_t>& ids, bool dummy_prefix, std::vector<TextSpan>* spans,
                    size_t offset) const;
  // text[begin, end) with the tokens of `set` as their ids and the parts between them split by
  // `next` (when given) or encoded as AppendPieces does. The tokens are found leftmost, longest
  // first; a special one where special tokens are not parsed stays text (as Hugging Face
  // tokenizers' encode_special_tokens: a token of the same pass inside its text is not split out
  // either).
  void AppendSplit(std::string_view text, size_t begin, size_t end, const SplitSet& set, const SplitSet* next,
                   bool parse_special, std::vector<int32_t>& ids, std::vector<TextSpan>* spans) const;

  std::unique_ptr<SentencePieceBpe> sp_;
  // The special tokens (the control and unknown pieces; a tokenizer.json's added tokens, its
  // non-special ones split out of every text), in Hugging Face's two passes: first the tokens
  // matched in the text as written, then in the parts between them those matched in the normalised
  // text (a tokenizer.json's "normalized": true; its normaliser is none, so the text itself).
  SplitSet split_;
  SplitSet split_normalized_;
  bool add_bos_;
  bool add_eos_;
  bool legacy_;
};

// Turns a stream of generated ids into text deltas with the prefix-offset / read-offset scheme
// of serving systems: the text of ids[prefix_offset:read_offset] has already been emitted, and
// ids[prefix_offset:] is decoded again on each Push so that context-dependent decoding
// (SentencePiece's leading-space removal, byte-fallback sequences spanning several ids) comes
// out the same as decoding the whole sequence at once. One exception, a tokenizer.json's: a run of
// byte pieces that turns invalid after whole characters keeps the characters already sent, where
// Hugging Face's ByteFallback decodes the whole run as U+FFFD for every byte (holding every run
// back until it ends would delay each byte-fallback character, CJK text and emoji; vLLM's
// incremental detokenizer sends them as we do).
class StreamingDetokenizer {
 public:
  // prompt_ids precede the generated ids: their text is not emitted but gives the context.
  // `skip_special_tokens`: as Tokenizer::Decode's. `tok` must outlive this object.
  StreamingDetokenizer(const Tokenizer& tok, std::span<const int32_t> prompt_ids, bool skip_special_tokens = true);

  // Appends `id` and returns the newly completed text, possibly empty. The result never ends
  // inside a multi-byte UTF-8 character and holds back a trailing incomplete byte sequence
  // instead of emitting U+FFFD for it. Precondition: id >= 0 (one past the vocabulary adds nothing).
  std::string Push(int32_t id);

  // Returns whatever is still held back; call once at the end of generation.
  std::string Flush();

 private:
  // Text of ids_[begin:end].
  std::string DecodeRange(size_t begin, size_t end) const;

  const Tokenizer& tok_;
  bool skip_special_tokens_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_;
  size_t read_offset_;
};

}  // namespace moe
