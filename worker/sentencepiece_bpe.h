// A SentencePiece-style BPE model (spaces as "▁", byte-fallback pieces), read without
// libsentencepiece or Hugging Face tokenizers from either file a Mistral-family checkpoint ships:
//
// - tokenizer.model (Load / Parse): the protobuf is parsed by hand (the few fields a BPE model
//   needs), and encoding and decoding follow SentencePiece 0.1.97's own rules: pairs merge by the
//   merged piece's score, so ids and texts are the library's (tokenizer_test checks them against its
//   Python binding on the Mistral v1 and v3 and the default model's vocabularies).
// - tokenizer.json (LoadTokenizerJson / ParseTokenizerJson): what vLLM's and TGI's fast tokenizers
//   read. Pairs merge by their rank in the file's merges (lowest first, leftmost among equals, as
//   Hugging Face tokenizers' BPE does); the normaliser and pre-tokenizer decide where a "▁" is
//   prepended and whether words split at spaces; the added tokens (past the base vocabulary too, a
//   fine-tune's ChatML tokens) are listed for Tokenizer to split the text at (tokenizer_test checks
//   ids, offsets and texts against Hugging Face tokenizers on the files in tests/data/tokenizers).
//   The two files of one model can encode a text differently: transformers 5 ranks merges by the
//   merged piece's id, so "▁" "▁" merges first and "a  b" is "▁a" "▁▁" "b", where SentencePiece
//   (and the score-ranked tokenizer.json of Mixtral 8x7B) gives "▁a" "▁" "▁b".
//
// Why not the libraries: libsentencepiece bundles its own protobuf-lite, which cannot share a process
// with gRPC's protobuf (the coordinator loaded it as a plugin, RTLD_DEEPBIND), and on the lent GPU
// machines (Ubuntu 24.04) the Debian build crashes in its initialiser; Hugging Face tokenizers is
// Rust.
//
// Supported from tokenizer.model: model_type BPE with byte fallback or not, the identity normaliser
// (no precompiled_charsmap), add_dummy_prefix, remove_extra_whitespaces, whitespace as "▁" prefixes,
// user-defined pieces (kept whole), control, unknown and byte pieces. Anything else (unigram models,
// NFKC character maps, unused pieces, whitespace as suffix) is refused when loading, naming what.
// From tokenizer.json: a BPE model with byte_fallback (fuse_unk, ignore_merges; no dropout or
// subword affixes), a normaliser of Prepend "▁" and Replace " " -> "▁", a Metaspace pre-tokenizer
// (either spelling of its prepend rule, split or not), the decoder Replace "▁" -> " ", ByteFallback,
// Fuse and Strip of one leading space or none (what transformers writes); added tokens without
// lstrip, rstrip or single_word, "normalized" ones only without a normaliser. Others (ByteLevel
// files: Llama 3, Mistral's Tekken) are refused naming the field.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "common/text_span.h"

namespace moe {

class SentencePieceBpe {
 public:
  enum class Type : uint8_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

  // A token of tokenizer.json's added_tokens: split out of a text before the rest is encoded (the
  // special ones only where special tokens are parsed; see Tokenizer).
  struct AddedToken {
    std::string text;
    int32_t id;
    bool special;
    bool normalized;  // matched in a second pass, in the text between the others (Hugging Face's order)
  };
  // What tokenizer.json's post-processor (TemplateProcessing) puts around a text.
  struct Template {
    bool bos = false;
    bool eos = false;
  };

  // Errors name the file: unreadable, not a model, or a feature outside the supported set.
  static absl::StatusOr<std::unique_ptr<SentencePieceBpe>> Load(const std::string& path);
  // The same from the file's bytes; `name` is what errors call it.
  static absl::StatusOr<std::unique_ptr<SentencePieceBpe>> Parse(std::string_view bytes, const std::string& name);
  // A Hugging Face tokenizer.json; `bos_token` and `eos_token` are the texts of BOS and EOS
  // (tokenizer_config.json's), which must be tokens of the file. Errors as Load's (worker/tokenizer_json.cc).
  static absl::StatusOr<std::unique_ptr<SentencePieceBpe>> LoadTokenizerJson(const std::string& path,
                                                                             std::string_view bos_token = "<s>",
                                                                             std::string_view eos_token = "</s>");
  static absl::StatusOr<std::unique_ptr<SentencePieceBpe>> ParseTokenizerJson(std::string_view text,
                                                                              const std::string& name,
                                                                              std::string_view bos_token = "<s>",
                                                                              std::string_view eos_token = "</s>");

