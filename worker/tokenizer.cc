#include "worker/tokenizer.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>
#include <filesystem>
#include <iterator>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"

namespace moe {
namespace {

// What the serving systems use: a few ids of prompt context are enough for the decoding of the
// first generated id to see the preceding piece boundary.
constexpr size_t kInitialContextIds = 5;

// The UTF-8 encoding of U+FFFD, which SentencePiece produces for incomplete byte sequences.
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// Reads an optional boolean field of tokenizer_config.json (nullopt where absent or null).
absl::StatusOr<std::optional<bool>> OptionalBool(const nlohmann::json& config, const char* key, const std::string& path) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (!it->is_boolean()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" is not a boolean"));
  }
  return it->get<bool>();
}

// Reads tokenizer_config.json's text of a token ("bos_token": "<s>", or the object transformers
// writes, {"content": "<s>", ...}); nullopt where absent or null.
absl::StatusOr<std::optional<std::string>> TokenText(const nlohmann::json& config, const char* key, const std::string& path) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) return (*it)["content"].get<std::string>();
  return absl::InvalidArgumentError(absl::StrCat(path, ": \"", key, "\" is not a token's text"));
}

// A slow tokenizer's added tokens (tokenizer_config.json's "added_tokens_decoder": {"32001":
// {"content": "<|im_start|>", ...}}, or added_tokens.json's {"<|im_start|>": 32001}) as (id, text).
absl::StatusOr<std::vector<std::pair<int64_t, std::string>>> SlowAddedTokens(const nlohmann::json* config,
                                                                           const std::string& config_path,
                                                                           const std::filesystem::path& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  if (config != nullptr && config->contains("added_tokens_decoder") && !(*config)["added_tokens_decoder"].is_null()) {
    const nlohmann::json& decoder = (*config)["added_tokens_decoder"];
    if (!decoder.is_object()) return absl::InvalidArgumentError(absl::StrCat(config_path, ": \"added_tokens_decoder\" is not an object"));
    for (const auto& [key, token] : decoder.items()) {
      int64_t id = 0;
      const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size() || !token.is_object() || !token.contains("content") ||
          !token["content"].is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(config_path, ": \"added_tokens_decoder\" entry \"", key, "\" is not an id with {\"content\": text}"));
      }
      out.emplace_back(id, token["content"].get<std::string>());
    }
  }
  const std::string added_path = (dir / "added_tokens.json").string();
  std::error_code ec;
  if (std::filesystem::is_regular_file(added_path, ec)) {
    MOE_ASSIGN_OR_RETURN(nlohmann::json added, ReadJsonFile(added_path));
    if (!added.is_object()) return absl::InvalidArgumentError(absl::StrCat(added_path, ": not a JSON object"));
    for (const auto& [text, id] : added.items()) {
      if (!id.is_number_integer()) return absl::InvalidArgumentError(absl::StrCat(added_path, ": \"", text, "\" has no integer id"));
      out.emplace_back(id.get<int64_t>(), text);
    }
  }
  return out;
}

bool IsUtf8Continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// The part of `full` after `prefix`. Normally `prefix` is a prefix of `full`; if an earlier
// context decoded differently (e.g. the prompt itself ended inside a byte sequence), the text
// after the longest common prefix is returned instead, cut at a character boundary.
std::string Delta(std::string_view prefix, std::string_view full) {
  size_t common = std::mismatch(prefix.begin(), prefix.end(), full.begin(), full.end()).first -
                  prefix.begin();
  if (common == prefix.size()) return std::string(full.substr(common));
  while (common > 0 && common < full.size() && IsUtf8Continuation(full[common])) --common;
  return std::string(full.substr(common));
}

}  // namespace

absl::StatusOr<TokenizerFile> ParseTokenizerMode(std::string_view mode) {
  if (mode == "auto") return TokenizerFile::kAuto;
  if (mode == "hf") return TokenizerFile::kTokenizerJson;
  if (mode == "slow") return TokenizerFile::kSentencePiece;
  if (mode == "mistral") return TokenizerFile::kMistral;
  return absl::InvalidArgumentError(absl::StrCat("tokenizer mode \"", std::string(mode), "\" is none of auto, hf, slow, mistral"));
}

