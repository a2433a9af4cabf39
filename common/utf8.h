// One UTF-8 character, strictly: what the recognisers' pattern parsers (worker/byte_dfa.cc,
// worker/gbnf.cc) and the chat templates' strings (coordinator/openai/jinja/) read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace moe {

// The code point of the UTF-8 character at text[i] into `cp`, and its length in bytes; 0 (cp left
// as it was) when the bytes there are not one: a stray or truncated byte, an overlong form, a
// surrogate, or past U+10FFFF.
inline int DecodeUtf8(std::string_view text, size_t i, uint32_t& cp) {
  if (i >= text.size()) return 0;
  const auto b0 = static_cast<uint8_t>(text[i]);
  if (b0 < 0x80) {
    cp = b0;
    return 1;
  }
  const int len = b0 >= 0xC2 && b0 <= 0xDF ? 2 : b0 >= 0xE0 && b0 <= 0xEF ? 3 : b0 >= 0xF0 && b0 <= 0xF4 ? 4 : 0;
  if (len == 0 || i + static_cast<size_t>(len) > text.size()) return 0;
  uint32_t v = b0 & (0x7Fu >> len);
  for (int k = 1; k < len; ++k) {
    const auto b = static_cast<uint8_t>(text[i + static_cast<size_t>(k)]);
    if ((b & 0xC0) != 0x80) return 0;
    v = v << 6 | (b & 0x3Fu);
  }
  if ((len == 3 && v < 0x800) || (len == 4 && (v < 0x10000 || v > 0x10FFFF)) || (v >= 0xD800 && v <= 0xDFFF)) {
    return 0;
  }
  cp = v;
  return len;
}

// Per byte offset of `text` (0 to its size), the characters before it: a UTF-8 character counts
// one, and so does each byte of anything else (for valid text, Python's str indices: Hugging Face
// tokenizers' character offsets). An offset inside a character counts that character.
inline std::vector<uint32_t> CharIndices(std::string_view text) {
  std::vector<uint32_t> index(text.size() + 1);
  uint32_t chars = 0;
  for (size_t i = 0; i < text.size();) {
    uint32_t cp = 0;
    const int len = DecodeUtf8(text, i, cp);
    const size_t end = i + static_cast<size_t>(len > 0 ? len : 1);
    index[i] = chars++;
    for (size_t k = i + 1; k < end; ++k) index[k] = chars;
    i = end;
  }
  index[text.size()] = chars;
  return index;
}

// The characters of `text` as CharIndices counts them (its last entry), without the table.
inline size_t CharCount(std::string_view text) {
  size_t chars = 0;
  for (size_t i = 0; i < text.size(); ++chars) {
    uint32_t cp = 0;
    const int len = DecodeUtf8(text, i, cp);
    i += static_cast<size_t>(len > 0 ? len : 1);
  }
  return chars;
}

}  // namespace moe
