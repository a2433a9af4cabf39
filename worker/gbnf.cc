#include "worker/gbnf.h"

#include <algorithm>
#include <map>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "common/hex_digit.h"
#include "common/utf8.h"
#include "worker/code_point_ranges.h"

namespace moe {
namespace {

using Element = GbnfGrammar::Element;
using Sequence = std::vector<Element>;
using Ranges = CodePointRanges;

constexpr uint32_t kMaxCodePoint = 0x10FFFF;

bool WordChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

// Normalised (sorted, merged), less the surrogates (UTF-8 text never holds them).
Ranges WithoutSurrogates(Ranges r) {
  Ranges out;
  for (const auto& [lo, hi] : NormalizeRanges(std::move(r))) {
    if (hi < 0xD800 || lo > 0xDFFF) {
      out.push_back({lo, hi});
      continue;
    }
    if (lo < 0xD800) out.push_back({lo, 0xD7FF});
    if (hi > 0xDFFF) out.push_back({0xE000, hi});
  }
  return out;
}

}  // namespace

class GbnfTransitions {
 public:
  // Past this many states, 64 transitions a state on average, or kMaxBytes of states and
  // transitions, both maps start over; states in use keep theirs. The bytes bound the memory: a rank
  // keeps 64 grammars, and states of deep, ambiguous grammars were up to 1 MB each, held twice (8 GB
  // a grammar by count alone; a rank grew by 1.1 GB a request and kept it).
  static constexpr size_t kMaxStates = 4096;
  static constexpr size_t kMaxBytes = 8 << 20;

  // The state equal to `s`, held once.
  std::shared_ptr<const GbnfStacks> Intern(GbnfStacks s) {
    Trim();
    const std::string_view key = Key(s);
    auto it = interned_.find(key);
    if (it != interned_.end()) return it->second;
    auto held = std::make_shared<const GbnfStacks>(std::move(s));
    bytes_ += sizeof(GbnfStacks) + sizeof(uint32_t) * held->flat.capacity();
    interned_.emplace(Key(*held), held);  // the key is the held state's own bytes: not a copy
    return held;
  }
  // The transition from `from` on code point `cp` when known: the next state, or null (refused).
  const std::shared_ptr<const GbnfStacks>* Find(const GbnfStacks* from, uint32_t cp) const {
    auto it = next_.find({from, cp});
    return it == next_.end() ? nullptr : &it->second.second;
  }
  void Remember(const std::shared_ptr<const GbnfStacks>& from, uint32_t cp, std::shared_ptr<const GbnfStacks> to) {
    Trim();
    bytes_ += kTransitionBytes;
    next_[{from.get(), cp}] = {from, std::move(to)};  // `from` held: its address stays its own
  }

 private:
  static std::string_view Key(const GbnfStacks& s) {
    return {reinterpret_cast<const char*>(s.flat.data()), sizeof(uint32_t) * s.flat.size()};
  }
  void Trim() {
    if (interned_.size() >= kMaxStates || next_.size() >= 64 * kMaxStates || bytes_ >= kMaxBytes) {
      interned_.clear();
      next_.clear();
      bytes_ = 0;
    }
  }

  struct KeyHash {
    size_t operator()(const std::pair<const GbnfStacks*, uint32_t>& k) const {
      return std::hash<const void*>()(k.first) * 31 + k.second;
    }
  };
  std::unordered_map<std::string_view, std::shared_ptr<const GbnfStacks>> interned_;  // by the flat array's bytes
  size_t bytes_ = 0;  // the interned states' flat arrays, and the transitions
  // A transition's entry: its key, two shared pointers and the hash node around them.
  static constexpr size_t kTransitionBytes = 80;
  std::unordered_map<std::pair<const GbnfStacks*, uint32_t>,
                     std::pair<std::shared_ptr<const GbnfStacks>, std::shared_ptr<const GbnfStacks>>, KeyHash>
      next_;
};

class GbnfParser {
 public:
  explicit GbnfParser(std::string_view text) : text_(text) {}

