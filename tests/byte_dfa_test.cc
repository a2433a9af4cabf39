// Regular expressions compiled to byte automata (worker/byte_dfa.h), against Python's `re`
// (tests/data/regex/regex_golden.json, from make_regex_golden.py): whatever the automaton takes
// Python takes too (fullmatch or search), and on plain ASCII texts the two agree both ways. Every
// state can still reach a match (no dead ends for the masks), the syntax outside the supported
// subset is refused with its offset, and the length and byte restrictions keep exactly the texts
// they should.
#include <deque>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "worker/byte_dfa.h"

namespace moe {
namespace {

const std::string kGolden = std::string(MOE_SOURCE_DIR) + "/tests/data/regex/regex_golden.json";

// Every state reaches an accepting one.
bool AllStatesLive(const ByteDfa& dfa) {
  for (size_t s = 0; s < dfa.states(); ++s) {
    std::vector<bool> seen(dfa.states(), false);
    std::deque<int32_t> queue = {static_cast<int32_t>(s)};
    seen[s] = true;
    bool found = false;
    while (!queue.empty() && !found) {
      const int32_t at = queue.front();
      queue.pop_front();
      found = dfa.Accepting(at);
      for (int b = 0; b < 256 && !found; ++b) {
        const int32_t t = dfa.Next(at, static_cast<uint8_t>(b));
        if (t != ByteDfa::kDead && !seen[static_cast<size_t>(t)]) {
          seen[static_cast<size_t>(t)] = true;
          queue.push_back(t);
        }
      }
    }
    if (!found) return false;
  }
  return true;
}

TEST(ByteDfaTest, AgreesWithPythonsRe) {
  std::ifstream f(kGolden);
  ASSERT_TRUE(f.good()) << kGolden;
  const nlohmann::json golden = nlohmann::json::parse(f);
  int texts = 0, exact = 0, matched = 0;
  for (const nlohmann::json& c : golden["cases"]) {
    const std::string pattern = c["pattern"];
    SCOPED_TRACE(pattern);
    const auto mode = c["mode"] == "whole" ? ByteDfa::Match::kWhole : ByteDfa::Match::kSearch;
    absl::StatusOr<ByteDfa> dfa = ByteDfa::FromRegex(pattern, mode);
    ASSERT_TRUE(dfa.ok()) << dfa.status();
    EXPECT_TRUE(AllStatesLive(*dfa));
    for (const nlohmann::json& t : c["texts"]) {
      const std::string text = t["text"];
      const bool ours = dfa->Matches(text);
      ++texts;
      matched += ours;
      if (ours) {
        EXPECT_TRUE(t["valid"].get<bool>()) << "taken, but Python does not match: \"" << text << "\"";
      }
      if (t["exact"].get<bool>()) {
        ++exact;
        EXPECT_EQ(ours, t["valid"].get<bool>()) << "\"" << text << "\"";
      }
    }
  }
  EXPECT_GT(texts, 1500);
  EXPECT_GT(exact, 1000);
  EXPECT_GT(matched, 500);
}

TEST(ByteDfaTest, TakesOnlyValidUtf8) {
  absl::StatusOr<ByteDfa> dot = ByteDfa::FromRegex(".*", ByteDfa::Match::kWhole);
  ASSERT_TRUE(dot.ok()) << dot.status();
  EXPECT_TRUE(dot->Matches("aé日😀"));
  EXPECT_FALSE(dot->Matches("\xff"));
  EXPECT_FALSE(dot->Matches("\xed\xa0\x80"));  // a surrogate
  EXPECT_FALSE(dot->Matches("\xc0\xaf"));      // overlong
  EXPECT_FALSE(dot->Matches("\xe6\x97"));      // cut short
  EXPECT_FALSE(dot->Matches("a\nb"));
  EXPECT_FALSE(dot->Matches("\xe2\x80\xa8"));  // U+2028: not `.` in ECMA
  absl::StatusOr<ByteDfa> any = ByteDfa::FromRegex("", ByteDfa::Match::kSearch);  // any text
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_TRUE(any->Matches("a\nb\r"));
  EXPECT_FALSE(any->Matches("\xf4\x90\x80\x80"));  // past U+10FFFF
}

TEST(ByteDfaTest, LengthAndByteRestrictions) {
  absl::StatusOr<ByteDfa> dfa = ByteDfa::FromRegex("[a-zé日]*", ByteDfa::Match::kWhole);
  ASSERT_TRUE(dfa.ok()) << dfa.status();
  absl::StatusOr<ByteDfa> two_three = dfa->WithLength(2, 3);
  ASSERT_TRUE(two_three.ok()) << two_three.status();
  EXPECT_TRUE(AllStatesLive(*two_three));
  for (const char* ok : {"ab", "abc", "é日", "日日日"}) EXPECT_TRUE(two_three->Matches(ok)) << ok;
  for (const char* bad : {"", "a", "abcd", "é日ab"}) EXPECT_FALSE(two_three->Matches(bad)) << bad;
  absl::StatusOr<ByteDfa> at_least = dfa->WithLength(2, UINT32_MAX);
  ASSERT_TRUE(at_least.ok()) << at_least.status();
  EXPECT_TRUE(at_least->Matches("abcdefghijkl"));
  EXPECT_FALSE(at_least->Matches("日"));
  EXPECT_EQ(ByteDfa::FromRegex("abc", ByteDfa::Match::kWhole)->WithLength(4, 9).status().message(),
            "the pattern matches no text");

  absl::StatusOr<ByteDfa> lines = ByteDfa::FromRegex("a\\nb|ab\\n?", ByteDfa::Match::kWhole);
  ASSERT_TRUE(lines.ok()) << lines.status();
  std::bitset<256> newline;
  newline.set('\n');
  absl::StatusOr<ByteDfa> one_line = lines->WithoutBytes(newline);
  ASSERT_TRUE(one_line.ok()) << one_line.status();
  EXPECT_TRUE(one_line->Matches("ab"));
  EXPECT_FALSE(one_line->Matches("a\nb"));
  EXPECT_FALSE(one_line->Matches("ab\n"));
  EXPECT_TRUE(AllStatesLive(*one_line));
  // After "a" only 'b' may come: the '\n' branch is gone, not a dead end.
  EXPECT_EQ(one_line->Next(one_line->Next(ByteDfa::start(), 'a'), '\n'), ByteDfa::kDead);
  const std::bitset<256> first = one_line->FirstBytes();
  EXPECT_EQ(first.count(), 1u);
  EXPECT_TRUE(first['a']);
}

// Python's \s takes \x1c-\x1f (str.isspace), ECMA's does not: over every ASCII character, each
// form of the space escape takes exactly what both dialects take, negated classes included ([^\s\S]
// took \x1c-\x1f, which neither matches).
TEST(ByteDfaTest, SpaceEscapesTakeWhatBothDialectsTake) {
  const auto python_space = [](int c) { return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x1F) || c == ' '; };
  const auto ecma_space = [](int c) { return (c >= 9 && c <= 13) || c == ' '; };
  struct Case {
    const char* pattern;
    bool negated;  // the dialects' sets complemented
  };
  for (const Case& k : {Case{"\\s", false}, Case{"[\\s]", false}, Case{"[^\\S]", false}, Case{"\\S", true},
                        Case{"[\\S]", true}, Case{"[^\\s]", true}}) {
    SCOPED_TRACE(k.pattern);
    absl::StatusOr<ByteDfa> dfa = ByteDfa::FromRegex(k.pattern, ByteDfa::Match::kWhole);
    ASSERT_TRUE(dfa.ok()) << dfa.status();
    for (int c = 0; c < 0x80; ++c) {
      const bool both = k.negated ? !python_space(c) && !ecma_space(c) : python_space(c) && ecma_space(c);
      EXPECT_EQ(dfa->Matches(std::string(1, static_cast<char>(c))), both) << "character " << c;
    }
  }
  // A class's items each take what both dialects take, so their union may take less than both do
  // (never more): [\s\S] leaves \x1c-\x1f out.
  absl::StatusOr<ByteDfa> any = ByteDfa::FromRegex("[\\s\\S]", ByteDfa::Match::kWhole);
  ASSERT_TRUE(any.ok()) << any.status();
  for (int c = 0; c < 0x80; ++c) {
    EXPECT_EQ(any->Matches(std::string(1, static_cast<char>(c))), !python_space(c) || ecma_space(c)) << c;
  }
  EXPECT_EQ(ByteDfa::FromRegex("[^\\s\\S]", ByteDfa::Match::kWhole).status().message(), "the pattern matches no text");
}

TEST(ByteDfaTest, UnsupportedSyntaxIsRefusedWithItsOffset) {
  auto error = [](const std::string& p) {
    absl::StatusOr<ByteDfa> d = ByteDfa::FromRegex(p, ByteDfa::Match::kWhole);
    return d.ok() ? std::string("ok") : std::string(d.status().message());
  };
  EXPECT_EQ(error("a(?=b)"), "lookaround, inline flags and other (? groups are not supported at offset 3");
  EXPECT_EQ(error("(?i)a"), "lookaround, inline flags and other (? groups are not supported at offset 2");
  EXPECT_EQ(error("(a)\\1"), "backreferences are not supported at offset 4");
  EXPECT_EQ(error("\\bword"), "word boundaries (\\b) are not supported at offset 1");
  EXPECT_EQ(error("a**"), "multiple repeat (possessive quantifiers are not supported) at offset 2");
  EXPECT_EQ(error("a{,3}"), "'{' must begin a repeat {n}, {n,} or {n,m} (escape a literal one as \\{) at offset 1");
  EXPECT_EQ(error("*a"), "nothing to repeat at offset 0");
  EXPECT_EQ(error("[]a]"), "a class starting with ] reads differently in Python and ECMA (escape it as \\]) at offset 1");
  EXPECT_EQ(error("a$b"), "$ is supported only at the end of the pattern or of a top-level alternative at offset 1");
  EXPECT_EQ(error("(^a)"), "^ is supported only at the start of the pattern or of a top-level alternative at offset 1");
  EXPECT_EQ(error("x{1001}"), "repeat counts above 1000 are not supported at offset 7");
  EXPECT_EQ(error("x{1000000}"), "repeat counts above 1000 are not supported at offset 10");  // 7 digits
  EXPECT_EQ(error("x{2,99999999999999999999}"), "repeat counts above 1000 are not supported at offset 25");
  EXPECT_EQ(error("x{3,2}"), "a repeat's maximum is below its minimum at offset 6");
  EXPECT_EQ(error("[z-a]"), "a range out of order at offset 4");
  EXPECT_EQ(error("[a-\\d]"), "a class escape cannot bound a range at offset 5");
  EXPECT_EQ(error("(a"), "missing ) at offset 2");
  EXPECT_EQ(error("a)"), "unbalanced ) at offset 1");
  EXPECT_EQ(error("[ab"), "unterminated [ at offset 0");
  EXPECT_EQ(error("ab\\"), "a pattern cannot end with \\ at offset 3");
  EXPECT_EQ(error("\\q"), "unsupported escape \\q at offset 1");
  EXPECT_EQ(error("\xff"), "invalid UTF-8 at offset 0");
  EXPECT_EQ(error("(a|b)*a(a|b){12}"), "the pattern needs more than 4096 automaton states");
  EXPECT_EQ(error(std::string(5000, '(') + "a" + std::string(5000, ')')), "groups nested deeper than 100 at offset 100");
  EXPECT_EQ(error("(?:a{1000}){1000}"), "the pattern needs more than 4096 automaton states");
  EXPECT_EQ(error("[a-c]{2}(x|y)?"), "ok");
  EXPECT_EQ(error("\\d+\\.\\d{2}$"), "ok");
}

// Requests carry patterns: random ones (fragments of regex syntax, stray bytes) are compiled or
// refused with a message, never a crash or a hang, and whatever compiles has only live states and
// matches consistently with its own transitions.
TEST(ByteDfaTest, RandomPatternsCompileOrAreRefused) {
  static const char* const kParts[] = {"a", "b", "\\d", "\\w", "\\s", "\\D", ".", "[", "]", "[^", "-", "(", ")", "(?:",
                                       "|", "*", "+", "?", "{", "}", "{2}", "{1,3}", "{2,}", ",", "^", "$", "\\", "\\x4",
                                       "\\u00e9", "é", "日", "\xff", "\\1", "(?P<n>", "(?=", "\\b", "0", "9", "z-a"};
  std::mt19937 rng(3);
  int compiled = 0;
  for (int n = 0; n < 3000; ++n) {
    std::string p;
    for (int k = 1 + static_cast<int>(rng() % 8); k > 0; --k) p += kParts[rng() % std::size(kParts)];
    for (auto match : {ByteDfa::Match::kWhole, ByteDfa::Match::kSearch}) {
      absl::StatusOr<ByteDfa> dfa = ByteDfa::FromRegex(p, match);
      if (!dfa.ok()) {
        EXPECT_EQ(dfa.status().code(), absl::StatusCode::kInvalidArgument) << p;
        EXPECT_FALSE(dfa.status().message().empty()) << p;
        continue;
      }
      ++compiled;
      ASSERT_TRUE(AllStatesLive(*dfa)) << p;
      // A walk that follows exits ends in a match.
      int32_t s = ByteDfa::start();
      std::string text;
      for (int step = 0; step < 50 && dfa->HasExits(s) && !(dfa->Accepting(s) && rng() % 4 == 0); ++step) {
        std::vector<uint8_t> exits;
        for (int b = 0; b < 256; ++b) {
          if (dfa->Next(s, static_cast<uint8_t>(b)) != ByteDfa::kDead) exits.push_back(static_cast<uint8_t>(b));
        }
        const uint8_t b = exits[rng() % exits.size()];
        text.push_back(static_cast<char>(b));
        s = dfa->Next(s, b);
      }
      if (dfa->Accepting(s)) {
        EXPECT_TRUE(dfa->Matches(text)) << p;
      }
    }
  }
  EXPECT_GT(compiled, 500);
}

}  // namespace
}  // namespace moe
