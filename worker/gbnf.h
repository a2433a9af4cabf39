// Grammars in GBNF, llama.cpp's notation (the EBNF vLLM's structured_outputs.grammar and
// guided_grammar take through xgrammar), as a byte-at-a-time recogniser for constrained generation:
// a state accepts a byte only when the bytes so far can still be completed into a text the grammar
// derives from its rule `root`.
//
//   root   ::= answer ("," ws answer)*      # rules: name ::= alternatives; `#` starts a comment
//   answer ::= "yes" | "no" | [0-9]{1,3}    # "literal", [class], [^negated], ., rule, ( group )
//   ws     ::= [ \t\n]*                     # postfix * + ? {m} {m,} {m,n}
//
// Literals and classes are Unicode code points (escapes \n \r \t \\ \" \[ \] \- \xHH \uHHHH
// \UHHHHHHHH), read from UTF-8 text; `.` is any code point. A rule ends at the end of its line
// unless a group is open, the line ends after ::= or |, or the next line starts with |. The output is matched as UTF-8 (no overlong forms or surrogates).
//
// The recogniser is llama.cpp's: a state is the set of stacks of grammar positions still alive
// (each stack's top is the class the next code point must be in; an empty stack has derived the
// whole root). Left recursion (also through rules that can match nothing, as in `x*` of an `x`
// that can be empty) would expand forever, so Parse refuses it naming the rule.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace moe {

// The stacks of grammar positions a GbnfState holds (each its top at the back), one after another
// in one array: [size, positions...] per stack, sorted and distinct (an empty stack, the whole root
// derived, first).
struct GbnfStacks {
  std::vector<uint32_t> flat;
  uint32_t count = 0;
};
class GbnfTransitions;  // gbnf.cc: a grammar's states by content, and their transitions

class GbnfGrammar {
 public:
  // The grammar text's limits: bytes, and grammar elements after repetitions are expanded.
  static constexpr size_t kMaxTextBytes = 64 * 1024;
  static constexpr size_t kMaxElements = 1 << 18;
  static constexpr int kMaxRepeat = 1000;  // {m,n}: m, n at most this
  static constexpr int kMaxGroupDepth = 100;  // ( ... ) inside one another

  // InvalidArgument with the line and column of what is wrong ("line 2, column 14: ...") or the
  // rule ("rule 'x' is used but never defined").
  static absl::StatusOr<GbnfGrammar> Parse(std::string_view text);

  // Grammar positions: one flat array of elements. Each alternative of a rule is a run of kChars
  // and kRule elements ended by kAlt (another alternative of the same rule follows) or kEnd.
  struct Element {
    enum class Type : uint8_t { kEnd, kAlt, kRule, kChars };
    Type type = Type::kEnd;
    uint32_t value = 0;  // kRule: the rule; kChars: the class (ranges_)
  };
  const Element& at(uint32_t pos) const { return elements_[pos]; }
  // The first element of each alternative of rule r.
  const std::vector<uint32_t>& alternatives(uint32_t r) const { return alternatives_[r]; }
  uint32_t root() const { return root_; }
  // Whether class `c` holds the code points [lo, hi] entirely (lo == hi: the one point), or any of them.
  bool Contains(uint32_t c, uint32_t cp) const;
  bool Intersects(uint32_t c, uint32_t lo, uint32_t hi) const;

 private:
  GbnfGrammar() = default;  // only Parse makes one (its states need the transitions it sets up)
  friend class GbnfParser;
  friend class GbnfState;
  std::vector<Element> elements_;
  std::vector<std::vector<uint32_t>> alternatives_;  // per rule
  std::vector<std::vector<std::pair<uint32_t, uint32_t>>> ranges_;  // per class: sorted, disjoint
  uint32_t root_ = 0;
  // The states met so far, each held once, and the code points' transitions between them: inside a
  // string of a JSON grammar every character leads back to the same state, so a mask walk over the
  // vocabulary finds most transitions here instead of expanding the stacks again. Shared by the
  // grammar's copies and states; not thread-safe (a serving loop's grammar is its own).
  std::shared_ptr<GbnfTransitions> transitions_;
};

// Where the output stands in a grammar: copied once per vocabulary-trie edge by the mask walk
// (TokenTextTrie::MarkAccepted), where most bytes are refused, so the stacks are shared between
// copies (a byte that is accepted makes new ones) and a copy costs a reference count.
class GbnfState {
 public:
  using Spec = GbnfGrammar;
  // The stacks alive at once, and how deep one may grow (right recursion does not grow it; nesting
  // does): a byte that would pass either is refused, so a runaway grammar narrows the output rather
  // than the worker's memory.
  static constexpr size_t kMaxStacks = 1024;
  static constexpr size_t kMaxDepth = 256;
  // The positions of a state's distinct stacks together, well below kMaxStacks x kMaxDepth: a
  // state is copied, sorted, hashed and held whole (a mask walk makes hundreds), and states of up
  // to 1,024 stacks 256 deep (1 MB) made each mask step of a deep, ambiguous grammar cost a second.
  static constexpr size_t kMaxPositions = 8192;

  // `grammar` must outlive the state (and its copies).
  explicit GbnfState(const GbnfGrammar& grammar);

  // Feeds one byte; false (and the state unchanged) when no text of the grammar goes on with it.
  bool Feed(uint8_t c);
  bool Feed(std::string_view bytes);
  // Feed for a caller that drops the state when the byte is refused (the vocabulary walk).
  bool Advance(uint8_t c);
  // The bytes so far are a whole text of the grammar; Closed: and nothing may follow.
  bool Complete() const;
  bool Closed() const;
  // False only for a start past the limits (GbnfGrammar::Parse refuses such grammars).
  bool Alive() const { return stacks_->count > 0; }
  // Bytes that differ between any two states that could accept different byte strings (mask cache key).
  void AppendStateKey(std::string& key) const;

 private:
  // Appends `stack` to `out` with every rule at its top expanded into its alternatives, until each
  // top is a class (or the stack is empty); `stack` is scratch, as it was on a true return. False
  // when a limit is passed. Without recursion: its stack use does not grow with the grammar.
  bool Expand(std::vector<uint32_t>& stack, GbnfStacks& out) const;
  // `in`'s stacks sorted, duplicates dropped.
  static GbnfStacks Distinct(GbnfStacks in);
  bool AcceptCodePoint(uint32_t cp);

  const GbnfGrammar* g_;
  std::shared_ptr<const GbnfStacks> stacks_;  // never null
  uint32_t partial_ = 0;       // a multi-byte character's bits so far
  uint8_t left_ = 0;           // its continuation bytes still to come
  uint8_t length_ = 0;         // its length in bytes
};

}  // namespace moe
