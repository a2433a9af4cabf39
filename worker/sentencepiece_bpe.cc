#include "worker/sentencepiece_bpe.h"

#include <algorithm>
#include <cstring>
#include <queue>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/hex_digit.h"

namespace moe {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // "▁"
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// --- the protobuf wire format, as far as ModelProto needs it ---

struct Reader {
  std::string_view data;
  size_t pos = 0;
  bool ok = true;

  bool done() const { return pos >= data.size() || !ok; }
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (pos >= data.size()) {
        ok = false;
        return 0;
      }
      const uint8_t b = static_cast<uint8_t>(data[pos++]);
      v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    ok = false;
    return 0;
  }
  std::string_view Bytes() {
    const uint64_t n = Varint();
    if (!ok || n > data.size() - pos) {
      ok = false;
      return {};
    }
    std::string_view s = data.substr(pos, n);
    pos += n;
    return s;
  }
  uint32_t Fixed32() {
    if (data.size() - pos < 4) {
      ok = false;
      return 0;
    }
    uint32_t v;
    std::memcpy(&v, data.data() + pos, 4);
    pos += 4;
    return v;
  }
  // Skips a field of `wire` type.
  void Skip(int wire) {
    switch (wire) {
      case 0: Varint(); break;
      case 1:  // fixed64
        if (data.size() - pos < 8) {
          ok = false;
        } else {
          pos += 8;
        }
        break;
      case 2: Bytes(); break;
      case 5: Fixed32(); break;
      default: ok = false;
    }
  }
};

// SentencePiece's DecodeUTF8: the length of the character at `s` and whether it is valid (a
// structurally valid encoding of U+0080.. without surrogates or values past U+10FFFF; U+FFFD itself
// counts as valid).
bool ValidUtf8Char(std::string_view s, size_t& len) {
  const auto b = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const auto trail = [&](size_t i) { return (b(i) & 0xC0) == 0x80; };
  const auto valid_cp = [](uint32_t c) { return c < 0xD800 || (c >= 0xE000 && c <= 0x10FFFF); };
  len = 1;
  if (b(0) < 0x80) return true;
  if (s.size() >= 2 && (b(0) & 0xE0) == 0xC0) {
    const uint32_t cp = (b(0) & 0x1Fu) << 6 | (b(1) & 0x3Fu);
    if (trail(1) && cp >= 0x80 && valid_cp(cp)) return len = 2, true;
  } else if (s.size() >= 3 && (b(0) & 0xF0) == 0xE0) {
    const uint32_t cp = (b(0) & 0x0Fu) << 12 | (b(1) & 0x3Fu) << 6 | (b(2) & 0x3Fu);
    if (trail(1) && trail(2) && cp >= 0x800 && valid_cp(cp)) return len = 3, true;
  } else if (s.size() >= 4 && (b(0) & 0xF8) == 0xF0) {
    const uint32_t cp = (b(0) & 0x07u) << 18 | (b(1) & 0x3Fu) << 12 | (b(2) & 0x3Fu) << 6 | (b(3) & 0x3Fu);
    if (trail(1) && trail(2) && trail(3) && cp >= 0x10000 && valid_cp(cp)) return len = 4, true;
  }
  return false;
}

// SentencePiece's OneCharLen: the length its splitter gives the character at `s` (by the lead byte
// alone, at most what is left).
size_t OneCharLen(std::string_view s) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return std::min<size_t>(s.size(), kLen[static_cast<uint8_t>(s[0]) >> 4]);
}

}  // namespace

absl::StatusOr<std::unique_ptr<SentencePieceBpe>> SentencePieceBpe::Load(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadTextFile(path);
  if (!bytes.ok()) return absl::Status(bytes.status().code(), absl::StrCat("tokenizer model: ", bytes.status().message()));
  return Parse(*bytes, path);
}

