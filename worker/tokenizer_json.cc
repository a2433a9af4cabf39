// Reads a Hugging Face tokenizer.json into a SentencePieceBpe (sentencepiece_bpe.h says which files
// and why): the BPE model's vocabulary and merges, the added tokens, and the few normaliser,
// pre-tokenizer, decoder and post-processor shapes that SentencePiece-style (Llama / Mistral)
// files have. Whatever else a file holds is refused naming the field, so that no text is encoded
// differently from the file's own tokenizer without a word.
#include <algorithm>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "worker/sentencepiece_bpe.h"

namespace moe {
namespace {

using nlohmann::json;

constexpr std::string_view kSpace = "\xE2\x96\x81";  // "▁"
// Past this many ids a file is not a tokenizer (and the piece table would be huge).
constexpr int64_t kMaxId = 1 << 24;

struct Reading {
  const std::string& name;
  absl::Status Bad(const std::string& what) const { return absl::InvalidArgumentError(absl::StrCat(name, ": ", what)); }
  absl::Status Unsupported(const std::string& field, const json& value) const {
    return Bad(absl::StrCat(field, " ", value.dump(), " is not supported (SentencePiece-style files only: see "
                                   "worker/sentencepiece_bpe.h; --tokenizer-mode slow reads tokenizer.model)"));
  }
};

std::string TypeOf(const json& j) { return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : ""; }

// Fields read without nlohmann's value(), which throws on a value of another type.
bool IsTrue(const json& j, const char* key) { return j.contains(key) && j[key].is_boolean() && j[key].get<bool>(); }
std::optional<int64_t> Int(const json& j, const char* key) {
  if (!j.contains(key) || !j[key].is_number_integer()) return std::nullopt;
  return j[key].get<int64_t>();
}

bool IsString(const json& j, const char* key, std::string_view value) {
  return j.contains(key) && j[key].is_string() && j[key].get<std::string>() == value;
}

// Replace " " -> "▁" (the normaliser) or "▁" -> " " (the decoder).
bool IsReplace(const json& j, std::string_view from, std::string_view to) {
  return TypeOf(j) == "Replace" && j.contains("pattern") && j["pattern"].is_object() && IsString(j["pattern"], "String", from) &&
         IsString(j, "content", to);
}

// A list of steps: a Sequence's, or the one step itself.
std::vector<json> Steps(const json& j, const char* list_key) {
  if (j.is_null()) return {};
  if (TypeOf(j) == "Sequence" && j.contains(list_key) && j[list_key].is_array()) return j[list_key].get<std::vector<json>>();
  return {j};
}

struct Metaspace {
  bool present = false;
  std::string prepend = "always";  // always / first / never
  bool split = true;
};

absl::StatusOr<Metaspace> ReadMetaspace(const json& j, const Reading& r, const std::string& field) {
  Metaspace m;
  m.present = true;
  if (!IsString(j, "replacement", kSpace)) return r.Unsupported(field + ".replacement", j.contains("replacement") ? j["replacement"] : json());
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    if (!j["prepend_scheme"].is_string()) return r.Unsupported(field + ".prepend_scheme", j["prepend_scheme"]);
    m.prepend = j["prepend_scheme"].get<std::string>();
    if (m.prepend != "always" && m.prepend != "first" && m.prepend != "never") {
      return r.Unsupported(field + ".prepend_scheme", j["prepend_scheme"]);
    }
  } else if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean()) {  // older files' spelling
    m.prepend = j["add_prefix_space"].get<bool>() ? "always" : "never";
  }
  if (j.contains("split") && !j["split"].is_null()) {
    if (!j["split"].is_boolean()) return r.Unsupported(field + ".split", j["split"]);
    m.split = j["split"].get<bool>();
  }
  return m;
}

