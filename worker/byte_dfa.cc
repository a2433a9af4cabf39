#include "worker/byte_dfa.h"

#include <algorithm>
#include <deque>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/utf8.h"
#include "worker/code_point_ranges.h"

namespace moe {
namespace {

constexpr uint32_t kMaxCodePoint = 0x10FFFF;
constexpr uint32_t kMaxRepeat = 1000;
constexpr size_t kMaxNfaStates = 200000;
// Groups nest at most this deep: the parser and the automaton's construction recurse once a level,
// and a request must not be able to exhaust a server thread's stack.
constexpr int kMaxGroupDepth = 100;

using Ranges = CodePointRanges;

const Ranges kDigit = {{'0', '9'}};
const Ranges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
// \s as both dialects read it (ASCII), and as either does: Python's also takes \x1c-\x1f
// (str.isspace), ECMA's does not. A pattern must only produce text both accept: \s stands for the
// first, \S for the complement of the second, and inside a negated class, whose complement is
// taken, the other way round ([^\s] and [^\S] leave \x1c-\x1f out).
const Ranges kSpace = {{'\t', '\r'}, {' ', ' '}};
const Ranges kSpaceEither = {{'\t', '\r'}, {0x1C, 0x1F}, {' ', ' '}};

// The UTF-8 encodings of the code points lo..hi (surrogates left out) as sequences of byte ranges,
// each sequence one to four ranges long (the split of Go's and Rust's utf8 range compilers).
using ByteSeq = std::vector<std::pair<uint8_t, uint8_t>>;

int Encode(uint32_t cp, uint8_t* b) {
  if (cp < 0x80) {
    b[0] = static_cast<uint8_t>(cp);
    return 1;
  }
  if (cp < 0x800) {
    b[0] = static_cast<uint8_t>(0xC0 | cp >> 6);
    b[1] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    b[0] = static_cast<uint8_t>(0xE0 | cp >> 12);
    b[1] = static_cast<uint8_t>(0x80 | (cp >> 6 & 0x3F));
    b[2] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
    return 3;
  }
  b[0] = static_cast<uint8_t>(0xF0 | cp >> 18);
  b[1] = static_cast<uint8_t>(0x80 | (cp >> 12 & 0x3F));
  b[2] = static_cast<uint8_t>(0x80 | (cp >> 6 & 0x3F));
  b[3] = static_cast<uint8_t>(0x80 | (cp & 0x3F));
  return 4;
}

void Utf8Sequences(uint32_t lo, uint32_t hi, std::vector<ByteSeq>& out) {
  if (lo > hi) return;
  if (lo < 0xD800 && hi > 0xDFFF) {
    Utf8Sequences(lo, 0xD7FF, out);
    Utf8Sequences(0xE000, hi, out);
    return;
  }
  if (lo >= 0xD800 && lo <= 0xDFFF) lo = 0xE000;
  if (hi >= 0xD800 && hi <= 0xDFFF) hi = 0xD7FF;
  if (lo > hi) return;
  for (uint32_t max : {0x7Fu, 0x7FFu, 0xFFFFu}) {  // one encoded length at a time
    if (lo <= max && hi > max) {
      Utf8Sequences(lo, max, out);
      Utf8Sequences(max + 1, hi, out);
      return;
    }
  }
  for (int i = 1; i < 4; ++i) {  // until lo and hi differ only where the ranges are whole
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        Utf8Sequences(lo, lo | m, out);
        Utf8Sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        Utf8Sequences(lo, (hi & ~m) - 1, out);
        Utf8Sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  uint8_t a[4], b[4];
  const int n = Encode(lo, a);
  Encode(hi, b);
  ByteSeq seq;
  for (int i = 0; i < n; ++i) seq.emplace_back(a[i], b[i]);
  out.push_back(std::move(seq));
}

struct Ast {
  enum class Kind { kSet, kConcat, kAlt, kRepeat };
  Kind kind = Kind::kConcat;
  Ranges set;
  std::vector<int> kids;
  uint32_t min = 0, max = 0;  // kRepeat; max UINT32_MAX: unbounded
};

class RegexParser {
 public:
  RegexParser(std::string_view p, bool search) : p_(p), search_(search) {}

  // The root of the whole pattern's tree (search: each top-level alternative with "any text"
  // around it where it is not anchored).
  absl::StatusOr<int> Parse() {
    std::vector<int> branches;
    while (true) {
      bool anchored_start = false, anchored_end = false;
      if (Peek('^')) {
        ++pos_;
        anchored_start = true;
      }
      MOE_ASSIGN_OR_RETURN(int branch, Concat(/*top=*/true, anchored_end));
      if (search_) {
        const int any = Repeat(Set({{0, kMaxCodePoint}}), 0, UINT32_MAX);
        std::vector<int> parts;
        if (!anchored_start) parts.push_back(any);
        parts.push_back(branch);
        if (!anchored_end) parts.push_back(any);
        branch = NewNode(Ast::Kind::kConcat, std::move(parts));
      }
      branches.push_back(branch);
      if (pos_ == p_.size()) break;
      if (p_[pos_] == ')') return Fail("unbalanced )");
      ++pos_;  // '|'
    }
    return branches.size() == 1 ? branches[0] : NewNode(Ast::Kind::kAlt, std::move(branches));
  }

  std::vector<Ast>& nodes() { return nodes_; }

 private:
  absl::Status Fail(const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(what, " at offset ", pos_));
  }
  bool Peek(char c) const { return pos_ < p_.size() && p_[pos_] == c; }

  int NewNode(Ast::Kind kind, std::vector<int> kids) {
    Ast a;
    a.kind = kind;
    a.kids = std::move(kids);
    nodes_.push_back(std::move(a));
    return static_cast<int>(nodes_.size() - 1);
  }
  int Set(Ranges r) {
    Ast a;
    a.kind = Ast::Kind::kSet;
    a.set = NormalizeRanges(std::move(r));
    nodes_.push_back(std::move(a));
    return static_cast<int>(nodes_.size() - 1);
  }
  int Repeat(int kid, uint32_t min, uint32_t max) {
    const int id = NewNode(Ast::Kind::kRepeat, {kid});
    nodes_[static_cast<size_t>(id)].min = min;
    nodes_[static_cast<size_t>(id)].max = max;
    return id;
  }

  // One code point of the pattern (UTF-8).
  absl::StatusOr<uint32_t> CodePoint() {
    uint32_t cp = 0;
    const int len = DecodeUtf8(p_, pos_, cp);
    if (len == 0) return Fail("invalid UTF-8");
    pos_ += static_cast<size_t>(len);
    return cp;
  }

  // Items up to '|', ')' or the end. At the top level a '$' right before '|' or the end anchors the
  // alternative.
  absl::StatusOr<int> Concat(bool top, bool& anchored_end) {
    std::vector<int> items;
    while (pos_ < p_.size() && p_[pos_] != '|' && p_[pos_] != ')') {
      if (p_[pos_] == '$') {
        ++pos_;
        if (top && (pos_ == p_.size() || p_[pos_] == '|')) {
          anchored_end = true;
          break;
        }
        --pos_;
        return Fail("$ is supported only at the end of the pattern or of a top-level alternative");
      }
      MOE_ASSIGN_OR_RETURN(const int item, Quantified());
      items.push_back(item);
    }
    return items.size() == 1 ? items[0] : NewNode(Ast::Kind::kConcat, std::move(items));
  }

  absl::StatusOr<int> Alternation() {
    std::vector<int> alts;
    while (true) {
      bool unused = false;
      MOE_ASSIGN_OR_RETURN(const int c, Concat(/*top=*/false, unused));
      alts.push_back(c);
      if (!Peek('|')) break;
      ++pos_;
    }
    return alts.size() == 1 ? alts[0] : NewNode(Ast::Kind::kAlt, std::move(alts));
  }

  // A decimal count, held at 10,000,000 (past any bound) however many digits it has.
  bool Digits(uint32_t& out) {
    const size_t begin = pos_;
    out = 0;
    while (pos_ < p_.size() && p_[pos_] >= '0' && p_[pos_] <= '9') {
      out = std::min<uint32_t>(out * 10 + static_cast<uint32_t>(p_[pos_] - '0'), 10'000'000);
      ++pos_;
    }
    return pos_ > begin;
  }

  absl::StatusOr<int> Quantified() {
    MOE_ASSIGN_OR_RETURN(int atom, Atom());
    if (pos_ == p_.size()) return atom;
    uint32_t min = 0, max = 0;
    const char q = p_[pos_];
    if (q == '*' || q == '+' || q == '?') {
      ++pos_;
      min = q == '+' ? 1 : 0;
      max = q == '?' ? 1 : UINT32_MAX;
    } else if (q == '{') {
      const size_t open = pos_++;
      bool ok = Digits(min);
      max = min;
      if (ok && Peek(',')) {
        ++pos_;
        if (!Digits(max)) max = UINT32_MAX;
      }
      if (!ok || !Peek('}')) {
        pos_ = open;
        return Fail("'{' must begin a repeat {n}, {n,} or {n,m} (escape a literal one as \\{)");
      }
      ++pos_;
      if (min > kMaxRepeat || (max != UINT32_MAX && max > kMaxRepeat)) {
        return Fail(absl::StrCat("repeat counts above ", kMaxRepeat, " are not supported"));
      }
      if (max < min) return Fail("a repeat's maximum is below its minimum");
    } else {
      return atom;
    }
    if (Peek('?')) ++pos_;  // lazy: the same texts match
    if (pos_ < p_.size() && (p_[pos_] == '*' || p_[pos_] == '+' || p_[pos_] == '?' || p_[pos_] == '{')) {
      return Fail("multiple repeat (possessive quantifiers are not supported)");
    }
    return Repeat(atom, min, max);
  }

  absl::StatusOr<int> Atom() {
    const char c = p_[pos_];
    switch (c) {
      case '(': {
        if (group_depth_ == kMaxGroupDepth) return Fail(absl::StrCat("groups nested deeper than ", kMaxGroupDepth));
        ++pos_;
        if (Peek('?')) {
          ++pos_;
          if (Peek(':')) {
            ++pos_;
          } else if (Peek('P') || (Peek('<') && pos_ + 1 < p_.size() && p_[pos_ + 1] != '=' && p_[pos_ + 1] != '!')) {
            if (Peek('P')) ++pos_;
            if (!Peek('<')) return Fail("only (?P<name>...) groups are supported");
            while (pos_ < p_.size() && p_[pos_] != '>') ++pos_;
            if (!Peek('>')) return Fail("unterminated group name");
            ++pos_;
          } else {
            return Fail("lookaround, inline flags and other (? groups are not supported");
          }
        }
        ++group_depth_;
        absl::StatusOr<int> inner = Alternation();
        --group_depth_;
        if (!inner.ok()) return inner.status();
        if (!Peek(')')) return Fail("missing )");
        ++pos_;
        return *inner;
      }
      case '[':
        return Class();
      case '.':
        ++pos_;
        return Set(ComplementRanges({{'\n', '\n'}, {'\r', '\r'}, {0x2028, 0x2029}}, kMaxCodePoint));
      case '\\': {
        bool is_class = false;
        MOE_ASSIGN_OR_RETURN(Ranges r, Escape(/*in_class=*/false, /*in_negated_class=*/false, is_class));
        return Set(std::move(r));
      }
      case '^':
        return Fail("^ is supported only at the start of the pattern or of a top-level alternative");
      case '*':
      case '+':
      case '?':
      case '{':
        return Fail("nothing to repeat");
      default: {
        MOE_ASSIGN_OR_RETURN(const uint32_t cp, CodePoint());
        return Set({{cp, cp}});
      }
    }
  }

  absl::StatusOr<uint32_t> Hex(int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      if (pos_ == p_.size()) return Fail("incomplete hex escape");
      const char h = p_[pos_];
      const int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
      if (d < 0) return Fail("incomplete hex escape");
      v = v << 4 | static_cast<uint32_t>(d);
      ++pos_;
    }
    return v;
  }

