// Unicode coverage: case mapping knows ASCII, Latin-1, Latin Extended-A, Greek and Cyrillic (plus
// U+00DF, which uppercases to "SS"); other scripts are treated as uncased, which is right for CJK and
// most symbols. Printability and whitespace follow CPython's tables for the characters chat text
// actually contains (controls, the Zs/Zl/Zp spaces, the common format characters).
#include "coordinator/openai/jinja/jinja_text.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "common/utf8.h"

namespace moe::jinja::text {
namespace {

constexpr char32_t kEscapedByteBase = 0xDC00;  // surrogateescape: U+DC80..U+DCFF hold raw bytes

bool InRange(char32_t c, char32_t lo, char32_t hi) { return c >= lo && c <= hi; }

// Returns the upper-case partner of c, or c when it has none. Lower-case partner below.
char32_t SimpleUpper(char32_t c) {
  if (InRange(c, 'a', 'z')) return c - 32;
  if (c < 0x80) return c;
  if (c == 0xB5) return 0x39C;
  if ((InRange(c, 0xE0, 0xFE) && c != 0xF7)) return c - 32;
  if (c == 0xFF) return 0x178;
  if (InRange(c, 0x100, 0x12F) || InRange(c, 0x132, 0x137) || InRange(c, 0x14A, 0x177)) {
    return (c % 2 == 1) ? c - 1 : c;
  }
  if (InRange(c, 0x139, 0x148) || InRange(c, 0x179, 0x17E)) return (c % 2 == 0) ? c - 1 : c;
  if (c == 0x131) return 'I';
  if (c == 0x17F) return 'S';
  if (InRange(c, 0x3B1, 0x3C9) && c != 0x3C2) return c - 32;
  if (c == 0x3C2) return 0x3A3;
  if (c == 0x3AC) return 0x386;
  if (InRange(c, 0x3AD, 0x3AF)) return c - 37;
  if (c == 0x3CC) return 0x38C;
  if (InRange(c, 0x3CD, 0x3CE)) return c - 63;
  if (InRange(c, 0x430, 0x44F)) return c - 32;
  if (InRange(c, 0x450, 0x45F)) return c - 80;
  return c;
}

char32_t SimpleLower(char32_t c) {
  if (InRange(c, 'A', 'Z')) return c + 32;
  if (c < 0x80) return c;
  if (InRange(c, 0xC0, 0xDE) && c != 0xD7) return c + 32;
  if (c == 0x178) return 0xFF;
  if (InRange(c, 0x100, 0x12F) || InRange(c, 0x132, 0x137) || InRange(c, 0x14A, 0x177)) {
    return (c % 2 == 0) ? c + 1 : c;
  }
  if (InRange(c, 0x139, 0x148) || InRange(c, 0x179, 0x17E)) return (c % 2 == 1) ? c + 1 : c;
  if (c == 0x130) return 'i';
  if (InRange(c, 0x391, 0x3A9) && c != 0x3A2) return c + 32;
  if (c == 0x386) return 0x3AC;
  if (InRange(c, 0x388, 0x38A)) return c + 37;
  if (c == 0x38C) return 0x3CC;
  if (InRange(c, 0x38E, 0x38F)) return c + 63;
  if (InRange(c, 0x410, 0x42F)) return c + 32;
  if (InRange(c, 0x400, 0x40F)) return c + 80;
  return c;
}

void AppendUpper(std::u32string& out, char32_t c) {
  if (c == 0xDF) {  // ß has no single upper-case letter
    out += U"SS";
    return;
  }
  out += SimpleUpper(c);
}

void AppendTitle(std::u32string& out, char32_t c) {
  if (c == 0xDF) {
    out += U"Ss";
    return;
  }
  out += SimpleUpper(c);
}

std::u32string CharSet(const std::optional<std::string>& chars) {
  return chars ? Decode(*chars) : std::u32string();
}

bool InSet(char32_t c, const std::optional<std::string>& chars, const std::u32string& set) {
  if (!chars) return IsSpace(c);
  return set.find(c) != std::u32string::npos;
}

bool IsPrintable(char32_t c) {
  if (c < 0x20 || c == 0x7F) return false;
  if (c < 0x7F) return true;
  if (InRange(c, 0x80, 0xA0) || c == 0xAD) return false;
  if (InRange(c, 0x600, 0x605) || c == 0x61C || c == 0x6DD || c == 0x70F || c == 0x180E) return false;
  if (c == 0x1680 || InRange(c, 0x2000, 0x200F) || InRange(c, 0x2028, 0x202F)) return false;
  if (InRange(c, 0x205F, 0x2064) || InRange(c, 0x2066, 0x206F) || c == 0x3000) return false;
  if (InRange(c, 0xD800, 0xF8FF) || c == 0xFEFF || InRange(c, 0xFFF9, 0xFFFB)) return false;
  if (c == 0xE0001 || InRange(c, 0xE0020, 0xE007F) || c >= 0xF0000) return false;
  return true;
}

void AppendHex(std::string& out, const char* prefix, uint32_t v, int digits) {
  char buf[16];
  std::snprintf(buf, sizeof(buf), "%s%0*x", prefix, digits, v);
  out += buf;
}

std::vector<std::string> EncodeAll(const std::vector<std::u32string>& parts) {
  std::vector<std::string> out;
  out.reserve(parts.size());
  for (const auto& p : parts) out.push_back(Encode(p));
  return out;
}

}  // namespace

std::u32string Decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = 0;
    const int len = DecodeUtf8(s, i, cp);
    if (len == 0) {  // a byte of no character (an overlong form, a surrogate, ...): kept as itself
      out += kEscapedByteBase + static_cast<unsigned char>(s[i]);
      ++i;
      continue;
    }
    out += static_cast<char32_t>(cp);
    i += static_cast<size_t>(len);
  }
  return out;
}

