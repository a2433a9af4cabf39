// GBNF grammars (worker/gbnf.h) against outside references: grammars of regular languages against
// the regex automaton (ByteDfa, its own code) written for the same language, and two recursive
// grammars (balanced brackets, arithmetic) against hand-written recognisers, on random texts: a
// prefix is accepted exactly when the reference can still complete it, and only whole texts are
// complete. The vocabulary mask of a grammar is the tokens whose text the state accepts, token by
// token. Bad grammars are refused naming the line, column or rule.
#include <pthread.h>

#include <cstdint>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "worker/byte_dfa.h"
#include "worker/gbnf.h"
#include "worker/json_constraint.h"

namespace moe {
namespace {

GbnfGrammar Parsed(const std::string& text) {
  absl::StatusOr<GbnfGrammar> g = GbnfGrammar::Parse(text);
  EXPECT_TRUE(g.ok()) << g.status() << "\n" << text;
  return g.ok() ? *std::move(g) : *GbnfGrammar::Parse("root ::= \"?\"");
}

std::string RandomText(std::mt19937& rng, const std::vector<std::string>& pieces, int most) {
  std::string s;
  for (int i = static_cast<int>(rng() % static_cast<unsigned>(most + 1)); i > 0; --i) s += pieces[rng() % pieces.size()];
  return s;
}

// Feeds `text` byte by byte: how many bytes were accepted, and whether the whole is complete.
std::pair<size_t, bool> RunText(const GbnfGrammar& g, const std::string& text) {
  GbnfState s(g);
  for (size_t i = 0; i < text.size(); ++i) {
    if (!s.Feed(static_cast<uint8_t>(text[i]))) return {i, false};
  }
  return {text.size(), s.Complete()};
}

TEST(GbnfTest, RegularGrammarsAgreeWithTheRegexAutomaton) {
  struct Case {
    const char* grammar;
    const char* regex;
  };
  const Case cases[] = {
      {R"g(root ::= ("ab" | "c")* "d"?)g", "(ab|c)*d?"},
      {R"g(root ::= [a-c]{2,4} ("-" [0-9]+)?)g", "[a-c]{2,4}(-[0-9]+)?"},
      {"root ::= x (\" \" x)*\nx ::= \"yes\" | \"no\" | [0-9]{1,3}  # a comment\n",
       "(yes|no|[0-9]{1,3})( (yes|no|[0-9]{1,3}))*"},
      {R"g(root ::= [^abc]+ "." )g", "[^abc]+\\."},
      {"root ::= \"\\u00e9\" [\xce\xb1-\xcf\x89]* (\"x\" | \"\\xe9\"){2,}", "\xc3\xa9[\xce\xb1-\xcf\x89]*(x|\xc3\xa9){2,}"},
      {"root ::= (\n  \"a\" |\n  \"b\" \"c\"+\n) [0-9]{0,2}", "(a|bc+)[0-9]{0,2}"},
  };
  const std::vector<std::string> pieces = {"a", "b", "c", "d", "-", "0", "7", " ", "yes", "no", "\xc3\xa9", "\xce\xb1",
                                           "\xcf\x89", "x", ".", "\n", "\xce", "\x80", "\xed\xa0\x80", "\xc0\xaf"};
  std::mt19937 rng(11);
  for (const Case& c : cases) {
    const GbnfGrammar g = Parsed(c.grammar);
    absl::StatusOr<ByteDfa> dfa = ByteDfa::FromRegex(c.regex, ByteDfa::Match::kWhole);
    ASSERT_TRUE(dfa.ok()) << dfa.status();
    int complete = 0;
    for (int i = 0; i < 3000; ++i) {
      const std::string text = RandomText(rng, pieces, 7);
      // The reference: the automaton's states are trimmed to those that can still reach a match,
      // so a prefix is viable exactly while it is not dead.
      size_t viable = 0;
      int32_t state = ByteDfa::start();
      for (; viable < text.size(); ++viable) {
        state = dfa->Next(state, static_cast<uint8_t>(text[viable]));
        if (state == ByteDfa::kDead) break;
      }
      const auto [accepted, whole] = RunText(g, text);
      EXPECT_EQ(accepted, viable) << c.grammar << " on \"" << text << "\"";
      EXPECT_EQ(whole, dfa->Matches(text)) << c.grammar << " on \"" << text << "\"";
      complete += whole;
    }
    EXPECT_GT(complete, 0) << c.grammar << ": no random text was whole (the test would prove little)";
  }
}

// A recursive grammar: brackets of two kinds, properly nested, with letters between.
TEST(GbnfTest, NestedBracketsAgreeWithAStack) {
  const GbnfGrammar g = Parsed(R"g(root ::= item*
item ::= "(" item* ")" | "[" item* "]" | [a-z]
)g");
  // Reference: a prefix is viable while every closing bracket matches the last open one.
  auto reference = [](const std::string& t) -> std::pair<size_t, bool> {
    std::string open;
    for (size_t i = 0; i < t.size(); ++i) {
      const char c = t[i];
      if (c == '(' || c == '[') {
        open.push_back(c);
      } else if (c == ')' || c == ']') {
        if (open.empty() || open.back() != (c == ')' ? '(' : '[')) return {i, false};
        open.pop_back();
      } else if (c < 'a' || c > 'z') {
        return {i, false};
      }
    }
    return {t.size(), open.empty()};
  };
  std::mt19937 rng(12);
  const std::vector<std::string> pieces = {"(", ")", "[", "]", "a", "z", "((", "))", "()", "-"};
  int whole = 0;
  for (int i = 0; i < 5000; ++i) {
    const std::string text = RandomText(rng, pieces, 12);
    EXPECT_EQ(RunText(g, text), reference(text)) << text;
    whole += reference(text).second;
  }
  EXPECT_GT(whole, 100);
  // Nesting deeper than the state's limit is refused rather than grown without bound (each level
  // here holds two positions: the rest of item*, then the closing bracket).
  const size_t deepest = RunText(g, std::string(GbnfState::kMaxDepth, '(')).first;
  EXPECT_LT(deepest, GbnfState::kMaxDepth);
  EXPECT_GE(deepest, GbnfState::kMaxDepth / 2 - 1);
}

// Arithmetic with precedence and parentheses, against a recursive-descent recogniser of prefixes.
TEST(GbnfTest, ArithmeticAgreesWithRecursiveDescent) {
  const GbnfGrammar g = Parsed(R"g(# integer arithmetic
root   ::= expr
expr   ::= term (("+" | "-") term)*
term   ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")" | "-" factor
)g");
  // Whether `t` is a whole expression; and whether it is a prefix of one (every such prefix can be
  // completed: close the open parentheses after an operand, add a digit after an operator).
  struct Reader {
    const std::string& t;
    size_t i = 0;
    bool ended = false;  // the text ran out where more could follow: a viable prefix so far
    bool Expr() {
      if (!Term()) return false;
      while (i < t.size() && (t[i] == '+' || t[i] == '-')) {
        ++i;
        if (!Term()) return false;
      }
      return true;
    }
    bool Term() {
      if (!Factor()) return false;
      while (i < t.size() && (t[i] == '*' || t[i] == '/')) {
        ++i;
        if (!Factor()) return false;
      }
      return true;
    }
    bool Factor() {
      if (i >= t.size()) return ended = true, false;
      if (t[i] == '-') return ++i, Factor();
      if (t[i] == '(') {
        ++i;
        if (!Expr()) return false;
        if (i >= t.size()) return ended = true, false;
        if (t[i] != ')') return false;
        return ++i, true;
      }
      if (t[i] < '0' || t[i] > '9') return false;
      while (i < t.size() && t[i] >= '0' && t[i] <= '9') ++i;
      return true;
    }
  };
  std::mt19937 rng(13);
  const std::vector<std::string> pieces = {"1", "23", "+", "-", "*", "/", "(", ")", " ", "x"};
  int whole = 0;
  for (int i = 0; i < 5000; ++i) {
    const std::string text = RandomText(rng, pieces, 10);
    Reader r{text};
    const bool parsed = r.Expr();
    const bool is_whole = parsed && r.i == text.size();
    const bool viable = is_whole || r.ended || (parsed && r.i == text.size());
    const auto [accepted, complete] = RunText(g, text);
    EXPECT_EQ(complete, is_whole) << text;
    EXPECT_EQ(accepted == text.size(), viable) << text;
    whole += is_whole;
  }
  EXPECT_GT(whole, 100);
}

TEST(GbnfTest, Utf8IsReadByteByByte) {
  const GbnfGrammar g = Parsed("root ::= . [\\u4e00-\\u9fff] \"\\U0001F600\"");
  EXPECT_EQ(RunText(g, "a\xe6\x97\xa5\xf0\x9f\x98\x80"), std::make_pair(size_t{8}, true));      // a, 日, 😀
  EXPECT_EQ(RunText(g, "\xe2\x82\xac\xe6\x97\xa5\xf0\x9f\x98\x80").second, true);             // € first
  EXPECT_EQ(RunText(g, "a\xe6\x97").first, size_t{3});                                       // a partial 日
  EXPECT_EQ(RunText(g, "a\xc3\xa9").first, size_t{1});   // é is not in the class: refused at its first byte
  EXPECT_EQ(RunText(g, "\xc0\xaf").first, size_t{0});    // an overlong form
  EXPECT_EQ(RunText(g, "\xed\xa0\x80").first, size_t{1});  // a surrogate: refused at its second byte
  EXPECT_EQ(RunText(g, "\xf4\x90\x80\x80").first, size_t{1});  // past U+10FFFF
}

TEST(GbnfTest, CompleteAndClosed) {
  const GbnfGrammar g = Parsed(R"g(root ::= "a" "b"?)g");
  GbnfState s(g);
  EXPECT_FALSE(s.Complete());
  ASSERT_TRUE(s.Feed("a"));
  EXPECT_TRUE(s.Complete());
  EXPECT_FALSE(s.Closed());  // "b" may follow
  ASSERT_TRUE(s.Feed("b"));
  EXPECT_TRUE(s.Closed());
  EXPECT_FALSE(s.Feed("b"));
  EXPECT_TRUE(s.Closed());  // a refused byte leaves the state as it was
}

TEST(GbnfTest, MaskIsTheTokensTheStateAccepts) {
  const std::vector<std::string> vocab = {"", "(", ")", "((", "))", "()", "x", "(x", ")(", "[", "]", "[]", " "};
  auto trie = std::make_shared<const TokenTextTrie>(vocab);
  auto grammar = std::make_shared<const GbnfGrammar>(Parsed(R"g(root ::= item+
item ::= "(" item* ")" | "[" item* "]" | "x"
)g"));
  GbnfMaskCache masks(trie, grammar);
  GbnfConstraint c(masks, {0});
  GbnfState mirror(*grammar);
  std::mt19937 rng(14);
  for (int step = 0; step < 40; ++step) {
    TokenMask allowed(static_cast<int64_t>(vocab.size()));
    ASSERT_TRUE(c.Allowed(allowed));
    for (size_t id = 1; id < vocab.size(); ++id) {
      GbnfState next = mirror;
      EXPECT_EQ(allowed.allowed(static_cast<int64_t>(id)), next.Feed(vocab[id])) << "step " << step << " id " << id;
    }
    EXPECT_EQ(allowed.allowed(0), mirror.Complete()) << "the end id only once the text is whole";
    std::vector<int32_t> ids;
    for (size_t id = 1; id < vocab.size(); ++id) {
      if (allowed.allowed(static_cast<int64_t>(id))) ids.push_back(static_cast<int32_t>(id));
    }
    ASSERT_FALSE(ids.empty());
    const int32_t pick = ids[rng() % ids.size()];
    c.Add(pick);
    ASSERT_TRUE(mirror.Feed(vocab[static_cast<size_t>(pick)]));
  }
  EXPECT_GT(masks.hits(), 0);  // states repeat: masks come from the cache
}

// Grammars as vLLM's and llama.cpp's documentation write them read as they mean.
TEST(GbnfTest, DocumentedGrammarsRead) {
  // vLLM's structured-outputs example (its xgrammar backend's EBNF).
  const GbnfGrammar sql = Parsed(R"g(root ::= select_statement

select_statement ::= "SELECT " column " from " table " where " condition

column ::= "col_1 " | "col_2 "

table ::= "table_1 " | "table_2 "

condition ::= column "= " number

number ::= "1 " | "2 "
)g");
  EXPECT_EQ(RunText(sql, "SELECT col_1  from table_2  where col_2 = 1 "), std::make_pair(size_t{44}, true));
  EXPECT_EQ(RunText(sql, "SELECT col_3").first, size_t{11});
  // llama.cpp's grammars/list.gbnf.
  const GbnfGrammar list = Parsed(R"g(root ::= item+

# Excludes various line break characters
item ::= "- " [^\r\n\x0b\x0c\x85\u2028\u2029]+ "\n"
)g");
  EXPECT_EQ(RunText(list, "- milk\n- bread\n"), std::make_pair(size_t{15}, true));
  EXPECT_EQ(RunText(list, "- milk\n\n").first, size_t{7});
  // Alternatives on lines of their own, | first (as EBNF grammars are often written).
  const GbnfGrammar lines = Parsed("root ::= \"a\"\n  | \"b\"  # b\n\n  | \"c\"\nd ::= \"d\"\n");
  for (const char* t : {"a", "b", "c"}) EXPECT_EQ(RunText(lines, t), std::make_pair(size_t{1}, true)) << t;
  EXPECT_EQ(RunText(lines, "d").first, size_t{0});
}

TEST(GbnfTest, BadGrammarsNameWhatIsWrong) {
  auto error = [](const std::string& text) {
    absl::StatusOr<GbnfGrammar> g = GbnfGrammar::Parse(text);
    EXPECT_FALSE(g.ok()) << text;
    return g.ok() ? std::string() : std::string(g.status().message());
  };
  EXPECT_EQ(error("item ::= \"a\""), "no rule named 'root' (where the output starts)");
  EXPECT_EQ(error("root ::= item"), "rule 'item' is used but never defined");
  EXPECT_EQ(error("root ::= \"a\"\nroot ::= \"b\""), "line 2, column 1: rule 'root' is defined twice");
  EXPECT_NE(error("root ::= root \"a\" | \"b\"").find("rule 'root' is left-recursive"), std::string::npos);
  EXPECT_NE(error("root ::= x* \"a\"\nx ::= \"b\"?").find("left-recursive"), std::string::npos);  // x* of a nullable x
  EXPECT_NE(error("root ::= a\na ::= b \"x\"\nb ::= \"\" | a").find("left-recursive"), std::string::npos);
  EXPECT_EQ(error("root ::= \"abc"), "line 1, column 14: unterminated literal (a \" is missing)");
  EXPECT_EQ(error("root ::= [a-"), "line 1, column 13: unterminated character class (a ] is missing)");
  EXPECT_EQ(error("root ::= []"), "line 1, column 12: empty character class []");
  EXPECT_EQ(error("root ::= [z-a]"), "line 1, column 14: a character range ends before it starts");
  EXPECT_EQ(error("root ::= \"\\q\""), "line 1, column 11: unknown escape \\q");
  // Raw text must be UTF-8 as the output is: an overlong form or a surrogate's encoding is refused.
  EXPECT_EQ(error("root ::= \"\xc0\xaf\""), "line 1, column 11: not UTF-8");
  EXPECT_EQ(error("root ::= [\xed\xa0\x80]"), "line 1, column 11: not UTF-8");
  EXPECT_EQ(error("root ::= \"a\\uD800\""), "line 1, column 12: a surrogate (U+D800 to U+DFFF) is no character of UTF-8 text");
  EXPECT_EQ(error("root ::= \"a\"{3,2}"), "line 1, column 18: a repetition's maximum is below its minimum");
  EXPECT_EQ(error("root ::= \"a\"{1001}"), "line 1, column 19: repetition counts are at most 1000");
  EXPECT_EQ(error("root ::= \"a\"{2,99999999999}"), "line 1, column 28: repetition counts are at most 1000");
  EXPECT_NE(error("root ::= (\"a\"{1000}){1000}").find("expands to more than"), std::string::npos);
  EXPECT_EQ(error("root ::= (\"a\""), "line 1, column 14: expected ) to close the group, found the end of the grammar");
  EXPECT_EQ(error("root = \"a\""), "line 1, column 6: expected ::= after the rule name 'root'");
  EXPECT_EQ(error("root ::= \"a\" )"), "line 1, column 14: unexpected ')' (a rule ends at the end of its line)");
  EXPECT_NE(error(std::string(GbnfGrammar::kMaxTextBytes + 1, ' ')).find("longer than"), std::string::npos);
}

// Groups nest as deep as the parser's bound and no deeper: 20,000 levels (40 KB, inside the text
// limit) overflowed the parser's stack and took the coordinator down.
TEST(GbnfTest, DeepGroupsAreBounded) {
  // Each group with two alternatives, so that every level is a rule of its own.
  std::string g = "root ::= ";
  for (int i = 0; i < GbnfGrammar::kMaxGroupDepth; ++i) g += "(\"x\" | ";
  g += "\"a\"" + std::string(GbnfGrammar::kMaxGroupDepth, ')');
  absl::StatusOr<GbnfGrammar> ok = GbnfGrammar::Parse(g);
  ASSERT_TRUE(ok.ok()) << ok.status();
  GbnfState state(*ok);
  ASSERT_TRUE(state.Feed("a"));
  EXPECT_TRUE(state.Complete());
  for (const int depth : {GbnfGrammar::kMaxGroupDepth + 1, 20'000}) {
    absl::StatusOr<GbnfGrammar> deep =
        GbnfGrammar::Parse("root ::= " + std::string(depth, '(') + "\"a\"" + std::string(depth, ')'));
    ASSERT_FALSE(deep.ok()) << depth;
    EXPECT_EQ(deep.status().message(), "line 1, column " + std::to_string(10 + GbnfGrammar::kMaxGroupDepth) +
                                           ": groups nested deeper than " + std::to_string(GbnfGrammar::kMaxGroupDepth));
  }
}

// A deep, ambiguous grammar (the audit's): inside d's brackets m can start in 41 ways (its optional
// characters), each a stack as deep as the brackets open. Under outputs of "(" the states grew to
// ~43 stacks 254 deep, each byte copying and sorting them: a mask step cost a second and a rank's
// memory grew by a GB a request. The positions of a state's stacks together are bounded
// (kMaxPositions): "(" is refused well before kMaxDepth, and what was taken still completes.
TEST(GbnfTest, DeepAmbiguousStatesAreBoundedInAll) {
  absl::StatusOr<GbnfGrammar> g = GbnfGrammar::Parse("root ::= d\nd ::= \"(\" d \")\" | m\nm ::= ([^\\n()]?){40} [^\\n()]*");
  ASSERT_TRUE(g.ok()) << g.status();
  GbnfState state(*g);
  size_t depth = 0;
  while (depth < GbnfState::kMaxDepth && state.Feed("(")) ++depth;
  std::string key;
  state.AppendStateKey(key);
  EXPECT_LE(key.size(), sizeof(uint32_t) * (GbnfState::kMaxPositions + 1));
  EXPECT_GT(depth, 100u);                            // deep nesting is still there ...
  EXPECT_LT(depth, GbnfState::kMaxPositions / 41);  // ... but each level's 41 ways to start m count
  // The longest bracketed text the state still takes, as a balanced-bracket reading says it is whole.
  const std::string rest = "x" + std::string(depth, ')');
  EXPECT_TRUE(state.Feed(rest)) << depth;
  EXPECT_TRUE(state.Complete());
}

// Grammars no output can satisfy are refused when parsed, not as a worker error mid-generation.
TEST(GbnfTest, GrammarsWithoutAnOutputAreRefused) {
  auto error = [](const std::string& text) {
    absl::StatusOr<GbnfGrammar> g = GbnfGrammar::Parse(text);
    return g.ok() ? std::string("ok") : std::string(g.status().message());
  };
  EXPECT_EQ(error("root ::= \"(\" root \")\""), "rule 'root' derives no finite text: no alternative of it finishes (each needs 'root' again)");
  EXPECT_EQ(error("root ::= \"a\" x\nx ::= \"b\" x | \"c\" x"),
            "rule 'root' derives no finite text: no alternative of it finishes (rule 'x' never does)");
  EXPECT_EQ(error("root ::= y\ny ::= \"(\" y \")\"\nz ::= y"),
            "rule 'root' derives no finite text: no alternative of it finishes (rule 'y' never does)");
  EXPECT_EQ(error("root ::= (\"a\"?){1000} \"a\"").rfind("no first byte of the output is within the recogniser's limits", 0),
            0u)
      << error("root ::= (\"a\"?){1000} \"a\"");
  EXPECT_EQ(error("root ::= \"(\" root \")\" | \"x\""), "ok");
  EXPECT_EQ(error("root ::= (\"a\"?){10} \"a\""), "ok");
  EXPECT_EQ(error("root ::= \"\""), "ok");  // the empty text: complete at once
  // An alternative that never finishes is dropped, not the grammar (llama.cpp takes it too): the
  // output is "a", never a "(" that could not be closed.
  absl::StatusOr<GbnfGrammar> g = GbnfGrammar::Parse("root ::= \"a\" | bad\nbad ::= \"(\" bad \")\"");
  ASSERT_TRUE(g.ok()) << g.status();
  GbnfState a(*g), bracket(*g);
  EXPECT_TRUE(a.Feed("a") && a.Complete());
  EXPECT_FALSE(bracket.Feed("("));
}

// A chain of thousands of rules, each beginning with the next: the left-recursion check walks it
// without recursing and finds the cycle its last rule closes; without one the chain parses.
TEST(GbnfTest, LongRuleChainsAreWalkedWithoutRecursion) {
  constexpr int kRules = 3000;
  std::string chain = "root ::= r0\n";
  for (int i = 0; i + 1 < kRules; ++i) chain += "r" + std::to_string(i) + " ::= r" + std::to_string(i + 1) + "\n";
  ASSERT_LT(chain.size() + 32, GbnfGrammar::kMaxTextBytes);
  const std::string last = "r" + std::to_string(kRules - 1) + " ::= ";
  absl::StatusOr<GbnfGrammar> cyclic = GbnfGrammar::Parse(chain + last + "root \"a\"\n");
  ASSERT_FALSE(cyclic.ok());
  EXPECT_NE(cyclic.status().message().find("left-recursive"), std::string::npos) << cyclic.status();
  absl::StatusOr<GbnfGrammar> plain = GbnfGrammar::Parse(chain + last + "\"a\"\n");
  ASSERT_TRUE(plain.ok()) << plain.status();
  // The recogniser's expansion of the chain, on a thread of 256 KiB of stack: a recursion per rule
  // needed about 1 MB for a chain this long.
  struct Run {
    const GbnfGrammar* grammar;
    bool fed = false, complete = false;
  } run{&*plain};
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(pthread_attr_setstacksize(&attr, 256 << 10), 0);
  pthread_t thread;
  ASSERT_EQ(pthread_create(
                &thread, &attr,
                [](void* arg) -> void* {
                  Run& r = *static_cast<Run*>(arg);
                  GbnfState state(*r.grammar);
                  r.fed = state.Feed("a");
                  r.complete = state.Complete();
                  return nullptr;
                },
                &run),
            0);
  ASSERT_EQ(pthread_join(thread, nullptr), 0);
  pthread_attr_destroy(&attr);
  EXPECT_TRUE(run.fed);
  EXPECT_TRUE(run.complete);
}

}  // namespace
}  // namespace moe
