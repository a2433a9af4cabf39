// Tokenizer read from a Hugging Face tokenizer.json, against Hugging Face tokenizers itself
// (tests/data/tokenizers/tokenizer_json_golden.json, make_tokenizer_json_golden.py): the ids and
// offsets of texts with special tokens parsed and not, and the texts of ids, for two converted
// Mistral files (transformers 4.36's legacy v1, transformers 5's v3 with Metaspace and id-ranked
// merges) and variants of them (ChatML tokens past the vocabulary and <unk> as text, added tokens
// inside one another, ignore_merges, an older Metaspace that splits, Metaspace in front of
// score-ranked merges). Then loading: which file a folder's tokenizer comes
// from, BOS / EOS, and the refusals that name what a file holds beyond what is read.

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/json_util.h"
#include "common/utf8.h"
#include "worker/tokenizer.h"

namespace moe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kData = std::string(MOE_SOURCE_DIR) + "/tests/data/tokenizers";

std::unique_ptr<Tokenizer> LoadOrDie(absl::StatusOr<std::unique_ptr<Tokenizer>> tok) {
  if (!tok.ok()) throw std::runtime_error(std::string(tok.status().message()));
  return std::move(tok).value();
}

json ReadJson(const std::string& path) {
  absl::StatusOr<json> j = ReadJsonFile(path);
  if (!j.ok()) throw std::runtime_error(std::string(j.status().message()));
  return *j;
}

class TokenizerJsonTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("tokenizer_json_test_" + std::to_string(getpid()) + "_" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // Writes `j` as DIR/tokenizer.json and returns its path.
  std::string Write(const json& j, const std::string& file = "tokenizer.json") {
    const std::string path = (dir_ / file).string();
    std::ofstream(path) << j.dump();
    return path;
  }
  // A golden variant's file: the base with its top-level and model fields replaced and its tokens added.
  static json Variant(const json& v) {
    json j = ReadJson(kData + "/" + v["file"].get<std::string>());
    for (const auto& [key, value] : v["overrides"].items()) j[key] = value;
    for (const auto& [key, value] : v["model_overrides"].items()) j["model"][key] = value;
    for (const json& a : v["added_tokens"]) j["added_tokens"].push_back(a);
    return j;
  }
  absl::Status LoadError(const json& j) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromFile(Write(j), /*add_bos=*/true);
    return tok.ok() ? absl::OkStatus() : tok.status();
  }
  fs::path dir_;
};

TEST_F(TokenizerJsonTest, EncodesAndDecodesAsHuggingFaceTokenizers) {
  const json golden = ReadJson(kData + "/tokenizer_json_golden.json");
  auto sentencepiece_v3 = LoadOrDie(Tokenizer::FromFile(kData + "/mistral-v3.model", /*add_bos=*/false));
  int encodes = 0, decodes = 0, not_sentencepiece = 0, added_past_vocab = 0;
  for (const json& v : golden["variants"]) {
    const std::string name = v["name"];
    auto tok = LoadOrDie(Tokenizer::FromFile(Write(Variant(v)), /*add_bos=*/false));
    for (const json& c : v["encode"]) {
      const std::string text = c["text"];
      const bool special = c["special"];
      std::vector<TextSpan> spans;
      const std::vector<int32_t> ids = special ? tok->EncodeWithSpecialTokens(text, &spans) : tok->Encode(text, &spans);
      const std::string where = name + (special ? " special " : " plain ") + json(text).dump();
      EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << where;
      ASSERT_EQ(spans.size(), ids.size()) << where;
      const std::vector<uint32_t> chars = CharIndices(text);
      std::vector<std::vector<uint32_t>> offsets;
      for (const TextSpan& s : spans) offsets.push_back({chars[s.begin], chars[s.end]});
      EXPECT_EQ(offsets, c["offsets"].get<std::vector<std::vector<uint32_t>>>()) << where;
      ++encodes;
      if (name == "v3" && special && ids != sentencepiece_v3->EncodeWithSpecialTokens(text)) ++not_sentencepiece;
      for (int32_t id : ids) added_past_vocab += id >= 32000;
    }
    for (const json& d : v["decode"]) {
      const std::vector<int32_t> ids = d["ids"];
      EXPECT_EQ(tok->Decode(ids, d["skip_special"]), d["text"].get<std::string>())
          << name << " " << json(ids).dump() << " skip_special " << d["skip_special"];
      ++decodes;
    }
  }
  EXPECT_EQ(encodes, 7 * 176);  // (v3-nested: a special token past the vocabulary is never a BPE piece)
  EXPECT_EQ(decodes, 7 * 134);
  // The reference can tell the two merge orders apart (transformers 5 ranks "▁" "▁" first), and
  // the ChatML tokens past the base vocabulary are encoded.
  EXPECT_GE(not_sentencepiece, 10);
  EXPECT_GE(added_past_vocab, 10);
}