void AppendUtf8(std::string& out, char32_t cp) {
  if (InRange(cp, 0xDC80, 0xDCFF)) {
    out += static_cast<char>(cp - kEscapedByteBase);
  } else if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

std::string Encode(std::u32string_view cps) {
  std::string out;
  out.reserve(cps.size());
  for (char32_t c : cps) AppendUtf8(out, c);
  return out;
}

size_t CodePointCount(std::string_view s) {
  bool ascii = true;
  for (char c : s) ascii = ascii && static_cast<unsigned char>(c) < 0x80;
  return ascii ? s.size() : Decode(s).size();
}

bool IsSpace(char32_t c) {
  return c == ' ' || InRange(c, 0x09, 0x0D) || InRange(c, 0x1C, 0x1F) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || InRange(c, 0x2000, 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

bool IsLineBreak(char32_t c) {
  return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || InRange(c, 0x1C, 0x1E) || c == 0x85 ||
         c == 0x2028 || c == 0x2029;
}

bool IsDigit(char32_t c) { return InRange(c, '0', '9'); }

bool IsCased(char32_t c) {
  return SimpleUpper(c) != c || SimpleLower(c) != c || c == 0xDF || c == 0x138 || c == 0x149;
}

bool IsUpper(char32_t c) { return SimpleLower(c) != c; }
bool IsLower(char32_t c) { return SimpleUpper(c) != c || c == 0xDF || c == 0x138 || c == 0x149; }

namespace {

// At least one cased character, and none of the other case.
bool HasOnlyCase(std::string_view s, bool lower) {
  bool cased = false;
  for (char32_t c : Decode(s)) {
    if (lower ? IsUpper(c) : IsLower(c)) return false;
    cased |= lower ? IsLower(c) : IsUpper(c);
  }
  return cased;
}

}  // namespace

bool IsLowerString(std::string_view s) { return HasOnlyCase(s, true); }
bool IsUpperString(std::string_view s) { return HasOnlyCase(s, false); }

bool IsTitleString(std::string_view s) {
  // Upper-case letters only after uncased characters, lower-case ones only after cased ones.
  bool cased = false, previous_cased = false;
  for (char32_t c : Decode(s)) {
    if (IsUpper(c) || IsLower(c)) {
      if (IsUpper(c) == previous_cased) return false;
      previous_cased = cased = true;
    } else {
      previous_cased = false;
    }
  }
  return cased;
}

bool IsAlpha(char32_t c) {
  if (c < 0x80) return InRange(c, 'a', 'z') || InRange(c, 'A', 'Z');
  if (IsCased(c) || c == 0xAA || c == 0xBA) return true;
  // Uncased letters of other scripts: everything outside the punctuation, symbol and space blocks.
  if (c < 0xC0 || c == 0xD7 || c == 0xF7) return false;
  if (IsSpace(c) || !IsPrintable(c)) return false;
  if (InRange(c, 0x2000, 0x2BFF) || InRange(c, 0x3000, 0x303F) || InRange(c, 0xFE30, 0xFE4F) ||
      InRange(c, 0xFF00, 0xFF0F) || InRange(c, 0xFF1A, 0xFF20) || InRange(c, 0x1F000, 0x1FAFF)) {
    return false;
  }
  return true;
}

bool IsWordChar(char32_t c) { return c == '_' || IsDigit(c) || IsAlpha(c); }

std::string Upper(std::string_view s) {
  std::u32string out;
  for (char32_t c : Decode(s)) AppendUpper(out, c);
  return Encode(out);
}

std::string Lower(std::string_view s) {
  std::u32string out;
  for (char32_t c : Decode(s)) out += SimpleLower(c);
  return Encode(out);
}

std::string Title(std::string_view s) {
  std::u32string out;
  bool previous_cased = false;
  for (char32_t c : Decode(s)) {
    if (previous_cased) {
      out += SimpleLower(c);
    } else {
      AppendTitle(out, c);
    }
    previous_cased = IsCased(c);
  }
  return Encode(out);
}

std::string Capitalize(std::string_view s) {
  const std::u32string in = Decode(s);
  std::u32string out;
  for (size_t i = 0; i < in.size(); ++i) {
    if (i == 0) {
      AppendTitle(out, in[i]);
    } else {
      out += SimpleLower(in[i]);
    }
  }
  return Encode(out);
}

std::string JinjaTitle(std::string_view s) {
  // jinja2: "".join(w[0].upper() + w[1:].lower() for w in re.split(r"([-\s({\[<]+)", s) if w)
  const std::u32string in = Decode(s);
  auto is_sep = [](char32_t c) {
    return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || IsSpace(c);
  };
  std::u32string out;
  size_t i = 0;
  while (i < in.size()) {
    const bool sep = is_sep(in[i]);
    size_t j = i;
    while (j < in.size() && is_sep(in[j]) == sep) ++j;
    for (size_t k = i; k < j; ++k) {
      if (k == i) {
        AppendUpper(out, in[k]);
      } else {
        out += SimpleLower(in[k]);
      }
    }
    i = j;
  }
  return Encode(out);
}

std::string Strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right) {
  const std::u32string in = Decode(s);
  const std::u32string set = CharSet(chars);
  size_t begin = 0, end = in.size();
  if (left) {
    while (begin < end && InSet(in[begin], chars, set)) ++begin;
  }
  if (right) {
    while (end > begin && InSet(in[end - 1], chars, set)) --end;
  }
  return Encode(std::u32string_view(in).substr(begin, end - begin));
}

std::vector<std::string> Split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit) {
  const std::u32string in = Decode(s);
  std::vector<std::u32string> parts;
  if (!sep) {
    size_t i = 0;
    while (true) {
      while (i < in.size() && IsSpace(in[i])) ++i;
      if (i == in.size()) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        parts.push_back(in.substr(i));
        break;
      }
      size_t j = i;
      while (j < in.size() && !IsSpace(in[j])) ++j;
      parts.push_back(in.substr(i, j - i));
      i = j;
    }
    return EncodeAll(parts);
  }
  const std::u32string needle = Decode(*sep);
  size_t start = 0;
  while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
    const size_t at = in.find(needle, start);
    if (at == std::u32string::npos) break;
    parts.push_back(in.substr(start, at - start));
    start = at + needle.size();
  }
  parts.push_back(in.substr(start));
  return EncodeAll(parts);
}