void Tokenizer::SplitSet::Add(const std::string& text, int32_t id, bool special) {
  if (text.empty()) return;
  // Longest first, so that at any position the longest token written there is taken.
  const auto at = std::find_if(tokens.begin(), tokens.end(), [&](const auto& t) { return t.text.size() < text.size(); });
  tokens.insert(at, SplitToken{text, id, special});
  starts[static_cast<unsigned char>(text[0])] = true;
}

Tokenizer::Tokenizer(std::unique_ptr<SentencePieceBpe> sp, bool add_bos, bool add_eos, bool legacy)
    : sp_(std::move(sp)), add_bos_(add_bos), add_eos_(add_eos),
      legacy_(sp_->from_tokenizer_json() ? sp_->PrefixesEveryPart() : legacy) {
  if (sp_->from_tokenizer_json()) {
    for (const SentencePieceBpe::AddedToken& a : sp_->added_tokens()) {
      (a.normalized ? split_normalized_ : split_).Add(a.text, a.id, a.special);
    }
    return;
  }
  for (int32_t id = 0; id < sp_->size(); ++id) {
    const SentencePieceBpe::Type t = sp_->type(id);
    if (t == SentencePieceBpe::Type::kControl || t == SentencePieceBpe::Type::kUnknown) split_.Add(sp_->piece(id), id, true);
  }
}

Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& model_path,
                                                               bool add_bos, bool add_eos, bool legacy) {
  std::unique_ptr<SentencePieceBpe> sp;  // (both readers refuse a path that is no regular file, naming it)
  if (model_path.ends_with(".json")) {
    MOE_ASSIGN_OR_RETURN(sp, SentencePieceBpe::LoadTokenizerJson(model_path));
  } else {
    MOE_ASSIGN_OR_RETURN(sp, SentencePieceBpe::Load(model_path));
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(sp), add_bos, add_eos, legacy));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& model_dir, TokenizerFile file) {
  const std::filesystem::path dir(model_dir);
  const std::string config_path = (dir / "tokenizer_config.json").string();
  std::optional<bool> add_bos, add_eos, legacy;
  std::optional<std::string> bos_token, eos_token;  // where tokenizer_config.json names them
  std::error_code ec;
  std::optional<nlohmann::json> config_json;
  if (std::filesystem::exists(config_path, ec)) {
    MOE_ASSIGN_OR_RETURN(config_json, ReadJsonFile(config_path));
    const nlohmann::json& config = *config_json;
    if (!config.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": not a JSON object"));
    }
    MOE_ASSIGN_OR_RETURN(add_bos, OptionalBool(config, "add_bos_token", config_path));
    MOE_ASSIGN_OR_RETURN(add_eos, OptionalBool(config, "add_eos_token", config_path));
    MOE_ASSIGN_OR_RETURN(legacy, OptionalBool(config, "legacy", config_path));
    MOE_ASSIGN_OR_RETURN(bos_token, TokenText(config, "bos_token", config_path));
    MOE_ASSIGN_OR_RETURN(eos_token, TokenText(config, "eos_token", config_path));
  }
  const std::string json_path = (dir / "tokenizer.json").string();
  // kAuto takes tokenizer.json when anything has that name: one that is no file is an error, not a
  // reason to read tokenizer.model instead.
  if (file == TokenizerFile::kTokenizerJson || (file == TokenizerFile::kAuto && std::filesystem::exists(json_path, ec))) {
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<SentencePieceBpe> sp,
                         SentencePieceBpe::LoadTokenizerJson(json_path, bos_token.value_or("<s>"), eos_token.value_or("</s>")));
    // Where tokenizer_config.json does not say, what the file's post-processor adds.
    const std::optional<SentencePieceBpe::Template> post = sp->post_processor();
    const bool bos = add_bos.value_or(post.has_value() ? post->bos : true);
    const bool eos = add_eos.value_or(post.has_value() && post->eos);
    return std::unique_ptr<Tokenizer>(new Tokenizer(std::move(sp), bos, eos, /*legacy=*/true));
  }
  // Mistral's tokenizers prepend BOS; a config only needs to say so when it differs.
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, FromFile((dir / "tokenizer.model").string(), add_bos.value_or(true),
                                                                 add_eos.value_or(false), legacy.value_or(true)));
  if (file == TokenizerFile::kMistral) return tok;  // mistral-common reads the model alone
  // transformers' slow tokenizer takes BOS and EOS from tokenizer_config.json (a fine-tune's
  // "<|im_end|>" EOS may be a user-defined piece of the model).
  const auto id_of = [&](const std::string& text, const char* key) -> absl::StatusOr<int32_t> {
    const std::optional<int32_t> id = tok->sp_->PieceId(text);
    if (!id) {
      return absl::InvalidArgumentError(absl::StrCat(config_path, ": ", key, " \"", text, "\" is not a piece of tokenizer.model"));
    }
    return *id;
  };
  int32_t bos = tok->sp_->bos_id(), eos = tok->sp_->eos_id();
  if (bos_token) {
    MOE_ASSIGN_OR_RETURN(bos, id_of(*bos_token, "bos_token"));
  }
  if (eos_token) {
    MOE_ASSIGN_OR_RETURN(eos, id_of(*eos_token, "eos_token"));
  }
  tok->sp_->SetBosEos(bos, eos);
  // A slow tokenizer's added tokens beyond the model's own control, unknown and user-defined pieces
  // (which it splits out whole itself), e.g. a fine-tune's ChatML tokens past the vocabulary, are
  // read from a tokenizer.json only: encoding them as text would be silently wrong.
  MOE_ASSIGN_OR_RETURN(auto added, SlowAddedTokens(config_json ? &*config_json : nullptr, config_path, dir));
  for (const auto& [id, text] : added) {
    const bool own = id >= 0 && id < tok->sp_->size() && tok->sp_->piece(static_cast<int32_t>(id)) == text &&
                     tok->sp_->type(static_cast<int32_t>(id)) != SentencePieceBpe::Type::kNormal &&
                     tok->sp_->type(static_cast<int32_t>(id)) != SentencePieceBpe::Type::kByte &&
                     tok->sp_->type(static_cast<int32_t>(id)) != SentencePieceBpe::Type::kUnused;
    if (!own) {
      return absl::InvalidArgumentError(absl::StrCat(
          model_dir, ": the added token \"", text, "\" (id ", id, ") is not a special piece of tokenizer.model (",
          tok->sp_->size(), " pieces); added tokens are read from a tokenizer.json only (--tokenizer-mode auto or hf, "
          "with the folder's tokenizer.json)"));
    }
  }
  return tok;
}

