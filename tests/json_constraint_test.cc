// The JSON-object grammar and the vocabulary mask of constrained generation, against an outside
// parser (nlohmann::json): every prefix of a valid object is accepted and only a whole one is
// complete; on mutated texts the grammar's verdict is the parser's; and every prefix the grammar
// accepts can still be completed into a text the parser accepts (no dead states).
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/json_syntax.h"
#include "worker/json_constraint.h"
#include "worker/json_grammar.h"
#include "worker/json_schema.h"

namespace moe {
namespace {

std::shared_ptr<const JsonSchema> AnyObjectPtr() {
  static const auto* schema = new std::shared_ptr<const JsonSchema>(std::make_shared<const JsonSchema>(JsonSchema::AnyObject()));
  return *schema;
}
const JsonSchema& AnyObject() { return *AnyObjectPtr(); }

bool ParserAcceptsObject(const std::string& s) { return testing_ref::JsonObjectAccepted(s); }

// A random JSON value: nested objects and arrays, strings with escapes, multi-byte UTF-8 and
// characters past the BMP, numbers in every form, literals.
nlohmann::json RandomValue(std::mt19937& rng, int depth) {
  const int kind = static_cast<int>(rng() % (depth > 3 ? 5 : 7));
  switch (kind) {
    case 0: return nullptr;
    case 1: return rng() % 2 == 0;
    case 2: return static_cast<int64_t>(rng() % 2000) - 1000;
    case 3: return std::ldexp(static_cast<double>(rng() % 100000) - 50000, static_cast<int>(rng() % 80) - 40);
    case 4: {
      static const char* const kParts[] = {"a", "key", " ", "\"", "\\", "/", "\n", "\t", "\x01", "\xc3\xa9",
                                           "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xed\x9f\xbf", "\xef\xbf\xbd", "0"};
      std::string s;
      for (int i = static_cast<int>(rng() % 6); i > 0; --i) s += kParts[rng() % std::size(kParts)];
      return s;
    }
    case 5: {
      nlohmann::json a = nlohmann::json::array();
      for (int i = static_cast<int>(rng() % 4); i > 0; --i) a.push_back(RandomValue(rng, depth + 1));
      return a;
    }
    default: {
      nlohmann::json o = nlohmann::json::object();
      for (int i = static_cast<int>(rng() % 4); i > 0; --i) {
        o[RandomValue(rng, 99).is_string() ? "k" + std::to_string(rng() % 50) : "x"] = RandomValue(rng, depth + 1);
      }
      return o;
    }
  }
}

std::string RandomObjectText(std::mt19937& rng) {
  nlohmann::json o = nlohmann::json::object();
  for (int i = static_cast<int>(rng() % 4); i > 0; --i) o["f" + std::to_string(i)] = RandomValue(rng, 1);
  const int style = static_cast<int>(rng() % 3);
  // Compact, indented, or ASCII-only with \u escapes (surrogate pairs for characters past the BMP).
  return style == 0 ? o.dump() : style == 1 ? o.dump(2) : o.dump(-1, ' ', true);
}

// Every run of whitespace outside strings is nothing, one space, or a newline and an indent of at
// most JsonGrammar::kIndentPerLevel spaces or tabs per open container (the grammar's bound; the
// parser takes any run).
bool WhitespaceWithinBound(const std::string& text) {
  bool in_string = false, escaped = false;
  int depth = 0;
  std::string run;
  auto run_ok = [&] {
    if (run.empty() || run == " ") return true;
    if (run[0] != '\n' || run.size() > 1 + JsonGrammar::kIndentPerLevel * static_cast<size_t>(depth)) return false;
    return run.find_first_not_of(" \t", 1) == std::string::npos;
  };
  for (char c : text) {
    if (in_string) {
      in_string = escaped || c != '"';
      escaped = !escaped && c == '\\';
      continue;
    }
    if (c == ' ' || c == '\n' || c == '\t' || c == '\r') {
      run += c;
      continue;
    }
    if (!run_ok()) return false;
    run.clear();
    in_string = c == '"';
    depth += c == '{' || c == '[' ? 1 : c == '}' || c == ']' ? -1 : 0;
  }
  return run_ok();
}

// Extends an accepted prefix byte by byte (a fixed preference order that closes strings, numbers,
// literals and containers) until the grammar says complete.
std::string CompleteWithGrammar(JsonGrammar g) {
  static const std::string kPreference = std::string("\"}]:DC\\u0eralsn") + "\x80\x90\xa0{";
  std::string out;
  for (int i = 0; i < 2000 && !g.Complete(); ++i) {
    bool fed = false;
    for (char c : kPreference) {
      if (g.Feed(static_cast<uint8_t>(c))) {
        out += c;
        fed = true;
        break;
      }
    }
    if (!fed) return out + "<dead>";
  }
  return out;
}

TEST(JsonGrammarTest, EveryPrefixOfAnObjectIsAcceptedAndOnlyTheWholeIsComplete) {
  std::mt19937 rng(7);
  for (int n = 0; n < 400; ++n) {
    const std::string text = RandomObjectText(rng) + (n % 3 == 0 ? "\n" : "");
    ASSERT_TRUE(ParserAcceptsObject(text)) << text;
    JsonGrammar g(AnyObject());
    const size_t end = text.find_last_of('}');
    for (size_t i = 0; i < text.size(); ++i) {
      ASSERT_FALSE(g.Complete()) << "complete before byte " << i << " of " << text;
      ASSERT_TRUE(g.Feed(static_cast<uint8_t>(text[i]))) << "byte " << i << " of " << text;
      if (i == end) break;
    }
    EXPECT_TRUE(g.Complete()) << text;
    EXPECT_TRUE(g.Feed(std::string_view(text).substr(end + 1))) << "trailing whitespace of " << text;
    EXPECT_TRUE(g.Complete());
  }
}

TEST(JsonGrammarTest, AgreesWithTheParserOnMutatedTextsAndNeverDeadEnds) {
  std::mt19937 rng(11);
  static const std::string kBytes = std::string("{}[]\":,\\/ -+.0123456789eEtrufalsn\tbxu\x01\x7f") +
                                    "\xc3\xa9\xe0\xed\xf0\xf4\xf5\x80\xa0\xbf\xc0";
  int refused = 0, complete = 0;
  for (int n = 0; n < 3000; ++n) {
    std::string text = RandomObjectText(rng);
    for (int m = 1 + static_cast<int>(rng() % 3); m > 0 && !text.empty(); --m) {
      const size_t at = rng() % text.size();
      const char b = kBytes[rng() % kBytes.size()];
      switch (rng() % 4) {
        case 0: text[at] = b; break;
        case 1: text.insert(text.begin() + static_cast<std::ptrdiff_t>(at), b); break;
        case 2: text.erase(at, 1); break;
        default: text.resize(at); break;
      }
    }
    JsonGrammar g(AnyObject());
    size_t taken = 0;
    while (taken < text.size() && g.Feed(static_cast<uint8_t>(text[taken]))) ++taken;
    const bool whole = taken == text.size();
    // The grammar's verdict on the whole text is the parser's, where its whitespace is within bounds.
    if (whole && g.Complete()) {
      EXPECT_TRUE(ParserAcceptsObject(text)) << "text: " << text;
    } else if (WhitespaceWithinBound(text)) {
      EXPECT_FALSE(ParserAcceptsObject(text)) << "text: " << text;
    }
    refused += whole ? 0 : 1;
    complete += whole && g.Complete() ? 1 : 0;
    // What it accepted can still become an object the parser accepts.
    const std::string prefix = text.substr(0, taken);
    const std::string completed = prefix + CompleteWithGrammar(g);
    EXPECT_TRUE(ParserAcceptsObject(completed)) << "prefix: " << prefix << "\ncompleted: " << completed;
  }
  // The mutations exercise both verdicts.
  EXPECT_GT(refused, 500);
  EXPECT_GT(complete, 150);
}

TEST(JsonGrammarTest, HandWorkedCases) {
  auto whole = [](const std::string& s) {
    JsonGrammar g(AnyObject());
    return g.Feed(s) && g.Complete();
  };
  auto refused_at = [](const std::string& s) {
    JsonGrammar g(AnyObject());
    for (size_t i = 0; i < s.size(); ++i) {
      if (!g.Feed(static_cast<uint8_t>(s[i]))) return static_cast<int>(i);
    }
    return -1;
  };
  EXPECT_TRUE(whole("{}"));
  EXPECT_TRUE(whole(" {\"a\": [1, -0.5e+3, true, null, {\"b\": \"\\ud83d\\ude00\"}]} "));
  EXPECT_EQ(refused_at("[1]"), 0);             // the top level is an object
  EXPECT_EQ(refused_at("{\"a\":01}"), 6);      // no leading zeros
  EXPECT_EQ(refused_at("{\"a\":1.}"), 7);      // a fraction needs a digit
  EXPECT_EQ(refused_at("{\"a\":\"\\udc00\"}"), 9);  // a low surrogate alone, refused at its 2nd digit
  EXPECT_EQ(refused_at("{\"a\":\"\\ud800x\"}"), 12);  // a high surrogate needs its low one
  EXPECT_EQ(refused_at("{\"a\":\"\xc0\xaf\"}"), 6);  // an overlong form
  EXPECT_EQ(refused_at("{\"a\":\"\xed\xa0\x80\"}"), 7);  // a surrogate in UTF-8
  EXPECT_EQ(refused_at("{\"a\":tru }"), 8);
  EXPECT_EQ(refused_at("{}x"), 2);             // nothing but whitespace after the object
  // Between tokens: nothing, one space, or a newline and an indent of at most kIndentPerLevel bytes
  // per open container.
  const std::string indent = "\n" + std::string(JsonGrammar::kIndentPerLevel - 1, ' ') + "\t";
  EXPECT_TRUE(whole("\n{" + indent + "\"a\"" + indent + ":" + indent + "1" + indent + "}\n"));
  EXPECT_TRUE(whole("{\"a\": [1, 2],\n  \"b\": {\n\t\t\"c\": null\n  }\n}"));
  EXPECT_TRUE(whole("{\n    \"a\": [\n        [\n            1\n        ]\n    ]\n}"));
  EXPECT_TRUE(whole("{\"a\": \"" + std::string(50, ' ') + "\\n\\n\"}"));  // text is not whitespace
  EXPECT_EQ(refused_at("\n {}"), 1);  // no indent outside every container
  EXPECT_EQ(refused_at("{" + indent + " \"a\": 1}"), 1 + 1 + JsonGrammar::kIndentPerLevel);
  EXPECT_EQ(refused_at("{\"a\":1\n\n}"), 7);   // no blank lines
  EXPECT_EQ(refused_at("{\"a\":  1}"), 6);      // one space, not two
  EXPECT_EQ(refused_at("{\"a\": \n1}"), 6);     // nor a space and then a newline
  EXPECT_EQ(refused_at("{\"a\":\t1}"), 5);      // a tab only in an indent
  EXPECT_EQ(refused_at("{\"a\":\r\n1}"), 5);
  std::string deep = "{\"a\":";
  for (int i = 0; i < JsonGrammar::kMaxDepth - 1; ++i) deep += "[";
  EXPECT_EQ(refused_at(deep + "["), static_cast<int>(deep.size()));
}

// The trie's mask is exactly the tokens whose whole text the grammar accepts (checked one token at
// a time), at every step of a text fed token by token.
TEST(JsonConstraintTest, MaskIsTheTokensTheGrammarAccepts) {
  std::vector<std::string> texts = {"", "", "", " ", "{", "}", "\"", ":", ",", "[", "]", "{\"", "\":", "\"}",
                                    " {", "a", "ab", "abc", "\"a\"", "1", "12", "-", ".", "e", "true", "tr", "ue",
                                    "null", "\\", "u", "d83d", "\xc3", "\xa9", "\xc3\xa9", "\n", "}}", "]}", "\":\"", "de00"};
  for (int b = 0; b < 256; ++b) texts.push_back(std::string(1, static_cast<char>(b)));  // byte fallback
  const auto trie = std::make_shared<const TokenTextTrie>(texts);
  // ` {"ab": [1,true,"\ud83d\ude00é"]}`
  const std::vector<int32_t> path = {14, 6, 16, 12, 3, 9, 19, 8, 24, 8, 6, 28, 29, 30, 28, 29, 38, 33, 6, 10, 5};
  // One text fed token by token; at every step the mask must be the reference's.
  auto follow_path = [&](JsonMaskCache& masks) {
    JsonConstraint c(masks, {2});
    JsonGrammar g(AnyObject());  // the reference state, fed the same tokens
    std::string text;
    for (size_t step = 0; step <= path.size(); ++step) {
      std::vector<float> logits(texts.size() + 3, 0.0f);  // rows wider than the vocabulary
      ASSERT_TRUE(c.Apply(logits));
      for (size_t id = 0; id < logits.size(); ++id) {
        bool expect = false;
        if (g.Complete()) {
          expect = id == 2;  // a closed object ends the output
        } else if (id < texts.size() && !texts[id].empty()) {
          JsonGrammar probe = g;
          expect = probe.Feed(texts[id]);
        }
        EXPECT_EQ(logits[id] == 0.0f, expect) << "step " << step << " id " << id;
      }
      if (step == path.size()) break;
      const int32_t tok = path[step];
      ASSERT_EQ(logits[static_cast<size_t>(tok)], 0.0f) << "step " << step;
      c.Add(tok);
      ASSERT_TRUE(g.Feed(texts[static_cast<size_t>(tok)]));
      text += texts[static_cast<size_t>(tok)];
    }
    EXPECT_TRUE(c.Complete());
    EXPECT_TRUE(ParserAcceptsObject(text)) << text;
  };
  JsonMaskCache small(trie, AnyObjectPtr(), /*max_states=*/4);  // starts over several times on the way
  follow_path(small);
  JsonMaskCache shared(trie, AnyObjectPtr());
  follow_path(shared);
  const int64_t first_misses = shared.misses();
  follow_path(shared);  // a second sequence meets the same states: every mask from the cache
  EXPECT_EQ(shared.misses(), first_misses);
  EXPECT_GT(shared.hits(), 0);
}

// Without end ids (ignore_eos) a closed object may be followed by whitespace, up to the bound: one
// newline (no indent: every container is closed).
TEST(JsonConstraintTest, WithoutEndIdsWhitespaceFollowsUpToTheLimit) {
  JsonMaskCache masks(std::make_shared<const TokenTextTrie>(std::vector<std::string>{"", "{}", " ", "x", "\n"}),
                      AnyObjectPtr());
  JsonConstraint c(masks, {});
  std::vector<float> logits(5, 0.0f);
  ASSERT_TRUE(c.Apply(logits));
  EXPECT_EQ(logits[1], 0.0f);
  c.Add(1);
  ASSERT_TRUE(c.Complete());
  logits.assign(5, 0.0f);
  ASSERT_TRUE(c.Apply(logits));
  EXPECT_EQ(logits, (std::vector<float>{-INFINITY, -INFINITY, 0.0f, -INFINITY, 0.0f}));
  c.Add(4);
  logits.assign(5, 0.0f);  // no indent: every container is closed
  EXPECT_FALSE(c.Apply(logits));
}

// guided_regex: a token is allowed when its whole text keeps the output a prefix of a match; the
// end id once the output matches; only the end id once nothing can follow.
TEST(JsonConstraintTest, RegexMasksFollowTheAutomaton) {
  absl::StatusOr<JsonSchema> regex = JsonSchema::Regex("ab+c");
  ASSERT_TRUE(regex.ok()) << regex.status();
  JsonMaskCache masks(std::make_shared<const TokenTextTrie>(std::vector<std::string>{"", "a", "b", "ab", "ba", "abc", "c"}),
                      std::make_shared<const JsonSchema>(*std::move(regex)));
  JsonConstraint c(masks, {0});
  constexpr float kOut = -INFINITY;
  std::vector<float> logits(7, 0.0f);
  ASSERT_TRUE(c.Apply(logits));
  EXPECT_EQ(logits, (std::vector<float>{kOut, 0.0f, kOut, 0.0f, kOut, 0.0f, kOut}));
  c.Add(3);  // "ab"
  logits.assign(7, 0.0f);
  ASSERT_TRUE(c.Apply(logits));
  EXPECT_EQ(logits, (std::vector<float>{kOut, kOut, 0.0f, kOut, kOut, kOut, 0.0f}));
  c.Add(6);  // "c": a match, and nothing may follow
  EXPECT_TRUE(c.Complete());
  logits.assign(7, 0.0f);
  ASSERT_TRUE(c.Apply(logits));
  EXPECT_EQ(logits, (std::vector<float>{0.0f, kOut, kOut, kOut, kOut, kOut, kOut}));
}

TEST(JsonConstraintTest, NoTokenForTheNeededBytes) {
  JsonMaskCache masks(std::make_shared<const TokenTextTrie>(std::vector<std::string>{"", "a", "b"}),  // no '{'
                      AnyObjectPtr());
  JsonConstraint c(masks, {0});
  std::vector<float> logits = {1.0f, 2.0f, 3.0f};
  EXPECT_FALSE(c.Apply(logits));
  EXPECT_EQ(logits, (std::vector<float>{1.0f, 2.0f, 3.0f}));
}

}  // namespace
}  // namespace moe
