// Tokenizer and StreamingDetokenizer against outside references: the ids and texts that the
// Python tooling produced for the shakespeare-moe model (samples.json), and the ids the
// SentencePiece Python binding gives for Mixtral's tokenizer (tests/data/tokenizers/README.md), and
// transformers' ids for texts with special tokens written out (special_tokens.json), its texts of
// ids with special tokens among them (decode_golden.json) and its character offsets of each token
// (offsets_golden.json).

#include "worker/tokenizer.h"

#include <sys/stat.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/json_util.h"
#include "common/utf8.h"
#include "worker/sentencepiece_bpe.h"

namespace moe {
namespace {

namespace fs = std::filesystem;

const std::string kShakespeareDir = std::string(MOE_SOURCE_DIR) + "/models/shakespeare-moe";
const std::string kMistralV1 =
    std::string(MOE_SOURCE_DIR) + "/tests/data/tokenizers/mistral-v1.model";
const std::string kTokenizerData = std::string(MOE_SOURCE_DIR) + "/tests/data/tokenizers";
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

std::unique_ptr<Tokenizer> LoadOrDie(absl::StatusOr<std::unique_ptr<Tokenizer>> tok) {
  if (!tok.ok()) throw std::runtime_error(std::string(tok.status().message()));
  return std::move(tok).value();
}

// True when `s` is well-formed UTF-8 (no truncated, overlong or surrogate sequences).
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    size_t len;
    uint32_t cp;
    if (b0 < 0x80) {
      len = 1, cp = b0;
    } else if ((b0 & 0xE0) == 0xC0) {
      len = 2, cp = b0 & 0x1F;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3, cp = b0 & 0x0F;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4, cp = b0 & 0x07;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    static constexpr uint32_t kMinForLength[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

TEST(Utf8ValidatorTest, AcceptsAndRejects) {
  EXPECT_TRUE(IsValidUtf8("héllo 🙂"));
  EXPECT_FALSE(IsValidUtf8("\xF0\x9F\x99"));  // truncated emoji
  EXPECT_FALSE(IsValidUtf8("\x99"));          // lone continuation byte
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));      // overlong '/'
}

// Streams `generated` after `prompt` one id at a time and checks every delta.
struct StreamResult {
  std::string text;
  std::vector<std::string> chunks;
};
StreamResult Stream(const Tokenizer& tok, const std::vector<int32_t>& prompt,
                    const std::vector<int32_t>& generated, bool skip_special_tokens = true) {
  StreamingDetokenizer detok(tok, prompt, skip_special_tokens);
  StreamResult r;
  for (int32_t id : generated) {
    r.chunks.push_back(detok.Push(id));
    r.text += r.chunks.back();
  }
  r.chunks.push_back(detok.Flush());
  r.text += r.chunks.back();
  return r;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// ---- shakespeare-moe: the model's own 2048-piece tokenizer and its reference samples ----

class ShakespeareTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tok_ = LoadOrDie(Tokenizer::Load(kShakespeareDir));
    auto samples = ReadJsonFile(kShakespeareDir + "/samples.json");
    ASSERT_TRUE(samples.ok()) << samples.status();
    samples_ = (*samples)["greedy_samples"];
    ASSERT_EQ(samples_.size(), 3u);
  }
  std::unique_ptr<Tokenizer> tok_;
  nlohmann::json samples_;
};

TEST_F(ShakespeareTest, SpecialIdsAndConfig) {
  EXPECT_EQ(tok_->vocab_size(), 2048);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_FALSE(tok_->add_bos());  // tokenizer_config.json says add_bos_token: false
  EXPECT_FALSE(tok_->add_eos());
}

TEST_F(ShakespeareTest, EncodeMatchesPromptIds) {
  for (const auto& s : samples_) {
    EXPECT_EQ(tok_->Encode(s["prompt"].get<std::string>()),
              s["prompt_ids"].get<std::vector<int32_t>>())
        << s["prompt"];
  }
}

TEST_F(ShakespeareTest, DecodeMatchesGreedyText) {
  for (const auto& s : samples_) {
    const auto ids = Concat(s["prompt_ids"].get<std::vector<int32_t>>(),
                            s["greedy_ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(tok_->Decode(ids), s["greedy_text"].get<std::string>());
  }
}

TEST_F(ShakespeareTest, StreamingReproducesGreedyText) {
  for (const auto& s : samples_) {
    const auto prompt = s["prompt_ids"].get<std::vector<int32_t>>();
    const StreamResult r = Stream(*tok_, prompt, s["greedy_ids"].get<std::vector<int32_t>>());
    EXPECT_EQ(s["prompt"].get<std::string>() + r.text, s["greedy_text"].get<std::string>());
    EXPECT_EQ(tok_->Decode(prompt) + r.text, s["greedy_text"].get<std::string>());
  }
}

// ---- mistral-v1: Mixtral 8x7B's 32000-piece tokenizer, with byte fallback ----

class MistralTest : public ::testing::Test {
 protected:
  void SetUp() override { tok_ = LoadOrDie(Tokenizer::FromFile(kMistralV1, /*add_bos=*/true)); }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(MistralTest, SpecialIds) {
  EXPECT_EQ(tok_->vocab_size(), 32000);
  EXPECT_EQ(tok_->bos_id(), 1);
  EXPECT_EQ(tok_->eos_id(), 2);
  EXPECT_TRUE(tok_->add_bos());
}

TEST_F(MistralTest, EncodeMatchesPythonBinding) {
  const std::string text = "Mixtral of experts: 8 experts, top-2 routing.";
  const std::vector<int32_t> expected = {1,     19630, 434,   282,   302,   11725,
                                         28747, 28705, 28783, 11725, 28725, 1830,
                                         28733, 28750, 6356,  288,   28723};
  const auto ids = tok_->Encode(text);
  EXPECT_EQ(ids, expected);
  EXPECT_EQ(tok_->Decode(ids), text);
}

TEST_F(MistralTest, ControlTokensDecodeToNothingAndEosIsAppended) {
  auto with_eos = LoadOrDie(Tokenizer::FromFile(kMistralV1, /*add_bos=*/true, /*add_eos=*/true));
  const auto ids = with_eos->Encode("Hello world");
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids.front(), 1);
  EXPECT_EQ(ids.back(), 2);
  EXPECT_EQ(tok_->Decode(ids), "Hello world");
  EXPECT_EQ(tok_->Decode(std::vector<int32_t>{1, 2}), "");
}

TEST_F(MistralTest, StreamingMultiByteTextIsValidUtf8) {
  // 🙂 is a piece of its own; 🦜 and 𐌰 are not, so each is spelled with four byte-fallback
  // pieces. (This file is UTF-8, so the literals are too.)
  const std::string text = "héllo wörld — 日本語 🙂 🦜 𐌰 ok";
  const auto ids = tok_->Encode(text);
  ASSERT_EQ(tok_->Decode(ids), text);

  // The test only means something if some character is spelled with byte-fallback pieces,
  // which decode on their own to U+FFFD (an incomplete sequence).
  int byte_pieces = 0;
  for (int32_t id : ids) {
    if (tok_->Decode(std::vector<int32_t>{id}).find(kReplacementChar) != std::string::npos) {
      ++byte_pieces;
    }
  }
  EXPECT_GE(byte_pieces, 8) << "no character needed byte fallback";

  // Stream everything after BOS as if generated, with only BOS as the prompt.
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 1);
  const std::vector<int32_t> generated(ids.begin() + 1, ids.end());
  const StreamResult r = Stream(*tok_, prompt, generated);
  int held_back = 0;
  for (const auto& chunk : r.chunks) {
    EXPECT_TRUE(IsValidUtf8(chunk)) << "chunk is not valid UTF-8";
    EXPECT_EQ(chunk.find(kReplacementChar), std::string::npos) << chunk;
    held_back += chunk.empty();
  }
  EXPECT_GT(held_back, 0);
  EXPECT_EQ(r.text, text);
}

TEST_F(MistralTest, StreamingAfterLongPromptKeepsLeadingSpaces) {
  const auto prompt = tok_->Encode("The quick brown fox jumps over the lazy");
  auto generated = tok_->Encode(" dog, and then 🦜 sleeps.");
  generated.erase(generated.begin());  // drop the BOS of the second encoding
  generated.push_back(tok_->eos_id());
  const auto all = Concat(prompt, generated);
  const StreamResult r = Stream(*tok_, prompt, generated);
  EXPECT_EQ(tok_->Decode(prompt) + r.text, tok_->Decode(all));
  for (const auto& chunk : r.chunks) EXPECT_TRUE(IsValidUtf8(chunk));
}

TEST_F(MistralTest, StreamingWithEmptyPrompt) {
  auto ids = tok_->Encode("Bonjour à tous 🦜");
  ids.erase(ids.begin());
  const StreamResult r = Stream(*tok_, {}, ids);
  EXPECT_EQ(r.text, tok_->Decode(ids));
}

TEST_F(MistralTest, StreamingMatchesWholeDecodeAtEverySplit) {
  // Every prompt/generation boundary, including ones inside byte-fallback runs of the prompt
  // context and right after a leading-space piece.
  const std::string text = "Ein Vogel 🦜 sang: «Привет»,  你好 𐌰𐌱!\n  indented\tline";
  auto ids = tok_->Encode(text);
  ids.push_back(tok_->eos_id());
  for (size_t split = 0; split <= ids.size(); ++split) {
    const std::vector<int32_t> prompt(ids.begin(), ids.begin() + split);
    const std::vector<int32_t> generated(ids.begin() + split, ids.end());
    const std::string prompt_text = tok_->Decode(prompt);
    if (prompt_text.ends_with(kReplacementChar)) continue;  // the prompt ends mid-character
    const StreamResult r = Stream(*tok_, prompt, generated);
    EXPECT_EQ(prompt_text + r.text, text) << "split " << split;
    for (const auto& chunk : r.chunks) {
      EXPECT_TRUE(IsValidUtf8(chunk)) << "split " << split;
      EXPECT_EQ(chunk.find(kReplacementChar), std::string::npos) << "split " << split;
    }
  }
}

TEST_F(MistralTest, FlushEmitsAnUnfinishedByteSequence) {
  // The byte pieces of 🦜 minus the last: generation stopped inside the character.
  auto ids = tok_->Encode("a 🦜");
  ids.pop_back();
  StreamingDetokenizer detok(*tok_, {});
  std::string text;
  for (size_t i = 1; i < ids.size(); ++i) text += detok.Push(ids[i]);
  EXPECT_EQ(text, "a ");  // the partial character is held back
  text += detok.Flush();
  EXPECT_EQ(text, tok_->Decode(ids));
  EXPECT_EQ(detok.Flush(), "");
}

TEST_F(MistralTest, CheckIds) {
  EXPECT_TRUE(tok_->CheckIds(std::vector<int32_t>{0, 1, 31999}).ok());
  const absl::Status negative = tok_->CheckIds(std::vector<int32_t>{5, -1, 40000});
  EXPECT_EQ(negative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(negative.message().find("-1"), std::string_view::npos) << negative;
  EXPECT_NE(negative.message().find("index 1"), std::string_view::npos) << negative;
  const absl::Status too_big = tok_->CheckIds(std::vector<int32_t>{32000});
  EXPECT_EQ(too_big.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(too_big.message().find("32000"), std::string_view::npos) << too_big;
  EXPECT_NE(too_big.message().find("index 0"), std::string_view::npos) << too_big;
  EXPECT_THROW(tok_->Decode(std::vector<int32_t>{-1}), InternalError);
  // An id past the tokenizer's vocabulary (a model's padded embedding rows) decodes to nothing,
  // as Hugging Face tokenizers decode it, also amid other ids and in a stream.
  EXPECT_EQ(tok_->Decode(std::vector<int32_t>{32000}), "");
  EXPECT_EQ(tok_->Piece(32010), "") << "no piece past the vocabulary (Detokenize's return_pieces asks)";
  const std::vector<int32_t> hello = tok_->Encode("Hello world");
  std::vector<int32_t> padded = hello;
  padded.insert(padded.begin() + 2, 40000);
  EXPECT_EQ(tok_->Decode(padded), tok_->Decode(hello));
  StreamingDetokenizer detok(*tok_, {});
  std::string streamed;
  for (int32_t id : padded) streamed += detok.Push(id);
  EXPECT_EQ(streamed + detok.Flush(), "Hello world");
}

// ---- Special tokens written in the text: transformers' ids (make_special_tokens_golden.py) ----

TEST(SpecialTokensTest, EncodeWithSpecialTokensMatchesTransformers) {
  std::ifstream f(kTokenizerData + "/special_tokens.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json golden = nlohmann::json::parse(f);
  int cases = 0, with_special = 0;
  for (const auto& [model, texts] : golden["models"].items()) {
    // BOS and EOS configured on: EncodeWithSpecialTokens adds neither.
    auto tok = LoadOrDie(Tokenizer::FromFile(kTokenizerData + "/" + model, /*add_bos=*/true, /*add_eos=*/true));
    for (const nlohmann::json& c : texts) {
      const std::string text = c["text"];
      const std::vector<int32_t> want = c["ids"];
      EXPECT_EQ(tok->EncodeWithSpecialTokens(text), want) << model << ": \"" << text << "\"";
      ++cases;
      with_special += std::count(want.begin(), want.end(), tok->bos_id()) > 0;
    }
  }
  EXPECT_EQ(cases, 11);
  EXPECT_GE(with_special, 6);
}

// Each token's place in the text (offsets_golden.json: Hugging Face tokenizers' offsets, in
// characters as its Python binding gives them; TGI answers the same places in bytes): the byte spans
// EncodeWithSpecialTokens (and, without special tokens, Encode) gives, in characters (CharIndices),
// with BOS at [0, 0) where the case adds it. The texts have spaces in runs, at both
// ends, a character in byte-fallback pieces, special tokens written out and a near miss of them.
TEST(SpecialTokensTest, OffsetsAreTransformers) {
  std::ifstream f(kTokenizerData + "/offsets_golden.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json golden = nlohmann::json::parse(f);
  const std::map<std::string, std::string> files = {{"mistral-v1.model", kMistralV1},
                                                    {"shakespeare-moe", kShakespeareDir + "/tokenizer.model"}};
  int cases = 0, byte_pieces = 0, plain_cases = 0;
  for (const auto& [model, texts] : golden["models"].items()) {
    ASSERT_TRUE(files.count(model)) << model;
    auto tok = LoadOrDie(Tokenizer::FromFile(files.at(model), /*add_bos=*/false));
    for (const nlohmann::json& c : texts) {
      const std::string text = c["text"];
      std::vector<TextSpan> spans;
      std::vector<int32_t> ids = tok->EncodeWithSpecialTokens(text, &spans);
      ASSERT_EQ(spans.size(), ids.size());
      if (c["add_bos"].get<bool>()) {
        ids.insert(ids.begin(), tok->bos_id());
        spans.insert(spans.begin(), TextSpan{});
      }
      const std::vector<uint32_t> chars = CharIndices(text);
      std::vector<std::vector<uint32_t>> offsets;
      for (const TextSpan& s : spans) offsets.push_back({chars[s.begin], chars[s.end]});
      const std::string where = model + ": " + nlohmann::json(text).dump() + (c["add_bos"].get<bool>() ? " with BOS" : "");
      EXPECT_EQ(ids, c["ids"].get<std::vector<int32_t>>()) << where;
      EXPECT_EQ(offsets, c["offsets"].get<std::vector<std::vector<uint32_t>>>()) << where;
      // In bytes too (TGI's): CharIndices counts a byte inside a character as that character, so a
      // span ending inside one would pass the comparison above.
      std::vector<size_t> starts;  // per character, its first byte; then the text's end
      for (size_t i = 0; i < text.size();) {
        uint32_t cp = 0;
        const int len = DecodeUtf8(text, i, cp);
        starts.push_back(i);
        i += static_cast<size_t>(len > 0 ? len : 1);
      }
      starts.push_back(text.size());
      std::vector<TextSpan> golden_bytes;
      for (const auto& o : c["offsets"].get<std::vector<std::vector<uint32_t>>>()) golden_bytes.push_back({starts[o[0]], starts[o[1]]});
      EXPECT_EQ(spans, golden_bytes) << where;
      ++cases;
      for (int32_t id : ids) byte_pieces += tok->Piece(id).rfind("<0x", 0) == 0;
      // Without a special token written out, plain Encode places its ids alike.
      if (!c["add_bos"].get<bool>() && text.find("<s>") == std::string::npos && text.find("</s>") == std::string::npos &&
          text.find("<unk>") == std::string::npos) {
        std::vector<TextSpan> plain;
        EXPECT_EQ(tok->Encode(text, &plain), ids) << where;
        EXPECT_EQ(plain, spans) << where;
        ++plain_cases;
      }
    }
  }
  EXPECT_EQ(cases, 48);
  EXPECT_EQ(plain_cases, 14);
  EXPECT_GE(byte_pieces, 20);
}

// Decoding with special tokens among the ids (decode_golden.json): kept (skip_special_tokens false),
// the text is what Hugging Face tokenizers decode with Mixtral's tokenizer.json decoder, "<s>
// Hello" and "Hello</s>"; skipped, what SentencePiece's binding decodes. Streamed after a prompt
// cut anywhere (not inside a character), the deltas complete the whole text.
TEST(SpecialTokensTest, DecodeKeepingSpecialTokensIsTransformers) {
  std::ifstream f(kTokenizerData + "/decode_golden.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json golden = nlohmann::json::parse(f);
  int cases = 0, differ = 0, splits = 0;
  for (const auto& [model, rows] : golden["models"].items()) {
    auto tok = LoadOrDie(Tokenizer::FromFile(kTokenizerData + "/" + model, /*add_bos=*/true));
    for (const nlohmann::json& row : rows) {
      const std::vector<int32_t> ids = row["ids"];
      const std::string keep = row["keep_special"];
      EXPECT_EQ(tok->Decode(ids, /*skip_special_tokens=*/false), keep) << model << " " << row["ids"].dump();
      EXPECT_EQ(tok->Decode(ids), row["sentencepiece"].get<std::string>()) << model << " " << row["ids"].dump();
      ++cases;
      differ += keep != row["skip_special"].get<std::string>();
      for (size_t split = 0; split <= ids.size(); ++split) {
        const std::vector<int32_t> prompt(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(split));
        const std::vector<int32_t> generated(ids.begin() + static_cast<std::ptrdiff_t>(split), ids.end());
        const std::string prompt_text = tok->Decode(prompt, false);
        if (prompt_text.ends_with(kReplacementChar)) continue;  // the prompt ends mid-character
        const StreamResult r = Stream(*tok, prompt, generated, /*skip_special_tokens=*/false);
        EXPECT_EQ(prompt_text + r.text, keep) << model << " " << row["ids"].dump() << " split " << split;
        ++splits;
      }
    }
  }
  EXPECT_EQ(cases, 27);
  EXPECT_GE(differ, 20);  // the cases do have special tokens to show
  EXPECT_GT(splits, 200);
}

TEST_F(MistralTest, PieceNamesTheSpecialTokens) {
  EXPECT_EQ(tok_->Piece(tok_->bos_id()), "<s>");
  EXPECT_EQ(tok_->Piece(tok_->eos_id()), "</s>");
  EXPECT_EQ(tok_->Piece(0), "<unk>");
}

// TokenTexts against SentencePiece's own decoding: after a word, every id with a text adds exactly
// that text (ASCII byte pieces included); byte pieces of a multi-byte character add its bytes; the
// control and unknown pieces have none.
TEST_F(MistralTest, TokenTextsAreWhatDecodingAppends) {
  const std::vector<std::string> texts = tok_->TokenTexts();
  ASSERT_EQ(static_cast<int32_t>(texts.size()), tok_->vocab_size());
  EXPECT_EQ(texts[static_cast<size_t>(tok_->bos_id())], "");
  EXPECT_EQ(texts[static_cast<size_t>(tok_->eos_id())], "");
  EXPECT_EQ(texts[0], "");
  const std::vector<int32_t> word = tok_->EncodeWithSpecialTokens("word");  // "▁word"
  const std::string before = tok_->Decode(word);
  int checked = 0;
  for (int32_t id = 0; id < tok_->vocab_size(); ++id) {
    const std::string& t = texts[static_cast<size_t>(id)];
    if (t.empty() || (t.size() == 1 && static_cast<unsigned char>(t[0]) >= 0x80)) continue;
    std::vector<int32_t> ids = word;
    ids.push_back(id);
    ASSERT_EQ(tok_->Decode(ids), before + t) << "id " << id << " piece " << tok_->Piece(id);
    ++checked;
  }
  EXPECT_GT(checked, 31000);
  // "é" as its two byte pieces.
  int32_t c3 = -1, a9 = -1;
  for (int32_t id = 0; id < tok_->vocab_size(); ++id) {
    if (tok_->Piece(id) == "<0xC3>") c3 = id;
    if (tok_->Piece(id) == "<0xA9>") a9 = id;
  }
  ASSERT_GE(c3, 0);
  ASSERT_GE(a9, 0);
  EXPECT_EQ(texts[static_cast<size_t>(c3)] + texts[static_cast<size_t>(a9)], "\xc3\xa9");
  EXPECT_EQ(tok_->Decode(std::vector<int32_t>{c3, a9}), "\xc3\xa9");
}

// The SentencePiece BPE run here (worker/sentencepiece_bpe.h) against the library itself
// (sentencepiece_golden.json, its Python binding): ids of ~170 texts a model and texts of ~200 id
// sequences (byte runs cut short, control and unknown pieces among them), for the Mistral v1 and
// v3 vocabularies (v3's user-defined pieces included) and the default model's.
TEST(SentencePieceBpeTest, EncodeAndDecodeAreTheLibrarys) {
  std::ifstream f(kTokenizerData + "/sentencepiece_golden.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json golden = nlohmann::json::parse(f);
  const std::map<std::string, std::string> files = {{"mistral-v1", kTokenizerData + "/mistral-v1.model"},
                                                    {"mistral-v3", kTokenizerData + "/mistral-v3.model"},
                                                    {"shakespeare-moe", kShakespeareDir + "/tokenizer.model"}};
  int encoded = 0, decoded = 0;
  for (const auto& [name, path] : files) {
    SCOPED_TRACE(name);
    auto tok = LoadOrDie(Tokenizer::FromFile(path, /*add_bos=*/false));
    for (const nlohmann::json& c : golden["models"][name]["encode"]) {
      const std::string text = c["text"];
      EXPECT_EQ(tok->Encode(text), c["ids"].get<std::vector<int32_t>>()) << nlohmann::json(text).dump();
      ++encoded;
    }
    for (const nlohmann::json& c : golden["models"][name]["decode"]) {
      const std::vector<int32_t> ids = c["ids"];
      EXPECT_EQ(tok->Decode(ids), c["text"].get<std::string>()) << nlohmann::json(ids).dump();
      ++decoded;
    }
  }
  EXPECT_GT(encoded, 500);
  EXPECT_GT(decoded, 600);
}

// A non-legacy tokenizer (Mistral's v3 Instruct models: tokenizer_config.json "legacy": false)
// encodes the text the Hugging Face v3 chat template renders as mistral-common encodes the
// conversation (v3_chat_golden.json): no extra "▁" after [INST] or [/INST]; the legacy rule gives
// one there, so it differs.
TEST(SpecialTokensTest, NonLegacyV3EncodingIsMistralCommons) {
  std::ifstream f(kTokenizerData + "/v3_chat_golden.json");
  ASSERT_TRUE(f.good());
  const nlohmann::json golden = nlohmann::json::parse(f);
  auto v3 = LoadOrDie(Tokenizer::FromFile(kTokenizerData + "/mistral-v3.model", /*add_bos=*/true, false,
                                          /*legacy=*/false));
  auto legacy = LoadOrDie(Tokenizer::FromFile(kTokenizerData + "/mistral-v3.model", /*add_bos=*/true));
  int differ = 0;
  for (const nlohmann::json& c : golden["cases"]) {
    const std::string text = c["text"];
    const std::vector<int32_t> want = c["ids"];
    EXPECT_EQ(v3->EncodeWithSpecialTokens(text), want) << nlohmann::json(text).dump();
    differ += legacy->EncodeWithSpecialTokens(text) != want;
  }
  EXPECT_EQ(differ, static_cast<int>(golden["cases"].size()));
}

// Models outside the supported set are refused naming the file and what is missing.
TEST(SentencePieceBpeTest, WhatIsNotABpeModelIsRefused) {
  EXPECT_TRUE(absl::IsNotFound(SentencePieceBpe::Load("/nonexistent/tokenizer.model").status()));
  const absl::Status garbage = SentencePieceBpe::Parse("\x0a\xff\xff", "t.model").status();
  EXPECT_TRUE(absl::IsInvalidArgument(garbage)) << garbage;
  EXPECT_NE(garbage.message().find("t.model"), std::string::npos) << garbage;
  // One piece, no trainer spec: a unigram model by the proto's default.
  const std::string unigram("\x0a\x05\x0a\x03<u>", 7);
  const absl::Status s = SentencePieceBpe::Parse(unigram, "u.model").status();
  EXPECT_NE(s.message().find("only BPE models are supported"), std::string::npos) << s;
}

// A byte piece must be "<0x" two hex digits ">": sscanf's "%2X" read "<0x-4>" as 0xFFFFFFFC and
// the model's byte table was written far out of bounds (a segfault while loading).
TEST(SentencePieceBpeTest, MalformedBytePiecesAreRefused) {
  std::ifstream f(kMistralV1, std::ios::binary);
  const std::string model((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const size_t at = model.find("<0x34>");
  ASSERT_NE(at, std::string::npos);
  for (const char* bad : {"<0x-4>", "<0x+4>", "<0x 4>", "<0x4g>"}) {
    std::string bytes = model;
    bytes.replace(at, 6, bad);
    const absl::Status s = SentencePieceBpe::Parse(bytes, "bytes.model").status();
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << bad << ": " << s;
    EXPECT_NE(s.message().find(std::string("byte piece \"") + bad + "\" is not <0xNN>"), std::string::npos) << s;
    EXPECT_NE(s.message().find("bytes.model"), std::string::npos) << s;
  }
}

// Text encodes a word at a time where no piece has a "▁" after another character (Mistral's
// vocabularies: the golden tests above go through that path). A vocabulary with such a piece must
// encode the text whole, or the piece could never be made: here "▁t", one of the best-scored
// merges, is renamed "e▁", so "the cat" merges "e" with the space after it.
TEST(SentencePieceBpeTest, APieceAcrossWordsStillMerges) {
  std::ifstream f(kMistralV1, std::ios::binary);
  const std::string model((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto original = SentencePieceBpe::Parse(model, "v1.model");
  ASSERT_TRUE(original.ok()) << original.status();
  const std::optional<int32_t> id = (*original)->PieceId("\xE2\x96\x81t");
  ASSERT_TRUE(id.has_value());
  const std::string field("\x0a\x04\xE2\x96\x81t", 6);  // the piece's text: field 1, 4 bytes
  const size_t at = model.find(field);
  ASSERT_NE(at, std::string::npos);
  std::string bytes = model;
  bytes.replace(at + 2, 4, "e\xE2\x96\x81");
  auto tok = SentencePieceBpe::Parse(bytes, "crossing.model");
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_EQ((*tok)->piece(*id), "e\xE2\x96\x81");
  const std::vector<int32_t> ids = (*tok)->Encode("the cat");
  EXPECT_NE(std::find(ids.begin(), ids.end(), *id), ids.end()) << nlohmann::json(ids).dump();
  EXPECT_EQ((*tok)->Decode(ids), "the cat");
}

// A damaged model file (bytes changed, inserted, dropped, cut short) is parsed or refused with an
// error naming it; what parses encodes and decodes without crashing (also under ASan and UBSan).
TEST(SentencePieceBpeTest, DamagedModelFilesParseOrAreRefused) {
  std::ifstream f(kMistralV1, std::ios::binary);
  const std::string model((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_GT(model.size(), 100000u);
  std::mt19937 rng(21);
  int refused = 0, parsed = 0;
  for (int n = 0; n < 200; ++n) {
    std::string bytes = model;
    for (int m = 1 + static_cast<int>(rng() % 4); m > 0; --m) {
      // Mostly near the start, where the lengths and the first pieces' headers are.
      const size_t at = rng() % (rng() % 2 == 0 ? std::min<size_t>(64, bytes.size()) : bytes.size());
      switch (rng() % 4) {
        case 0: bytes[at] = static_cast<char>(rng() % 256); break;
        case 1: bytes.insert(bytes.begin() + static_cast<std::ptrdiff_t>(at), static_cast<char>(rng() % 256)); break;
        case 2: bytes.erase(at, 1 + rng() % 16); break;
        default: bytes.resize(at); break;
      }
      if (bytes.empty()) break;
    }
    absl::StatusOr<std::unique_ptr<SentencePieceBpe>> bpe = SentencePieceBpe::Parse(bytes, "damaged.model");
    if (!bpe.ok()) {
      ++refused;
      EXPECT_NE(bpe.status().message().find("damaged.model"), std::string::npos) << bpe.status();
      continue;
    }
    ++parsed;
    const std::vector<int32_t> ids = (*bpe)->Encode("Hello, wörld ✓ 日本");
    std::string text;
    for (int32_t id : ids) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, (*bpe)->size());
    }
    text = (*bpe)->Decode(ids);
  }
  EXPECT_GT(refused, 50);
  EXPECT_GT(parsed, 2) << "changes inside pieces' text still parse";
}

// ---- Load: file discovery and tokenizer_config.json defaults ----

class LoadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("tokenizer_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void CopyModel() { fs::copy_file(kMistralV1, dir_ / "tokenizer.model"); }
  void WriteConfig(const std::string& json) {
    std::ofstream(dir_ / "tokenizer_config.json") << json;
  }
  fs::path dir_;
};

TEST_F(LoadTest, MissingModelIsNotFoundNamingThePath) {
  auto tok = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(tok.status().message().find((dir_ / "tokenizer.model").string()),
            std::string_view::npos)
      << tok.status();
}

// A tokenizer file that is there but no file is an error saying so: not "no tokenizer" (NotFound,
// which a model folder without one is), and tokenizer.json is not passed over for tokenizer.model.
TEST_F(LoadTest, TokenizerThatIsNoFileIsNamedAsSuch) {
  CopyModel();
  fs::create_directory(dir_ / "tokenizer.json");
  auto tok = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("tokenizer.json is a directory"), std::string_view::npos) << tok.status();
  fs::remove(dir_ / "tokenizer.json");
  ASSERT_EQ(::mkfifo((dir_ / "tokenizer_config.json").c_str(), 0600), 0);
  tok = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("FIFO"), std::string_view::npos) << tok.status();
  fs::remove(dir_ / "tokenizer_config.json");
  fs::remove(dir_ / "tokenizer.model");
  fs::create_directory(dir_ / "tokenizer.model");
  tok = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("tokenizer.model is a directory"), std::string_view::npos) << tok.status();
}

TEST_F(LoadTest, WithoutConfigAddsBos) {
  CopyModel();
  auto tok = LoadOrDie(Tokenizer::Load(dir_.string()));
  EXPECT_TRUE(tok->add_bos());
  EXPECT_FALSE(tok->add_eos());
  EXPECT_EQ(tok->Encode("Hi").front(), 1);
}

TEST_F(LoadTest, ConfigWithoutAddBosDefaultsToTrue) {
  CopyModel();
  WriteConfig(R"({"add_eos_token": true, "tokenizer_class": "LlamaTokenizer"})");
  auto tok = LoadOrDie(Tokenizer::Load(dir_.string()));
  EXPECT_TRUE(tok->add_bos());
  EXPECT_TRUE(tok->add_eos());
}

TEST_F(LoadTest, BadConfigNamesTheFile) {
  CopyModel();
  WriteConfig(R"({"add_bos_token": "yes"})");
  auto tok = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("tokenizer_config.json"), std::string_view::npos)
      << tok.status();
}

// "legacy": false reaches the encoder: the text after a special token gets no "▁" of its own.
TEST_F(LoadTest, LegacyFalseDropsTheSpaceAfterSpecialTokens) {
  CopyModel();
  auto legacy = LoadOrDie(Tokenizer::Load(dir_.string()));
  WriteConfig(R"({"legacy": false})");
  auto modern = LoadOrDie(Tokenizer::Load(dir_.string()));
  EXPECT_EQ(modern->EncodeWithSpecialTokens("Hi"), legacy->EncodeWithSpecialTokens("Hi")) << "the text's start keeps it";
  // After </s>: the legacy rule writes "▁Hi" for "Hi"; the other gives that only for " Hi".
  EXPECT_EQ(modern->EncodeWithSpecialTokens("</s> Hi"), legacy->EncodeWithSpecialTokens("</s>Hi"));
  EXPECT_NE(modern->EncodeWithSpecialTokens("</s>Hi"), legacy->EncodeWithSpecialTokens("</s>Hi"));
  WriteConfig(R"({"legacy": "no"})");
  auto bad = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("legacy"), std::string_view::npos) << bad.status();
}

// A slow tokenizer's added tokens (tokenizer_config.json's added_tokens_decoder, added_tokens.json)
// must be the model's own special pieces (Mistral v3's 771 control tokens are); a fine-tune's token
// past the vocabulary refuses to load, naming it, where it would otherwise be encoded as text.
TEST_F(LoadTest, SlowAddedTokensMustBeTheModelsOwnSpecialPieces) {
  fs::copy_file(kTokenizerData + "/mistral-v3.model", dir_ / "tokenizer.model");
  const nlohmann::json fast = nlohmann::json::parse(std::ifstream(kTokenizerData + "/mistral-v3.tokenizer.json"));
  nlohmann::json config = {{"legacy", false}};
  for (const nlohmann::json& a : fast["added_tokens"]) {
    config["added_tokens_decoder"][std::to_string(a["id"].get<int>())] = {{"content", a["content"]}, {"special", true}};
  }
  ASSERT_EQ(config["added_tokens_decoder"].size(), 771u);
  WriteConfig(config.dump());
  auto v3 = LoadOrDie(Tokenizer::Load(dir_.string()));
  EXPECT_EQ(v3->EncodeWithSpecialTokens("[INST]").size(), 1u);
  config["added_tokens_decoder"]["32768"] = {{"content", "<|im_start|>"}, {"special", true}};
  WriteConfig(config.dump());
  absl::StatusOr<std::unique_ptr<Tokenizer>> chatml = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(chatml.ok());
  EXPECT_EQ(chatml.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(chatml.status().message().find("the added token \"<|im_start|>\" (id 32768) is not a special piece of "
                                           "tokenizer.model (32768 pieces)"),
            std::string_view::npos)
      << chatml.status();
  config["added_tokens_decoder"].erase("32768");
  config["added_tokens_decoder"]["3"] = {{"content", "[NOT_INST]"}};  // not the piece at that id
  WriteConfig(config.dump());
  EXPECT_FALSE(Tokenizer::Load(dir_.string()).ok());
  config["added_tokens_decoder"] = {{"x", {{"content", "<s>"}}}};
  WriteConfig(config.dump());
  absl::StatusOr<std::unique_ptr<Tokenizer>> bad = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("\"added_tokens_decoder\" entry \"x\""), std::string_view::npos) << bad.status();

  WriteConfig("{}");
  std::ofstream(dir_ / "added_tokens.json") << R"({"<|im_end|>": 32768})";
  absl::StatusOr<std::unique_ptr<Tokenizer>> listed = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(listed.ok());
  EXPECT_NE(listed.status().message().find("\"<|im_end|>\" (id 32768)"), std::string_view::npos) << listed.status();
  // Beside a tokenizer.json (the default mode reads it), the added tokens are that file's.
  fs::copy_file(kTokenizerData + "/mistral-v3.tokenizer.json", dir_ / "tokenizer.json");
  EXPECT_TRUE(Tokenizer::Load(dir_.string()).ok());
  EXPECT_FALSE(Tokenizer::Load(dir_.string(), TokenizerFile::kSentencePiece).ok());
}

// tokenizer_config.json's bos_token / eos_token name a tokenizer.model's BOS and EOS, as transformers'
// slow tokenizer reads them (a fine-tune's EOS may be another piece of the model); one that is no
// piece of it refuses to load. --tokenizer-mode mistral reads the model alone, as mistral-common.
TEST_F(LoadTest, SlowTokenizersTakeBosAndEosFromTheConfig) {
  CopyModel();
  EXPECT_EQ(LoadOrDie(Tokenizer::Load(dir_.string()))->eos_id(), 2);
  WriteConfig(R"({"eos_token": {"content": "<unk>"}, "bos_token": "</s>"})");
  auto named = LoadOrDie(Tokenizer::Load(dir_.string()));
  EXPECT_EQ(named->eos_id(), 0);
  EXPECT_EQ(named->bos_id(), 2);
  EXPECT_EQ(named->Encode("Hi").front(), 2) << "BOS as named";
  EXPECT_EQ(LoadOrDie(Tokenizer::Load(dir_.string(), TokenizerFile::kMistral))->eos_id(), 2);
  WriteConfig(R"({"eos_token": "<|im_end|>"})");
  absl::StatusOr<std::unique_ptr<Tokenizer>> missing = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("tokenizer_config.json: eos_token \"<|im_end|>\" is not a piece of tokenizer.model"),
            std::string_view::npos)
      << missing.status();
  std::ofstream(dir_ / "added_tokens.json") << R"({"<|im_end|>": 32000})";
  WriteConfig("{}");
  EXPECT_FALSE(Tokenizer::Load(dir_.string()).ok());
  EXPECT_TRUE(Tokenizer::Load(dir_.string(), TokenizerFile::kMistral).ok()) << "mistral-common reads neither file";
}

TEST_F(LoadTest, CorruptModelNamesTheFile) {
  std::ofstream(dir_ / "tokenizer.model") << "not a sentencepiece model";
  auto tok = Tokenizer::Load(dir_.string());
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("tokenizer.model"), std::string_view::npos)
      << tok.status();
}

}  // namespace
}  // namespace moe
