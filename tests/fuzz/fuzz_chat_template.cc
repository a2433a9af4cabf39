// Fuzz target: a chat template (a model's file, or a request's own chat_template with
// moe-openai-server --trust-request-chat-template) parsed and rendered by the Jinja engine
// (coordinator/openai/jinja) with a conversation, tools and the usual variables. Within tighter
// limits than the server's (so a run stays fast), but the same kinds: a template must render or fail
// with a status, never crash, corrupt memory, overflow the stack or run without bound.
#include <cstdint>
#include <string_view>

#include <nlohmann/json.hpp>

#include "coordinator/openai/jinja/jinja_interpreter.h"
#include "coordinator/openai/jinja/jinja_template.h"

namespace {

const nlohmann::ordered_json& Context() {
  static const auto* context = new nlohmann::ordered_json(nlohmann::ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "Be brief."},
      {"role": "user", "content": "What says the king?"},
      {"role": "assistant", "content": "", "tool_calls": [{"id": "abcdefghi", "type": "function",
        "function": {"name": "weather", "arguments": "{\"city\": \"Verona\"}"}}]},
      {"role": "tool", "tool_call_id": "abcdefghi", "content": "{\"sky\": \"clear\"}"},
      {"role": "user", "content": [{"type": "text", "text": "And then?"}]}
    ],
    "tools": [{"type": "function", "function": {"name": "weather", "description": "The sky",
      "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
    "add_generation_prompt": true, "bos_token": "<s>", "eos_token": "</s>", "enable_thinking": false,
    "n": 3, "x": 1.5, "flag": null, "nested": {"a": [1, 2, {"b": "c"}]}
  })"));
  return *context;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 16 * 1024) return 0;
  absl::StatusOr<moe::jinja::Template> t =
      moe::jinja::Template::Parse(std::string_view(reinterpret_cast<const char*>(data), size));
  if (!t.ok()) return 0;
  moe::jinja::Limits limits;
  limits.max_output_bytes = 1 << 20;
  limits.max_loop_iterations = 100'000;
  limits.max_produced_bytes = 16 << 20;
  limits.max_seconds = 1;
  (void)t->Render(Context(), limits);
  return 0;
}
