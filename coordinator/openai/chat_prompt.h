// A conversation to prompt text through a chat template, as transformers' apply_chat_template renders
// it: the template (Jinja, coordinator/openai/jinja) sees messages, add_generation_prompt, bos_token,
// eos_token, tools when given and the request's chat_template_kwargs; continue_final_message cuts
// the text right after the last message's content, so the model continues that message.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"
#include "coordinator/openai/jinja/jinja_template.h"
#include "coordinator/openai/openai_protocol.h"

namespace moe::openai {

class ChatPrompt {
 public:
  // InvalidArgument naming the line when the template does not parse.
  static absl::StatusOr<ChatPrompt> Make(const std::string& source, std::string bos_token, std::string eos_token);

  // The prompt text of `call`'s conversation. InvalidArgument with the template's own message when it
  // refuses the conversation (raise_exception), or when continue_final_message finds no final
  // message content in the text.
  absl::StatusOr<std::string> Render(const ChatCall& call) const;

  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }

 private:
  ChatPrompt(std::shared_ptr<const jinja::Template> t, std::string bos, std::string eos)
      : template_(std::move(t)), bos_token_(std::move(bos)), eos_token_(std::move(eos)) {}
  std::shared_ptr<const jinja::Template> template_;
  std::string bos_token_;
  std::string eos_token_;
};

}  // namespace moe::openai