absl::StatusOr<std::unique_ptr<SentencePieceBpe>> SentencePieceBpe::Parse(std::string_view bytes,
                                                                          const std::string& name) {
  std::unique_ptr<SentencePieceBpe> m(new SentencePieceBpe());
  int64_t model_type = 1;  // UNIGRAM unless the trainer spec says otherwise
  bool whitespace_as_suffix = false;
  std::string normalizer = "nmt_nfkc";
  bool charsmap = false;
  const auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not a SentencePiece model (", what, ")"));
  };
  Reader model{bytes};
  while (!model.done()) {
    const uint64_t tag = model.Varint();
    const int field = static_cast<int>(tag >> 3), wire = static_cast<int>(tag & 7);
    if (wire != 2 || (field != 1 && field != 2 && field != 3)) {
      model.Skip(wire);
      continue;
    }
    Reader sub{model.Bytes()};
    if (!model.ok) break;
    if (field == 1) m->pieces_.emplace_back();  // a SentencePiece: piece 1, score 2, type 3
    while (!sub.done()) {
      const uint64_t t = sub.Varint();
      const int f = static_cast<int>(t >> 3), w = static_cast<int>(t & 7);
      if (field == 1 && f == 1 && w == 2) {
        m->pieces_.back().text = std::string(sub.Bytes());
      } else if (field == 1 && f == 2 && w == 5) {
        const uint32_t v = sub.Fixed32();
        std::memcpy(&m->pieces_.back().score, &v, 4);
      } else if (field == 1 && f == 3 && w == 0) {
        const uint64_t type = sub.Varint();
        if (type < 1 || type > 6) return bad(absl::StrCat("piece type ", type));
        m->pieces_.back().type = static_cast<Type>(type);
      } else if (field == 2 && w == 0 && (f == 3 || f == 24 || f == 35 || (f >= 40 && f <= 43))) {
        const int64_t v = static_cast<int64_t>(sub.Varint());
        if (f == 3) model_type = v;
        if (f == 24) whitespace_as_suffix = v != 0;
        if (f == 35) m->byte_fallback_ = v != 0;
        if (f == 40) m->unk_id_ = static_cast<int32_t>(v);
        if (f == 41) m->bos_id_ = static_cast<int32_t>(v);
        if (f == 42) m->eos_id_ = static_cast<int32_t>(v);
      } else if (field == 2 && f == 44 && w == 2) {
        m->unk_surface_ = std::string(sub.Bytes());
      } else if (field == 3 && f == 1 && w == 2) {
        normalizer = std::string(sub.Bytes());
      } else if (field == 3 && f == 2 && w == 2) {
        charsmap = !sub.Bytes().empty();
      } else if (field == 3 && w == 0 && (f == 3 || f == 4 || f == 5)) {
        const bool v = sub.Varint() != 0;
        if (f == 3) m->add_dummy_prefix_ = v;
        if (f == 4) m->remove_extra_whitespaces_ = v;
        if (f == 5 && !v) return absl::InvalidArgumentError(absl::StrCat(name, ": escape_whitespaces off is not supported"));
      } else {
        sub.Skip(w);
      }
    }
    if (!sub.ok) return bad("a truncated field");
  }
  if (!model.ok) return bad("a truncated field");
  if (m->pieces_.empty()) return bad("no pieces");
  if (model_type != 2) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": only BPE models are supported (model_type ", model_type, ")"));
  }
  if (charsmap || (normalizer != "identity" && !normalizer.empty())) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": the normaliser \"", normalizer,
                                                   "\" is not supported (only identity)"));
  }
  if (whitespace_as_suffix) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": treat_whitespace_as_suffix is not supported"));
  }
  m->strip_first_space_ = m->add_dummy_prefix_ || m->remove_extra_whitespaces_;
  MOE_RETURN_IF_ERROR(m->Init(name));
  return m;
}

std::optional<uint8_t> SentencePieceBpe::BytePieceValue(std::string_view text) {
  if (text.size() != 6 || !text.starts_with("<0x") || text[5] != '>') return std::nullopt;
  const int hi = HexDigitValue(static_cast<unsigned char>(text[3]));
  const int lo = HexDigitValue(static_cast<unsigned char>(text[4]));
  if (hi < 0 || lo < 0) return std::nullopt;
  return static_cast<uint8_t>(hi << 4 | lo);
}

