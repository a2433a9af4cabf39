#include "worker/json_constraint.h"

#include <algorithm>
#include <map>
#include <utility>

namespace moe {

TokenTextTrie::TokenTextTrie(const std::vector<std::string>& texts)
    : texts_(texts), vocab_size_(static_cast<int64_t>(texts.size())) {
  // Built as a tree of maps, then laid out breadth first so that each node's children are one
  // contiguous run of nodes.
  struct Building {
    std::map<uint8_t, int32_t> children;
    std::vector<int32_t> ids;
  };
  std::vector<Building> tree(1);
  for (size_t id = 0; id < texts.size(); ++id) {
    if (texts[id].empty()) continue;
    int32_t n = 0;
    for (char ch : texts[id]) {
      const uint8_t b = static_cast<uint8_t>(ch);
      auto it = tree[static_cast<size_t>(n)].children.find(b);
      if (it == tree[static_cast<size_t>(n)].children.end()) {
        tree.emplace_back();
        it = tree[static_cast<size_t>(n)].children.emplace(b, static_cast<int32_t>(tree.size() - 1)).first;
      }
      n = it->second;
    }
    tree[static_cast<size_t>(n)].ids.push_back(static_cast<int32_t>(id));
  }
  std::vector<int32_t> order = {0};  // breadth-first: order[new index] = tree index
  std::vector<uint8_t> byte = {0};
  for (size_t i = 0; i < order.size(); ++i) {
    for (const auto& [b, child] : tree[static_cast<size_t>(order[i])].children) {
      order.push_back(child);
      byte.push_back(b);
    }
  }
  const size_t n = order.size();
  child_begin_.assign(n + 1, 0);
  id_begin_.assign(n + 1, 0);
  byte_ = std::move(byte);
  int32_t next_child = 1;
  for (size_t i = 0; i < n; ++i) {
    const Building& node = tree[static_cast<size_t>(order[i])];
    child_begin_[i] = next_child;
    next_child += static_cast<int32_t>(node.children.size());
    id_begin_[i] = static_cast<int32_t>(ids_.size());
    ids_.insert(ids_.end(), node.ids.begin(), node.ids.end());
  }
  child_begin_[n] = next_child;
  id_begin_[n] = static_cast<int32_t>(ids_.size());
}

void TokenTextTrie::MarkAccepted(const JsonGrammar& start, std::vector<uint64_t>& accepted) const {
  MarkFrom(0, start, accepted);
}

void TokenTextTrie::MarkFrom(int32_t node, const JsonGrammar& state, std::vector<uint64_t>& accepted) const {
  // Depth first on the call stack (a token's bytes deep): one copy of the state per edge taken.
  for (int32_t c = child_begin_[static_cast<size_t>(node)]; c < child_begin_[static_cast<size_t>(node) + 1]; ++c) {
    JsonGrammar next = state;
    if (!next.Advance(byte_[static_cast<size_t>(c)])) continue;
    for (int32_t k = id_begin_[static_cast<size_t>(c)]; k < id_begin_[static_cast<size_t>(c) + 1]; ++k) {
      const auto id = static_cast<size_t>(ids_[static_cast<size_t>(k)]);
      accepted[id / 64] |= uint64_t{1} << (id % 64);
    }
    if (child_begin_[static_cast<size_t>(c)] < child_begin_[static_cast<size_t>(c) + 1]) MarkFrom(c, next, accepted);
  }
}

JsonMaskCache::JsonMaskCache(std::shared_ptr<const TokenTextTrie> vocab, std::shared_ptr<const JsonSchema> schema,
                             size_t max_states)
    : vocab_(std::move(vocab)), schema_(std::move(schema)), max_states_(std::max<size_t>(1, max_states)) {}

const std::vector<uint64_t>& JsonMaskCache::Accepted(const JsonGrammar& state) {
  key_.clear();
  state.AppendStateKey(key_);
  auto it = masks_.find(key_);
  if (it != masks_.end()) {
    ++hits_;
    return it->second;
  }
  ++misses_;
  if (masks_.size() >= max_states_) masks_.clear();
  std::vector<uint64_t> mask(static_cast<size_t>((vocab_->vocab_size() + 63) / 64), 0);
  vocab_->MarkAccepted(state, mask);
  return masks_.emplace(key_, std::move(mask)).first->second;
}

JsonConstraint::JsonConstraint(JsonMaskCache& masks, std::vector<int32_t> end_ids)
    : masks_(masks), end_ids_(std::move(end_ids)), grammar_(masks.schema()) {}

bool JsonConstraint::Allowed(TokenMask& out) {
  // The model's rows may be wider than the tokenizer's vocabulary (padded embeddings): ids past it
  // have no text and are never allowed.
  const int64_t n = std::min(out.size(), masks_.vocab().vocab_size());
  std::vector<int32_t> ends;  // the end ids allowed now: once the value is complete
  if (grammar_.Complete()) {
    for (int32_t id : end_ids_) {
      if (id >= 0 && id < n) ends.push_back(id);
    }
  }
  if (grammar_.Closed() && !ends.empty()) {
    out.BanAll();  // a closed value ends the output; only without an end id (ignore_eos) may whitespace follow
  } else {
    out.KeepFirst(masks_.Accepted(grammar_), n);
  }
  if (ends.empty()) {
    // A stop token id with text ("\n") would end the output with the value unfinished.
    for (int32_t id : end_ids_) out.Ban(id);
  } else {
    for (int32_t id : ends) out.Allow(id);
  }
  return out.any();
}

bool JsonConstraint::Apply(std::span<float> logits) {
  TokenMask allowed(static_cast<int64_t>(logits.size()));
  if (!Allowed(allowed)) return false;
  MaskLogits(allowed.words(), logits);
  return true;
}

void JsonConstraint::Add(int32_t token) {
  if (token < 0 || token >= masks_.vocab().vocab_size()) return;
  JsonGrammar next = grammar_;
  // A token Apply allowed is always accepted; an end id (no text) leaves the state as it is.
  if (next.Feed(masks_.vocab().text(token))) grammar_ = next;
}

}  // namespace moe