  absl::StatusOr<GbnfGrammar> Run() {
    if (text_.size() > GbnfGrammar::kMaxTextBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("longer than ", GbnfGrammar::kMaxTextBytes, " bytes (", text_.size(), ")"));
    }
    SkipSpace(true);
    while (pos_ < text_.size()) {
      if (absl::Status s = ParseRule(); !s.ok()) return s;
      SkipSpace(true);
    }
    for (size_t r = 0; r < names_.size(); ++r) {
      if (!defined_[r]) return absl::InvalidArgumentError(absl::StrCat("rule '", names_[r], "' is used but never defined"));
    }
    const auto root = ids_.find("root");
    if (root == ids_.end()) return absl::InvalidArgumentError("no rule named 'root' (where the output starts)");
    if (absl::Status s = CheckLeftRecursion(); !s.ok()) return s;
    if (absl::Status s = PruneUnproductive(root->second); !s.ok()) return s;
    GbnfGrammar g;
    g.root_ = root->second;
    g.ranges_ = std::move(classes_);
    for (const std::vector<Sequence>& alts : rules_) {
      std::vector<uint32_t> starts;
      for (size_t a = 0; a < alts.size(); ++a) {
        starts.push_back(static_cast<uint32_t>(g.elements_.size()));
        g.elements_.insert(g.elements_.end(), alts[a].begin(), alts[a].end());
        g.elements_.push_back({a + 1 < alts.size() ? Element::Type::kAlt : Element::Type::kEnd, 0});
      }
      g.alternatives_.push_back(std::move(starts));
    }
    return g;
  }

 private:
  absl::Status Error(const std::string& what) const {
    int line = 1, column = 1;
    for (size_t i = 0; i < pos_ && i < text_.size(); ++i) {
      if (text_[i] == '\n') {
        ++line;
        column = 1;
      } else if ((static_cast<uint8_t>(text_[i]) & 0xC0) != 0x80) {
        ++column;
      }
    }
    return absl::InvalidArgumentError(absl::StrCat("line ", line, ", column ", column, ": ", what));
  }
  bool At(char c) const { return pos_ < text_.size() && text_[pos_] == c; }
  bool AtLineEnd() const { return pos_ >= text_.size() || text_[pos_] == '\n' || text_[pos_] == '\r'; }
  std::string Shown() const {
    if (pos_ >= text_.size()) return "the end of the grammar";
    return absl::StrCat("'", std::string(1, text_[pos_]), "'");
  }

