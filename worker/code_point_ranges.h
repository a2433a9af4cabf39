// Sets of Unicode code points as ranges, for the byte recognisers' character classes (the regex
// automaton's, worker/byte_dfa.h, and the GBNF grammar's, worker/gbnf.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace moe {

// Inclusive [lo, hi] pairs; normalised: sorted, disjoint, non-adjacent.
using CodePointRanges = std::vector<std::pair<uint32_t, uint32_t>>;

inline CodePointRanges NormalizeRanges(CodePointRanges r) {
  std::sort(r.begin(), r.end());
  CodePointRanges out;
  for (const auto& [lo, hi] : r) {
    if (!out.empty() && lo <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, hi);
    } else {
      out.emplace_back(lo, hi);
    }
  }
  return out;
}

// The code points of [0, universe] outside `r`.
inline CodePointRanges ComplementRanges(const CodePointRanges& r, uint32_t universe) {
  CodePointRanges out;
  uint32_t next = 0;
  for (const auto& [lo, hi] : NormalizeRanges(r)) {
    if (lo > universe) break;
    if (lo > next) out.emplace_back(next, lo - 1);
    next = hi + 1;
  }
  if (next <= universe) out.emplace_back(next, universe);
  return out;
}

}  // namespace moe
