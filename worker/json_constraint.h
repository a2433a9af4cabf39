// Constrained generation of one JSON value (OpenAI's response_format: {"type": "json_object"}, or
// {"type": "json_schema"} with a schema): at every step the tokens whose text would make the output
// something no admitted value starts with are masked out (-inf); the end ids are allowed once the
// value is complete, and once it is closed only they remain (whitespace too when there are none:
// ignore_eos without stop token ids).
//
// The vocabulary's texts are the coordinator's (TextCodec::TokenTexts, sent to every rank at
// registration): the bytes each id adds to the output. A trie of them is walked with the grammar
// state copied down each branch, so a mask costs one grammar byte per trie node the state can
// reach, not one per byte of every token; masks are cached by grammar state (JsonMaskCache), since
// every step inside a string value of a given container has the same state (benchmarks/NOTES.md,
// session 24: ~1.4 ms a walk inside a string with Mistral's 32,000 ids, ~20 us once cached).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "worker/json_grammar.h"
#include "worker/token_mask.h"

namespace moe {

class TokenTextTrie {
 public:
  // texts[id]: the bytes token `id` adds to the text; empty for a token with no text (control
  // tokens: BOS, EOS, unknown), which the walk never reaches.
  explicit TokenTextTrie(const std::vector<std::string>& texts);

  int64_t vocab_size() const { return vocab_size_; }
  const std::string& text(int32_t id) const { return texts_[static_cast<size_t>(id)]; }

  // Sets bit id of `accepted` (vocab_size() bits) for every token whose whole text `start` accepts;
  // others left as they are.
  void MarkAccepted(const JsonGrammar& start, std::vector<uint64_t>& accepted) const;

 private:
  // Node n's children are nodes child_begin_[n] .. child_begin_[n + 1] - 1 (each reached by byte_[],
  // in increasing byte order); the tokens that end at n are ids_[id_begin_[n] .. id_begin_[n + 1]).
  void MarkFrom(int32_t node, const JsonGrammar& state, std::vector<uint64_t>& accepted) const;

  std::vector<int32_t> child_begin_, id_begin_, ids_;
  std::vector<uint8_t> byte_;
  std::vector<std::string> texts_;
  int64_t vocab_size_ = 0;
};

// One schema's accepted-token masks for the grammar states met so far (one bit per id), each
// computed once. At most `max_states` are kept (then the cache starts over: 4 KB each for 32,000
// ids). Not thread-safe: a serving loop keeps one per schema, shared by its sequences.
class JsonMaskCache {
 public:
  JsonMaskCache(std::shared_ptr<const TokenTextTrie> vocab, std::shared_ptr<const JsonSchema> schema,
                size_t max_states = 1024);
  const TokenTextTrie& vocab() const { return *vocab_; }
  const JsonSchema& schema() const { return *schema_; }
  const std::vector<uint64_t>& Accepted(const JsonGrammar& state);
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  std::shared_ptr<const TokenTextTrie> vocab_;
  std::shared_ptr<const JsonSchema> schema_;
  size_t max_states_;
  std::unordered_map<std::string, std::vector<uint64_t>> masks_;
  std::string key_;  // scratch
  int64_t hits_ = 0, misses_ = 0;
};

class JsonConstraint {
 public:
  // `masks` must outlive this object; `end_ids` end the output (EOS unless ignore_eos, and the
  // request's stop token ids).
  JsonConstraint(JsonMaskCache& masks, std::vector<int32_t> end_ids);

  // Narrows `allowed` (a row's ids: the model's vocabulary, possibly wider than the tokenizer's) to
  // the tokens that can come next. Returns false when none can: the vocabulary has no token for the
  // bytes the value needs, or (Complete(), no end ids) the whitespace allowed after it is used up.
  bool Allowed(TokenMask& allowed);
  // Allowed over the row's ids, applied: every token that cannot come next set to -inf. Returns
  // false (the row left as it was) when none can.
  bool Apply(std::span<float> logits);
  // The token just generated (one Apply allowed).
  void Add(int32_t token);
  bool Complete() const { return grammar_.Complete(); }

 private:
  JsonMaskCache& masks_;
  std::vector<int32_t> end_ids_;
  JsonGrammar grammar_;
};

}  // namespace moe
