// Constrained generation: one JSON value (OpenAI's response_format: {"type": "json_object"}, or
// {"type": "json_schema"} with a schema; vLLM's choice and regex as schemas of one node), or a text
// of a GBNF grammar (worker/gbnf.h). At every step the tokens whose text would make the output
// something no admitted text starts with are masked out (-inf); the end ids are allowed once the
// output is complete, and once it is closed only they remain (whitespace too when there are none:
// ignore_eos without stop token ids). The machinery is one template over the byte recogniser
// (JsonGrammar, GbnfState): a copyable state with Advance / Feed / Complete / Closed /
// AppendStateKey, built from its Spec (JsonSchema, GbnfGrammar).
//
// The vocabulary's texts are the coordinator's (TextCodec::TokenTexts, sent to every rank at
// registration): the bytes each id adds to the output. A trie of them is walked with the grammar
// state copied down each branch, so a mask costs one grammar byte per trie node the state can
// reach, not one per byte of every token; masks are cached by grammar state (JsonMaskCache), since
// every step inside a string value of a given container has the same state (benchmarks/NOTES.md,
// session 24: ~1.4 ms a walk inside a string with Mistral's 32,000 ids, ~20 us once cached).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "worker/gbnf.h"
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
  template <class Grammar>
  void MarkAccepted(const Grammar& start, std::vector<uint64_t>& accepted) const {
    MarkFrom(0, start, accepted);
  }

 private:
  // Node n's children are nodes child_begin_[n] .. child_begin_[n + 1] - 1 (each reached by byte_[],
  // in increasing byte order); the tokens that end at n are ids_[id_begin_[n] .. id_begin_[n + 1]).
  // Depth first on the call stack (a token's bytes deep): one copy of the state per edge taken.
  template <class Grammar>
  void MarkFrom(int32_t node, const Grammar& state, std::vector<uint64_t>& accepted) const {
    const auto n = static_cast<size_t>(node);
    for (int32_t c = child_begin_[n]; c < child_begin_[n + 1]; ++c) {
      const auto i = static_cast<size_t>(c);
      Grammar next = state;
      if (!next.Advance(byte_[i])) continue;
      for (int32_t k = id_begin_[i]; k < id_begin_[i + 1]; ++k) {
        const auto id = static_cast<size_t>(ids_[static_cast<size_t>(k)]);
        accepted[id / 64] |= uint64_t{1} << (id % 64);
      }
      if (child_begin_[i] < child_begin_[i + 1]) MarkFrom(c, next, accepted);
    }
  }

  std::vector<int32_t> child_begin_, id_begin_, ids_;
  std::vector<uint8_t> byte_;
  std::vector<std::string> texts_;
  int64_t vocab_size_ = 0;
};

// One spec's accepted-token masks (a schema's, a grammar's) for the recogniser states met so far
// (one bit per id), each computed once. At most `max_states` are kept (then the cache starts over:
// 4 KB each for 32,000 ids). Not thread-safe: a serving loop keeps one per spec, shared by its
// sequences.
template <class Grammar>
class MaskCache {
 public:
  using Spec = typename Grammar::Spec;
  MaskCache(std::shared_ptr<const TokenTextTrie> vocab, std::shared_ptr<const Spec> spec, size_t max_states = 1024)
      : vocab_(std::move(vocab)), spec_(std::move(spec)), max_states_(std::max<size_t>(1, max_states)) {}
  const TokenTextTrie& vocab() const { return *vocab_; }
  const Spec& spec() const { return *spec_; }
  const std::vector<uint64_t>& Accepted(const Grammar& state) {
    key_.clear();
    state.AppendStateKey(key_);
    auto it = masks_.find(key_);
    if (it != masks_.end()) {
      ++hits_;
      return it->second;
    }
    ++misses_;
    if (masks_.size() >= max_states_ || key_bytes_ >= kMaxKeyBytes) {
      masks_.clear();
      key_bytes_ = 0;
    }
    key_bytes_ += key_.size();
    std::vector<uint64_t> mask(static_cast<size_t>((vocab_->vocab_size() + 63) / 64), 0);
    vocab_->MarkAccepted(state, mask);
    return masks_.emplace(key_, std::move(mask)).first->second;
  }
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }

 private:
  std::shared_ptr<const TokenTextTrie> vocab_;
  std::shared_ptr<const Spec> spec_;
  size_t max_states_;
  // A grammar's state keys can be large (a GBNF state is its stacks, up to 32 KB): past this many
  // bytes of keys the cache starts over too, whatever their count.
  static constexpr size_t kMaxKeyBytes = 4 << 20;
  std::unordered_map<std::string, std::vector<uint64_t>> masks_;
  size_t key_bytes_ = 0;
  std::string key_;  // scratch
  int64_t hits_ = 0, misses_ = 0;
};
using JsonMaskCache = MaskCache<JsonGrammar>;
using GbnfMaskCache = MaskCache<GbnfState>;

