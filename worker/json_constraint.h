// Constrained generation of one JSON object (OpenAI's response_format {"type": "json_object"}):
// at every step the tokens whose text would make the output something no JSON object starts with
// are masked out (-inf); once the object is closed only the end ids remain (whitespace too when
// there are none: ignore_eos without stop token ids).
//
// The vocabulary's texts are the coordinator's (TextCodec::TokenTexts, sent to every rank at
// registration): the bytes each id adds to the output. A trie of them is walked once a step with
// the grammar state copied down each branch, so a step costs one grammar byte per trie node the
// state can reach, not one per byte of every token.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "worker/json_grammar.h"

namespace moe {

class TokenTextTrie {
 public:
  // texts[id]: the bytes token `id` adds to the text; empty for a token with no text (control
  // tokens: BOS, EOS, unknown), which the walk never reaches.
  explicit TokenTextTrie(const std::vector<std::string>& texts);

  int64_t vocab_size() const { return vocab_size_; }
  const std::string& text(int32_t id) const { return texts_[static_cast<size_t>(id)]; }

  // allowed[id] = 1 for every token whose whole text `start` accepts; others left as they are.
  void MarkAccepted(const JsonObjectGrammar& start, std::vector<uint8_t>& allowed) const;

 private:
  // Node n's children are nodes child_begin_[n] .. child_begin_[n + 1] - 1 (each reached by byte_[],
  // in increasing byte order); the tokens that end at n are ids_[id_begin_[n] .. id_begin_[n + 1]).
  std::vector<int32_t> child_begin_, id_begin_, ids_;
  std::vector<uint8_t> byte_;
  std::vector<std::string> texts_;
  int64_t vocab_size_ = 0;
};

class JsonObjectConstraint {
 public:
  // `vocab` must outlive this object; `end_ids` end the output (EOS unless ignore_eos, and the
  // request's stop token ids).
  JsonObjectConstraint(const TokenTextTrie& vocab, std::vector<int32_t> end_ids);

  // Sets every token that cannot come next to -inf. Returns false when none can: the vocabulary has
  // no token for the bytes the object needs, or (Complete(), no end ids) the whitespace allowed
  // after it is used up. The row is then left as it was.
  bool Apply(std::span<float> logits);
  // The token just generated (one Apply allowed).
  void Add(int32_t token);
  bool Complete() const { return grammar_.Complete(); }

 private:
  const TokenTextTrie& vocab_;
  std::vector<int32_t> end_ids_;
  JsonObjectGrammar grammar_;
  std::vector<uint8_t> allowed_;  // Apply's scratch, one byte per id
};

}  // namespace moe
