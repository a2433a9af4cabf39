// Splits a template into text and tag tokens the way jinja2's lexer does under transformers' settings
// (trim_blocks, lstrip_blocks, no trailing newline kept), so whitespace control is settled here and the
// parser only sees literal text plus the tokens inside {{ }} and {% %}.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace moe::jinja {

enum class TokenKind {
  kText,           // literal output, already whitespace-controlled
  kVariableBegin,  // {{
  kVariableEnd,    // }}
  kBlockBegin,     // {%
  kBlockEnd,       // %}
  kName,
  kString,  // value holds the decoded string
  kInteger,
  kFloat,
  kOperator,
  kEof,
};

struct Token {
  TokenKind kind = TokenKind::kEof;
  std::string value;  // text, name, decoded string, operator, or the literal's spelling
  int64_t int_value = 0;
  double float_value = 0;
  int line = 1;
};

// Syntax errors (an unterminated comment or string, unbalanced brackets, a stray character) are
// InvalidArgument naming the line. The result always ends with a kEof token.
absl::StatusOr<std::vector<Token>> Tokenize(std::string_view source);

// A human name for a token, for "expected X, got Y" messages.
std::string Describe(const Token& token);

}  // namespace moe::jinja
