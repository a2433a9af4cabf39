#include "worker/json_constraint.h"

#include <algorithm>
#include <limits>
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

void TokenTextTrie::MarkAccepted(const JsonObjectGrammar& start, std::vector<uint8_t>& allowed) const {
  std::vector<std::pair<int32_t, JsonObjectGrammar>> stack = {{0, start}};
  while (!stack.empty()) {
    const auto [node, state] = stack.back();
    stack.pop_back();
    for (int32_t c = child_begin_[static_cast<size_t>(node)]; c < child_begin_[static_cast<size_t>(node) + 1]; ++c) {
      JsonObjectGrammar next = state;
      if (!next.Feed(byte_[static_cast<size_t>(c)])) continue;
      for (int32_t k = id_begin_[static_cast<size_t>(c)]; k < id_begin_[static_cast<size_t>(c) + 1]; ++k) {
        allowed[static_cast<size_t>(ids_[static_cast<size_t>(k)])] = 1;
      }
      if (child_begin_[static_cast<size_t>(c)] < child_begin_[static_cast<size_t>(c) + 1]) stack.push_back({c, next});
    }
  }
}

JsonObjectConstraint::JsonObjectConstraint(const TokenTextTrie& vocab, std::vector<int32_t> end_ids)
    : vocab_(vocab), end_ids_(std::move(end_ids)) {}

bool JsonObjectConstraint::Apply(std::span<float> logits) {
  allowed_.assign(static_cast<size_t>(vocab_.vocab_size()), 0);
  bool ends = false;
  if (grammar_.Complete()) {
    for (int32_t id : end_ids_) {
      if (id >= 0 && id < vocab_.vocab_size()) allowed_[static_cast<size_t>(id)] = ends = true;
    }
  }
  // A closed object ends the output; only without an end id (ignore_eos) may whitespace follow.
  if (!ends) vocab_.MarkAccepted(grammar_, allowed_);
  // The model's rows may be wider than the tokenizer's vocabulary (padded embeddings): ids past it
  // have no text and are never allowed.
  const size_t n = std::min(logits.size(), allowed_.size());
  if (std::find(allowed_.begin(), allowed_.begin() + static_cast<std::ptrdiff_t>(n), 1) ==
      allowed_.begin() + static_cast<std::ptrdiff_t>(n)) {
    return false;
  }
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < logits.size(); ++i) {
    if (i >= n || allowed_[i] == 0) logits[i] = kNegInf;
  }
  return true;
}

void JsonObjectConstraint::Add(int32_t token) {
  if (token < 0 || token >= vocab_.vocab_size()) return;
  JsonObjectGrammar next = grammar_;
  // A token Apply allowed is always accepted; an end id (no text) leaves the state as it is.
  if (next.Feed(vocab_.text(token))) grammar_ = next;
}

}  // namespace moe
