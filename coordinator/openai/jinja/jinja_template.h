// A Jinja2-subset engine that renders Hugging Face chat templates (tokenizer_config.json's
// "chat_template") exactly as transformers' apply_chat_template does: jinja2's sandboxed environment
// with trim_blocks, lstrip_blocks, loop controls, transformers' tojson, raise_exception and
// strftime_now. See tests/data/chat_templates for the reference renderings it is held to.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace moe::jinja {

struct Program;
struct Limits;

class Template {
 public:
  // Parses a template; a syntax error is InvalidArgument naming the line and what was expected.
  static absl::StatusOr<Template> Parse(std::string_view source);

  // Renders with `context` (a JSON object: its keys are the top-level variables, e.g. messages,
  // add_generation_prompt, bos_token, eos_token, tools). raise_exception(msg) in the template and
  // runtime errors (undefined attribute of undefined, bad types, ...) are InvalidArgument whose message
  // contains msg / says what failed. Output is capped at 16 MiB, loops at 1e6 iterations in total and
  // the render at 5 s (Limits' defaults).
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& context) const;
  // The same within other limits (jinja_interpreter.h).
  absl::StatusOr<std::string> Render(const nlohmann::ordered_json& context, const Limits& limits) const;

 private:
  explicit Template(std::shared_ptr<const Program> program) : program_(std::move(program)) {}

  std::shared_ptr<const Program> program_;  // immutable, so copies share it
};

}  // namespace moe::jinja
