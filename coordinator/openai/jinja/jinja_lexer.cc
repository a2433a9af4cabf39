#include "coordinator/openai/jinja/jinja_lexer.h"

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/hex_digit.h"
#include "coordinator/openai/jinja/jinja_text.h"

namespace moe::jinja {
namespace {

// jinja2 turns \r\n and \r into \n everywhere and drops one trailing newline (keep_trailing_newline=False).
std::string NormalizeNewlines(std::string_view source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

// Byte length of the whitespace character (regex \s) at `pos`, or 0.
size_t SpaceAt(const std::string& s, size_t pos) {
  if (pos >= s.size()) return 0;
  const auto c = static_cast<unsigned char>(s[pos]);
  if (c < 0x80) return text::IsSpace(c) ? 1 : 0;
  size_t len = 1;
  while (pos + len < s.size() && len < 4 && (static_cast<unsigned char>(s[pos + len]) & 0xC0) == 0x80) ++len;
  const std::u32string cp = text::Decode(std::string_view(s).substr(pos, len));
  return cp.size() == 1 && text::IsSpace(cp[0]) ? len : 0;
}

bool AllSpace(const std::string& s, size_t from) {
  if (from >= s.size()) return false;  // `\s+` needs at least one character
  for (size_t i = from; i < s.size();) {
    const size_t n = SpaceAt(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool IsNameStart(unsigned char c) { return std::isalpha(c) || c == '_' || c >= 0x80; }
bool IsNameChar(unsigned char c) { return std::isalnum(c) || c == '_' || c >= 0x80; }

class Lexer {
 public:
  explicit Lexer(std::string_view source) : src_(NormalizeNewlines(source)) {}

  absl::StatusOr<std::vector<Token>> Run() {
    while (pos_ < src_.size()) {
      if (!LexRoot()) return status_;
    }
    Emit(TokenKind::kEof, "");
    return std::move(tokens_);
  }

 private:
  bool Error(int line, std::string message) {
    status_ = absl::InvalidArgumentError(absl::StrCat("template syntax error at line ", line, ": ", message));
    return false;
  }

  void Emit(TokenKind kind, std::string value) {
    Token t;
    t.kind = kind;
    t.value = std::move(value);
    t.line = line_;
    tokens_.push_back(std::move(t));
  }

  // Moves past src_[pos_, end) counting lines.
  void Advance(size_t end) {
    for (; pos_ < end; ++pos_) line_ += src_[pos_] == '\n';
  }

  // Text before a tag: '-' strips all whitespace before it; otherwise lstrip_blocks removes the
  // indentation of a block or comment tag that starts its line.
  void EmitText(std::string text, char sign, bool is_variable) {
    if (sign == '-') {
      text = text::Strip(text, std::nullopt, false, true);
    } else if (sign != '+' && !is_variable) {
      const size_t newline = text.rfind('\n');
      const size_t line_start = newline == std::string::npos ? 0 : newline + 1;
      if ((line_start > 0 || line_starting_) && AllSpace(text, line_start)) text.resize(line_start);
    }
    if (!text.empty()) Emit(TokenKind::kText, std::move(text));
  }

  // The end of a block or comment tag: '-' eats all following whitespace, '+' keeps it, and otherwise
  // trim_blocks removes one newline. Sets line_starting_ as jinja2 does: did the match end in "\n"?
  void FinishTagEnd(size_t after_delimiter, char sign, bool trim_newline) {
    size_t end = after_delimiter;
    if (sign == '-') {
      while (size_t n = SpaceAt(src_, end)) end += n;
    } else if (sign != '+' && trim_newline && end < src_.size() && src_[end] == '\n') {
      ++end;
    }
    line_starting_ = end > 0 && src_[end - 1] == '\n';
    Advance(end);
  }

  bool LexRoot() {
    size_t tag = std::string::npos;
    for (size_t i = src_.find('{', pos_); i != std::string::npos; i = src_.find('{', i + 1)) {
      if (i + 1 < src_.size() && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) {
        tag = i;
        break;
      }
    }
    if (tag == std::string::npos) {
      Emit(TokenKind::kText, src_.substr(pos_));
      Advance(src_.size());
      return true;
    }
    const char kind = src_[tag + 1];
    size_t body = tag + 2;
    char sign = 0;
    if (body < src_.size() && (src_[body] == '-' || src_[body] == '+')) sign = src_[body++];
    std::string text = src_.substr(pos_, tag - pos_);
    if (kind == '%') {
      if (std::optional<size_t> raw_end = MatchRawBegin(body)) {
        EmitText(std::move(text), sign, false);
        Advance(tag);
        return LexRaw(*raw_end);
      }
    }
    EmitText(std::move(text), sign, kind == '{');
    Advance(body);
    if (kind == '#') {
      const size_t close = src_.find("#}", body);
      if (close == std::string::npos) return Error(line_, "missing end of comment tag");
      const char end_sign =
          (close > body && (src_[close - 1] == '-' || src_[close - 1] == '+')) ? src_[close - 1] : 0;
      FinishTagEnd(close + 2, end_sign, true);
      return true;
    }
    const bool is_block = kind == '%';
    Emit(is_block ? TokenKind::kBlockBegin : TokenKind::kVariableBegin, is_block ? "{%" : "{{");
    return LexTag(is_block);
  }

  // `{% raw %}` (with optional whitespace control) starting right after "{%" and its sign; returns the
  // position after the tag.
  std::optional<size_t> MatchRawBegin(size_t p) const {
    while (size_t n = SpaceAt(src_, p)) p += n;
    if (src_.compare(p, 3, "raw") != 0) return std::nullopt;
    p += 3;
    while (size_t n = SpaceAt(src_, p)) p += n;
    if (src_.compare(p, 3, "-%}") == 0) {
      p += 3;
      while (size_t n = SpaceAt(src_, p)) p += n;
      return p;
    }
    if (src_.compare(p, 2, "%}") == 0) return p + 2;
    return std::nullopt;
  }

  bool LexRaw(size_t raw_begin_end) {
    const int start_line = line_;
    line_starting_ = raw_begin_end > 0 && src_[raw_begin_end - 1] == '\n';
    Advance(raw_begin_end);
    for (size_t i = src_.find("{%", pos_); i != std::string::npos; i = src_.find("{%", i + 1)) {
      size_t p = i + 2;
      char sign = 0;
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) sign = src_[p++];
      while (size_t n = SpaceAt(src_, p)) p += n;
      if (src_.compare(p, 6, "endraw") != 0) continue;
      p += 6;
      while (size_t n = SpaceAt(src_, p)) p += n;
      char end_sign = 0;
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) end_sign = src_[p++];
      if (src_.compare(p, 2, "%}") != 0) continue;
      EmitText(src_.substr(pos_, i - pos_), sign, false);
      Advance(i);
      FinishTagEnd(p + 2, end_sign, true);
      return true;
    }
    return Error(start_line, "missing end of raw directive ({% endraw %})");
  }

  bool LexTag(bool is_block) {
    std::vector<char> brackets;  // closers expected, innermost last
    while (true) {
      while (size_t n = SpaceAt(src_, pos_)) Advance(pos_ + n);
      if (pos_ >= src_.size()) return true;  // the parser reports the missing end of the tag
      if (brackets.empty()) {
        if (is_block) {
          if (src_.compare(pos_, 3, "-%}") == 0 || src_.compare(pos_, 3, "+%}") == 0) {
            Emit(TokenKind::kBlockEnd, "%}");
            FinishTagEnd(pos_ + 3, src_[pos_], true);
            return true;
          }
          if (src_.compare(pos_, 2, "%}") == 0) {
            Emit(TokenKind::kBlockEnd, "%}");
            FinishTagEnd(pos_ + 2, 0, true);
            return true;
          }
        } else {
          if (src_.compare(pos_, 3, "-}}") == 0) {
            Emit(TokenKind::kVariableEnd, "}}");
            FinishTagEnd(pos_ + 3, '-', false);
            return true;
          }
          if (src_.compare(pos_, 2, "}}") == 0) {
            Emit(TokenKind::kVariableEnd, "}}");
            FinishTagEnd(pos_ + 2, 0, false);
            return true;
          }
        }
      }
      if (!LexExpressionToken(brackets)) return false;
    }
  }

  bool LexExpressionToken(std::vector<char>& brackets) {
    const auto c = static_cast<unsigned char>(src_[pos_]);
    if (std::isdigit(c)) return LexNumber();
    if (IsNameStart(c)) {
      size_t end = pos_ + 1;
      while (end < src_.size() && IsNameChar(static_cast<unsigned char>(src_[end]))) ++end;
      Emit(TokenKind::kName, src_.substr(pos_, end - pos_));
      Advance(end);
      return true;
    }
    if (c == '\'' || c == '"') return LexString();
    static constexpr std::string_view kTwoCharOps[] = {"//", "**", "==", "!=", ">=", "<="};
    for (std::string_view op : kTwoCharOps) {
      if (src_.compare(pos_, 2, op) == 0) {
        Emit(TokenKind::kOperator, std::string(op));
        Advance(pos_ + 2);
        return true;
      }
    }
    static constexpr std::string_view kOneCharOps = "+-/*%~[](){}<>=.:|,;";
    if (kOneCharOps.find(static_cast<char>(c)) == std::string_view::npos) {
      return Error(line_,
                   absl::StrCat("unexpected character ", text::PyRepr(std::string(1, static_cast<char>(c)))));
    }
    if (c == '(' || c == '[' || c == '{') {
      brackets.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
    } else if (c == ')' || c == ']' || c == '}') {
      if (brackets.empty())
        return Error(line_, absl::StrCat("unexpected '", std::string(1, static_cast<char>(c)), "'"));
      if (brackets.back() != static_cast<char>(c)) {
        return Error(line_, absl::StrCat("unexpected '", std::string(1, static_cast<char>(c)),
                                         "', expected '", std::string(1, brackets.back()), "'"));
      }
      brackets.pop_back();
    }
    Emit(TokenKind::kOperator, std::string(1, static_cast<char>(c)));
    Advance(pos_ + 1);
    return true;
  }

  // Digits with optional '_' separators, as in (\d+_)*\d+. Returns the end position.
  size_t DigitRun(size_t p) const {
    size_t end = p;
    while (end < src_.size() && std::isdigit(static_cast<unsigned char>(src_[end]))) {
      ++end;
      if (end + 1 < src_.size() && src_[end] == '_' &&
          std::isdigit(static_cast<unsigned char>(src_[end + 1])))
        ++end;
    }
    return end;
  }

  bool LexNumber() {
    // Float first, as jinja2 tries it first: digits then a fraction and/or an exponent; never right
    // after a '.' (so `x.0.1` is attribute access).
    const bool after_dot = pos_ > 0 && src_[pos_ - 1] == '.';
    size_t end = DigitRun(pos_);
    bool is_float = false;
    if (!after_dot) {
      size_t p = end;
      if (p + 1 < src_.size() && src_[p] == '.' && std::isdigit(static_cast<unsigned char>(src_[p + 1]))) {
        p = DigitRun(p + 1);
        is_float = true;
      }
      if (p < src_.size() && (src_[p] == 'e' || src_[p] == 'E')) {
        size_t q = p + 1;
        if (q < src_.size() && (src_[q] == '+' || src_[q] == '-')) ++q;
        if (q < src_.size() && std::isdigit(static_cast<unsigned char>(src_[q]))) {
          p = DigitRun(q);
          is_float = true;
        }
      }
      if (is_float) end = p;
    }
    if (!is_float) return LexInteger();
    Token t;
    t.kind = TokenKind::kFloat;
    t.line = line_;
    t.value = src_.substr(pos_, end - pos_);
    std::string digits;
    for (char ch : t.value) {
      if (ch != '_') digits += ch;
    }
    t.float_value = std::strtod(digits.c_str(), nullptr);
    tokens_.push_back(std::move(t));
    Advance(end);
    return true;
  }

  bool LexInteger() {
    int base = 10;
    size_t p = pos_;
    if (src_[p] == '0' && p + 1 < src_.size()) {
      const char x = static_cast<char>(std::tolower(static_cast<unsigned char>(src_[p + 1])));
      if (x == 'b' || x == 'o' || x == 'x') {
        base = x == 'b' ? 2 : x == 'o' ? 8 : 16;
        p += 2;
      }
    }
    std::string digits;
    size_t end = p;
    while (end < src_.size()) {
      const char ch = src_[end];
      const int v = HexDigitValue(ch);
      if (ch == '_' && !digits.empty() && end + 1 < src_.size() && HexDigitValue(src_[end + 1]) >= 0 &&
          HexDigitValue(src_[end + 1]) < base) {
        ++end;
        continue;
      }
      if (v < 0 || v >= base) break;
      digits += ch;
      ++end;
      // A decimal literal starting with 0 is only zeros (jinja2's `0(_?0)*`).
      if (base == 10 && digits == "0") {
        while (end < src_.size() &&
               (src_[end] == '0' || (src_[end] == '_' && end + 1 < src_.size() && src_[end + 1] == '0')))
          ++end;
        break;
      }
    }
    if (digits.empty()) return Error(line_, "invalid integer literal");
    errno = 0;
    char* parse_end = nullptr;
    const unsigned long long v = std::strtoull(digits.c_str(), &parse_end, base);
    if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX)) {
      return Error(line_, "integer literal is too large for this engine's 64-bit integers");
    }
    Token t;
    t.kind = TokenKind::kInteger;
    t.line = line_;
    t.value = src_.substr(pos_, end - pos_);
    t.int_value = static_cast<int64_t>(v);
    tokens_.push_back(std::move(t));
    Advance(end);
    return true;
  }

  bool LexString() {
    const char quote = src_[pos_];
    const int start_line = line_;
    size_t end = pos_ + 1;
    while (end < src_.size() && src_[end] != quote) end += (src_[end] == '\\') ? 2 : 1;
    if (end >= src_.size()) return Error(start_line, "unterminated string literal");
    std::string decoded;
    if (!DecodeEscapes(std::string_view(src_).substr(pos_ + 1, end - pos_ - 1), decoded)) {
      return Error(start_line, "invalid escape sequence in string literal");
    }
    Token t;
    t.kind = TokenKind::kString;
    t.line = start_line;
    t.value = std::move(decoded);
    tokens_.push_back(std::move(t));
    Advance(end + 1);
    return true;
  }

  // Python's "unicode-escape" decoding, which jinja2 applies to string literals.
  static bool DecodeEscapes(std::string_view in, std::string& out) {
    for (size_t i = 0; i < in.size(); ++i) {
      if (in[i] != '\\' || i + 1 >= in.size()) {
        out += in[i];
        continue;
      }
      const char e = in[++i];
      switch (e) {
        case '\n':
          break;  // line continuation
        case '\\':
          out += '\\';
          break;
        case '\'':
          out += '\'';
          break;
        case '"':
          out += '"';
          break;
        case 'a':
          out += '\a';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'v':
          out += '\v';
          break;
        case 'x':
        case 'u':
        case 'U': {
          const size_t n = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          char32_t cp = 0;
          for (size_t k = 1; k <= n; ++k) {
            if (i + k >= in.size()) return false;
            const int v = HexDigitValue(in[i + k]);
            if (v < 0) return false;
            cp = cp * 16 + v;
          }
          if (cp > 0x10FFFF) return false;
          text::AppendUtf8(out, cp);
          i += n;
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            char32_t cp = e - '0';
            for (int k = 0; k < 2 && i + 1 < in.size() && in[i + 1] >= '0' && in[i + 1] <= '7'; ++k) {
              cp = cp * 8 + (in[++i] - '0');
            }
            text::AppendUtf8(out, cp);
          } else {
            out += '\\';  // unknown escapes stay as written
            out += e;
          }
      }
    }
    return true;
  }

  std::string src_;
  size_t pos_ = 0;
  int line_ = 1;
  bool line_starting_ = true;
  std::vector<Token> tokens_;
  absl::Status status_;
};

}  // namespace

absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source) { return Lexer(source).Run(); }

std::string Describe(const Token& token) {
  switch (token.kind) {
    case TokenKind::kText:
      return "template text";
    case TokenKind::kVariableBegin:
      return "'{{'";
    case TokenKind::kVariableEnd:
      return "end of print statement '}}'";
    case TokenKind::kBlockBegin:
      return "'{%'";
    case TokenKind::kBlockEnd:
      return "end of statement block '%}'";
    case TokenKind::kName:
      return "'" + token.value + "'";
    case TokenKind::kString:
      return "string " + text::PyRepr(token.value);
    case TokenKind::kInteger:
    case TokenKind::kFloat:
      return "number " + token.value;
    case TokenKind::kOperator:
      return "'" + token.value + "'";
    case TokenKind::kEof:
      return "end of template";
  }
  return "token";
}

}  // namespace moe::jinja
