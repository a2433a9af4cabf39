// JSON (RFC 8259) as a byte-at-a-time recogniser for constrained generation: a state accepts a byte
// only when the bytes so far can still be completed into one JSON value that the schema admits
// (json_schema.h; JsonSchema::AnyObject() for response_format json_object). Strings must be valid
// UTF-8 (no overlong forms, surrogates or code points past U+10FFFF) with no raw control character,
// and a \u escape of a high surrogate must be followed by the escape of a low one: what a strict
// parser (nlohmann::json, Python's json with surrogate checks) accepts.
//
// Whitespace between tokens is bounded: nothing, one space, or a newline and an indent of at most
// kIndentPerLevel spaces or tabs for each container open there (llama.cpp's JSON grammar allows 20
// at any depth). JSON allows any amount, but a model that likes whitespace would otherwise spend its
// budget padding: the small default model wrote 20 newlines between every two tokens under session
// 24's bound (20 bytes of any whitespace), and a newline and 20 spaces under llama.cpp's. Compact
// JSON, Python's default ", " and ": ", and JSON pretty-printed with indents of up to 4 spaces or
// tabs all fit.
//
// The state is a small value (no allocation): the engine copies it once per vocabulary-trie node
// when it masks a step's logits.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "worker/json_schema.h"

namespace moe {

class JsonGrammar {
 public:
  using Spec = JsonSchema;
  // Nesting deeper than this is refused (an opening bracket past it is not accepted), and so is a
  // value that could not finish within it where it would start (Fits).
  static constexpr int kMaxDepth = JsonSchema::kMaxDepth;
  static constexpr int kIndentPerLevel = 4;

  // `schema` must outlive the grammar (and its copies).
  explicit JsonGrammar(const JsonSchema& schema);

  // Feeds one byte; false (and the state unchanged) when no completion could follow it.
  bool Feed(uint8_t c);
  // Feeds every byte; false at the first refused one (the state then holds the bytes before it).
  bool Feed(std::string_view bytes);
  // Feed for a caller that drops the state when the byte is refused (the vocabulary walk): the
  // state is then unspecified, and no copy is taken to restore it.
  bool Advance(uint8_t c);
  // The bytes so far are a whole value the schema admits. Closed() says whether anything but
  // whitespace may still follow: a top-level number or enum value may go on ("4" -> "42").
  bool Complete() const;
  bool Closed() const { return mode_ == Mode::kDone; }
  // Appends to `key` bytes that differ between any two states that could accept different byte
  // strings (the mode and what it reads, the open containers, the whitespace so far): masks are cached
  // by it.
  void AppendStateKey(std::string& key) const;

 private:
  enum class Mode : uint8_t {
    kValue,         // a value of value_node_ must start (whitespace first)
    kArrayFirst,    // after '[': a value or ']'
    kKeyFirst,      // after '{': '"' or '}'
    kKey,           // after ',' in an object: '"'
    kColon,         // after a key: ':' (value_node_ is the key's)
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
    kEnum,          // one of an enum's texts (enum_candidates_, enum_matched_)
    kToken,         // a value read by its node's automaton (token_node_, dfa_state_)
    kDone,          // the top-level value is closed
  };
  // An open object or array.
  struct Frame {
    uint16_t node;          // its schema node (kObject or kArray)
    uint8_t next_property;  // objects: the first property that may still come
    uint32_t count;         // arrays: the items so far
  };

  bool Step(uint8_t c);  // Feed without the whitespace bound and the restore
  bool StartValue(uint8_t c);
  bool StartKey();
  bool Push(uint16_t node);
  // A value of `node` begun with `depth` containers open can finish within kMaxDepth levels
  // (JsonSchemaNode::min_depth): a value that could not is never begun, so the output never reaches a
  // state no byte continues.
  bool Fits(uint16_t node, int depth) const;
  void ValueEnded();
  bool CanCloseObject() const;
  bool MoreKeysPossible() const;
  bool StringChar();  // a character of a string value: within maxLength?
  // The automaton a string value's characters must match (pattern, format), or null.
  const ByteDfa* StringDfa() const;
  // Advances dfa_state_ by a byte of the string's text, if a match within maxLength can still
  // follow; `new_char`: the byte begins a character not counted in string_chars_ yet.
  bool StringDfaTakes(uint8_t c, bool new_char);
  bool StringDfaFits(int32_t next, bool new_char) const;
  uint32_t KeyedCount(uint32_t count, uint32_t min, uint32_t max) const;
  static uint16_t ItemNode(const JsonSchemaNode& array, uint32_t index);  // the node item `index` follows

  const JsonSchema* schema_;
  Mode mode_ = Mode::kValue;
  uint16_t value_node_;           // the value that starts next (kValue, kColon)
  bool key_ = false;              // the string being read is an object key
  bool key_free_ = false;         // ... of an object that takes any key
  uint64_t key_candidates_ = 0;   // ... else the properties it can still be (bits over the frame's)
  uint16_t key_matched_ = 0;      // its bytes read so far
  uint16_t string_node_ = 0;      // a string value's node (its length bounds, its automaton)
  uint32_t string_chars_ = 0;     // its code points so far
  bool integer_only_ = false;     // the number being read is an integer
  uint16_t token_node_ = 0;
  int32_t dfa_state_ = 0;         // the string's or token's automaton state
  uint16_t enum_node_ = 0;
  uint64_t enum_candidates_ = 0;  // the enum texts the bytes so far begin
  uint16_t enum_matched_ = 0;
  uint8_t hex_left_ = 0;
  uint16_t hex_value_ = 0;
  bool low_surrogate_ = false;    // the \u escape being read must be a low surrogate
  uint8_t utf8_left_ = 0;
  uint8_t utf8_min_ = 0x80, utf8_max_ = 0xBF;  // the range of the next continuation byte
  uint8_t literal_ = 0, literal_pos_ = 0;
  uint8_t depth_ = 0;
  // Whitespace just taken outside strings: 0 none, 1 a space (nothing more), 2 + k a newline and k
  // indent bytes.
  uint8_t whitespace_ = 0;
  std::array<Frame, kMaxDepth> frames_{};
};

}  // namespace moe