// A token's text in tokenizer_config.json's or post-processor's spelling.
std::optional<std::string> TemplateToken(const json& item) {
  if (!item.is_object() || !item.contains("SpecialToken") || !item["SpecialToken"].is_object()) return std::nullopt;
  const json& t = item["SpecialToken"];
  if (!t.contains("id") || !t["id"].is_string()) return std::nullopt;
  return t["id"].get<std::string>();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceBpe>> SentencePieceBpe::LoadTokenizerJson(const std::string& path,
                                                                                      std::string_view bos_token,
                                                                                      std::string_view eos_token) {
  absl::StatusOr<std::string> text = ReadTextFile(path);
  if (!text.ok()) return absl::Status(text.status().code(), absl::StrCat("tokenizer file: ", text.status().message()));
  return ParseTokenizerJson(*text, path, bos_token, eos_token);
}

absl::StatusOr<std::unique_ptr<SentencePieceBpe>> SentencePieceBpe::ParseTokenizerJson(std::string_view text,
                                                                                       const std::string& name,
                                                                                       std::string_view bos_token,
                                                                                       std::string_view eos_token) {
  const Reading r{name};
  absl::StatusOr<json> parsed = ParseJson(text);
  if (!parsed.ok()) return r.Bad(std::string(parsed.status().message()));
  const json file = *std::move(parsed);
  if (!file.is_object()) return r.Bad("not a JSON object");
  if (!file.contains("model") || !file["model"].is_object()) return r.Bad("no \"model\" object");
  const json& model = file["model"];
  if (model.contains("type") && TypeOf(model) != "BPE") return r.Unsupported("model.type", model["type"]);
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (model.contains(key) && !model[key].is_null() && model[key] != "") return r.Unsupported(absl::StrCat("model.", key), model[key]);
  }
  if (model.contains("dropout") && !model["dropout"].is_null() && !(model["dropout"].is_number() && model["dropout"].get<double>() == 0)) {
    return r.Unsupported("model.dropout", model["dropout"]);
  }
  const auto flag = [&](const char* key) -> absl::StatusOr<bool> {
    if (!model.contains(key) || model[key].is_null()) return false;
    if (!model[key].is_boolean()) return r.Bad(absl::StrCat("model.", key, " is not a boolean"));
    return model[key].get<bool>();
  };

  std::unique_ptr<SentencePieceBpe> m(new SentencePieceBpe());
  m->json_ = JsonRules();  // not emplace(): clang 14 finds JsonRules (members with initialisers) not default-constructible
  JsonRules& rules = *m->json_;
  MOE_ASSIGN_OR_RETURN(m->byte_fallback_, flag("byte_fallback"));
  // Without it, Hugging Face's ByteFallback decoder still turns "<0xNN>" tokens into bytes that the
  // model never encodes as such; Mistral's files all have it.
  if (!m->byte_fallback_) return r.Unsupported("model.byte_fallback", model.contains("byte_fallback") ? model["byte_fallback"] : json());
  MOE_ASSIGN_OR_RETURN(rules.fuse_unk, flag("fuse_unk"));
  MOE_ASSIGN_OR_RETURN(rules.ignore_merges, flag("ignore_merges"));

  // The pieces: the model's vocabulary, then the added tokens (ids past it too).
  if (!model.contains("vocab") || !model["vocab"].is_object()) return r.Bad("model.vocab is not an object");
  std::vector<std::pair<std::string, int64_t>> entries;
  for (const auto& [token, id] : model["vocab"].items()) {
    if (!id.is_number_integer()) return r.Bad(absl::StrCat("model.vocab[\"", token, "\"] is not an integer id"));
    entries.emplace_back(token, id.get<int64_t>());
  }
  const size_t vocab_entries = entries.size();
  std::vector<std::string> normalized_tokens;  // added tokens matched in the normalised text
  const json added = file.contains("added_tokens") && !file["added_tokens"].is_null() ? file["added_tokens"] : json::array();
  if (!added.is_array()) return r.Bad("added_tokens is not a list");
  for (const json& a : added) {
    if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") || !a["content"].is_string()) {
      return r.Bad(absl::StrCat("added token ", a.dump(), " has no integer id and text content"));
    }
    const std::string content = a["content"].get<std::string>();
    if (content.empty()) return r.Bad(absl::StrCat("added token ", a["id"].dump(), " is empty"));
    for (const char* key : {"lstrip", "rstrip", "single_word"}) {
      if (IsTrue(a, key)) return r.Unsupported(absl::StrCat("added token \"", content, "\"'s ", key), a[key]);
    }
    entries.emplace_back(content, a["id"].get<int64_t>());
    m->added_.push_back({content, static_cast<int32_t>(a["id"].get<int64_t>()), IsTrue(a, "special"), IsTrue(a, "normalized")});
    if (IsTrue(a, "normalized")) normalized_tokens.push_back(content);
  }
  // Every id one text, and the ids running from 0 without gaps (checked in that order, so two
  // texts sharing an id are named as such rather than as the gap they leave, and before a table as
  // large as the highest id is made).
  std::vector<std::pair<int64_t, const std::string*>> by_id;
  by_id.reserve(entries.size());
  for (const auto& [token, id] : entries) {
    if (id < 0 || id >= kMaxId) return r.Bad(absl::StrCat("token \"", token, "\" has id ", id, " outside [0, ", kMaxId, ")"));
    by_id.emplace_back(id, &token);
  }
  std::sort(by_id.begin(), by_id.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : *a.second < *b.second;
  });
  for (size_t i = 1; i < by_id.size(); ++i) {  // (equal texts: an added token repeating its vocabulary entry)
    if (by_id[i].first == by_id[i - 1].first && *by_id[i].second != *by_id[i - 1].second) {
      return r.Bad(absl::StrCat("id ", by_id[i].first, " is both \"", *by_id[i - 1].second, "\" and \"", *by_id[i].second, "\""));
    }
  }
  int64_t size = 0;  // distinct ids
  for (size_t i = 0; i < by_id.size(); ++i) {
    if (i > 0 && by_id[i].first == by_id[i - 1].first) continue;
    if (by_id[i].first != size) return r.Bad(absl::StrCat("id ", size, " has no token (the ids must run from 0 without gaps)"));
    ++size;
  }
  m->pieces_.resize(static_cast<size_t>(size));
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& [token, id] = entries[i];
    Piece& p = m->pieces_[static_cast<size_t>(id)];
    p.text = token;
    if (i >= vocab_entries) {
      if (!model["vocab"].contains(token)) p.added_only = true;
      continue;
    }
    if (m->byte_fallback_ && BytePieceValue(token)) p.type = Type::kByte;
  }
  for (const AddedToken& a : m->added_) {
    m->pieces_[static_cast<size_t>(a.id)].type = a.special ? Type::kControl : Type::kUserDefined;
  }
  std::stable_sort(m->added_.begin(), m->added_.end(), [](const AddedToken& a, const AddedToken& b) { return a.text.size() > b.text.size(); });

  // The tokens of the names a tokenizer speaks of.
  const auto id_of = [&](std::string_view token) -> int32_t {
    for (size_t id = 0; id < m->pieces_.size(); ++id) {
      if (m->pieces_[id].text == token) return static_cast<int32_t>(id);
    }
    return -1;
  };
  m->unk_id_ = -1;
  if (model.contains("unk_token") && !model["unk_token"].is_null()) {
    if (!model["unk_token"].is_string()) return r.Bad("model.unk_token is not a string");
    m->unk_id_ = id_of(model["unk_token"].get<std::string>());
    if (m->unk_id_ < 0) return r.Bad(absl::StrCat("model.unk_token \"", model["unk_token"].get<std::string>(), "\" is not a token"));
    m->pieces_[static_cast<size_t>(m->unk_id_)].type = Type::kUnknown;
    rules.unk_special = std::any_of(m->added_.begin(), m->added_.end(),
                                    [&](const AddedToken& a) { return a.special && a.id == m->unk_id_; });
  }
  m->bos_id_ = id_of(bos_token);
  m->eos_id_ = id_of(eos_token);
  if (m->bos_id_ < 0) return r.Bad(absl::StrCat("the BOS token \"", std::string(bos_token), "\" is not a token"));
  if (m->eos_id_ < 0) return r.Bad(absl::StrCat("the EOS token \"", std::string(eos_token), "\" is not a token"));
  // An unknown token decodes to its text unless it is a special token (then skipped, or its text).
  m->unk_surface_ = m->unk_id_ >= 0 ? m->pieces_[static_cast<size_t>(m->unk_id_)].text : std::string();

  // Merges: "left right" (older files) or [left, right]; a later duplicate's rank wins, as in
  // Hugging Face tokenizers' map.
  if (!model.contains("merges") || !model["merges"].is_array()) return r.Bad("model.merges is not a list");
  const json& merges = model["merges"];
  const auto vocab_id = [&](const std::string& token) -> int32_t {
    const json& v = model["vocab"];
    const auto it = v.find(token);
    return it == v.end() ? -1 : static_cast<int32_t>(it->get<int64_t>());
  };
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const json& e = merges[rank];
    std::string left, right;
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) return r.Bad(absl::StrCat("merge ", rank, " \"", s, "\" is not two tokens"));
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      left = e[0].get<std::string>();
      right = e[1].get<std::string>();
    } else {
      return r.Bad(absl::StrCat("merge ", rank, " ", e.dump(), " is not two tokens"));
    }
    const int32_t l = vocab_id(left), rt = vocab_id(right), merged = vocab_id(left + right);
    if (l < 0 || rt < 0 || merged < 0) {
      return r.Bad(absl::StrCat("merge ", rank, " (\"", left, "\", \"", right, "\") names a token outside model.vocab"));
    }
    rules.merges[JsonRules::PairKey(l, rt)] = {static_cast<int32_t>(rank), merged};
  }

  // Where spaces become "▁" and where a "▁" is prepended.
  bool prepend = false, replace = false;
  const json normalizer = file.value("normalizer", json());
  for (const json& step : Steps(normalizer, "normalizers")) {
    if (TypeOf(step) == "Prepend" && IsString(step, "prepend", kSpace)) {
      prepend = true;
    } else if (IsReplace(step, " ", kSpace)) {
      replace = true;
    } else {
      return r.Unsupported("normalizer", step);
    }
  }
  Metaspace meta;
  const json pre = file.value("pre_tokenizer", json());
  for (const json& step : Steps(pre, "pretokenizers")) {
    if (TypeOf(step) != "Metaspace" || meta.present) return r.Unsupported("pre_tokenizer", step);
    MOE_ASSIGN_OR_RETURN(meta, ReadMetaspace(step, r, "pre_tokenizer"));
  }
  if (!replace && !meta.present) return r.Bad("neither the normaliser nor the pre-tokenizer writes spaces as \"▁\"");
  // Hugging Face tokenizers matches such a token in the normalised text, as the normaliser writes
  // the token ("▁<|im_start|>" under Prepend: found only after a space or at the start); without a
  // normaliser that is the text itself, as read here (Tokenizer's second pass).
  if ((prepend || replace) && !normalized_tokens.empty()) {
    return r.Bad(absl::StrCat("added token \"", normalized_tokens.front(),
                              "\" has normalized: true, which is not supported with a normaliser (--tokenizer-mode slow "
                              "reads tokenizer.model)"));
  }
  m->remove_extra_whitespaces_ = false;
  m->add_dummy_prefix_ = prepend || (meta.present && meta.prepend != "never");
  rules.prefix_unless_space = !prepend && meta.present;
  rules.prefix_every_part = prepend || meta.prepend == "always";
  rules.split_at_space = meta.present && meta.split;

  // The decoder: Replace "▁" -> " ", ByteFallback, Fuse, then Strip of one leading space or none
  // (what transformers writes for SentencePiece-style models); decoded as Decode does.
  const json decoder = file.value("decoder", json());
  const std::vector<json> steps = Steps(decoder, "decoders");
  const bool known = (steps.size() == 3 || steps.size() == 4) && IsReplace(steps[0], kSpace, " ") &&
                     TypeOf(steps[1]) == "ByteFallback" && TypeOf(steps[2]) == "Fuse" &&
                     (steps.size() == 3 || (TypeOf(steps[3]) == "Strip" && IsString(steps[3], "content", " ") &&
                                            Int(steps[3], "stop") == 0 && (Int(steps[3], "start") == 0 || Int(steps[3], "start") == 1)));
  if (!known) return r.Unsupported("decoder", decoder);
  m->strip_first_space_ = steps.size() == 4 && Int(steps[3], "start") == 1;

  // BOS / EOS as the post-processor adds them (Tokenizer's default where tokenizer_config.json
  // does not say).
  const json post = file.value("post_processor", json());
  if (TypeOf(post) == "TemplateProcessing" && post.contains("single") && post["single"].is_array() && !post["single"].empty()) {
    const json& single = post["single"];
    rules.post = Template{TemplateToken(single.front()) == std::string(bos_token),
                          TemplateToken(single.back()) == std::string(eos_token)};
  }
  MOE_RETURN_IF_ERROR(m->Init(name));
  return m;
}

}  // namespace moe