  // Text to ids (no BOS/EOS, no added tokens split out): normalised (spaces as "▁", a "▁" before
  // the text), split into characters (user-defined pieces whole), merged pairwise by piece score
  // (tokenizer.json: by pair rank, within each word where the pre-tokenizer splits), pieces
  // outside the vocabulary as their bytes (byte fallback) or unknown.
  // `dummy_prefix` false: no "▁" before the text even where the model adds one (a part of a text
  // after a special token, as non-legacy Hugging Face tokenizers encode it). A tokenizer.json's
  // Metaspace prepends none to a text that starts with a space either.
  // `spans`, when given, gets each id's bytes of `text` appended, as Hugging Face tokenizers'
  // offsets place them: a piece the characters it covers (the dummy prefix's "▁" counts as the
  // text's first character; a space its "▁"), each byte-fallback id of a character the whole
  // character. Spans need `text` under 4 GiB.
  std::vector<int32_t> Encode(std::string_view text, bool dummy_prefix = true, std::vector<TextSpan>* spans = nullptr) const;
  // Ids to text: control pieces add nothing, the unknown piece " ⁇ ", byte pieces their bytes (a
  // byte that does not complete a valid UTF-8 character becomes U+FFFD), "▁" a space; the text's
  // first "▁" is dropped (the dummy prefix). `skip_special` false: control and unknown pieces add
  // their piece's text ("<s>", "[INST]", "<unk>"), as Hugging Face tokenizers decode with
  // skip_special_tokens=False. Ids must be in [0, size()).
  std::string Decode(std::span<const int32_t> ids, bool skip_special = true) const;

  // The bytes `id` adds to a text after other text: "▁" as a space, a byte piece as its byte,
  // nothing for control, unknown and unused pieces.
  std::string TokenText(int32_t id) const;
  // The most bytes `id` adds to any Decode, skipping special pieces or not: a byte piece at most
  // U+FFFD's 3, the unknown piece its surface (" \xE2\x81\x87 ", or the model's) or its text, any other
  // its text (a "\xE2\x96\x81" of it decodes to one space, so this may count more, never less).
  size_t DecodedSizeBound(int32_t id) const;

  // tokenizer.json's added tokens, longest first; empty for tokenizer.model.
  const std::vector<AddedToken>& added_tokens() const { return added_; }
  // Whether the model came from a tokenizer.json.
  bool from_tokenizer_json() const { return json_.has_value(); }
  // tokenizer.json: whether every part of a text between added tokens gets the "▁" prefix (the
  // Prepend normaliser, Metaspace "always"), not only a text's first part (Metaspace "first").
  bool PrefixesEveryPart() const { return json_.has_value() && json_->prefix_every_part; }
  // tokenizer.json: the post-processor's BOS and EOS, when it is a TemplateProcessing.
  std::optional<Template> post_processor() const { return json_.has_value() ? json_->post : std::nullopt; }

  int32_t size() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& piece(int32_t id) const { return pieces_[static_cast<size_t>(id)].text; }
  Type type(int32_t id) const { return pieces_[static_cast<size_t>(id)].type; }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  // The id of the piece whose text is `text`, or nullopt.
  std::optional<int32_t> PieceId(std::string_view text) const;
  // BOS and EOS named apart from the model's own (a slow tokenizer's tokenizer_config.json).
  void SetBosEos(int32_t bos, int32_t eos) {
    bos_id_ = bos;
    eos_id_ = eos;
  }
  int32_t unk_id() const { return unk_id_; }
  // Whether normalising collapses runs of spaces into one (tokenizer.model's remove_extra_whitespaces).
  bool collapses_spaces() const { return remove_extra_whitespaces_; }

 private:
  struct Piece {
    std::string text;
    float score = 0;
    Type type = Type::kNormal;
    int16_t byte = -1;  // a byte piece's value
    bool added_only = false;  // tokenizer.json: an added token outside model.vocab, which its BPE never makes
  };
  // How a tokenizer.json encodes, where it differs from SentencePiece.
  struct JsonRules {
    // PairKey(left id, right id) -> the merge's rank and the merged token's id.
    struct Merge {
      int32_t rank;
      int32_t id;
    };
    static uint64_t PairKey(int32_t left, int32_t right) {
      return static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32 | static_cast<uint32_t>(right);
    }
    std::unordered_map<uint64_t, Merge> merges;
    bool prefix_unless_space = false;  // Metaspace: no "▁" prepended to a text starting with one
    bool prefix_every_part = true;
    bool split_at_space = false;       // Metaspace split: each word (from a "▁" on) merged alone
    bool ignore_merges = false;        // a word in the vocabulary is its token
    bool fuse_unk = false;
    bool unk_special = false;  // the unknown token is a special added token (skipped in decoding)
    std::optional<Template> post;
  };

