#include "worker/json_grammar.h"

namespace moe {
namespace {

constexpr std::string_view kLiterals[] = {"true", "false", "null"};

bool IsSpace(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool IsDigit(uint8_t c) { return c >= '0' && c <= '9'; }
int HexValue(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool JsonObjectGrammar::Push(bool object) {
  if (depth_ == kMaxDepth) return false;
  is_object_[depth_++] = object;
  mode_ = object ? Mode::kKeyFirst : Mode::kArrayFirst;
  return true;
}

bool JsonObjectGrammar::StartValue(uint8_t c) {
  switch (c) {
    case '{': return Push(true);
    case '[': return Push(false);
    case '"':
      key_ = false;
      mode_ = Mode::kString;
      return true;
    case '-': mode_ = Mode::kMinus; return true;
    case '0': mode_ = Mode::kZero; return true;
    case 't': case 'f': case 'n':
      literal_ = c == 't' ? 0 : c == 'f' ? 1 : 2;
      literal_pos_ = 1;
      mode_ = Mode::kLiteral;
      return true;
    default:
      if (c >= '1' && c <= '9') {
        mode_ = Mode::kInt;
        return true;
      }
      return false;
  }
}

void JsonObjectGrammar::AppendStateKey(std::string& key) const {
  key.push_back(static_cast<char>(mode_));
  key.push_back(static_cast<char>(whitespace_run_));
  key.push_back(static_cast<char>(depth_));
  for (int d = 0; d < depth_; ++d) key.push_back(is_object_[static_cast<size_t>(d)] ? 'o' : 'a');
  // Only the fields the mode reads; the others keep stale values from earlier modes.
  switch (mode_) {
    case Mode::kString:
    case Mode::kEscape:
    case Mode::kLowSurrogateBackslash:
    case Mode::kLowSurrogateU:
      key.push_back(key_ ? 'k' : 'v');
      break;
    case Mode::kHex:
      key.push_back(key_ ? 'k' : 'v');
      key.push_back(static_cast<char>(hex_left_));
      key.push_back(static_cast<char>(hex_value_ & 0xFF));
      key.push_back(static_cast<char>(hex_value_ >> 8));
      key.push_back(low_surrogate_ ? 'l' : 'h');
      break;
    case Mode::kUtf8:
      key.push_back(key_ ? 'k' : 'v');
      key.push_back(static_cast<char>(utf8_left_));
      key.push_back(static_cast<char>(utf8_min_));
      key.push_back(static_cast<char>(utf8_max_));
      break;
    case Mode::kLiteral:
      key.push_back(static_cast<char>(literal_));
      key.push_back(static_cast<char>(literal_pos_));
      break;
    default:
      break;
  }
}

bool JsonObjectGrammar::Feed(std::string_view bytes) {
  for (char ch : bytes) {
    if (!Feed(static_cast<uint8_t>(ch))) return false;
  }
  return true;
}

bool JsonObjectGrammar::Feed(uint8_t c) {
  // Whitespace outside a string, a literal or an escape separates tokens (it also ends a number).
  const bool separator = IsSpace(c) && mode_ != Mode::kString && mode_ != Mode::kEscape && mode_ != Mode::kHex &&
                         mode_ != Mode::kUtf8 && mode_ != Mode::kLowSurrogateBackslash &&
                         mode_ != Mode::kLowSurrogateU && mode_ != Mode::kLiteral;
  if (separator && whitespace_run_ >= kMaxWhitespaceRun) return false;
  const JsonObjectGrammar saved = *this;
  bool ok = false;
  // A number has no end mark: a byte that cannot continue it ends it and is read after it.
  auto end_number = [&] {
    ValueEnded();
    return Feed(c);  // in kAfterValue: restores its own state when refused
  };
  switch (mode_) {
    case Mode::kStart:
      ok = IsSpace(c) || (c == '{' && Push(true));
      break;
    case Mode::kDone:
      ok = IsSpace(c);
      break;
    case Mode::kValue:
      ok = IsSpace(c) || StartValue(c);
      break;
    case Mode::kArrayFirst:
      if (IsSpace(c)) {
        ok = true;
      } else if (c == ']') {
        --depth_;
        ValueEnded();
        ok = true;
      } else {
        ok = StartValue(c);
      }
      break;
    case Mode::kKeyFirst:
    case Mode::kKey:
      if (IsSpace(c)) {
        ok = true;
      } else if (c == '"') {
        key_ = true;
        mode_ = Mode::kString;
        ok = true;
      } else if (c == '}' && mode_ == Mode::kKeyFirst) {
        --depth_;
        ValueEnded();
        ok = true;
      }
      break;
    case Mode::kColon:
      if (IsSpace(c)) {
        ok = true;
      } else if (c == ':') {
        mode_ = Mode::kValue;
        ok = true;
      }
      break;
    case Mode::kAfterValue: {
      const bool object = is_object_[depth_ - 1];
      if (IsSpace(c)) {
        ok = true;
      } else if (c == ',') {
        mode_ = object ? Mode::kKey : Mode::kValue;
        ok = true;
      } else if (c == (object ? '}' : ']')) {
        --depth_;
        ValueEnded();
        ok = true;
      }
      break;
    }
    case Mode::kString:
      if (c == '"') {
        if (key_) {
          mode_ = Mode::kColon;
        } else {
          ValueEnded();
        }
        ok = true;
      } else if (c == '\\') {
        mode_ = Mode::kEscape;
        ok = true;
      } else if (c < 0x20) {
        ok = false;
      } else if (c < 0x80) {
        ok = true;
      } else {
        // The lead byte of a multi-byte character: how many continuation bytes, and the range of
        // the first (RFC 3629's table: no overlong forms, no surrogates, nothing past U+10FFFF).
        ok = true;
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
          ok = false;
        }
        if (ok) mode_ = Mode::kUtf8;
      }
      break;
    case Mode::kUtf8:
      if (c >= utf8_min_ && c <= utf8_max_) {
        utf8_min_ = 0x80;
        utf8_max_ = 0xBF;
        if (--utf8_left_ == 0) mode_ = Mode::kString;
        ok = true;
      }
      break;
    case Mode::kEscape:
      switch (c) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
          mode_ = Mode::kString;
          ok = true;
          break;
        case 'u':
          mode_ = Mode::kHex;
          hex_left_ = 4;
          hex_value_ = 0;
          low_surrogate_ = false;
          ok = true;
          break;
        default:
          break;
      }
      break;
    case Mode::kLowSurrogateBackslash:
      ok = c == '\\';
      if (ok) mode_ = Mode::kLowSurrogateU;
      break;
    case Mode::kLowSurrogateU:
      ok = c == 'u';
      if (ok) {
        mode_ = Mode::kHex;
        hex_left_ = 4;
        hex_value_ = 0;
        low_surrogate_ = true;
      }
      break;
    case Mode::kHex: {
      const int h = HexValue(c);
      if (h < 0) break;
      hex_value_ = static_cast<uint16_t>(hex_value_ << 4 | h);
      --hex_left_;
      // Refused as soon as no digits could complete it: a low surrogate is DC00-DFFF and must
      // follow a high one (D800-DBFF); alone it is an error.
      const int seen = 4 - hex_left_;
      if (low_surrogate_) {
        ok = seen == 1 ? hex_value_ == 0xD : seen == 2 ? hex_value_ >= 0xDC && hex_value_ <= 0xDF : true;
      } else {
        ok = seen != 2 || hex_value_ < 0xDC || hex_value_ > 0xDF;
      }
      if (ok && hex_left_ == 0) {
        mode_ = !low_surrogate_ && hex_value_ >= 0xD800 && hex_value_ <= 0xDBFF ? Mode::kLowSurrogateBackslash
                                                                               : Mode::kString;
      }
      break;
    }
    case Mode::kMinus:
      if (c == '0') {
        mode_ = Mode::kZero;
        ok = true;
      } else if (c >= '1' && c <= '9') {
        mode_ = Mode::kInt;
        ok = true;
      }
      break;
    case Mode::kZero:
    case Mode::kInt:
      if (mode_ == Mode::kInt && IsDigit(c)) {
        ok = true;
      } else if (c == '.') {
        mode_ = Mode::kDot;
        ok = true;
      } else if (c == 'e' || c == 'E') {
        mode_ = Mode::kExp;
        ok = true;
      } else {
        ok = end_number();
      }
      break;
    case Mode::kDot:
      ok = IsDigit(c);
      if (ok) mode_ = Mode::kFrac;
      break;
    case Mode::kFrac:
      if (IsDigit(c)) {
        ok = true;
      } else if (c == 'e' || c == 'E') {
        mode_ = Mode::kExp;
        ok = true;
      } else {
        ok = end_number();
      }
      break;
    case Mode::kExp:
      if (c == '+' || c == '-') {
        mode_ = Mode::kExpSign;
        ok = true;
      } else if (IsDigit(c)) {
        mode_ = Mode::kExpDigits;
        ok = true;
      }
      break;
    case Mode::kExpSign:
      ok = IsDigit(c);
      if (ok) mode_ = Mode::kExpDigits;
      break;
    case Mode::kExpDigits:
      ok = IsDigit(c) || end_number();
      break;
    case Mode::kLiteral: {
      const std::string_view lit = kLiterals[literal_];
      ok = c == static_cast<uint8_t>(lit[literal_pos_]);
      if (ok && ++literal_pos_ == lit.size()) ValueEnded();
      break;
    }
  }
  if (!ok) {
    *this = saved;
    return false;
  }
  whitespace_run_ = separator ? static_cast<uint8_t>(saved.whitespace_run_ + 1) : 0;
  return true;
}

}  // namespace moe
