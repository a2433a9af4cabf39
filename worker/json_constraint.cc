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

bool OutputConstraint::Apply(std::span<float> logits) {
  TokenMask allowed(static_cast<int64_t>(logits.size()));
  if (!Allowed(allowed)) return false;
  MaskLogits(allowed.words(), logits);
  return true;
}

}  // namespace moe
