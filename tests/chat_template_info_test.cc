// LoadChatTemplateInfo reads a model folder's chat template and special-token texts where
// transformers reads them: chat_template.jinja first, else tokenizer_config.json's chat_template (a
// string, or named templates of which "default" is taken), bos_token / eos_token as strings or
// AddedToken objects, the tokenizer's pieces when the config names none; malformed fields are
// errors naming the file.
#include "coordinator/chat_template_info.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace moe {
namespace {

namespace fs = std::filesystem;

class ChatTemplateInfoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("moe_chat_info_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Write(const std::string& name, const std::string& text) { std::ofstream(dir_ / name) << text; }
  absl::StatusOr<ChatTemplateInfo> Load(const TextCodec* tok = nullptr) { return LoadChatTemplateInfo(dir_.string(), tok); }
  fs::path dir_;
};

TEST_F(ChatTemplateInfoTest, NoConfigNoTemplate) {
  absl::StatusOr<ChatTemplateInfo> info = Load();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->chat_template, "");
  EXPECT_EQ(info->bos_token, "");
}

TEST_F(ChatTemplateInfoTest, StringTemplateAndAddedTokenObjects) {
  Write("tokenizer_config.json",
        R"({"chat_template": "{{ bos_token }}x", "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>"})");
  absl::StatusOr<ChatTemplateInfo> info = Load();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->chat_template, "{{ bos_token }}x");
  EXPECT_EQ(info->bos_token, "<s>");
  EXPECT_EQ(info->eos_token, "</s>");
}

TEST_F(ChatTemplateInfoTest, NamedTemplatesTakeTheDefaultAndAJinjaFileWins) {
  Write("tokenizer_config.json",
        R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]})");
  absl::StatusOr<ChatTemplateInfo> info = Load();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->chat_template, "D");
  Write("chat_template.jinja", "J{{ messages }}\n");
  info = Load();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->chat_template, "J{{ messages }}\n");
}

TEST_F(ChatTemplateInfoTest, MalformedFieldsNameTheFile) {
  for (const std::string config : {R"({"chat_template": 3})", R"({"chat_template": [{"name": "tool_use", "template": "T"}]})",
                                   R"({"bos_token": 1})", R"([1])"}) {
    Write("tokenizer_config.json", config);
    absl::StatusOr<ChatTemplateInfo> info = Load();
    ASSERT_FALSE(info.ok()) << config;
    EXPECT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(info.status().message().find("tokenizer_config.json"), std::string_view::npos) << info.status();
  }
}

}  // namespace
}  // namespace moe