  // Spaces, tabs and comments; line ends too where `newlines` (inside a group, after ::= or |).
  void SkipSpace(bool newlines) {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r'))) {
        ++pos_;
      } else if (c == '#') {
        while (pos_ < text_.size() && text_[pos_] != '\n') ++pos_;
      } else {
        break;
      }
    }
  }

  std::string ParseName() {
    const size_t start = pos_;
    while (pos_ < text_.size() && WordChar(text_[pos_])) ++pos_;
    return std::string(text_.substr(start, pos_ - start));
  }

  uint32_t RuleId(const std::string& name) {
    auto [it, added] = ids_.emplace(name, static_cast<uint32_t>(names_.size()));
    if (added) NewRuleSlot(name, false);
    return it->second;
  }
  uint32_t NewRuleSlot(const std::string& name, bool defined) {
    names_.push_back(name);
    defined_.push_back(defined);
    rules_.emplace_back();
    return static_cast<uint32_t>(names_.size() - 1);
  }
  // A rule made for a group or a repetition inside rule `owner_` (errors name the owner).
  uint32_t Generated(std::vector<Sequence> alts) {
    const uint32_t r = NewRuleSlot(owner_ + " (a group or repetition in it)", true);
    rules_[r] = std::move(alts);
    return r;
  }
  absl::Status Count(size_t n) {
    elements_ += n;
    if (elements_ > GbnfGrammar::kMaxElements) {
      return Error(absl::StrCat("the grammar expands to more than ", GbnfGrammar::kMaxElements,
                                " elements (repetition counts multiply what they repeat)"));
    }
    return absl::OkStatus();
  }

  absl::Status ParseRule() {
    const size_t start = pos_;
    const std::string name = ParseName();
    if (name.empty()) return Error(absl::StrCat("expected a rule name, found ", Shown()));
    SkipSpace(false);
    if (text_.substr(pos_, 3) != "::=") return Error(absl::StrCat("expected ::= after the rule name '", name, "'"));
    pos_ += 3;
    SkipSpace(true);
    const uint32_t id = RuleId(name);
    if (defined_[id]) {
      pos_ = start;
      return Error(absl::StrCat("rule '", name, "' is defined twice"));
    }
    defined_[id] = true;
    owner_ = name;
    absl::StatusOr<std::vector<Sequence>> alts = ParseAlternates(false);
    if (!alts.ok()) return alts.status();
    rules_[id] = *std::move(alts);
    SkipSpace(false);
    if (!AtLineEnd()) return Error(absl::StrCat("unexpected ", Shown(), " (a rule ends at the end of its line)"));
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<Sequence>> ParseAlternates(bool nested) {
    std::vector<Sequence> alts;
    while (true) {
      absl::StatusOr<Sequence> seq = ParseSequence(nested);
      if (!seq.ok()) return seq.status();
      alts.push_back(*std::move(seq));
      if (!At('|')) {
        // An alternative may also start the next line with its |: a rule's name never starts with one.
        const size_t line_end = pos_;
        SkipSpace(true);
        if (!At('|')) {
          pos_ = line_end;
          return alts;
        }
      }
      ++pos_;
      SkipSpace(true);
    }
  }

  absl::StatusOr<Sequence> ParseSequence(bool nested) {
    Sequence out;
    while (true) {
      SkipSpace(nested);
      if (pos_ >= text_.size() || At('|') || At(')') || (!nested && AtLineEnd())) return out;
      absl::StatusOr<Sequence> symbol = ParseElement();
      if (!symbol.ok()) return symbol.status();
      SkipSpace(nested);
      while (At('*') || At('+') || At('?') || At('{')) {
        absl::Status s = ApplyPostfix(*symbol);
        if (!s.ok()) return s;
        SkipSpace(nested);
      }
      if (absl::Status s = Count(symbol->size()); !s.ok()) return s;
      out.insert(out.end(), symbol->begin(), symbol->end());
    }
  }

  absl::StatusOr<Sequence> ParseElement() {
    const char c = text_[pos_];
    if (c == '"') {
      ++pos_;
      Sequence s;
      while (!At('"')) {
        if (pos_ >= text_.size() || text_[pos_] == '\n') return Error("unterminated literal (a \" is missing)");
        const size_t at = pos_;
        absl::StatusOr<uint32_t> cp = ReadChar();
        if (!cp.ok()) return cp.status();
        if (*cp >= 0xD800 && *cp <= 0xDFFF) {  // no UTF-8 text holds one: the literal could never match
          pos_ = at;
          return Error("a surrogate (U+D800 to U+DFFF) is no character of UTF-8 text");
        }
        s.push_back(Chars({{*cp, *cp}}));
      }
      ++pos_;
      return s;
    }
    if (c == '[') return ParseClass();
    if (c == '.') {
      ++pos_;
      return Sequence{Chars({{0, kMaxCodePoint}})};
    }
    if (c == '(') {
      // The parser recurses into groups: a bound keeps deep nesting off the end of the stack.
      if (group_depth_ == GbnfGrammar::kMaxGroupDepth) {
        return Error(absl::StrCat("groups nested deeper than ", GbnfGrammar::kMaxGroupDepth));
      }
      ++pos_;
      SkipSpace(true);
      ++group_depth_;
      absl::StatusOr<std::vector<Sequence>> alts = ParseAlternates(true);
      --group_depth_;
      if (!alts.ok()) return alts.status();
      if (!At(')')) return Error(absl::StrCat("expected ) to close the group, found ", Shown()));
      ++pos_;
      if (alts->size() == 1) return std::move(alts->front());  // a plain sequence needs no rule
      return Sequence{{Element::Type::kRule, Generated(*std::move(alts))}};
    }
    if (WordChar(c)) {
      const std::string name = ParseName();
      return Sequence{{Element::Type::kRule, RuleId(name)}};
    }
    return Error(absl::StrCat("unexpected ", Shown()));
  }

  absl::StatusOr<Sequence> ParseClass() {
    ++pos_;  // '['
    const bool negated = At('^');
    if (negated) ++pos_;
    Ranges r;
    while (!At(']')) {
      if (pos_ >= text_.size() || text_[pos_] == '\n') return Error("unterminated character class (a ] is missing)");
      absl::StatusOr<uint32_t> lo = ReadChar();
      if (!lo.ok()) return lo.status();
      uint32_t hi = *lo;
      if (At('-') && pos_ + 1 < text_.size() && text_[pos_ + 1] != ']') {
        ++pos_;
        absl::StatusOr<uint32_t> end = ReadChar();
        if (!end.ok()) return end.status();
        if (*end < *lo) return Error("a character range ends before it starts");
        hi = *end;
      }
      r.push_back({*lo, hi});
    }
    ++pos_;
    if (r.empty()) return Error("empty character class []");
    r = WithoutSurrogates(std::move(r));
    if (negated) r = WithoutSurrogates(ComplementRanges(r, kMaxCodePoint));
    if (r.empty()) return Error("the character class matches no character");
    return Sequence{Chars(std::move(r))};
  }

  // One code point of a literal or class: an escape or a UTF-8 character.
  absl::StatusOr<uint32_t> ReadChar() {
    const auto b = static_cast<uint8_t>(text_[pos_]);
    if (b == '\\') {
      if (pos_ + 1 >= text_.size()) return Error("a \\ ends the grammar");
      const char e = text_[pos_ + 1];
      pos_ += 2;
      switch (e) {
        case 'n': return uint32_t{'\n'};
        case 'r': return uint32_t{'\r'};
        case 't': return uint32_t{'\t'};
        case '\\': case '"': case '[': case ']': case '-': case '^': case '\'': return static_cast<uint32_t>(e);
        case 'x': return ReadHex(2);
        case 'u': return ReadHex(4);
        case 'U': return ReadHex(8);
        default: pos_ -= 2; return Error(absl::StrCat("unknown escape \\", std::string(1, e)));
      }
    }
    uint32_t cp = 0;
    const int len = DecodeUtf8(text_, pos_, cp);
    if (len == 0) return Error("not UTF-8");
    pos_ += static_cast<size_t>(len);
    return cp;
  }
  absl::StatusOr<uint32_t> ReadHex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i, ++pos_) {
      const char c = pos_ < text_.size() ? text_[pos_] : '\0';
      const int d = HexDigitValue(static_cast<unsigned char>(c));
      if (d < 0) return Error(absl::StrCat("expected ", digits, " hex digits"));
      v = v << 4 | static_cast<uint32_t>(d);
    }
    if (v > kMaxCodePoint) return Error("past U+10FFFF");
    return v;
  }

  Element Chars(Ranges r) {
    auto [it, added] = class_ids_.emplace(r, static_cast<uint32_t>(classes_.size()));
    if (added) classes_.push_back(std::move(r));
    return {Element::Type::kChars, it->second};
  }

  // x* -> R ::= x R | "";  x+ -> x R;  x? -> R ::= x | "";  x{m,n} -> m copies of x, then n - m
  // nested optional ones (x{m,}: then R).
  absl::Status ApplyPostfix(Sequence& x) {
    auto star = [&](const Sequence& s) {
      const uint32_t r = Generated({});
      Sequence again = s;
      again.push_back({Element::Type::kRule, r});
      rules_[r] = {again, Sequence{}};
      return Element{Element::Type::kRule, r};
    };
    const char op = text_[pos_++];
    if (op == '*') {
      x = {star(x)};
    } else if (op == '+') {
      x.push_back(star(x));
    } else if (op == '?') {
      x = {{Element::Type::kRule, Generated({x, Sequence{}})}};
    } else {  // {m}, {m,}, {m,n}
      auto number = [&]() -> int {
        SkipSpace(false);
        int v = -1;
        while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {  // capped past the limit
          v = std::min(std::max(v, 0) * 10 + (text_[pos_++] - '0'), GbnfGrammar::kMaxRepeat + 1);
        }
        SkipSpace(false);
        return v;
      };
      const int m = number();
      if (m < 0) return Error("expected a repetition count after {");
      int n = m;
      bool open = false;
      if (At(',')) {
        ++pos_;
        n = number();
        open = n < 0;
      }
      if (!At('}')) return Error(absl::StrCat("expected } to close the repetition, found ", Shown()));
      ++pos_;
      if (m > GbnfGrammar::kMaxRepeat || n > GbnfGrammar::kMaxRepeat) {
        return Error(absl::StrCat("repetition counts are at most ", GbnfGrammar::kMaxRepeat));
      }
      if (!open && n < m) return Error("a repetition's maximum is below its minimum");
      Sequence out;
      for (int i = 0; i < m; ++i) {
        if (absl::Status s = Count(x.size()); !s.ok()) return s;
        out.insert(out.end(), x.begin(), x.end());
      }
      if (open) {
        out.push_back(star(x));
      } else if (n > m) {
        Sequence tail;  // opt_1 ::= x | "";  opt_k ::= x opt_{k-1} | ""
        for (int i = 0; i < n - m; ++i) {
          if (absl::Status s = Count(x.size() + 1); !s.ok()) return s;
          Sequence more = x;
          more.insert(more.end(), tail.begin(), tail.end());
          tail = {{Element::Type::kRule, Generated({more, Sequence{}})}};
        }
        out.insert(out.end(), tail.begin(), tail.end());
      }
      x = std::move(out);
    }
    return absl::OkStatus();
  }

  // A rule that can begin with itself (through rules that can match nothing) would make the
  // recogniser expand forever.
  absl::Status CheckLeftRecursion() const {
    const size_t n = rules_.size();
    std::vector<bool> nullable(n, false);
    auto seq_nullable = [&](const Sequence& s) {
      return std::all_of(s.begin(), s.end(),
                         [&](const Element& e) { return e.type == Element::Type::kRule && nullable[e.value]; });
    };
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < n; ++r) {
        if (nullable[r]) continue;
        if (std::any_of(rules_[r].begin(), rules_[r].end(), seq_nullable)) nullable[r] = changed = true;
      }
    }
    std::vector<std::vector<uint32_t>> first(n);  // the rules r may begin with
    for (size_t r = 0; r < n; ++r) {
      for (const Sequence& s : rules_[r]) {
        for (const Element& e : s) {
          if (e.type != Element::Type::kRule) break;
          first[r].push_back(e.value);
          if (!nullable[e.value]) break;
        }
      }
    }
    std::vector<uint8_t> mark(n, 0);  // 1: on the current path, 2: done
    // A depth-first walk with its own stack (a chain of thousands of rules fits in the text limit):
    // true when it finds a rule on the current path again.
    auto cyclic = [&](uint32_t start) {
      std::vector<std::pair<uint32_t, size_t>> path{{start, 0}};  // rule, next of first[rule] to follow
      mark[start] = 1;
      while (!path.empty()) {
        auto& [r, next] = path.back();
        if (next == first[r].size()) {
          mark[r] = 2;
          path.pop_back();
          continue;
        }
        const uint32_t s = first[r][next++];
        if (mark[s] == 1) return true;
        if (mark[s] == 0) {
          mark[s] = 1;
          path.emplace_back(s, 0);
        }
      }
      return false;
    };
    for (uint32_t r = 0; r < n; ++r) {
      if (mark[r] == 0 && cyclic(r)) {
        uint32_t named = r;  // report a rule on the cycle, preferring one the grammar names
        for (uint32_t s = 0; s < n; ++s) {
          if (mark[s] == 1 && ids_.count(names_[s]) > 0) named = s;
        }
        return absl::InvalidArgumentError(absl::StrCat(
            "rule '", names_[named],
            "' is left-recursive: it can begin with itself (also through rules that can match nothing, as x* "
            "of an x that can be empty)"));
      }
    }
    return absl::OkStatus();
  }

  // Alternatives that derive no finite text (a rule each of whose alternatives needs itself
  // again, `x ::= "(" x ")"`, or such a rule) are dropped, so that the recogniser never begins one:
  // the output would grow until no byte continued it, failing the request mid-generation. A root
  // left with none is refused (root ::= "(" root ")"), naming a rule that never finishes.
  absl::Status PruneUnproductive(uint32_t root) {
    const size_t n = rules_.size();
    std::vector<bool> productive(n, false);
    auto seq_productive = [&](const Sequence& s) {
      return std::all_of(s.begin(), s.end(),
                         [&](const Element& e) { return e.type != Element::Type::kRule || productive[e.value]; });
    };
    for (bool changed = true; changed;) {
      changed = false;
      for (size_t r = 0; r < n; ++r) {
        if (!productive[r] && std::any_of(rules_[r].begin(), rules_[r].end(), seq_productive)) {
          productive[r] = changed = true;
        }
      }
    }
    if (!productive[root]) {
      // The first rule root's alternatives need that never finishes, the grammar's own name for it
      // where there is one (repetitions and groups make rules of their own).
      uint32_t stuck = root;
      for (const Sequence& s : rules_[root]) {
        for (const Element& e : s) {
          if (e.type == Element::Type::kRule && !productive[e.value] && stuck == root && ids_.count(names_[e.value]) > 0) {
            stuck = e.value;
          }
        }
      }
      return absl::InvalidArgumentError(absl::StrCat(
          "rule 'root' derives no finite text: no alternative of it finishes",
          stuck == root ? " (each needs 'root' again)" : absl::StrCat(" (rule '", names_[stuck], "' never does)")));
    }
    for (size_t r = 0; r < n; ++r) {
      if (!productive[r]) continue;  // reached from no alternative kept
      std::erase_if(rules_[r], [&](const Sequence& s) { return !seq_productive(s); });
    }
    return absl::OkStatus();
  }

  std::string_view text_;
  size_t pos_ = 0;
  int group_depth_ = 0;  // groups open around pos_
  std::string owner_;  // the rule being read
  std::map<std::string, uint32_t> ids_;  // named rules
  std::vector<std::string> names_;
  std::vector<bool> defined_;
  std::vector<std::vector<Sequence>> rules_;  // per rule: its alternatives
  std::vector<Ranges> classes_;
  std::map<Ranges, uint32_t> class_ids_;
  size_t elements_ = 0;
};

