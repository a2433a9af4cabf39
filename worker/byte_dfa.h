// A deterministic automaton over bytes compiled from a regular expression, for constrained
// generation: vLLM's guided_regex, JSON Schema's "pattern" and "format", bounded numbers. The
// grammar (json_grammar.h) keeps one state (an int) per value it reads, so a mask walk copies it as
// cheaply as the rest of the grammar state.
//
// Every state can still reach an accepting one (the others are removed when the automaton is
// built): a byte that leads anywhere but kDead can be completed into a match, so the masks never
// lead the model into a dead end.
//
// The regex syntax is the part that Python's `re` and ECMA-262 (JSON Schema's dialect) read alike,
// and the automaton accepts only texts that both would match:
//   - literals (any UTF-8), `.` (any code point but \n, \r, U+2028, U+2029), classes `[a-z_]`,
//     `[^...]`, escapes \d \w \s (ASCII: [0-9], [A-Za-z0-9_], [ \t\n\v\f\r]) and \D \W \S (the
//     ASCII characters outside them, since Python's Unicode-wide \d and \s differ from ECMA's), \n
//     \t \r \f \v \0 \xHH \uHHHH and escaped punctuation;
//   - groups `(...)`, `(?:...)`, `(?P<name>...)`, `(?<name>...)`; alternation `|`;
//   - quantifiers * + ? {n} {n,} {n,m} (n, m <= 1000), lazy or not (the same texts match);
//   - `^` and `$` only at the start and end of the pattern or of a top-level alternative.
// Refused with the offset and the reason: backreferences, lookaround, word boundaries, inline
// flags, possessive quantifiers, `{,n}`, a class starting with `]`, and patterns whose automaton
// would pass kMaxStates states.
#pragma once

#include <array>
#include <bitset>
#include <cstdint>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace moe {

class ByteDfa {
 public:
  static constexpr int32_t kDead = -1;
  static constexpr size_t kMaxStates = 4096;
  // WithLength's product may have this many states before trimming (states x counts).
  static constexpr size_t kMaxLengthProduct = 4 * kMaxStates;

  // Work (NFA states visited, table entries built) that the automata of one request share: a JSON
  // schema's patterns, formats and bounds are each within the limits above, but hundreds of them
  // add up to seconds of compiling, paid by the coordinator and then by every rank on its serving
  // loop. A construction that would pass what is left fails with ResourceExhausted; what a
  // construction used is taken off.
  struct WorkBudget {
    int64_t left = 0;
  };

  enum class Match : uint8_t {
    kWhole,   // the text is one match (guided_regex): ^ and $ change nothing
    kSearch,  // the text contains a match (JSON Schema's "pattern", Python's re.search): ^ and $ anchor it
  };
  // InvalidArgument "<reason> at offset N" (or "... matches no text").
  static absl::StatusOr<ByteDfa> FromRegex(std::string_view pattern, Match match, WorkBudget* budget = nullptr);

  // The texts of this automaton that are valid UTF-8 of min..max code points (max UINT32_MAX: no
  // bound); InvalidArgument when none is, or the product passes kMaxStates.
  absl::StatusOr<ByteDfa> WithLength(uint32_t min, uint32_t max, WorkBudget* budget = nullptr) const;
  // The texts that contain none of the `refused` bytes.
  absl::StatusOr<ByteDfa> WithoutBytes(const std::bitset<256>& refused, WorkBudget* budget = nullptr) const;

  static constexpr int32_t start() { return 0; }
  int32_t Next(int32_t state, uint8_t c) const {
    return table_[static_cast<size_t>(state) * classes_ + class_of_[c]];
  }
  bool Accepting(int32_t state) const { return accepting_[static_cast<size_t>(state)]; }
  // Some byte continues from the state.
  bool HasExits(int32_t state) const { return exits_[static_cast<size_t>(state)]; }
  // The fewest code points that lead from the state to a match (0 when it accepts): a maximum
  // length too large to fold into the automaton is kept by refusing what cannot end within it.
  uint32_t ShortestToAccept(int32_t state) const { return shortest_[static_cast<size_t>(state)]; }
  size_t states() const { return accepting_.size(); }
  // The bytes a non-empty match can start with.
  std::bitset<256> FirstBytes() const;
  // The whole text is a match.
  bool Matches(std::string_view text) const;

 private:
  ByteDfa() = default;
  // From a full transition function (next[s][byte], kDead for none) with start state 0: keeps the
  // states reachable from the start that can reach an accepting one, and compresses the bytes into
  // classes that every state treats alike. InvalidArgument "matches no text" when none is left.
  static absl::StatusOr<ByteDfa> Build(const std::vector<std::array<int32_t, 256>>& next,
                                       const std::vector<bool>& accepting);
  std::vector<std::array<int32_t, 256>> Expand() const;

  std::array<uint8_t, 256> class_of_{};
  size_t classes_ = 1;
  std::vector<int32_t> table_;  // states x classes
  std::vector<bool> accepting_, exits_;
  std::vector<uint32_t> shortest_;
};

}  // namespace moe