  // After a backslash (at pos_): the code points it stands for. `is_class`: \d \w \s and their
  // negations (not a range endpoint). `in_negated_class`: an item of [^...] (see kSpace).
  absl::StatusOr<Ranges> Escape(bool in_class, bool in_negated_class, bool& is_class) {
    ++pos_;
    if (pos_ == p_.size()) return Fail("a pattern cannot end with \\");
    const char e = p_[pos_];
    is_class = true;
    switch (e) {
      case 'd': ++pos_; return kDigit;
      case 'w': ++pos_; return kWord;
      case 's': ++pos_; return in_negated_class ? kSpaceEither : kSpace;
      case 'D': ++pos_; return ComplementRanges(kDigit, 0x7F);
      case 'W': ++pos_; return ComplementRanges(kWord, 0x7F);
      case 'S': ++pos_; return ComplementRanges(in_negated_class ? kSpace : kSpaceEither, 0x7F);
      default: break;
    }
    is_class = false;
    auto one = [&](uint32_t cp) {
      ++pos_;
      return Ranges{{cp, cp}};
    };
    switch (e) {
      case 'n': return one('\n');
      case 't': return one('\t');
      case 'r': return one('\r');
      case 'f': return one('\f');
      case 'v': return one('\v');
      case 'b':
        if (in_class) return one('\b');
        return Fail("word boundaries (\\b) are not supported");
      case '0':
        if (pos_ + 1 < p_.size() && p_[pos_ + 1] >= '0' && p_[pos_ + 1] <= '9') return Fail("octal escapes are not supported");
        return one(0);
      case 'x': {
        ++pos_;
        MOE_ASSIGN_OR_RETURN(const uint32_t v, Hex(2));
        return Ranges{{v, v}};
      }
      case 'u': {
        ++pos_;
        MOE_ASSIGN_OR_RETURN(const uint32_t v, Hex(4));
        if (v >= 0xD800 && v <= 0xDFFF) return Fail("surrogate escapes are not supported");
        return Ranges{{v, v}};
      }
      default:
        break;
    }
    if (e >= '1' && e <= '9') return Fail("backreferences are not supported");
    if ((e >= 'a' && e <= 'z') || (e >= 'A' && e <= 'Z')) {
      return Fail(std::string("unsupported escape \\") + e);
    }
    MOE_ASSIGN_OR_RETURN(const uint32_t cp, CodePoint());  // escaped punctuation or any other character
    return Ranges{{cp, cp}};
  }

