// A SentencePiece BPE model (tokenizer.model) read and run without libsentencepiece: the file's
// protobuf is parsed by hand (the few fields a BPE model needs), and encoding and decoding follow
// SentencePiece 0.1.97's own rules, so ids and texts are the library's (tokenizer_test checks them
// against its Python binding on the Mistral v1 and v3 and the default model's vocabularies).
//
// Why not the library: it bundles its own protobuf-lite, which cannot share a process with gRPC's
// protobuf (the coordinator loaded it as a plugin, RTLD_DEEPBIND), and on the lent GPU machines
// (Ubuntu 24.04) the Debian build crashes in its initialiser, so no coordinator with a tokenizer
// could run there.
//
// Supported: model_type BPE with byte fallback or not, the identity normaliser (no
// precompiled_charsmap), add_dummy_prefix, remove_extra_whitespaces, whitespace as "▁" prefixes,
// user-defined pieces (kept whole), control, unknown and byte pieces. Anything else (unigram
// models, NFKC character maps, unused pieces, whitespace as suffix) is refused when loading, naming
// what.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
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

  // Errors name the file: unreadable, not a model, or a feature outside the supported set.
  static absl::StatusOr<std::unique_ptr<SentencePieceBpe>> Load(const std::string& path);
  // The same from the file's bytes; `name` is what errors call it.
  static absl::StatusOr<std::unique_ptr<SentencePieceBpe>> Parse(std::string_view bytes, const std::string& name);

  // Text to ids (no BOS/EOS): normalised (spaces as "▁", a "▁" before the text), split into
  // characters (user-defined pieces whole), merged pairwise by piece score, pieces outside the
  // vocabulary as their bytes (byte fallback) or unknown.
  // `dummy_prefix` false: no "▁" before the text even where the model adds one (a part of a text
  // after a special token, as non-legacy Hugging Face tokenizers encode it).
  // `spans`, when given, gets each id's bytes of `text` as Hugging Face tokenizers' offsets place
  // them: a piece the characters it covers (the dummy prefix's "▁" counts as the text's first
  // character; a space its "▁"), each byte-fallback id of a character the whole character.
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

  int32_t size() const { return static_cast<int32_t>(pieces_.size()); }
  const std::string& piece(int32_t id) const { return pieces_[static_cast<size_t>(id)].text; }
  Type type(int32_t id) const { return pieces_[static_cast<size_t>(id)].type; }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  int32_t unk_id() const { return unk_id_; }

 private:
  struct Piece {
    std::string text;
    float score = 0;
    Type type = Type::kNormal;
    int16_t byte = -1;  // a byte piece's value
  };
  SentencePieceBpe() = default;
  absl::Status Init(const std::string& name);
  // `origin`, when given, gets per byte of the result the bytes of `text` it stands for (the whole
  // character; the dummy prefix's "▁" the first character's).
  std::string Normalize(std::string_view text, bool dummy_prefix, std::vector<TextSpan>* origin = nullptr) const;
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
  int32_t unk_id_ = 0, bos_id_ = 1, eos_id_ = 2;
  std::string unk_surface_ = " \xE2\x81\x87 ";
};

}  // namespace moe