absl::StatusOr<GbnfGrammar> GbnfGrammar::Parse(std::string_view text) {
  absl::StatusOr<GbnfGrammar> g = GbnfParser(text).Run();
  if (!g.ok()) return g;
  g->transitions_ = std::make_shared<GbnfTransitions>();
  // The start must expand within the recogniser's limits, or no output could begin.
  if (!GbnfState(*g).Alive()) {
    return absl::InvalidArgumentError(absl::StrCat("the start of 'root' expands to more than ", GbnfState::kMaxStacks,
                                                   " alternatives at once, nests deeper than ", GbnfState::kMaxDepth,
                                                   " rules, or holds more than ", GbnfState::kMaxPositions,
                                                   " grammar positions in all"));
  }
  // Nor if its first byte is past them (root ::= ("a"?){1000} "a": 1,001 ways to read an "a").
  const GbnfState start(*g);
  bool any = start.Complete();
  for (int c = 0; c < 256 && !any; ++c) any = GbnfState(start).Feed(static_cast<uint8_t>(c));
  if (!any) {
    return absl::InvalidArgumentError(absl::StrCat(
        "no first byte of the output is within the recogniser's limits (", GbnfState::kMaxStacks,
        " alternatives at once, ", GbnfState::kMaxDepth, " rules deep, ", GbnfState::kMaxPositions,
        " grammar positions in all): the grammar is too ambiguous where it starts"));
  }
  return g;
}