// What a sequence's output must be, step by step (the serving loop holds one per constrained
// sequence, whatever recogniser is behind it).
class OutputConstraint {
 public:
  virtual ~OutputConstraint() = default;
  // Narrows `allowed` (a row's ids: the model's vocabulary, possibly wider than the tokenizer's) to
  // the tokens that can come next. Returns false when none can: the vocabulary has no token for the
  // bytes the output needs, or (Complete(), no end ids) the whitespace allowed after it is used up.
  virtual bool Allowed(TokenMask& allowed) = 0;
  // Allowed over the row's ids, applied: every token that cannot come next set to -inf. Returns
  // false (the row left as it was) when none can.
  bool Apply(std::span<float> logits);
  // The token just generated (one Apply allowed).
  virtual void Add(int32_t token) = 0;
  virtual bool Complete() const = 0;
};

template <class Grammar>
class GrammarConstraint final : public OutputConstraint {
 public:
  // `masks` must outlive this object; `end_ids` end the output (EOS unless ignore_eos, and the
  // request's stop token ids).
  GrammarConstraint(MaskCache<Grammar>& masks, std::vector<int32_t> end_ids)
      : masks_(masks), end_ids_(std::move(end_ids)), grammar_(masks.spec()) {}

  bool Allowed(TokenMask& allowed) override {
    // The model's rows may be wider than the tokenizer's vocabulary (padded embeddings): ids past it
    // have no text and are never allowed.
    const int64_t n = std::min(allowed.size(), masks_.vocab().vocab_size());
    std::vector<int32_t> ends;  // the end ids allowed now: once the output is complete
    if (grammar_.Complete()) {
      for (int32_t id : end_ids_) {
        if (id >= 0 && id < n) ends.push_back(id);
      }
    }
    if (grammar_.Closed() && !ends.empty()) {
      allowed.BanAll();  // a closed output ends; only without an end id (ignore_eos) may whitespace follow
    } else {
      allowed.KeepFirst(masks_.Accepted(grammar_), n);
    }
    if (ends.empty()) {
      // A stop token id with text ("\n") would end the output unfinished.
      for (int32_t id : end_ids_) allowed.Ban(id);
    } else {
      for (int32_t id : ends) allowed.Allow(id);
    }
    return allowed.any();
  }
  void Add(int32_t token) override {
    if (token < 0 || token >= masks_.vocab().vocab_size()) return;
    Grammar next = grammar_;
    // A token Apply allowed is always accepted; an end id (no text) leaves the state as it is.
    if (next.Feed(masks_.vocab().text(token))) grammar_ = std::move(next);
  }
  bool Complete() const override { return grammar_.Complete(); }

 private:
  MaskCache<Grammar>& masks_;
  std::vector<int32_t> end_ids_;
  Grammar grammar_;
};
using JsonConstraint = GrammarConstraint<JsonGrammar>;
using GbnfConstraint = GrammarConstraint<GbnfState>;

}  // namespace moe