absl::Status SentencePieceBpe::Init(const std::string& name) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
  for (size_t i = 0; i < pieces_.size(); ++i) {
    const Piece& p = pieces_[i];
    const auto id = static_cast<int32_t>(i);
    switch (p.type) {
      case Type::kNormal:
      case Type::kUserDefined:
        mergeable_.emplace(p.text, id);
        // A tokenizer.json's added tokens are split out by Tokenizer before encoding, not kept
        // whole inside it.
        if (p.type == Type::kUserDefined && !json_.has_value()) user_defined_.push_back(p.text);
        break;
      case Type::kUnused:
        return absl::InvalidArgumentError(absl::StrCat(name, ": unused pieces are not supported (\"", p.text, "\")"));
      case Type::kByte: {
        const std::optional<uint8_t> value = BytePieceValue(p.text);
        if (!value) {
          return absl::InvalidArgumentError(absl::StrCat(name, ": byte piece \"", absl::CHexEscape(p.text), "\" is not <0xNN>"));
        }
        byte_ids_[*value] = id;
        pieces_[i].byte = static_cast<int16_t>(*value);
        reserved_.emplace(p.text, id);
        break;
      }
      default:
        reserved_.emplace(p.text, id);
    }
  }
  for (int32_t id : {unk_id_, bos_id_, eos_id_}) {
    if (id >= size()) return absl::InvalidArgumentError(absl::StrCat(name, ": special id ", id, " is outside the vocabulary"));
  }
  // A tokenizer.json may have no unknown token (unk_token null) where byte fallback covers every
  // character (checked below).
  const bool unk_optional = json_.has_value() && unk_id_ < 0 && byte_fallback_;
  if (!unk_optional && (unk_id_ < 0 || type(unk_id_) != Type::kUnknown)) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": unk_id ", unk_id_, " is not an unknown piece"));
  }
  if (byte_fallback_ && std::count(std::begin(byte_ids_), std::end(byte_ids_), -1) > 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": byte fallback without all 256 byte pieces"));
  }
  std::stable_sort(user_defined_.begin(), user_defined_.end(),
                   [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  // A merge can cross from one word into the next only into a piece with a "▁" after another
  // character; without one in the vocabulary, words encode apart (what SentencePiece's trainer
  // makes with split_by_whitespace; runs of "▁" may still merge, they stay in one word).
  merges_stay_in_words_ = std::none_of(pieces_.begin(), pieces_.end(), [](const Piece& p) {
    for (size_t at = p.text.find(kSpace, 1); at != std::string::npos; at = p.text.find(kSpace, at + 1)) {
      if (at < kSpace.size() || std::string_view(p.text).substr(at - kSpace.size(), kSpace.size()) != kSpace) return true;
    }
    return false;
  });
  // Unknown characters fused into one token (tokenizer.json's fuse_unk) would fuse across words
  // where "▁" itself is unknown.
  if (json_.has_value() && json_->fuse_unk && !mergeable_.contains(kSpace)) merges_stay_in_words_ = false;
  return absl::OkStatus();
}

size_t SentencePieceBpe::UserDefinedPrefix(std::string_view s) const {
  for (const std::string& u : user_defined_) {
    if (s.substr(0, u.size()) == u) return u.size();
  }
  return 0;
}

void SentencePieceBpe::Origin::Add(size_t bytes, size_t char_begin) {
  MOE_CHECK(char_begin <= UINT32_MAX, "byte offsets of a text over 4 GiB");  // callers' messages are far smaller
  starts_.insert(starts_.end(), bytes, static_cast<uint32_t>(char_begin));
}

TextSpan SentencePieceBpe::Origin::Span(size_t first, size_t last) const {
  const size_t end = starts_[last];
  size_t len;
  ValidUtf8Char(text_.substr(end), len);  // an invalid byte (now U+FFFD) is one byte long
  return {starts_[first], end + len};
}

std::string SentencePieceBpe::Normalize(std::string_view text, bool dummy_prefix, Origin* origin) const {
  // In one pass, character by character: invalid UTF-8 becomes U+FFFD, one per byte SentencePiece
  // cannot read as a character; with remove_extra_whitespaces, a run of spaces is written as its
  // first space once something that is not a space follows it (none at the start or the end); a
  // space becomes "▁"; the dummy prefix's "▁" goes before the first character written.
  std::string out;
  out.reserve(text.size() + kSpace.size());
  bool first = true;
  size_t held_space = std::string_view::npos;  // remove_extra_whitespaces: the run's first space, not yet written
  const auto write = [&](std::string_view bytes, size_t char_begin) {
    if (std::exchange(first, false)) {
      // Metaspace prepends no "▁" to a text that already starts with one (a space, once replaced).
      const bool starts_with_space = bytes == " " || bytes == kSpace;
      if (add_dummy_prefix_ && dummy_prefix && !(json_.has_value() && json_->prefix_unless_space && starts_with_space)) {
        out.append(kSpace);
        if (origin != nullptr) origin->Add(kSpace.size(), char_begin);
      }
    }
    const std::string_view written = bytes == " " ? kSpace : bytes;
    out.append(written);
    if (origin != nullptr) origin->Add(written.size(), char_begin);
  };
  for (size_t i = 0; i < text.size();) {
    size_t len;
    const bool valid = ValidUtf8Char(text.substr(i), len);
    if (text[i] == ' ' && remove_extra_whitespaces_) {
      if (!first && held_space == std::string_view::npos) held_space = i;
    } else {
      if (held_space != std::string_view::npos) write(" ", std::exchange(held_space, std::string_view::npos));
      write(valid ? text.substr(i, len) : kReplacement, i);
    }
    i += len;
  }
  return out;
}

size_t SentencePieceBpe::WordEnd(std::string_view normalized, size_t begin) const {
  if (!merges_stay_in_words_) return normalized.size();
  for (size_t p = normalized.find(kSpace, begin + 1); p != std::string_view::npos; p = normalized.find(kSpace, p + 1)) {
    if (p < begin + kSpace.size() || normalized.substr(p - kSpace.size(), kSpace.size()) != kSpace) return p;
  }
  return normalized.size();
}

std::vector<int32_t> SentencePieceBpe::Encode(std::string_view text, bool dummy_prefix, std::vector<TextSpan>* spans) const {
  Origin origin(text);
  const std::string normalized = Normalize(text, dummy_prefix, spans != nullptr ? &origin : nullptr);
  if (json_.has_value()) return EncodeByPairRank(normalized, origin, spans);
  std::vector<int32_t> ids;
  ScoreScratch scratch;
  for (size_t begin = 0; begin < normalized.size();) {
    const size_t end = WordEnd(normalized, begin);
    EncodeByScore(normalized, begin, end, origin, ids, spans, scratch);
    begin = end;
  }
  return ids;
}

void SentencePieceBpe::EncodeByScore(std::string_view normalized, size_t word_begin, size_t word_end,
                                     const Origin& origin, std::vector<int32_t>& ids,
                                     std::vector<TextSpan>* spans, ScoreScratch& scratch) const {
  std::vector<ScoreScratch::Symbol>& symbols = scratch.symbols;
  symbols.clear();
  for (size_t pos = word_begin; pos < word_end;) {
    const std::string_view rest = normalized.substr(pos, word_end - pos);
    const size_t user = UserDefinedPrefix(rest);
    const size_t len = user > 0 ? user : OneCharLen(rest);
    const int index = static_cast<int>(symbols.size());
    symbols.push_back({pos, len, index - 1, pos + len < word_end ? index + 1 : -1, user > 0});
    pos += len;
  }
  // The merge agenda, a heap: the highest-scoring piece first, the leftmost among equals.
  using Pair = ScoreScratch::Pair;
  const auto lower = [](const Pair& a, const Pair& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::vector<Pair>& agenda = scratch.agenda;
  agenda.clear();
  const auto maybe_add = [&](int left, int right) {
    if (left < 0 || right < 0 || symbols[static_cast<size_t>(left)].freeze || symbols[static_cast<size_t>(right)].freeze) return;
    const ScoreScratch::Symbol& l = symbols[static_cast<size_t>(left)];
    const size_t size = l.len + symbols[static_cast<size_t>(right)].len;
    const auto it = mergeable_.find(normalized.substr(l.begin, size));
    if (it == mergeable_.end()) return;
    agenda.push_back({pieces_[static_cast<size_t>(it->second)].score, left, right, size});
    std::push_heap(agenda.begin(), agenda.end(), lower);
  };
  for (size_t i = 1; i < symbols.size(); ++i) maybe_add(static_cast<int>(i - 1), static_cast<int>(i));
  while (!agenda.empty()) {
    std::pop_heap(agenda.begin(), agenda.end(), lower);
    const Pair top = agenda.back();
    agenda.pop_back();
    ScoreScratch::Symbol& l = symbols[static_cast<size_t>(top.left)];
    ScoreScratch::Symbol& r = symbols[static_cast<size_t>(top.right)];
    if (l.len == 0 || r.len == 0 || l.len + r.len != top.size) continue;  // stale
    l.len += r.len;
    l.next = r.next;
    if (r.next >= 0) symbols[static_cast<size_t>(r.next)].prev = top.left;
    r.len = 0;
    maybe_add(l.prev, top.left);
    maybe_add(top.left, l.next);
  }
  for (int i = symbols.empty() ? -1 : 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) {
    const size_t begin = symbols[static_cast<size_t>(i)].begin;
    const std::string_view piece = normalized.substr(begin, symbols[static_cast<size_t>(i)].len);
    int32_t id = -1;
    if (const auto a = mergeable_.find(piece); a != mergeable_.end()) {
      id = a->second;
    } else if (const auto b = reserved_.find(piece); b != reserved_.end()) {
      id = b->second;
    }
    if (byte_fallback_ && (id < 0 || type(id) == Type::kUnknown)) {
      for (size_t k = 0; k < piece.size(); ++k) {
        ids.push_back(byte_ids_[static_cast<uint8_t>(piece[k])]);
        if (spans != nullptr) spans->push_back(origin.Span(begin + k, begin + k));
      }
      continue;
    }
    ids.push_back(id >= 0 && type(id) != Type::kUnknown ? id : unk_id_);
    // The origins of a piece's bytes run forward: its first byte's start to its last byte's end.
    if (spans != nullptr) spans->push_back(origin.Span(begin, begin + piece.size() - 1));
  }
}

std::vector<int32_t> SentencePieceBpe::EncodeByPairRank(std::string_view normalized, const Origin& origin,
                                                        std::vector<TextSpan>* spans) const {
  const JsonRules& rules = *json_;
  struct Symbol {
    int32_t id;
    size_t begin, len;
    int prev, next;
  };
  // The next merge: the lowest rank, the leftmost among equals (Hugging Face tokenizers' order).
  struct Merge {
    int32_t rank;
    int pos;
    int32_t id;
  };
  const auto later = [](const Merge& a, const Merge& b) { return a.rank > b.rank || (a.rank == b.rank && a.pos > b.pos); };
  // The model's vocabulary only (Hugging Face's BPE model has no added tokens).
  const auto lookup = [&](std::string_view text) -> int32_t {
    if (const auto a = mergeable_.find(text); a != mergeable_.end() && !pieces_[static_cast<size_t>(a->second)].added_only) {
      return a->second;
    }
    if (const auto b = reserved_.find(text); b != reserved_.end() && !pieces_[static_cast<size_t>(b->second)].added_only) {
      return b->second;
    }
    return -1;
  };
  std::vector<int32_t> ids;
  std::vector<Symbol> symbols;
  const auto emit = [&](const Symbol& sym) {
    ids.push_back(sym.id);
    if (spans != nullptr) spans->push_back(origin.Span(sym.begin, sym.begin + sym.len - 1));
  };
  for (size_t word_begin = 0; word_begin < normalized.size();) {
    // Metaspace's split: a word runs from a "▁" to the next one. Without it, the text still
    // encodes a word at a time where no merge can cross words (WordEnd), unless a whole word in the
    // vocabulary is its token (ignore_merges: the whole text, unsplit, is what is looked up).
    size_t word_end = rules.ignore_merges ? normalized.size() : WordEnd(normalized, word_begin);
    if (rules.split_at_space) {
      const size_t next = normalized.find(kSpace, word_begin + 1);
      word_end = next != std::string_view::npos ? next : normalized.size();
    }
    const std::string_view word = normalized.substr(word_begin, word_end - word_begin);
    if (rules.ignore_merges) {
      if (const int32_t whole = lookup(word); whole >= 0) {
        emit({whole, word_begin, word.size(), -1, -1});
        word_begin = word_end;
        continue;
      }
    }
    symbols.clear();
    for (size_t pos = word_begin; pos < word_end;) {
      const size_t len = OneCharLen(normalized.substr(pos, word_end - pos));
      const int32_t id = lookup(normalized.substr(pos, len));
      if (id >= 0) {
        symbols.push_back({id, pos, len, -1, -1});
      } else if (byte_fallback_) {  // every byte as its piece, the whole character's span each
        for (size_t k = 0; k < len; ++k) symbols.push_back({byte_ids_[static_cast<uint8_t>(normalized[pos + k])], pos + k, 1, -1, -1});
      } else if (rules.fuse_unk && !symbols.empty() && symbols.back().id == unk_id_) {
        symbols.back().len += len;
      } else {
        symbols.push_back({unk_id_, pos, len, -1, -1});
      }
      pos += len;
    }
    const int n = static_cast<int>(symbols.size());
    for (int i = 0; i < n; ++i) {
      symbols[static_cast<size_t>(i)].prev = i - 1;
      symbols[static_cast<size_t>(i)].next = i + 1 < n ? i + 1 : -1;
    }
    std::priority_queue<Merge, std::vector<Merge>, decltype(later)> agenda(later);
    const auto maybe_add = [&](int left, int right) {
      if (left < 0 || right < 0) return;
      const auto it = rules.merges.find(JsonRules::PairKey(symbols[static_cast<size_t>(left)].id, symbols[static_cast<size_t>(right)].id));
      if (it != rules.merges.end()) agenda.push({it->second.rank, left, it->second.id});
    };
    for (int i = 0; i + 1 < n; ++i) maybe_add(i, i + 1);
    while (!agenda.empty()) {
      const Merge top = agenda.top();
      agenda.pop();
      Symbol& l = symbols[static_cast<size_t>(top.pos)];
      if (l.len == 0 || l.next < 0) continue;
      Symbol& r = symbols[static_cast<size_t>(l.next)];
      // Stale unless the pair there now still merges into the same token.
      const auto now = rules.merges.find(JsonRules::PairKey(l.id, r.id));
      if (now == rules.merges.end() || now->second.id != top.id) continue;
      l.id = top.id;
      l.len += r.len;
      r.len = 0;
      l.next = r.next;
      if (l.next >= 0) symbols[static_cast<size_t>(l.next)].prev = top.pos;
      maybe_add(l.prev, top.pos);
      maybe_add(top.pos, l.next);
    }
    for (int i = n > 0 ? 0 : -1; i >= 0; i = symbols[static_cast<size_t>(i)].next) emit(symbols[static_cast<size_t>(i)]);
    word_begin = word_end;
  }
  return ids;
}

void SentencePieceBpe::AppendSurface(std::string_view piece, std::string& out) {
  for (size_t i = 0; i < piece.size();) {
    if (piece.substr(i, kSpace.size()) == kSpace) {
      out.push_back(' ');
      i += kSpace.size();
    } else {
      out.push_back(piece[i++]);
    }
  }
}

std::string SentencePieceBpe::TokenText(int32_t id) const {
  const Piece& p = pieces_[static_cast<size_t>(id)];
  std::string text;
  if (p.type == Type::kByte) {
    text.push_back(static_cast<char>(p.byte));
  } else if (p.type == Type::kNormal || p.type == Type::kUserDefined) {
    AppendSurface(p.text, text);
  }
  return text;
}

size_t SentencePieceBpe::DecodedSizeBound(int32_t id) const {
  const Piece& p = pieces_[static_cast<size_t>(id)];
  if (p.type == Type::kByte) return kReplacement.size();
  if (p.type == Type::kUnknown) return std::max(p.text.size(), unk_surface_.size());
  return p.text.size();
}

std::string SentencePieceBpe::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string text, bytes;
  // A run of byte pieces: each valid UTF-8 character as itself, each other byte as U+FFFD.
  // tokenizer.json (Hugging Face's ByteFallback decoder): the run as it is where all of it is valid
  // UTF-8, else U+FFFD for every byte.
  const auto flush_bytes = [&] {
    if (json_.has_value()) {
      size_t len = 0;
      bool valid = true;
      for (size_t i = 0; valid && i < bytes.size(); i += len) valid = ValidUtf8Char(std::string_view(bytes).substr(i), len);
      if (!valid) {
        for (size_t i = 0; i < bytes.size(); ++i) text.append(kReplacement);
        bytes.clear();
      }
    }
    for (size_t i = 0; i < bytes.size();) {
      size_t len;
      if (ValidUtf8Char(std::string_view(bytes).substr(i), len)) {
        text.append(bytes, i, len);
      } else {
        text.append(kReplacement);
      }
      i += len;
    }
    bytes.clear();
  };
  // Only the first piece that adds text may lose the dummy prefix's "▁" (a special piece written
  // out is such a piece, so "<s>" "▁Hello" is "<s> Hello", as Hugging Face tokenizers decode it).
  // tokenizer.json: its Strip drops the whole text's first space instead (a byte piece's too).
  const bool json = json_.has_value();
  bool at_start = !json;
  for (int32_t id : ids) {
    const Piece& p = pieces_[static_cast<size_t>(id)];
    // tokenizer.json: its special added tokens (an unknown token that is none is text).
    const bool special = p.type == Type::kControl || (p.type == Type::kUnknown && (!json || json_->unk_special));
    if (special && !skip_special) {  // its piece's text as written, "<s>", "<unk>"
      flush_bytes();
      if (json) {
        AppendSurface(p.text, text);  // every token's text goes through the decoder's Replace
      } else {
        text.append(p.text);
      }
      at_start = false;
      continue;
    }
    if (special && json) continue;  // skipped before Hugging Face's decoder sees the run
    if (p.type == Type::kControl) {  // no text, but it ends a run of bytes
      flush_bytes();
      continue;
    }
    const bool first = std::exchange(at_start, false);
    if (p.type == Type::kByte) {
      bytes.push_back(static_cast<char>(p.byte));
      continue;
    }
    flush_bytes();
    if (json) {  // Replace "▁" -> " " (a byte run's own "▁" stays: ByteFallback comes after it)
      AppendSurface(p.type == Type::kUnknown ? std::string_view(unk_surface_) : std::string_view(p.text), text);
      continue;
    }
    if (p.type == Type::kUnknown) {
      text.append(unk_surface_);
      continue;
    }
    std::string_view piece = p.text;
    if (first && strip_first_space_ && piece.substr(0, kSpace.size()) == kSpace) {
      piece.remove_prefix(kSpace.size());
    }
    AppendSurface(piece, text);
  }
  flush_bytes();
  if (json && strip_first_space_ && !text.empty() && text[0] == ' ') text.erase(0, 1);  // Strip(" ", 1, 0)
  return text;
}

std::optional<int32_t> SentencePieceBpe::PieceId(std::string_view text) const {
  if (const auto it = mergeable_.find(text); it != mergeable_.end()) return it->second;
  if (const auto it = reserved_.find(text); it != reserved_.end()) return it->second;
  for (size_t id = 0; id < pieces_.size(); ++id) {  // an unused piece, in neither map
    if (pieces_[id].text == text) return static_cast<int32_t>(id);
  }
  return std::nullopt;
}

}  // namespace moe