bool GbnfGrammar::Contains(uint32_t c, uint32_t cp) const { return Intersects(c, cp, cp); }

bool GbnfGrammar::Intersects(uint32_t c, uint32_t lo, uint32_t hi) const {
  const Ranges& r = ranges_[c];
  // The first range ending at or after lo.
  auto it = std::lower_bound(r.begin(), r.end(), lo,
                             [](const std::pair<uint32_t, uint32_t>& x, uint32_t v) { return x.second < v; });
  return it != r.end() && it->first <= hi;
}

GbnfState::GbnfState(const GbnfGrammar& grammar) : g_(&grammar) {
  GbnfStacks start;
  std::vector<uint32_t> stack;
  for (uint32_t alt : g_->alternatives(g_->root())) {
    const GbnfGrammar::Element::Type t = g_->at(alt).type;
    stack.clear();
    if (t == GbnfGrammar::Element::Type::kRule || t == GbnfGrammar::Element::Type::kChars) stack.push_back(alt);
    if (!Expand(stack, start)) {
      start = GbnfStacks{};  // past the limits from the start: nothing is accepted
      break;
    }
  }
  start = Distinct(std::move(start));
  if (start.flat.size() > kMaxPositions) start = GbnfStacks{};
  stacks_ = g_->transitions_->Intern(std::move(start));
}

