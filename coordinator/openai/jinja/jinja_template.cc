#include "coordinator/openai/jinja/jinja_template.h"

#include <exception>
#include <new>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "coordinator/openai/jinja/jinja_interpreter.h"
#include "coordinator/openai/jinja/jinja_parser.h"

namespace moe::jinja {

absl::StatusOr<Template> Template::Parse(std::string_view source) {
  try {
    absl::StatusOr<std::shared_ptr<const Program>> program = ParseTemplate(source);
    if (!program.ok()) return program.status();
    return Template(std::move(*program));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("parsing the chat template ran out of memory");
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("chat template parsing failed: ", e.what()));
  }
}

absl::StatusOr<std::string> Template::Render(const nlohmann::ordered_json& context) const {
  return Render(context, Limits{});
}

absl::StatusOr<std::string> Template::Render(const nlohmann::ordered_json& context, const Limits& limits) const {
  if (!context.is_object()) return absl::InvalidArgumentError("chat template context must be a JSON object");
  // The interpreter reports template failures by throwing; nothing escapes this boundary.
  try {
    Interpreter interpreter(*program_, limits);
    return interpreter.Render(context);
  } catch (const RenderError& e) {
    return absl::InvalidArgumentError(e.what());
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("chat template rendering ran out of memory");
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("chat template rendering failed: ", e.what()));
  }
}

}  // namespace moe::jinja