std::vector<std::string> RSplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit) {
  const std::u32string in = Decode(s);
  std::vector<std::u32string> parts;  // collected right to left
  if (!sep) {
    size_t end = in.size();
    while (true) {
      while (end > 0 && IsSpace(in[end - 1])) --end;
      if (end == 0) break;
      if (maxsplit >= 0 && static_cast<int64_t>(parts.size()) == maxsplit) {
        parts.push_back(in.substr(0, end));
        break;
      }
      size_t begin = end;
      while (begin > 0 && !IsSpace(in[begin - 1])) --begin;
      parts.push_back(in.substr(begin, end - begin));
      end = begin;
    }
  } else {
    const std::u32string needle = Decode(*sep);
    size_t end = in.size();
    while (maxsplit < 0 || static_cast<int64_t>(parts.size()) < maxsplit) {
      if (end < needle.size()) break;
      const size_t at = in.rfind(needle, end - needle.size());
      if (at == std::u32string::npos) break;
      parts.push_back(in.substr(at + needle.size(), end - at - needle.size()));
      end = at;
    }
    parts.push_back(in.substr(0, end));
  }
  return EncodeAll(std::vector<std::u32string>(parts.rbegin(), parts.rend()));
}

std::vector<std::string> SplitLines(std::string_view s, bool keepends) {
  const std::u32string in = Decode(s);
  std::vector<std::u32string> parts;
  size_t start = 0, i = 0;
  while (i < in.size()) {
    if (!IsLineBreak(in[i])) {
      ++i;
      continue;
    }
    size_t eol = i + 1;
    if (in[i] == '\r' && eol < in.size() && in[eol] == '\n') ++eol;
    parts.push_back(in.substr(start, (keepends ? eol : i) - start));
    start = i = eol;
  }
  if (start < in.size()) parts.push_back(in.substr(start));
  return EncodeAll(parts);
}