bool GbnfState::Expand(std::vector<uint32_t>& stack, GbnfStacks& out) const {
  using Type = GbnfGrammar::Element::Type;
  // A depth-first walk with its own frames rather than recursion: a chain of rules that each name
  // the next (`a ::= b`, `b ::= c` ...) does not grow the grammar stack, so kMaxDepth does not bound
  // it, and a 64 KiB grammar holds thousands of them.
  struct Frame {
    uint32_t pos;       // the rule element being expanded (popped from `stack` meanwhile)
    size_t next_alt;    // the next of its rule's alternatives to take
    bool rest;          // pos + 1 (the rest of its alternative) is pushed under the alternatives
    bool pushed;        // the alternative taken last was pushed on `stack`
  };
  std::vector<Frame> frames;
  // Takes `stack` as it is: a complete stack (empty, or a character class on top) goes to `out`;
  // a rule on top becomes a frame. False past a limit.
  const auto enter = [&]() {
    if (stack.size() > kMaxDepth) return false;
    if (stack.empty() || g_->at(stack.back()).type == Type::kChars) {
      out.flat.push_back(static_cast<uint32_t>(stack.size()));
      out.flat.insert(out.flat.end(), stack.begin(), stack.end());
      return ++out.count <= kMaxStacks;
    }
    const uint32_t pos = stack.back();
    stack.pop_back();
    // The rest of the alternative, if any, once the rule is done (none: nothing to come back to, so
    // right recursion does not deepen the stack).
    const Type after = g_->at(pos + 1).type;
    const bool rest = after == Type::kRule || after == Type::kChars;
    if (rest) stack.push_back(pos + 1);
    frames.push_back(Frame{pos, 0, rest, false});
    return true;
  };
  if (!enter()) return false;
  while (!frames.empty()) {
    Frame& f = frames.back();
    if (f.pushed) {
      stack.pop_back();
      f.pushed = false;
    }
    const std::vector<uint32_t>& alts = g_->alternatives(g_->at(f.pos).value);
    if (f.next_alt == alts.size()) {  // every alternative taken: `stack` as the frame found it
      if (f.rest) stack.pop_back();
      stack.push_back(f.pos);
      frames.pop_back();
      continue;
    }
    const uint32_t alt = alts[f.next_alt++];
    const Type t = g_->at(alt).type;
    if (t == Type::kRule || t == Type::kChars) {
      stack.push_back(alt);
      f.pushed = true;
    }
    if (!enter()) return false;  // (may add a frame: `f` is not used after it)
  }
  return true;
}

