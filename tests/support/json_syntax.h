// JSON syntax checks for the constrained-generation tests, by nlohmann's parser.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace moe::testing_ref {

// `text` with every exponent's digits as zeros, digit for digit: nlohmann refuses numbers past
// double's range ("number overflow"), which JSON's grammar allows (Python's json reads them as
// inf); the change keeps every text's validity (in a string or a \u escape too).
inline std::string ZeroExponents(std::string text) {
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != 'e' && text[i] != 'E') continue;
    size_t j = i + 1;
    if (j < text.size() && (text[j] == '+' || text[j] == '-')) ++j;
    for (; j < text.size() && text[j] >= '0' && text[j] <= '9'; ++j) text[j] = '0';
  }
  return text;
}

// Whether `text` is JSON by its grammar.
inline bool JsonSyntaxAccepts(const std::string& text) { return nlohmann::json::accept(ZeroExponents(text)); }

// ... and its value is an object.
inline bool JsonObjectAccepted(const std::string& text) {
  const nlohmann::json v = nlohmann::json::parse(ZeroExponents(text), nullptr, /*allow_exceptions=*/false);
  return !v.is_discarded() && v.is_object();
}

}  // namespace moe::testing_ref
