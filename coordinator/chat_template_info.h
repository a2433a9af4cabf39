// What a model folder says about chat prompts, as Hugging Face tokenizers read it: the Jinja chat
// template and the texts of the BOS and EOS tokens the template writes. The coordinator serves them
// in ModelInfo; a front end (moe-openai-server) renders the template.
#pragma once

#include <string>

#include "common/status.h"
#include "coordinator/text_codec.h"

namespace moe {

struct ChatTemplateInfo {
  std::string chat_template;  // empty: the model has none
  std::string bos_token;
  std::string eos_token;
};

// From DIR/chat_template.jinja when present, else tokenizer_config.json's "chat_template" (a string,
// or a list of {"name", "template"} of which "default" is taken, as transformers does); bos_token and
// eos_token from tokenizer_config.json (a string or {"content": ...}), else the pieces of the
// tokenizer's BOS and EOS ids (`tokenizer` may be null: then empty). InvalidArgument naming the file
// and field when one is there but malformed.
absl::StatusOr<ChatTemplateInfo> LoadChatTemplateInfo(const std::string& model_dir, const TextCodec* tokenizer);

}  // namespace moe