GbnfStacks GbnfState::Distinct(GbnfStacks in) {
  if (in.count <= 1) return in;
  std::vector<uint32_t> at;  // where each stack starts in in.flat
  for (size_t i = 0; i < in.flat.size(); i += 1 + in.flat[i]) at.push_back(static_cast<uint32_t>(i));
  const uint32_t* f = in.flat.data();
  auto less = [f](uint32_t a, uint32_t b) {
    return std::lexicographical_compare(f + a + 1, f + a + 1 + f[a], f + b + 1, f + b + 1 + f[b]);
  };
  auto same = [f](uint32_t a, uint32_t b) { return std::equal(f + a, f + a + 1 + f[a], f + b, f + b + 1 + f[b]); };
  // Duplicates go first, found by hash: an ambiguous grammar's expansion repeats each stack many
  // times, and deep stacks share long bottoms that a sort of them all would compare again and again.
  std::vector<std::pair<uint64_t, uint32_t>> hashed;  // (hash, where)
  hashed.reserve(at.size());
  for (uint32_t a : at) {
    uint64_t h = 14695981039346656037ull;  // FNV-1a over the positions
    for (uint32_t i = a; i <= a + f[a]; ++i) h = (h ^ f[i]) * 1099511628211ull;
    hashed.emplace_back(h, a);
  }
  std::sort(hashed.begin(), hashed.end());
  at.clear();
  for (size_t k = 0; k < hashed.size(); ++k) {
    bool seen = false;
    for (size_t j = k; j-- > 0 && hashed[j].first == hashed[k].first && !seen;) seen = same(hashed[j].second, hashed[k].second);
    if (!seen) at.push_back(hashed[k].second);
  }
  std::sort(at.begin(), at.end(), less);
  GbnfStacks out;
  size_t size = 0;  // exactly: a state is held as it is, and `in` may be many times larger
  for (uint32_t a : at) size += 1 + f[a];
  out.flat.reserve(size);
  for (uint32_t a : at) {
    out.flat.insert(out.flat.end(), f + a, f + a + 1 + f[a]);
    ++out.count;
  }
  return out;
}