std::string Replace(std::string_view s, std::string_view old, std::string_view replacement, int64_t count) {
  const std::u32string in = Decode(s), from = Decode(old), to = Decode(replacement);
  std::u32string out;
  if (from.empty()) {
    // Python inserts the replacement before every code point and at the end.
    int64_t done = 0;
    for (char32_t c : in) {
      if (count < 0 || done < count) out += to, ++done;
      out += c;
    }
    if (count < 0 || done < count) out += to;
    return Encode(out);
  }
  size_t start = 0;
  int64_t done = 0;
  while (count < 0 || done < count) {
    const size_t at = in.find(from, start);
    if (at == std::u32string::npos) break;
    out.append(in, start, at - start);
    out += to;
    start = at + from.size();
    ++done;
  }
  out.append(in, start, std::u32string::npos);
  return Encode(out);
}

int64_t Find(std::string_view s, std::string_view sub) {
  const size_t at = Decode(s).find(Decode(sub));
  return at == std::u32string::npos ? -1 : static_cast<int64_t>(at);
}

int64_t RFind(std::string_view s, std::string_view sub) {
  const size_t at = Decode(s).rfind(Decode(sub));
  return at == std::u32string::npos ? -1 : static_cast<int64_t>(at);
}

int64_t Count(std::string_view s, std::string_view sub) {
  const std::u32string in = Decode(s), needle = Decode(sub);
  if (needle.empty()) return static_cast<int64_t>(in.size()) + 1;
  int64_t n = 0;
  for (size_t at = in.find(needle); at != std::u32string::npos; at = in.find(needle, at + needle.size())) ++n;
  return n;
}

std::string Center(std::string_view s, int64_t width) {
  const int64_t len = static_cast<int64_t>(CodePointCount(s));
  if (width <= len) return std::string(s);
  const int64_t pad = width - len;
  const int64_t left = pad / 2 + (pad & width & 1);  // CPython's rounding of the odd space
  return std::string(left, ' ') + std::string(s) + std::string(pad - left, ' ');
}

std::string PyRepr(std::string_view s) {
  const std::u32string in = Decode(s);
  const bool has_single = in.find(U'\'') != std::u32string::npos;
  const bool has_double = in.find(U'"') != std::u32string::npos;
  const char32_t quote = (has_single && !has_double) ? U'"' : U'\'';
  std::string out(1, static_cast<char>(quote));
  for (char32_t c : in) {
    if (c == quote || c == '\\') {
      out += '\\';
      AppendUtf8(out, c);
    } else if (c == '\t') {
      out += "\\t";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (InRange(c, 0xDC80, 0xDCFF)) {
      AppendHex(out, "\\udc", c & 0xFF, 2);
    } else if (IsPrintable(c)) {
      AppendUtf8(out, c);
    } else if (c <= 0xFF) {
      AppendHex(out, "\\x", c, 2);
    } else if (c <= 0xFFFF) {
      AppendHex(out, "\\u", c, 4);
    } else {
      AppendHex(out, "\\U", c, 8);
    }
  }
  out += static_cast<char>(quote);
  return out;
}

std::string JsonQuote(std::string_view s, bool ensure_ascii) {
  std::string out = "\"";
  for (char32_t c : Decode(s)) {
    switch (c) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      default:
        break;
    }
    if (c < 0x20 || (ensure_ascii && c >= 0x7F)) {
      if (c > 0xFFFF) {  // a surrogate pair, as json.dumps writes astral characters
        const char32_t v = c - 0x10000;
        AppendHex(out, "\\u", 0xD800 + (v >> 10), 4);
        AppendHex(out, "\\u", 0xDC00 + (v & 0x3FF), 4);
      } else {
        AppendHex(out, "\\u", c, 4);
      }
    } else {
      AppendUtf8(out, c);
    }
  }
  out += '"';
  return out;
}

std::string FormatFloat(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  // Shortest round-trip digits, then CPython's layout: fixed notation for decimal exponents in
  // [-4, 16), otherwise d.ddde±XX.
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string sci(buf, result.ptr);
  const bool negative = sci[0] == '-';
  if (negative) sci.erase(0, 1);
  const size_t e = sci.find('e');
  std::string digits = sci.substr(0, e);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  const int exponent = std::stoi(sci.substr(e + 1));
  const int decpt = exponent + 1;  // position of the decimal point relative to the digits
  std::string out = negative ? "-" : "";
  const int ndigits = static_cast<int>(digits.size());
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0." + std::string(-decpt, '0') + digits;
    } else if (decpt >= ndigits) {
      out += digits + std::string(decpt - ndigits, '0') + ".0";
    } else {
      out += digits.substr(0, decpt) + "." + digits.substr(decpt);
    }
    return out;
  }
  out += digits.substr(0, 1);
  if (ndigits > 1) out += "." + digits.substr(1);
  char exp_buf[16];
  std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return out + exp_buf;
}

std::string HtmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace moe::jinja::text