  // One item of a class (`negated`: [^...]): an escape (`is_class` for \d \w \s and their
  // negations) or a code point.
  absl::StatusOr<Ranges> ClassItem(bool negated, bool& is_class) {
    if (p_[pos_] == '\\') return Escape(/*in_class=*/true, negated, is_class);
    MOE_ASSIGN_OR_RETURN(const uint32_t cp, CodePoint());
    return Ranges{{cp, cp}};
  }

  absl::StatusOr<int> Class() {
    const size_t open = pos_++;
    const bool negated = Peek('^');
    if (negated) ++pos_;
    if (Peek(']')) return Fail("a class starting with ] reads differently in Python and ECMA (escape it as \\])");
    Ranges r;
    bool had_class_escape = false;
    while (true) {
      if (pos_ == p_.size()) {
        pos_ = open;
        return Fail("unterminated [");
      }
      if (p_[pos_] == ']') {
        ++pos_;
        break;
      }
      bool is_class = false;
      MOE_ASSIGN_OR_RETURN(const Ranges lo, ClassItem(negated, is_class));
      had_class_escape |= is_class;
      if (Peek('-') && pos_ + 1 < p_.size() && p_[pos_ + 1] != ']') {
        ++pos_;
        bool hi_is_class = false;
        MOE_ASSIGN_OR_RETURN(const Ranges hi, ClassItem(negated, hi_is_class));
        if (is_class || hi_is_class) return Fail("a class escape cannot bound a range");
        if (hi[0].first < lo[0].first) return Fail("a range out of order");
        r.emplace_back(lo[0].first, hi[0].first);
      } else {
        r.insert(r.end(), lo.begin(), lo.end());
      }
    }
    // [^\d]: Python's \d takes every Unicode digit, ECMA's only 0-9; outside ASCII the two disagree,
    // so a negated class with a class escape stays within ASCII.
    return Set(negated ? ComplementRanges(r, had_class_escape ? 0x7F : kMaxCodePoint) : std::move(r));
  }

