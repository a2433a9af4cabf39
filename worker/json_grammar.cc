#include "worker/json_grammar.h"

#include <algorithm>

#include "common/hex_digit.h"

namespace moe {
namespace {

using Kind = JsonSchemaNode::Kind;

constexpr std::string_view kLiterals[] = {"true", "false", "null"};

bool IsSpace(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }

template <typename T>
void Append(std::string& key, T v) {
  key.append(reinterpret_cast<const char*>(&v), sizeof(v));
}

}  // namespace

JsonGrammar::JsonGrammar(const JsonSchema& schema) : schema_(&schema), value_node_(schema.root()) {}

bool JsonGrammar::Feed(std::string_view bytes) {
  for (char ch : bytes) {
    if (!Feed(static_cast<uint8_t>(ch))) return false;
  }
  return true;
}

bool JsonGrammar::Feed(uint8_t c) {
  const JsonGrammar saved = *this;
  if (!Advance(c)) {
    *this = saved;
    return false;
  }
  return true;
}

bool JsonGrammar::Advance(uint8_t c) {
  // Whitespace outside a string, a literal or an escape separates tokens (it also ends a number or
  // an enum value; the enums' texts are compact, so whitespace that continues one is in a string).
  const bool in_text = mode_ == Mode::kString || mode_ == Mode::kEscape || mode_ == Mode::kHex ||
                       mode_ == Mode::kUtf8 || mode_ == Mode::kLowSurrogateBackslash ||
                       mode_ == Mode::kLowSurrogateU || mode_ == Mode::kLiteral;
  // Nothing surrounds an exact value (guided_choice, guided_regex): its whitespace is its own.
  bool separator = IsSpace(c) && !in_text && !schema_->exact();
  if (separator && mode_ == Mode::kEnum) {
    const JsonSchemaNode& e = schema_->node(enum_node_);
    for (size_t i = 0; i < e.texts.size(); ++i) {
      if ((enum_candidates_ >> i & 1) && e.texts[i].size() > enum_matched_ &&
          static_cast<uint8_t>(e.texts[i][enum_matched_]) == c) {
        separator = false;
      }
    }
  }
  if (separator && mode_ == Mode::kToken &&
      schema_->dfa(schema_->node(token_node_).dfa).Next(dfa_state_, c) != ByteDfa::kDead) {
    separator = false;
  }
  uint8_t whitespace = 0;
  if (separator) {
    if (schema_->compact()) return false;
    if (whitespace_ == 0 && (c == ' ' || c == '\n')) {
      whitespace = c == ' ' ? 1 : 2;
    } else if (whitespace_ >= 2 && whitespace_ < 2 + kIndentPerLevel * depth_ && (c == ' ' || c == '\t')) {
      whitespace = static_cast<uint8_t>(whitespace_ + 1);
    } else {
      return false;
    }
  }
  if (!Step(c)) return false;
  whitespace_ = whitespace;
  return true;
}

bool JsonGrammar::Complete() const {
  if (mode_ == Mode::kDone) return true;
  if (depth_ != 0) return false;
  switch (mode_) {
    case Mode::kValue: {  // nothing yet: complete only where a token may be empty (guided_regex "a*")
      const JsonSchemaNode& n = schema_->node(value_node_);
      return n.kind == Kind::kToken && schema_->dfa(n.dfa).Accepting(ByteDfa::start());
    }
    case Mode::kToken:
      return schema_->dfa(schema_->node(token_node_).dfa).Accepting(dfa_state_);
    case Mode::kZero:
    case Mode::kInt:
    case Mode::kFrac:
    case Mode::kExpDigits:
      return true;
    case Mode::kEnum: {
      const JsonSchemaNode& e = schema_->node(enum_node_);
      for (size_t i = 0; i < e.texts.size(); ++i) {
        if ((enum_candidates_ >> i & 1) && e.texts[i].size() == enum_matched_) return true;
      }
      return false;
    }
    default:
      return false;
  }
}

bool JsonGrammar::Fits(uint16_t node, int depth) const {
  return depth + schema_->node(node).min_depth <= kMaxDepth;
}

bool JsonGrammar::Push(uint16_t node) {
  if (!Fits(node, depth_)) return false;  // (an object or array needs a level at least)
  frames_[depth_++] = Frame{node, 0, 0};
  mode_ = schema_->node(node).kind == Kind::kArray ? Mode::kArrayFirst : Mode::kKeyFirst;
  return true;
}

void JsonGrammar::ValueEnded() {
  if (depth_ == 0) {
    mode_ = Mode::kDone;
    return;
  }
  Frame& f = frames_[depth_ - 1];
  if (schema_->node(f.node).kind == Kind::kArray) ++f.count;
  mode_ = Mode::kAfterValue;
}

bool JsonGrammar::CanCloseObject() const {
  const Frame& f = frames_[depth_ - 1];
  const JsonSchemaNode& o = schema_->node(f.node);
  for (size_t i = f.next_property; i < o.property_names.size(); ++i) {
    if (o.required[i]) return false;
  }
  return true;
}

bool JsonGrammar::MoreKeysPossible() const {
  const Frame& f = frames_[depth_ - 1];
  const JsonSchemaNode& o = schema_->node(f.node);
  if (o.additional) return Fits(o.additional_node, depth_);
  for (size_t i = f.next_property; i < o.property_names.size(); ++i) {
    if (Fits(o.property_nodes[i], depth_)) return true;
  }
  return false;
}

bool JsonGrammar::StartKey() {
  const Frame& f = frames_[depth_ - 1];
  const JsonSchemaNode& o = schema_->node(f.node);
  key_ = true;
  key_free_ = o.additional;
  key_matched_ = 0;
  key_candidates_ = 0;
  if (key_free_) {
    if (!Fits(o.additional_node, depth_)) return false;
  } else {
    // The next property, or a later one when those between are optional; not one whose value could
    // not finish within kMaxDepth here (a required one always can: the object was opened only so).
    for (size_t i = f.next_property; i < o.property_names.size(); ++i) {
      if (Fits(o.property_nodes[i], depth_)) key_candidates_ |= uint64_t{1} << i;
      if (o.required[i]) break;
    }
    if (key_candidates_ == 0) return false;
  }
  mode_ = Mode::kString;
  return true;
}

bool JsonGrammar::StringChar() {
  if (key_) return true;
  if (string_chars_ >= schema_->node(string_node_).max_length) return false;
  ++string_chars_;
  return true;
}

const ByteDfa* JsonGrammar::StringDfa() const {
  if (key_) return nullptr;
  const int32_t d = schema_->node(string_node_).dfa;
  return d < 0 ? nullptr : &schema_->dfa(d);
}

bool JsonGrammar::StringDfaFits(int32_t next, bool new_char) const {
  if (next == ByteDfa::kDead) return false;
  const uint32_t max = schema_->node(string_node_).max_length;
  return max == UINT32_MAX ||
         static_cast<uint64_t>(string_chars_) + (new_char ? 1 : 0) + StringDfa()->ShortestToAccept(next) <= max;
}

bool JsonGrammar::StringDfaTakes(uint8_t c, bool new_char) {
  const ByteDfa* dfa = StringDfa();
  if (dfa == nullptr) return true;
  const int32_t next = dfa->Next(dfa_state_, c);
  if (!StringDfaFits(next, new_char)) return false;
  dfa_state_ = next;
  return true;
}

bool JsonGrammar::StartValue(uint8_t c) {
  uint16_t n = value_node_;
  while (schema_->node(n).kind == Kind::kAnyOf) {  // the alternative whose values start with c
    const JsonSchemaNode& any = schema_->node(n);
    auto a = std::find_if(any.alternatives.begin(), any.alternatives.end(),
                          [&](uint16_t alt) { return schema_->node(alt).first_bytes[c]; });
    if (a == any.alternatives.end()) return false;
    n = *a;
  }
  const JsonSchemaNode& node = schema_->node(n);
  if (!node.first_bytes[c]) return false;
  auto number = [&](bool integer) {
    integer_only_ = integer;
    mode_ = c == '-' ? Mode::kMinus : c == '0' ? Mode::kZero : Mode::kInt;
    return true;
  };
  auto literal = [&] {
    literal_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
    literal_pos_ = 1;
    mode_ = Mode::kLiteral;
    return true;
  };
  auto string = [&](uint16_t string_node) {
    key_ = key_free_ = false;
    string_node_ = string_node;
    string_chars_ = 0;
    dfa_state_ = ByteDfa::start();
    mode_ = Mode::kString;
    return true;
  };
  switch (node.kind) {
    case Kind::kAny:
      if (c == '{') return Push(JsonSchema::kAnyObjectNode);
      if (c == '[') return Push(JsonSchema::kAnyArrayNode);
      if (c == '"') return string(JsonSchema::kAnyNode);
      if (c == 't' || c == 'f' || c == 'n') return literal();
      return number(false);
    case Kind::kObject:
    case Kind::kArray:
    case Kind::kUnion:
      return Push(n);
    case Kind::kString:
      return string(n);
    case Kind::kInteger:
    case Kind::kNumber:
      return number(node.kind == Kind::kInteger);
    case Kind::kBoolean:
    case Kind::kNull:
      return literal();
    case Kind::kEnum:
      enum_node_ = n;
      enum_candidates_ = 0;
      for (size_t i = 0; i < node.texts.size(); ++i) {
        if (static_cast<uint8_t>(node.texts[i][0]) == c) enum_candidates_ |= uint64_t{1} << i;
      }
      if (depth_ > 0 && schema_->node(frames_[depth_ - 1].node).kind == Kind::kUnion) {
        // A tagged union's tag: not a value choosing an object that could not finish within
        // kMaxDepth in the union's place.
        const JsonSchemaNode& u = schema_->node(frames_[depth_ - 1].node);
        for (size_t i = 0; i < node.texts.size(); ++i) {
          if (!Fits(u.alternatives[i], depth_ - 1)) enum_candidates_ &= ~(uint64_t{1} << i);
        }
      }
      if (enum_candidates_ == 0) return false;
      enum_matched_ = 1;
      mode_ = Mode::kEnum;
      return true;
    case Kind::kToken:
      token_node_ = n;
      dfa_state_ = schema_->dfa(node.dfa).Next(ByteDfa::start(), c);  // not dead: c is a first byte
      mode_ = Mode::kToken;
      return true;
    case Kind::kAnyOf:
      return false;  // resolved above
  }
  return false;
}

bool JsonGrammar::Step(uint8_t c) {
  switch (mode_) {
    case Mode::kDone:
      return IsSpace(c) && !schema_->exact();
    case Mode::kValue:
      return (IsSpace(c) && !(schema_->exact() && depth_ == 0)) || StartValue(c);
    case Mode::kArrayFirst: {
      if (IsSpace(c)) return true;
      const JsonSchemaNode& a = schema_->node(frames_[depth_ - 1].node);
      if (c == ']') {
        if (a.min_items > 0) return false;
        --depth_;
        ValueEnded();
        return true;
      }
      if (a.max_items == 0) return false;
      value_node_ = ItemNode(a, 0);
      return StartValue(c);
    }
    case Mode::kKeyFirst:
    case Mode::kKey:
      if (IsSpace(c)) return true;
      if (c == '"') return StartKey();
      if (c == '}' && mode_ == Mode::kKeyFirst && CanCloseObject()) {
        --depth_;
        ValueEnded();
        return true;
      }
      return false;
    case Mode::kColon:
      if (IsSpace(c)) return true;
      if (c != ':') return false;
      mode_ = Mode::kValue;
      return true;
    case Mode::kAfterValue: {
      if (IsSpace(c)) return true;
      const Frame& f = frames_[depth_ - 1];
      const JsonSchemaNode& node = schema_->node(f.node);
      const bool object = node.kind != Kind::kArray;
      if (c == ',') {
        if (object) {
          if (!MoreKeysPossible()) return false;
          mode_ = Mode::kKey;
        } else {
          // No item that could not finish within kMaxDepth here (those minItems asks for always can).
          if (f.count >= node.max_items || !Fits(ItemNode(node, f.count), depth_)) return false;
          value_node_ = ItemNode(node, f.count);
          mode_ = Mode::kValue;
        }
        return true;
      }
      if (c == (object ? '}' : ']')) {
        if (object ? !CanCloseObject() : f.count < node.min_items) return false;
        --depth_;
        ValueEnded();
        return true;
      }
      return false;
    }
    case Mode::kString:
      if (key_ && !key_free_) {
        // A listed property's name, byte for byte (names hold no escapes).
        Frame& f = frames_[depth_ - 1];
        const JsonSchemaNode& o = schema_->node(f.node);
        if (c == '"') {
          for (size_t i = 0; i < o.property_names.size(); ++i) {
            if ((key_candidates_ >> i & 1) && o.property_names[i].size() == key_matched_) {
              f.next_property = static_cast<uint8_t>(i + 1);
              value_node_ = o.property_nodes[i];
              mode_ = Mode::kColon;
              return true;
            }
          }
          return false;
        }
        uint64_t next = 0;
        for (size_t i = 0; i < o.property_names.size(); ++i) {
          if ((key_candidates_ >> i & 1) && o.property_names[i].size() > key_matched_ &&
              static_cast<uint8_t>(o.property_names[i][key_matched_]) == c) {
            next |= uint64_t{1} << i;
          }
        }
        if (next == 0) return false;
        key_candidates_ = next;
        ++key_matched_;
        return true;
      }
      if (c == '"') {
        if (key_) {  // a key of an object that takes any: its value follows additionalProperties
          value_node_ = schema_->node(frames_[depth_ - 1].node).additional_node;
          mode_ = Mode::kColon;
          return true;
        }
        if (string_chars_ < schema_->node(string_node_).min_length) return false;
        if (StringDfa() != nullptr && !StringDfa()->Accepting(dfa_state_)) return false;
        ValueEnded();
        return true;
      }
      if (c == '\\') {
        if (!StringChar()) return false;
        if (const ByteDfa* dfa = StringDfa()) {  // some escape must lead on
          bool any = false;
          for (char e : std::string_view("\"\\/\b\f\n\r\t")) {
            any |= StringDfaFits(dfa->Next(dfa_state_, static_cast<uint8_t>(e)), /*new_char=*/false);  // counted above
          }
          if (!any) return false;
        }
        mode_ = Mode::kEscape;
        return true;
      }
      if (c < 0x20) return false;
      if (!StringDfaTakes(c, /*new_char=*/true)) return false;
      if (c < 0x80) return StringChar();
      // The lead byte of a multi-byte character: how many continuation bytes, and the range of the
      // first (RFC 3629's table: no overlong forms, no surrogates, nothing past U+10FFFF).
      utf8_min_ = 0x80;
      utf8_max_ = 0xBF;
      if (c >= 0xC2 && c <= 0xDF) {
        utf8_left_ = 1;
      } else if (c == 0xE0) {
        utf8_left_ = 2;
        utf8_min_ = 0xA0;
      } else if (c == 0xED) {
        utf8_left_ = 2;
        utf8_max_ = 0x9F;
      } else if (c >= 0xE1 && c <= 0xEF) {
        utf8_left_ = 2;
      } else if (c == 0xF0) {
        utf8_left_ = 3;
        utf8_min_ = 0x90;
      } else if (c >= 0xF1 && c <= 0xF3) {
        utf8_left_ = 3;
      } else if (c == 0xF4) {
        utf8_left_ = 3;
        utf8_max_ = 0x8F;
      } else {
        return false;
      }
      if (!StringChar()) return false;
      mode_ = Mode::kUtf8;
      return true;
    case Mode::kUtf8:
      if (c < utf8_min_ || c > utf8_max_) return false;
      if (!StringDfaTakes(c, /*new_char=*/false)) return false;
      utf8_min_ = 0x80;
      utf8_max_ = 0xBF;
      if (--utf8_left_ == 0) mode_ = Mode::kString;
      return true;
    case Mode::kEscape:
      switch (c) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': {
          static constexpr std::string_view kLetters = "\"\\/bfnrt", kBytes = "\"\\/\b\f\n\r\t";
          // The character was counted at its backslash.
          if (!StringDfaTakes(static_cast<uint8_t>(kBytes[kLetters.find(static_cast<char>(c))]), false)) return false;
          mode_ = Mode::kString;
          return true;
        }
        case 'u':
          if (StringDfa() != nullptr) return false;  // a pattern's string takes its characters raw
          mode_ = Mode::kHex;
          hex_left_ = 4;
          hex_value_ = 0;
          low_surrogate_ = false;
          return true;
        default:
          return false;
      }
    case Mode::kLowSurrogateBackslash:
      if (c != '\\') return false;
      mode_ = Mode::kLowSurrogateU;
      return true;
    case Mode::kLowSurrogateU:
      if (c != 'u') return false;
      mode_ = Mode::kHex;
      hex_left_ = 4;
      hex_value_ = 0;
      low_surrogate_ = true;
      return true;
    case Mode::kHex: {
      const int h = HexDigitValue(c);
      if (h < 0) return false;
      hex_value_ = static_cast<uint16_t>(hex_value_ << 4 | h);
      --hex_left_;
      // Refused as soon as no digits could complete it: a low surrogate is DC00-DFFF and must
      // follow a high one (D800-DBFF); alone it is an error.
      const int seen = 4 - hex_left_;
      const bool ok = low_surrogate_ ? (seen == 1 ? hex_value_ == 0xD : seen == 2 ? hex_value_ >= 0xDC && hex_value_ <= 0xDF : true)
                                     : (seen != 2 || hex_value_ < 0xDC || hex_value_ > 0xDF);
      if (!ok) return false;
      if (hex_left_ == 0) {
        mode_ = !low_surrogate_ && hex_value_ >= 0xD800 && hex_value_ <= 0xDBFF ? Mode::kLowSurrogateBackslash
                                                                               : Mode::kString;
      }
      return true;
    }
    case Mode::kMinus:
      if (c == '0') {
        mode_ = Mode::kZero;
        return true;
      }
      if (c >= '1' && c <= '9') {
        mode_ = Mode::kInt;
        return true;
      }
      return false;
    case Mode::kZero:
    case Mode::kInt:
      if (mode_ == Mode::kInt && IsDigit(c)) return true;
      if (c == '.' && !integer_only_) {
        mode_ = Mode::kDot;
        return true;
      }
      if ((c == 'e' || c == 'E') && !integer_only_) {
        mode_ = Mode::kExp;
        return true;
      }
      // A number has no end mark: a byte that cannot continue it ends it and is read after it.
      ValueEnded();
      return Step(c);
    case Mode::kDot:
      if (!IsDigit(c)) return false;
      mode_ = Mode::kFrac;
      return true;
    case Mode::kFrac:
      if (IsDigit(c)) return true;
      if (c == 'e' || c == 'E') {
        mode_ = Mode::kExp;
        return true;
      }
      ValueEnded();
      return Step(c);
    case Mode::kExp:
      if (c == '+' || c == '-') {
        mode_ = Mode::kExpSign;
        return true;
      }
      if (!IsDigit(c)) return false;
      mode_ = Mode::kExpDigits;
      return true;
    case Mode::kExpSign:
      if (!IsDigit(c)) return false;
      mode_ = Mode::kExpDigits;
      return true;
    case Mode::kExpDigits:
      if (IsDigit(c)) return true;
      ValueEnded();
      return Step(c);
    case Mode::kLiteral: {
      const std::string_view lit = kLiterals[literal_];
      if (c != static_cast<uint8_t>(lit[literal_pos_])) return false;
      if (++literal_pos_ == lit.size()) ValueEnded();
      return true;
    }
    case Mode::kToken: {
      const ByteDfa& dfa = schema_->dfa(schema_->node(token_node_).dfa);
      const int32_t next = dfa.Next(dfa_state_, c);
      if (next != ByteDfa::kDead) {
        dfa_state_ = next;
        return true;
      }
      if (!dfa.Accepting(dfa_state_)) return false;
      ValueEnded();  // as a number: a byte that cannot continue it comes after it
      return Step(c);
    }
    case Mode::kEnum: {
      const JsonSchemaNode& e = schema_->node(enum_node_);
      uint64_t next = 0;
      bool complete = false;
      for (size_t i = 0; i < e.texts.size(); ++i) {
        if (!(enum_candidates_ >> i & 1)) continue;
        if (e.texts[i].size() == enum_matched_) complete = true;
        if (e.texts[i].size() > enum_matched_ && static_cast<uint8_t>(e.texts[i][enum_matched_]) == c) {
          next |= uint64_t{1} << i;
        }
      }
      if (next != 0) {
        enum_candidates_ = next;
        ++enum_matched_;
        return true;
      }
      if (!complete) return false;
      // A whole value, and c does not continue a longer one: it comes after the value. A tagged
      // union's tag chooses the object that the rest of the container follows.
      if (depth_ > 0) {
        Frame& f = frames_[depth_ - 1];
        const JsonSchemaNode& u = schema_->node(f.node);
        if (u.kind == Kind::kUnion) {
          for (size_t i = 0; i < e.texts.size(); ++i) {
            if ((enum_candidates_ >> i & 1) && e.texts[i].size() == enum_matched_) f.node = u.alternatives[i];
          }
        }
      }
      ValueEnded();
      return Step(c);
    }
  }
  return false;
}

