// Builds the syntax tree of a template from its tokens, following jinja2's grammar and operator
// precedence (filters bind tighter than arithmetic, `**` is left-associative, tests follow filters).
#pragma once

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "coordinator/openai/jinja/jinja_ast.h"

namespace moe::jinja {

// A syntax error is InvalidArgument("template syntax error at line N: ...") saying what was expected.
absl::StatusOr<std::shared_ptr<const Program>> ParseTemplate(std::string_view source);

}  // namespace moe::jinja