  std::string_view p_;
  bool search_;
  size_t pos_ = 0;
  int group_depth_ = 0;
  std::vector<Ast> nodes_;
};

// Thompson's construction over bytes.
class Nfa {
 public:
  struct State {
    std::vector<int> eps;
    std::vector<std::tuple<uint8_t, uint8_t, int>> edges;  // byte range -> state
  };

  explicit Nfa(const std::vector<Ast>& ast) : ast_(ast) {}

  // Returns false when the automaton would pass kMaxNfaStates.
  bool Compile(int root) {
    const auto [in, out] = Build(root);
    start_ = in;
    accept_ = out;
    return !overflow_;
  }
  const std::vector<State>& states() const { return states_; }
  int start() const { return start_; }
  int accept() const { return accept_; }

 private:
  int New() {
    if (states_.size() >= kMaxNfaStates) {
      overflow_ = true;
      return 0;
    }
    states_.emplace_back();
    return static_cast<int>(states_.size() - 1);
  }
  void Eps(int from, int to) {
    if (!overflow_) states_[static_cast<size_t>(from)].eps.push_back(to);
  }

  std::pair<int, int> Build(int id) {
    if (overflow_) return {0, 0};
    const Ast& a = ast_[static_cast<size_t>(id)];
    const int in = New(), out = New();
    if (overflow_) return {0, 0};
    switch (a.kind) {
      case Ast::Kind::kSet: {
        std::vector<ByteSeq> seqs;
        for (const auto& [lo, hi] : a.set) Utf8Sequences(lo, hi, seqs);
        for (const ByteSeq& seq : seqs) {
          int at = in;
          for (size_t i = 0; i < seq.size(); ++i) {
            const int to = i + 1 == seq.size() ? out : New();
            if (overflow_) return {0, 0};
            states_[static_cast<size_t>(at)].edges.emplace_back(seq[i].first, seq[i].second, to);
            at = to;
          }
        }
        break;
      }
      case Ast::Kind::kConcat: {
        int at = in;
        for (int kid : a.kids) {
          const auto [kin, kout] = Build(kid);
          Eps(at, kin);
          at = kout;
        }
        Eps(at, out);
        break;
      }
      case Ast::Kind::kAlt:
        for (int kid : a.kids) {
          const auto [kin, kout] = Build(kid);
          Eps(in, kin);
          Eps(kout, out);
        }
        break;
      case Ast::Kind::kRepeat: {
        int at = in;
        for (uint32_t i = 0; i < a.min && !overflow_; ++i) {
          const auto [kin, kout] = Build(a.kids[0]);
          Eps(at, kin);
          at = kout;
        }
        if (a.max == UINT32_MAX) {
          const auto [kin, kout] = Build(a.kids[0]);
          Eps(at, kin);
          Eps(kout, at);
          Eps(at, out);
        } else {
          for (uint32_t i = a.min; i < a.max && !overflow_; ++i) {
            const auto [kin, kout] = Build(a.kids[0]);
            Eps(at, kin);
            Eps(at, out);  // stop here
            at = kout;
          }
          Eps(at, out);
        }
        break;
      }
    }
    return {in, out};
  }