bool GbnfState::AcceptCodePoint(uint32_t cp) {
  using Type = GbnfGrammar::Element::Type;
  GbnfTransitions& known = *g_->transitions_;
  if (const std::shared_ptr<const GbnfStacks>* to = known.Find(stacks_.get(), cp)) {
    if (*to == nullptr) return false;
    stacks_ = *to;
    return true;
  }
  GbnfStacks next;
  std::vector<uint32_t> stack;
  const std::vector<uint32_t>& f = stacks_->flat;
  for (size_t i = 0; i < f.size(); i += 1 + f[i]) {
    const uint32_t size = f[i];
    if (size == 0) continue;
    const uint32_t top = f[i + size];
    if (!g_->Contains(g_->at(top).value, cp)) continue;
    stack.assign(f.begin() + static_cast<std::ptrdiff_t>(i) + 1, f.begin() + static_cast<std::ptrdiff_t>(i + size));
    const Type after = g_->at(top + 1).type;
    if (after == Type::kRule || after == Type::kChars) stack.push_back(top + 1);
    if (!Expand(stack, next)) {
      next = GbnfStacks{};  // past a limit: refused
      break;
    }
  }
  if (next.count > 0) next = Distinct(std::move(next));
  if (next.flat.size() > kMaxPositions) next = GbnfStacks{};  // past a limit: refused
  std::shared_ptr<const GbnfStacks> to = next.count == 0 ? nullptr : known.Intern(std::move(next));
  known.Remember(stacks_, cp, to);
  if (to == nullptr) return false;
  stacks_ = std::move(to);
  return true;
}

bool GbnfState::Advance(uint8_t c) {
  if (left_ == 0) {
    if (c < 0x80) return AcceptCodePoint(c);
    if (c >= 0xC2 && c <= 0xDF) {
      length_ = 2, partial_ = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length_ = 3, partial_ = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      length_ = 4, partial_ = c & 0x07;
    } else {
      return false;
    }
    left_ = static_cast<uint8_t>(length_ - 1);
  } else {
    if ((c & 0xC0) != 0x80) return false;
    partial_ = partial_ << 6 | (c & 0x3F);
    --left_;
  }
  // The code points the character can still become: within its length's range, not a surrogate.
  static constexpr uint32_t kLowest[] = {0, 0, 0x80, 0x800, 0x10000};
  static constexpr uint32_t kHighest[] = {0, 0, 0x7FF, 0xFFFF, 0x10FFFF};
  const uint32_t shift = 6u * left_;
  const uint32_t lo = std::max(partial_ << shift, kLowest[length_]);
  const uint32_t hi = std::min((partial_ << shift) | ((1u << shift) - 1), kHighest[length_]);
  if (lo > hi || (lo >= 0xD800 && hi <= 0xDFFF)) return false;
  if (left_ == 0) {
    const uint32_t cp = partial_;
    partial_ = 0;
    length_ = 0;
    return AcceptCodePoint(cp);
  }
  const std::vector<uint32_t>& f = stacks_->flat;
  for (size_t i = 0; i < f.size(); i += 1 + f[i]) {
    if (f[i] > 0 && g_->Intersects(g_->at(f[i + f[i]]).value, lo, hi)) return true;
  }
  return false;
}

bool GbnfState::Feed(uint8_t c) {
  GbnfState next = *this;
  if (!next.Advance(c)) return false;
  *this = std::move(next);
  return true;
}

bool GbnfState::Feed(std::string_view bytes) {
  for (char c : bytes) {
    if (!Feed(static_cast<uint8_t>(c))) return false;
  }
  return true;
}

bool GbnfState::Complete() const { return left_ == 0 && stacks_->count > 0 && stacks_->flat[0] == 0; }

bool GbnfState::Closed() const { return Complete() && stacks_->count == 1; }

void GbnfState::AppendStateKey(std::string& key) const {
  const uint32_t utf8 = partial_ << 8 | static_cast<uint32_t>(left_) << 4 | length_;
  key.append(reinterpret_cast<const char*>(&utf8), sizeof(utf8));
  key.append(reinterpret_cast<const char*>(stacks_->flat.data()), sizeof(uint32_t) * stacks_->flat.size());
}

}  // namespace moe
