// Random edits of a JSON request body for the parsers' any-type tests: a field somewhere in the
// body (at a random depth) replaced or added with a value of another type, so every parser meets
// nulls, huge and negative numbers, empty and wrong-typed containers where it expects something
// else; and the loop that feeds such bodies to a parser. Header-only: the tests that use it link
// nothing more.
#pragma once

#include <iterator>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <exception>

#include <gtest/gtest.h>
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

// How the bodies ParseMutatedBodies fed fared.
struct MutationCounts {
  int parsed = 0, refused = 0;
};

// `count` bodies, each one of `bodies` (drawn by `rng`) edited by MutateJson with `keys`, handed to
// `parse(body, text, rng)` as JSON and as its text: it answers true when the parser took the body,
// false when it refused it (checking the refusal itself). An exception out of the parser is a test
// failure naming the body, never a crash.
template <typename Parse>
MutationCounts ParseMutatedBodies(const std::vector<nlohmann::json>& bodies, std::span<const char* const> keys,
                                  std::mt19937& rng, int count, Parse parse) {
  MutationCounts counts;
  for (int n = 0; n < count; ++n) {
    nlohmann::json body = bodies[rng() % bodies.size()];
    MutateJson(body, rng, keys);
    const std::string text = body.dump();
    try {
      ++(parse(body, text, rng) ? counts.parsed : counts.refused);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "threw " << e.what() << " on " << text;
    }
  }
  return counts;
}

}  // namespace moe::testing