  const std::vector<Ast>& ast_;
  std::vector<State> states_;
  int start_ = 0, accept_ = 0;
  bool overflow_ = false;
};

absl::Status TooLarge() {
  return absl::InvalidArgumentError(absl::StrCat("the pattern needs more than ", ByteDfa::kMaxStates, " automaton states"));
}

// A table row's worth of work: building a state's 256 transitions, and Build's passes over them.
constexpr int64_t kRowWork = 256;

// Whether `work` more fits in what is left of `budget` (none: no shared budget).
bool Fits(const ByteDfa::WorkBudget* budget, int64_t work) { return budget == nullptr || work <= budget->left; }

absl::Status Exhausted(ByteDfa::WorkBudget* budget) {
  budget->left = 0;
  return absl::ResourceExhaustedError("the work budget shared with the request's other automata is used up");
}

// Takes `work` off `budget`; ResourceExhausted when it has less.
absl::Status Spend(ByteDfa::WorkBudget* budget, int64_t work) {
  if (budget == nullptr) return absl::OkStatus();
  if (work > budget->left) return Exhausted(budget);
  budget->left -= work;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ByteDfa> ByteDfa::FromRegex(std::string_view pattern, Match match, WorkBudget* budget) {
  RegexParser parser(pattern, match == Match::kSearch);
  MOE_ASSIGN_OR_RETURN(const int root, parser.Parse());
  Nfa nfa(parser.nodes());
  if (!nfa.Compile(root)) return TooLarge();
  const std::vector<Nfa::State>& ns = nfa.states();
  const int64_t nfa_work = static_cast<int64_t>(ns.size());  // building it: for the shared budget

  // Subset construction. A DFA state is the set of NFA states, after epsilon moves, that read a byte
  // or accept (the others add nothing), sorted. Bytes are taken in classes no NFA edge splits.
  std::array<uint8_t, 256> class_of{};
  std::vector<uint8_t> class_first;  // each class's first byte
  {
    std::bitset<257> boundary;
    boundary.set(0);
    for (const Nfa::State& st : ns) {
      for (const auto& [lo, hi, to] : st.edges) {
        boundary.set(lo);
        boundary.set(static_cast<size_t>(hi) + 1);
      }
    }
    for (int b = 0; b < 256; ++b) {
      if (boundary[static_cast<size_t>(b)]) class_first.push_back(static_cast<uint8_t>(b));
      class_of[static_cast<size_t>(b)] = static_cast<uint8_t>(class_first.size() - 1);
    }
  }
  // Work (NFA states visited) is bounded too: a short pattern can still make large sets.
  constexpr int64_t kMaxWork = 20'000'000;
  int64_t work = 0;
  std::vector<char> mark(ns.size(), 0);
  auto closure = [&](const std::vector<int>& seeds) {
    std::vector<int> out, kept;
    for (int s : seeds) {
      if (!mark[static_cast<size_t>(s)]) {
        mark[static_cast<size_t>(s)] = 1;
        out.push_back(s);
      }
    }
    for (size_t i = 0; i < out.size(); ++i) {
      const Nfa::State& st = ns[static_cast<size_t>(out[i])];
      if (!st.edges.empty() || out[i] == nfa.accept()) kept.push_back(out[i]);
      for (int t : st.eps) {
        if (!mark[static_cast<size_t>(t)]) {
          mark[static_cast<size_t>(t)] = 1;
          out.push_back(t);
        }
      }
    }
    work += static_cast<int64_t>(out.size());
    for (int s : out) mark[static_cast<size_t>(s)] = 0;
    std::sort(kept.begin(), kept.end());
    return kept;
  };
  std::map<std::vector<int>, int32_t> ids;
  std::vector<std::vector<int>> sets;
  std::vector<std::array<int32_t, 256>> next;
  std::vector<bool> accepting;
  auto intern = [&](std::vector<int> set) -> int32_t {
    if (set.empty()) return kDead;
    auto [it, fresh] = ids.emplace(set, static_cast<int32_t>(sets.size()));
    if (fresh) {
      accepting.push_back(std::binary_search(set.begin(), set.end(), nfa.accept()));
      sets.push_back(std::move(set));
    }
    return it->second;
  };
  intern(closure({nfa.start()}));
  for (size_t d = 0; d < sets.size(); ++d) {
    if (sets.size() > kMaxStates || work > kMaxWork) return TooLarge();
    // (Build's passes over the table cost about as much again as making its rows.)
    if (!Fits(budget, nfa_work + work + 2 * kRowWork * static_cast<int64_t>(sets.size()))) return Exhausted(budget);
    std::vector<std::vector<int>> moves(class_first.size());
    for (int s : sets[d]) {
      for (const auto& [lo, hi, to] : ns[static_cast<size_t>(s)].edges) {
        for (int k = class_of[lo]; k <= class_of[hi]; ++k) moves[static_cast<size_t>(k)].push_back(to);
        work += 1 + class_of[hi] - class_of[lo];
      }
    }
    std::vector<int32_t> target(class_first.size());
    std::map<std::vector<int>, int32_t> seen;  // classes with the same moves share a closure
    for (size_t k = 0; k < class_first.size(); ++k) {
      auto [it, fresh] = seen.emplace(moves[k], kDead);
      if (fresh) it->second = intern(closure(moves[k]));
      target[k] = it->second;
    }
    std::array<int32_t, 256> row;
    for (int b = 0; b < 256; ++b) row[static_cast<size_t>(b)] = target[class_of[static_cast<size_t>(b)]];
    next.push_back(row);
  }
  MOE_RETURN_IF_ERROR(Spend(budget, nfa_work + work + 2 * kRowWork * static_cast<int64_t>(next.size())));
  return Build(next, accepting);
}

absl::StatusOr<ByteDfa> ByteDfa::Build(const std::vector<std::array<int32_t, 256>>& next,
                                       const std::vector<bool>& accepting) {
  const size_t n = next.size();
  // Live: an accepting state is reachable.
  std::vector<std::vector<int32_t>> back(n);
  for (size_t s = 0; s < n; ++s) {
    for (int32_t t : next[s]) {
      if (t != kDead) back[static_cast<size_t>(t)].push_back(static_cast<int32_t>(s));
    }
  }
  std::vector<bool> live(n, false);
  std::deque<int32_t> queue;
  for (size_t s = 0; s < n; ++s) {
    if (accepting[s]) {
      live[s] = true;
      queue.push_back(static_cast<int32_t>(s));
    }
  }
  while (!queue.empty()) {
    const int32_t s = queue.front();
    queue.pop_front();
    for (int32_t p : back[static_cast<size_t>(s)]) {
      if (!live[static_cast<size_t>(p)]) {
        live[static_cast<size_t>(p)] = true;
        queue.push_back(p);
      }
    }
  }
  if (n == 0 || !live[0]) return absl::InvalidArgumentError("the pattern matches no text");
  // Renumber the live states reachable from the start, in breadth-first order (the start is 0).
  std::vector<int32_t> id(n, kDead);
  std::vector<int32_t> order = {0};
  id[0] = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    for (int32_t t : next[static_cast<size_t>(order[i])]) {
      if (t != kDead && live[static_cast<size_t>(t)] && id[static_cast<size_t>(t)] == kDead) {
        id[static_cast<size_t>(t)] = static_cast<int32_t>(order.size());
        order.push_back(t);
      }
    }
  }
  if (order.size() > kMaxStates) return TooLarge();
  // Byte classes: bytes whose columns are equal.
  ByteDfa dfa;
  std::map<std::vector<int32_t>, uint8_t> columns;
  std::vector<uint8_t> representative;
  for (int b = 0; b < 256; ++b) {
    std::vector<int32_t> column;
    column.reserve(order.size());
    for (int32_t s : order) {
      const int32_t t = next[static_cast<size_t>(s)][static_cast<size_t>(b)];
      column.push_back(t == kDead ? kDead : id[static_cast<size_t>(t)]);
    }
    auto [it, fresh] = columns.emplace(std::move(column), static_cast<uint8_t>(representative.size()));
    if (fresh) representative.push_back(static_cast<uint8_t>(b));
    dfa.class_of_[static_cast<size_t>(b)] = it->second;
  }
  dfa.classes_ = representative.size();
  dfa.table_.resize(order.size() * dfa.classes_);
  dfa.accepting_.resize(order.size());
  dfa.exits_.assign(order.size(), false);
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& row = next[static_cast<size_t>(order[i])];
    dfa.accepting_[i] = accepting[static_cast<size_t>(order[i])];
    for (size_t k = 0; k < dfa.classes_; ++k) {
      const int32_t t = row[representative[k]];
      const int32_t mapped = t == kDead ? kDead : id[static_cast<size_t>(t)];
      dfa.table_[i * dfa.classes_ + k] = mapped;
      if (mapped != kDead) dfa.exits_[i] = true;
    }
  }
  // The fewest code points to a match from each state: a 0-1 breadth-first search backwards from
  // the accepting states (a byte that begins a code point weighs 1, a continuation byte 0).
  std::vector<std::vector<std::pair<int32_t, uint8_t>>> into(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    for (int b = 0; b < 256; ++b) {
      const int32_t t = dfa.Next(static_cast<int32_t>(i), static_cast<uint8_t>(b));
      if (t != kDead) into[static_cast<size_t>(t)].emplace_back(static_cast<int32_t>(i), b < 0x80 || b >= 0xC0 ? 1 : 0);
    }
  }
  dfa.shortest_.assign(order.size(), UINT32_MAX);
  std::deque<int32_t> frontier;
  for (size_t i = 0; i < order.size(); ++i) {
    if (dfa.accepting_[i]) {
      dfa.shortest_[i] = 0;
      frontier.push_back(static_cast<int32_t>(i));
    }
  }
  while (!frontier.empty()) {
    const int32_t t = frontier.front();
    frontier.pop_front();
    for (const auto& [s, w] : into[static_cast<size_t>(t)]) {
      const uint32_t d = dfa.shortest_[static_cast<size_t>(t)] + w;
      if (d < dfa.shortest_[static_cast<size_t>(s)]) {
        dfa.shortest_[static_cast<size_t>(s)] = d;
        if (w == 0) {
          frontier.push_front(s);
        } else {
          frontier.push_back(s);
        }
      }
    }
  }
  return dfa;
}