void Tokenizer::AppendPieces(std::string_view text, std::vector<int32_t>& ids, bool dummy_prefix,
                             std::vector<TextSpan>* spans, size_t offset) const {
  const size_t first_span = spans != nullptr ? spans->size() : 0;
  const std::vector<int32_t> pieces = sp_->Encode(text, dummy_prefix, spans);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  if (spans == nullptr) return;
  for (size_t k = first_span; k < spans->size(); ++k) {  // in place: a second list was as big again
    (*spans)[k].begin += offset;
    (*spans)[k].end += offset;
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, std::vector<TextSpan>* spans) const {
  std::vector<int32_t> ids;
  if (spans != nullptr) spans->clear();
  if (add_bos_) {
    ids.push_back(bos_id());
    if (spans != nullptr) spans->push_back({});
  }
  AppendSplit(text, 0, text.size(), split_, &split_normalized_, /*parse_special=*/false, ids, spans);
  if (add_eos_) {
    ids.push_back(eos_id());
    if (spans != nullptr) spans->push_back({});
  }
  return ids;
}

std::vector<int32_t> Tokenizer::EncodeWithSpecialTokens(std::string_view text, std::vector<TextSpan>* spans) const {
  std::vector<int32_t> ids;
  if (spans != nullptr) spans->clear();
  AppendSplit(text, 0, text.size(), split_, &split_normalized_, /*parse_special=*/true, ids, spans);
  return ids;
}

void Tokenizer::AppendSplit(std::string_view text, size_t begin, size_t end, const SplitSet& set, const SplitSet* next,
                            bool parse_special, std::vector<int32_t>& ids, std::vector<TextSpan>* spans) const {
  const auto part = [&](size_t b, size_t e) {
    if (next != nullptr && !next->tokens.empty()) {
      AppendSplit(text, b, e, *next, nullptr, parse_special, ids, spans);
    } else {
      AppendPieces(text.substr(b, e - b), ids, legacy_ || b == 0, spans, b);
    }
  };
  size_t part_start = begin, i = begin;
  while (i < end) {
    if (!set.starts[static_cast<unsigned char>(text[i])]) {
      ++i;
      continue;
    }
    const auto token = std::find_if(set.tokens.begin(), set.tokens.end(), [&](const SplitToken& t) {
      return t.text.size() <= end - i && text.substr(i, t.text.size()) == t.text;
    });
    if (token == set.tokens.end()) {
      ++i;
      continue;
    }
    if (token->special && !parse_special) {  // stays text, and nothing of this pass inside it is split out
      i += token->text.size();
      continue;
    }
    part(part_start, i);
    ids.push_back(token->id);
    if (spans != nullptr) spans->push_back({i, i + token->text.size()});
    i += token->text.size();
    part_start = i;
  }
  part(part_start, end);
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  const int32_t n = vocab_size();
  const bool all_known = std::all_of(ids.begin(), ids.end(), [&](int32_t id) { return id < n; });
  std::vector<int32_t> known;
  if (!all_known) std::copy_if(ids.begin(), ids.end(), std::back_inserter(known), [&](int32_t id) { return id < n; });
  const std::span<const int32_t> kept = all_known ? ids : std::span<const int32_t>(known);
  const absl::Status valid = CheckIds(kept);
  MOE_CHECK(valid.ok(), valid.message());
  return sp_->Decode(kept, skip_special_tokens);
}

size_t Tokenizer::DecodedSizeBound(std::span<const int32_t> ids) const {
  const int32_t n = vocab_size();
  size_t bytes = 0;
  for (int32_t id : ids) {
    if (id < n) bytes += sp_->DecodedSizeBound(id);
  }
  return bytes;
}

absl::Status Tokenizer::CheckIds(std::span<const int32_t> ids) const {
  const int32_t n = vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= n) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", ids[i], " at index ", i,
                                                     " is outside the vocabulary [0, ", n, ")"));
    }
  }
  return absl::OkStatus();
}