// Mixtral 8x7B's tokenizer.json (score-ranked merges, the legacy normaliser) encodes as its
// tokenizer.model does, runs of spaces included; and a streamed text is the whole text.
TEST_F(TokenizerJsonTest, ScoreRankedFileIsSentencePiece) {
  auto json_tok = LoadOrDie(Tokenizer::FromFile(kData + "/mistral-v1.tokenizer.json", /*add_bos=*/true));
  auto model_tok = LoadOrDie(Tokenizer::FromFile(kData + "/mistral-v1.model", /*add_bos=*/true));
  for (const std::string text : {"a  b", "def f():\n    return 1", "<s> [INST] hi [/INST]", "  x  ", "naïve 日本語 🦜"}) {
    EXPECT_EQ(json_tok->Encode(text), model_tok->Encode(text)) << text;
    EXPECT_EQ(json_tok->EncodeWithSpecialTokens(text), model_tok->EncodeWithSpecialTokens(text)) << text;
    const std::vector<int32_t> ids = json_tok->Encode(text);
    StreamingDetokenizer detok(*json_tok, {});
    std::string streamed;
    for (int32_t id : ids) streamed += detok.Push(id);
    EXPECT_EQ(streamed + detok.Flush(), text);
  }
  EXPECT_EQ(json_tok->vocab_size(), 32000);
  EXPECT_EQ(json_tok->bos_id(), 1);
  EXPECT_EQ(json_tok->eos_id(), 2);
}

TEST_F(TokenizerJsonTest, FolderPrefersTokenizerJsonUnlessAsked) {
  json j = ReadJson(kData + "/mistral-v3.tokenizer.json");
  Write(j);
  fs::copy_file(kData + "/mistral-v3.model", dir_ / "tokenizer.model");
  // "a  b": the file's merges give "▁a" "▁▁" "b", SentencePiece "▁a" "▁" "▁b".
  auto automatic = LoadOrDie(Tokenizer::Load(dir_.string()));
  auto hf = LoadOrDie(Tokenizer::Load(dir_.string(), TokenizerFile::kTokenizerJson));
  auto slow = LoadOrDie(Tokenizer::Load(dir_.string(), TokenizerFile::kSentencePiece));
  EXPECT_EQ(automatic->Encode("a  b"), hf->Encode("a  b"));
  EXPECT_NE(automatic->Encode("a  b"), slow->Encode("a  b"));
  EXPECT_EQ(automatic->Encode("a  b").size(), 3u) << "three pieces, no BOS: the file's post-processor adds none";
  fs::remove(dir_ / "tokenizer.json");
  auto fallback = LoadOrDie(Tokenizer::Load(dir_.string()));
  EXPECT_EQ(fallback->Encode("a  b"), slow->Encode("a  b"));
  absl::StatusOr<std::unique_ptr<Tokenizer>> missing = Tokenizer::Load(dir_.string(), TokenizerFile::kTokenizerJson);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("tokenizer.json"), std::string_view::npos) << missing.status();
}

TEST_F(TokenizerJsonTest, ModesAreVllmNames) {
  EXPECT_EQ(*ParseTokenizerMode("auto"), TokenizerFile::kAuto);
  EXPECT_EQ(*ParseTokenizerMode("hf"), TokenizerFile::kTokenizerJson);
  EXPECT_EQ(*ParseTokenizerMode("slow"), TokenizerFile::kSentencePiece);
  EXPECT_EQ(*ParseTokenizerMode("mistral"), TokenizerFile::kMistral);
  const absl::StatusOr<TokenizerFile> bad = ParseTokenizerMode("fast");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("\"fast\""), std::string_view::npos) << bad.status();
}

// BOS / EOS: tokenizer_config.json's add_bos_token and add_eos_token where it says, else what the
// file's post-processor adds; bos_token / eos_token (either spelling) name which tokens they are.
TEST_F(TokenizerJsonTest, BosAndEosFollowConfigThenPostProcessor) {
  json chatml = ReadJson(kData + "/mistral-v1.tokenizer.json");
  chatml["added_tokens"].push_back({{"id", 32000}, {"content", "<|im_end|>"}, {"special", true}});
  chatml["post_processor"]["single"].push_back({{"SpecialToken", {{"id", "</s>"}, {"type_id", 0}}}});
  Write(chatml);
  auto plain = LoadOrDie(Tokenizer::Load(dir_.string()));
  EXPECT_TRUE(plain->add_bos());
  EXPECT_TRUE(plain->add_eos()) << "the post-processor's \"<s> $A </s>\"";
  std::ofstream(dir_ / "tokenizer_config.json")
      << R"({"add_eos_token": false, "eos_token": {"content": "<|im_end|>", "__type": "AddedToken"}})";
  auto configured = LoadOrDie(Tokenizer::Load(dir_.string()));
  EXPECT_TRUE(configured->add_bos());
  EXPECT_FALSE(configured->add_eos());
  EXPECT_EQ(configured->eos_id(), 32000);
  EXPECT_EQ(configured->vocab_size(), 32001);
  std::ofstream(dir_ / "tokenizer_config.json") << R"({"bos_token": "<|begin_of_text|>"})";
  const absl::StatusOr<std::unique_ptr<Tokenizer>> no_bos = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(no_bos.ok());
  EXPECT_NE(no_bos.status().message().find("<|begin_of_text|>"), std::string_view::npos) << no_bos.status();
}