  SentencePieceBpe() = default;
  absl::Status Init(const std::string& name);
  // A byte-fallback piece's byte: "<0xNN>" with exactly two hex digits, or nothing. (sscanf's "%2X"
  // also took "<0x-4>", a byte of 0xFFFFFFFC that indexed past byte_ids_.)
  static std::optional<uint8_t> BytePieceValue(std::string_view text);
  // Per byte of a normalised text, where in the text encoded it came from: the start of the
  // character it stands for, 4 bytes a byte (the character's end follows from the text). A TextSpan
  // a byte, kept three times over while normalising, took a 20 MB text's offsets to 1.2 GB.
  class Origin {
   public:
    explicit Origin(std::string_view text) : text_(text) {}
    void Add(size_t bytes, size_t char_begin);  // the next `bytes` normalised bytes; text under 4 GiB
    TextSpan Span(size_t first, size_t last) const;  // what normalised bytes [first, last] stand for
   private:
    std::string_view text_;
    std::vector<uint32_t> starts_;
  };
  // tokenizer.json's BPE over `normalized`: per word, characters (each as its bytes' pieces, or
  // unknown, where the vocabulary lacks it) merged by pair rank.
  std::vector<int32_t> EncodeByPairRank(std::string_view normalized, const Origin& origin,
                                        std::vector<TextSpan>* spans) const;
  // Buffers EncodeByScore reuses from word to word.
  struct ScoreScratch {
    struct Symbol {
      size_t begin, len;
      int prev, next;
      bool freeze;  // a user-defined piece, never merged
    };
    struct Pair {
      float score;
      int left, right;
      size_t size;
    };
    std::vector<Symbol> symbols;
    std::vector<Pair> agenda;
  };
  // tokenizer.model's BPE over normalized[word_begin, word_end): characters (user-defined pieces
  // whole) merged by the merged piece's score; appends to `ids` (and `spans`).
  void EncodeByScore(std::string_view normalized, size_t word_begin, size_t word_end, const Origin& origin,
                     std::vector<int32_t>& ids, std::vector<TextSpan>* spans, ScoreScratch& scratch) const;
  // Where the word from `begin` ends: at the next "▁" after another character, where no merge can
  // cross (merges_stay_in_words_), else at the end of the text. Encoding word by word bounds the
  // merge agenda by a word, not the text (a 16 MiB text took 0.9 GB and 13 s whole).
  size_t WordEnd(std::string_view normalized, size_t begin) const;
  // `origin`, when given, gets per byte of the result the character of `text` it stands for (the
  // dummy prefix's "▁" the first character's).
  std::string Normalize(std::string_view text, bool dummy_prefix, Origin* origin = nullptr) const;
  // Appends `piece` with each "▁" as a space.
  static void AppendSurface(std::string_view piece, std::string& out);
  // Length of the user-defined piece `s` starts with (longest), or 0.
  size_t UserDefinedPrefix(std::string_view s) const;

  // Looked up by string_view without building a string (the merge loop asks for every pair).
  struct TextHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using PieceMap = std::unordered_map<std::string, int32_t, TextHash, std::equal_to<>>;

  std::vector<Piece> pieces_;
  PieceMap mergeable_;  // normal and user-defined pieces by text
  PieceMap reserved_;   // the others (control, unknown, byte)
  std::vector<std::string> user_defined_;               // longest first
  int32_t byte_ids_[256];                               // byte fallback: "<0xNN>"'s id, or -1
  bool byte_fallback_ = false;
  bool add_dummy_prefix_ = true;
  bool remove_extra_whitespaces_ = true;
  bool merges_stay_in_words_ = false;  // no piece has a "▁" after another character (WordEnd)
  bool strip_first_space_ = true;  // Decode drops the text's first "▁" (tokenizer.json: its decoder's Strip)
  std::optional<JsonRules> json_;  // set when read from a tokenizer.json
  std::vector<AddedToken> added_;
  int32_t unk_id_ = 0, bos_id_ = 1, eos_id_ = 2;
  std::string unk_surface_ = " \xE2\x81\x87 ";
};

}  // namespace moe