uint16_t JsonGrammar::ItemNode(const JsonSchemaNode& array, uint32_t index) {
  return index < array.prefix_items.size() ? array.prefix_items[index] : array.items;
}

uint32_t JsonGrammar::KeyedCount(uint32_t count, uint32_t min, uint32_t max) const {
  // Past its minimum, a count matters only when there is a maximum to reach.
  return max == UINT32_MAX ? std::min(count, min) : count;
}

void JsonGrammar::AppendStateKey(std::string& key) const {
  Append(key, mode_);
  Append(key, whitespace_);
  Append(key, depth_);
  for (int d = 0; d < depth_; ++d) {
    const Frame& f = frames_[static_cast<size_t>(d)];
    const JsonSchemaNode& n = schema_->node(f.node);
    Append(key, f.node);
    Append(key, f.next_property);
    // Within a tuple's prefix the count says which item comes next.
    Append(key, KeyedCount(f.count, std::max<uint32_t>(n.min_items, static_cast<uint32_t>(n.prefix_items.size())), n.max_items));
  }
  // Only the fields the mode reads; the others keep stale values from earlier modes.
  switch (mode_) {
    case Mode::kValue:
    case Mode::kColon:
      Append(key, value_node_);
      break;
    case Mode::kString:
    case Mode::kEscape:
    case Mode::kHex:
    case Mode::kLowSurrogateBackslash:
    case Mode::kLowSurrogateU:
    case Mode::kUtf8: {
      Append(key, key_);
      Append(key, key_free_);
      if (key_ && !key_free_) {
        Append(key, key_candidates_);
        Append(key, key_matched_);
      } else if (!key_) {
        const JsonSchemaNode& s = schema_->node(string_node_);
        Append(key, string_node_);
        Append(key, KeyedCount(string_chars_, s.min_length, s.max_length));
        if (s.dfa >= 0) Append(key, dfa_state_);
      }
      if (mode_ == Mode::kHex) {
        Append(key, hex_left_);
        Append(key, hex_value_);
        Append(key, low_surrogate_);
      } else if (mode_ == Mode::kUtf8) {
        Append(key, utf8_left_);
        Append(key, utf8_min_);
        Append(key, utf8_max_);
      }
      break;
    }
    case Mode::kMinus:
    case Mode::kZero:
    case Mode::kInt:
    case Mode::kDot:
    case Mode::kFrac:
    case Mode::kExp:
    case Mode::kExpSign:
    case Mode::kExpDigits:
      Append(key, integer_only_);
      break;
    case Mode::kLiteral:
      Append(key, literal_);
      Append(key, literal_pos_);
      break;
    case Mode::kToken:
      Append(key, token_node_);
      Append(key, dfa_state_);
      break;
    case Mode::kEnum:
      Append(key, enum_node_);
      Append(key, enum_candidates_);
      Append(key, enum_matched_);
      break;
    default:
      break;
  }
}

}  // namespace moe
