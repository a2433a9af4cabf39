// Random edits of a JSON request body for the parsers' any-type tests: a field somewhere in the
// body (at a random depth) replaced or added with a value of another type, so every parser meets
// nulls, huge and negative numbers, empty and wrong-typed containers where it expects something
// else. Header-only: the tests that use it link nothing more.
#pragma once

#include <iterator>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe::testing {

// The values a mutation puts in: every JSON type, boundary numbers, template-looking text.
inline const std::vector<nlohmann::json>& MutationValues() {
  static const std::vector<nlohmann::json> values = {
      nullptr, 0, -1, 1e300, -1e300, "", "x", nlohmann::json::array(), nlohmann::json::object(), true,
      nlohmann::json::array({1, "a", nullptr}), nlohmann::json{{"type", 7}}, 4294967296LL, "{{ x }}"};
  return values;
}

// 1-3 edits of `body`: each walks from the root into a random member or element (stopping at
// random), then sets one of `keys` there (an object) or replaces an element (an array) with a
// MutationValues() value.
inline void MutateJson(nlohmann::json& body, std::mt19937& rng, std::span<const char* const> keys) {
  const std::vector<nlohmann::json>& values = MutationValues();
  for (int m = 1 + static_cast<int>(rng() % 3); m > 0; --m) {
    nlohmann::json* at = &body;
    while ((at->is_object() || at->is_array()) && !at->empty() && rng() % 3 != 0) {
      auto it = at->begin();
      std::advance(it, static_cast<long>(rng() % at->size()));
      if (!it->is_object() && !it->is_array()) break;
      at = &*it;
    }
    const nlohmann::json& v = values[rng() % values.size()];
    if (at->is_object()) {
      (*at)[keys[rng() % keys.size()]] = v;
    } else if (at->is_array() && !at->empty()) {
      (*at)[rng() % at->size()] = v;
    }
  }
}

}  // namespace moe::testing