std::vector<std::array<int32_t, 256>> ByteDfa::Expand() const {
  std::vector<std::array<int32_t, 256>> next(states());
  for (size_t s = 0; s < states(); ++s) {
    for (int b = 0; b < 256; ++b) next[s][static_cast<size_t>(b)] = Next(static_cast<int32_t>(s), static_cast<uint8_t>(b));
  }
  return next;
}

absl::StatusOr<ByteDfa> ByteDfa::WithLength(uint32_t min, uint32_t max, WorkBudget* budget) const {
  // States (s, k): k code points read (counted at their lead bytes), saturating at min when there is
  // no maximum.
  const uint32_t cap = max == UINT32_MAX ? min : max;
  if (static_cast<uint64_t>(cap + 1) * states() > kMaxLengthProduct) return TooLarge();
  std::map<std::pair<int32_t, uint32_t>, int32_t> ids;
  std::vector<std::pair<int32_t, uint32_t>> pairs;
  std::vector<std::array<int32_t, 256>> next;
  std::vector<bool> accepting;
  auto intern = [&](int32_t s, uint32_t k) {
    auto [it, fresh] = ids.emplace(std::make_pair(s, k), static_cast<int32_t>(pairs.size()));
    if (fresh) {
      pairs.emplace_back(s, k);
      accepting.push_back(Accepting(s) && k >= min);
    }
    return it->second;
  };
  intern(start(), 0);
  for (size_t i = 0; i < pairs.size(); ++i) {
    if (!Fits(budget, 2 * kRowWork * static_cast<int64_t>(pairs.size()))) return Exhausted(budget);
    const auto [s, k] = pairs[i];
    std::array<int32_t, 256> row;
    for (int b = 0; b < 256; ++b) {
      const int32_t t = Next(s, static_cast<uint8_t>(b));
      const bool lead = b < 0x80 || b >= 0xC0;
      uint64_t count = k + (lead ? 1 : 0);
      if (t == kDead || (max != UINT32_MAX && count > max)) {
        row[static_cast<size_t>(b)] = kDead;
        continue;
      }
      if (max == UINT32_MAX) count = std::min<uint64_t>(count, min);
      row[static_cast<size_t>(b)] = intern(t, static_cast<uint32_t>(count));
    }
    next.push_back(row);
  }
  MOE_RETURN_IF_ERROR(Spend(budget, 2 * kRowWork * static_cast<int64_t>(next.size())));
  return Build(next, accepting);
}

absl::StatusOr<ByteDfa> ByteDfa::WithoutBytes(const std::bitset<256>& refused, WorkBudget* budget) const {
  MOE_RETURN_IF_ERROR(Spend(budget, 2 * kRowWork * static_cast<int64_t>(states())));
  std::vector<std::array<int32_t, 256>> next = Expand();
  for (auto& row : next) {
    for (int b = 0; b < 256; ++b) {
      if (refused[static_cast<size_t>(b)]) row[static_cast<size_t>(b)] = kDead;
    }
  }
  return Build(next, accepting_);
}

std::bitset<256> ByteDfa::FirstBytes() const {
  std::bitset<256> b;
  for (int c = 0; c < 256; ++c) b[static_cast<size_t>(c)] = Next(start(), static_cast<uint8_t>(c)) != kDead;
  return b;
}

bool ByteDfa::Matches(std::string_view text) const {
  int32_t s = start();
  for (char c : text) {
    s = Next(s, static_cast<uint8_t>(c));
    if (s == kDead) return false;
  }
  return Accepting(s);
}

}  // namespace moe
