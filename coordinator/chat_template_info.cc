#include "coordinator/chat_template_info.h"

#include <filesystem>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"

namespace moe {
namespace {

// A special token's text: "<s>" or {"content": "<s>", ...} (an AddedToken as transformers saves it).
absl::StatusOr<std::string> TokenText(const nlohmann::json& config, const char* key, const std::string& path) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" is neither a string nor {\"content\": string}"));
}

absl::StatusOr<std::string> TemplateOf(const nlohmann::json& config, const std::string& path) {
  auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const nlohmann::json& named : *it) {
      if (named.is_object() && named.value("name", "") == "default" && named.contains("template") &&
          named["template"].is_string()) {
        return named["template"].get<std::string>();
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"chat_template\" lists no template named \"default\""));
  }
  return absl::InvalidArgumentError(absl::StrCat(path, ": \"chat_template\" is neither a string nor a list of named templates"));
}

}  // namespace

absl::StatusOr<ChatTemplateInfo> LoadChatTemplateInfo(const std::string& model_dir, const TextCodec* tokenizer) {
  ChatTemplateInfo info;
  const std::filesystem::path dir(model_dir);
  const std::string config_path = (dir / "tokenizer_config.json").string();
  if (std::filesystem::exists(config_path)) {
    MOE_ASSIGN_OR_RETURN(nlohmann::json config, ReadJsonFile(config_path));
    if (!config.is_object()) return absl::InvalidArgumentError(absl::StrCat(config_path, ": not a JSON object"));
    MOE_ASSIGN_OR_RETURN(info.chat_template, TemplateOf(config, config_path));
    MOE_ASSIGN_OR_RETURN(info.bos_token, TokenText(config, "bos_token", config_path));
    MOE_ASSIGN_OR_RETURN(info.eos_token, TokenText(config, "eos_token", config_path));
  }
  const std::filesystem::path jinja = dir / "chat_template.jinja";
  if (std::filesystem::exists(jinja)) {
    absl::StatusOr<std::string> text = ReadTextFile(jinja.string());
    if (!text.ok()) return absl::InvalidArgumentError(absl::StrCat("cannot read ", jinja.string()));
    info.chat_template = std::move(*text);
  }
  if (tokenizer != nullptr) {
    if (info.bos_token.empty()) info.bos_token = tokenizer->Piece(tokenizer->bos_id());
    if (info.eos_token.empty()) info.eos_token = tokenizer->Piece(tokenizer->eos_id());
  }
  return info;
}

}  // namespace moe