// What a file holds beyond what is read is refused, naming it (never encoded some other way).
TEST_F(TokenizerJsonTest, RefusalsNameWhatIsNotRead) {
  const json base = ReadJson(kData + "/mistral-v1.tokenizer.json");
  const auto refused = [&](json j, const std::string& needle) {
    const absl::Status s = LoadError(j);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << needle << ": " << s;
    EXPECT_NE(s.message().find(needle), std::string_view::npos) << s;
    EXPECT_NE(s.message().find("tokenizer.json"), std::string_view::npos) << s;
  };
  json byte_level = base;
  byte_level["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}};
  refused(byte_level, "pre_tokenizer");
  json nfkc = base;
  nfkc["normalizer"]["normalizers"].push_back({{"type", "NFKC"}});
  refused(nfkc, "NFKC");
  json wordpiece = base;
  wordpiece["model"]["type"] = "WordPiece";
  refused(wordpiece, "model.type");
  json lstrip = base;
  lstrip["added_tokens"][1]["lstrip"] = true;
  refused(lstrip, "<s>");
  json bad_merge = base;
  bad_merge["model"]["merges"][7] = "▁t zzzq";
  refused(bad_merge, "merge 7");
  json gap = base;
  gap["added_tokens"].push_back({{"id", 32005}, {"content", "<x>"}, {"special", true}});
  refused(gap, "id 32000");
  json clash = base;
  clash["added_tokens"].push_back({{"id", 5}, {"content", "<x>"}, {"special", true}});
  refused(clash, "id 5");
  json shared = base;  // two vocabulary texts on one id leave a gap: named as the sharing
  for (auto& [token, id] : shared["model"]["vocab"].items()) {
    if (id == 300) id = 299;
  }
  refused(shared, "id 299 is both");
  json shared_up = base;  // the gap below the shared id: still named as the sharing
  for (auto& [token, id] : shared_up["model"]["vocab"].items()) {
    if (id == 299) id = 300;
  }
  refused(shared_up, "id 300 is both");
  json no_spaces = base;
  no_spaces["normalizer"] = nullptr;
  refused(no_spaces, "spaces");
  json dropout = base;
  dropout["model"]["dropout"] = 0.1;
  refused(dropout, "dropout");
  json strip = base;
  strip["decoder"]["decoders"][3]["start"] = "one";
  refused(strip, "decoder");
  json normalized = base;  // matched after the normaliser writes it ("▁<|im_start|>"): not read
  normalized["added_tokens"].push_back({{"id", 32000}, {"content", "<|im_start|>"}, {"special", false}, {"normalized", true}});
  refused(normalized, "normalized");
  json bad_byte = base;  // "<0x-5>" read by sscanf as byte 0xFFFFFFFB crashed the load: not a byte piece
  bad_byte["model"]["vocab"]["<0x-5>"] = bad_byte["model"]["vocab"]["<0x05>"];
  bad_byte["model"]["vocab"].erase("<0x05>");
  refused(bad_byte, "byte");
  json no_byte_fallback = base;
  no_byte_fallback["model"]["byte_fallback"] = false;
  refused(no_byte_fallback, "byte_fallback");
  json metaspace_decoder = base;
  metaspace_decoder["decoder"] = {{"type", "Metaspace"}, {"replacement", "\u2581"}, {"prepend_scheme", "always"}};
  refused(metaspace_decoder, "decoder");
  json far = base;  // refused before a table for 16M ids is made
  far["added_tokens"].push_back({{"id", (1 << 24) - 1}, {"content", "<far>"}, {"special", true}});
  refused(far, "id 32000 has no token");
  json typed = base;
  typed["added_tokens"][0]["special"] = "yes";  // read as not special, never a throw
  EXPECT_TRUE(LoadError(typed).ok());
  std::ofstream(dir_ / "tokenizer.json") << "{\"model\": ";
  const absl::StatusOr<std::unique_ptr<Tokenizer>> torn = Tokenizer::FromFile((dir_ / "tokenizer.json").string(), true);
  ASSERT_FALSE(torn.ok());
  EXPECT_NE(torn.status().message().find("not valid JSON: parse error at line 1, column 11"), std::string_view::npos)
      << torn.status();
}

}  // namespace
}  // namespace moe
