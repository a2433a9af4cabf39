#include "coordinator/openai/chat_prompt.h"

#include <utility>

namespace moe::openai {

absl::StatusOr<ChatPrompt> ChatPrompt::Make(const std::string& source, std::string bos_token, std::string eos_token) {
  MOE_ASSIGN_OR_RETURN(jinja::Template t, jinja::Template::Parse(source));
  return ChatPrompt(std::make_shared<const jinja::Template>(std::move(t)), std::move(bos_token), std::move(eos_token));
}

absl::StatusOr<std::string> ChatPrompt::Render(const ChatCall& call) const {
  nlohmann::ordered_json context = nlohmann::ordered_json::object();
  context["messages"] = call.messages;
  context["add_generation_prompt"] = call.add_generation_prompt;
  context["bos_token"] = bos_token_;
  context["eos_token"] = eos_token_;
  if (!call.tools.is_null()) context["tools"] = call.tools;
  for (const auto& [key, value] : call.template_kwargs.items()) context[key] = value;
  MOE_ASSIGN_OR_RETURN(std::string text, template_->Render(context));
  if (!call.continue_final_message) return text;

  // As transformers does: the text up to the end of the final message's content (stripped when the
  // template stripped it), so that no end-of-turn marker follows it.
  const nlohmann::ordered_json& last = call.messages.back();
  const std::string content = last.contains("content") && last["content"].is_string() ? last["content"].get<std::string>() : "";
  std::string needle = content;
  size_t at = needle.empty() ? std::string::npos : text.rfind(needle);
  if (at == std::string::npos) {
    const size_t b = content.find_first_not_of(" \t\n\r");
    const size_t e = content.find_last_not_of(" \t\n\r");
    needle = b == std::string::npos ? "" : content.substr(b, e - b + 1);
    at = needle.empty() ? std::string::npos : text.rfind(needle);
  }
  if (at == std::string::npos) {
    return absl::InvalidArgumentError(
        "continue_final_message: the final message's content does not appear in the rendered chat template");
  }
  return text.substr(0, at + needle.size());
}

}  // namespace moe::openai