std::string Tokenizer::Piece(int32_t id) const {
  MOE_CHECK(id >= 0, absl::StrCat("token id ", id, " is negative"));
  return id < vocab_size() ? sp_->piece(id) : std::string();
}

std::vector<std::string> Tokenizer::TokenTexts() const {
  std::vector<std::string> texts;
  texts.reserve(static_cast<size_t>(vocab_size()));
  for (int32_t id = 0; id < vocab_size(); ++id) texts.push_back(sp_->TokenText(id));
  return texts;
}
std::string Tokenizer::TokenBytes(int32_t id) const {
  return id >= 0 && id < vocab_size() ? sp_->TokenText(id) : std::string();
}
int32_t Tokenizer::bos_id() const { return sp_->bos_id(); }
int32_t Tokenizer::eos_id() const { return sp_->eos_id(); }
int32_t Tokenizer::vocab_size() const { return sp_->size(); }

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tok,
                                           std::span<const int32_t> prompt_ids, bool skip_special_tokens)
    : tok_(tok),
      skip_special_tokens_(skip_special_tokens),
      ids_(prompt_ids.begin(), prompt_ids.end()),
      prefix_offset_(ids_.size() - std::min(ids_.size(), kInitialContextIds)),
      read_offset_(ids_.size()) {}

std::string StreamingDetokenizer::DecodeRange(size_t begin, size_t end) const {
  return tok_.Decode(std::span<const int32_t>(ids_).subspan(begin, end - begin), skip_special_tokens_);
}

std::string StreamingDetokenizer::Push(int32_t id) {
  ids_.push_back(id);
  const std::string prefix_text = DecodeRange(prefix_offset_, read_offset_);
  const std::string new_text = DecodeRange(prefix_offset_, ids_.size());
  // No new text (a control id) or a trailing U+FFFD (an unfinished byte-fallback sequence):
  // keep the offsets so the next Push decodes these ids again together with what follows.
  if (new_text.size() <= prefix_text.size() || new_text.ends_with(kReplacementChar)) return {};
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return Delta(prefix_text, new_text);
}

std::string StreamingDetokenizer::Flush() {
  const std::string prefix_text = DecodeRange(prefix_offset_, read_offset_);
  const std::string new_text = DecodeRange(prefix_offset_, ids_.size());
  prefix_offset_ = read_offset_ = ids_.size();
  return Delta(prefix_text, new_text);
}

}  // namespace moe
