// Python's str semantics on UTF-8 text: what jinja2 templates see when they call str methods, print
// values or serialize JSON. Chat templates slice, strip, split and case-map message text, so these must
// agree with CPython code point for code point (within the Unicode subset documented in jinja_text.cc).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moe::jinja::text {

// Decoding never fails: a byte that is not valid UTF-8 becomes U+DC80..U+DCFF (Python's
// "surrogateescape"), and Encode turns it back into the same byte, so odd input round-trips unchanged.
std::u32string Decode(std::string_view utf8);
std::string Encode(std::u32string_view code_points);
void AppendUtf8(std::string& out, char32_t cp);
size_t CodePointCount(std::string_view utf8);

bool IsSpace(char32_t c);      // str.isspace / the separators of str.split()
bool IsLineBreak(char32_t c);  // the boundaries of str.splitlines
bool IsDigit(char32_t c);
bool IsAlpha(char32_t c);
bool IsWordChar(char32_t c);  // regex \w
bool IsCased(char32_t c);
bool IsUpper(char32_t c);
bool IsLower(char32_t c);
// str.islower() / isupper() / istitle() of a whole string.
bool IsLowerString(std::string_view s);
bool IsUpperString(std::string_view s);
bool IsTitleString(std::string_view s);

std::string Upper(std::string_view s);
std::string Lower(std::string_view s);
std::string Title(std::string_view s);       // str.title()
std::string Capitalize(std::string_view s);  // str.capitalize()
std::string JinjaTitle(std::string_view s);  // the `title` filter, which splits words differently

// str.strip/lstrip/rstrip; `chars` unset means whitespace.
std::string Strip(std::string_view s, const std::optional<std::string>& chars, bool left, bool right);
// str.split / str.rsplit; `sep` unset means runs of whitespace. maxsplit < 0 means no limit.
std::vector<std::string> Split(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);
std::vector<std::string> RSplit(std::string_view s, const std::optional<std::string>& sep, int64_t maxsplit);
std::vector<std::string> SplitLines(std::string_view s, bool keepends);
std::string Replace(std::string_view s, std::string_view old, std::string_view replacement, int64_t count);
// Code point index of the first/last occurrence, or -1.
int64_t Find(std::string_view s, std::string_view sub);
int64_t RFind(std::string_view s, std::string_view sub);
int64_t Count(std::string_view s, std::string_view sub);
std::string Center(std::string_view s, int64_t width);

// repr() of a str: quotes and escapes exactly as CPython chooses them.
std::string PyRepr(std::string_view s);
// A JSON string literal as json.dumps writes it.
std::string JsonQuote(std::string_view s, bool ensure_ascii);
// repr() of a float: the shortest round-tripping digits, in CPython's layout (1.0, 1e-05, 1e+16, inf).
std::string FormatFloat(double v);
// HTML escaping as markupsafe.escape does it.
std::string HtmlEscape(std::string_view s);

}  // namespace moe::jinja::text
