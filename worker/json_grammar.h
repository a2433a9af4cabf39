// JSON (RFC 8259) as a byte-at-a-time recogniser, for constrained generation: a state accepts a
// byte only when the bytes so far can still be completed into one JSON text whose top-level value
// is an object (OpenAI's response_format {"type": "json_object"}). Strings must be valid UTF-8
// (no overlong forms, surrogates or code points past U+10FFFF) with no raw control character, and a
// \u escape of a high surrogate must be followed by the escape of a low one: what a strict parser
// (nlohmann::json, Python's json with surrogate checks) accepts.
//
// Whitespace between tokens is bounded: a run of more than kMaxWhitespaceRun whitespace bytes
// outside strings is refused. JSON allows any amount, but a model that prefers newlines would
// otherwise spend its whole budget on them (pretty-printed JSON needs 1 + indent x depth: 2-space
// indents fit to depth 9).
//
// The state is a small value (no allocation): the engine copies it once per vocabulary-trie node
// when it masks a step's logits.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace moe {

class JsonObjectGrammar {
 public:
  // Nesting deeper than this is refused (an opening bracket past it is not accepted).
  static constexpr int kMaxDepth = 64;
  static constexpr int kMaxWhitespaceRun = 20;

  // Feeds one byte; false (and the state unchanged) when no completion could follow it.
  bool Feed(uint8_t c);
  // Feeds every byte; false at the first refused one (the state then holds the bytes before it).
  bool Feed(std::string_view bytes);
  // The top-level object is closed: the text is complete (only whitespace may follow).
  bool Complete() const { return mode_ == Mode::kDone; }
  // Appends to `key` bytes that differ between any two states that could accept different byte
  // strings (the mode and what it reads, the open containers, the whitespace run): masks are cached
  // by it.
  void AppendStateKey(std::string& key) const;

 private:
  enum class Mode : uint8_t {
    kStart,         // before the top-level object: whitespace or '{'
    kValue,         // a value must start (after ':' or ',' in an array)
    kArrayFirst,    // after '[': a value or ']'
    kKeyFirst,      // after '{': '"' or '}'
    kKey,           // after ',' in an object: '"'
    kColon,         // after a key: ':'
    kAfterValue,    // ',' or the closing bracket of the container
    kString,        // inside a string (key_ says which)
    kEscape,        // after '\'
    kHex,           // in \uXXXX (hex_left_ digits to come)
    kLowSurrogateBackslash,  // after a high surrogate's escape: '\' of the low one must follow
    kLowSurrogateU,          // then 'u'
    kUtf8,          // in a multi-byte character (utf8_left_ continuation bytes to come)
    kMinus,         // number: after '-'
    kZero,          // number: a leading 0
    kInt,           // number: integer digits
    kDot,           // number: after '.'
    kFrac,          // number: fraction digits
    kExp,           // number: after 'e' / 'E'
    kExpSign,       // number: after the exponent's sign
    kExpDigits,     // number: exponent digits
    kLiteral,       // true / false / null (literal_ and literal_pos_)
    kDone,          // the top-level object is closed
  };

  // Whether the current value ends the container's element: pops nothing; the value just ended.
  void ValueEnded() { mode_ = depth_ == 0 ? Mode::kDone : Mode::kAfterValue; }
  bool StartValue(uint8_t c);  // c starts a value (in kValue / kArrayFirst)
  bool Push(bool object);

  Mode mode_ = Mode::kStart;
  bool key_ = false;              // the string being read is an object key
  uint8_t hex_left_ = 0;
  uint16_t hex_value_ = 0;
  bool low_surrogate_ = false;    // the \u escape being read must be a low surrogate
  uint8_t utf8_left_ = 0;
  uint8_t utf8_min_ = 0x80, utf8_max_ = 0xBF;  // the range of the next continuation byte
  uint8_t literal_ = 0, literal_pos_ = 0;
  uint8_t depth_ = 0;
  uint8_t whitespace_run_ = 0;    // whitespace bytes just taken outside strings
  std::array<bool, kMaxDepth> is_object_{};  // per open container: object (true) or array
};

}  // namespace moe
