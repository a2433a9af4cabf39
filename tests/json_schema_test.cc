// JSON schemas for constrained generation, against Python's jsonschema (tests/data/json_schema/
// schema_golden.json, from make_schema_golden.py): for every text, whatever the grammar accepts as
// a whole value the schema admits is valid there (nothing invalid is ever generated), and every
// canonical instance (properties in the schema's order) is accepted. Every prefix the grammar takes
// can still be completed (no dead state: a search over bytes finds a whole value, which nlohmann
// parses). Unsupported keywords are refused naming their path.
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/json_syntax.h"
#include "worker/json_grammar.h"
#include "worker/json_schema.h"

namespace moe {
namespace {

using ordered = nlohmann::ordered_json;

const std::string kGolden = std::string(MOE_SOURCE_DIR) + "/tests/data/json_schema/schema_golden.json";

// Bytes that complete any value the schemas here admit: structure, digits, the letters of their
// literals, names and enums, and continuation bytes for a multi-byte character already begun.
const std::string& Alphabet() {
  static const std::string a =
      std::string("\"}]:,{[0123456789-.eEtrufalsnbdhxyvgcoipmwkqzARTZFIDC+@/_ \\") + "\x80\x90\xa0\xbf";
  return a;
}

// Depth-first search over bytes for a completion of `g` to a whole value (state keys seen are not
// searched again); empty optional when none is found within the budget.
bool FindCompletion(const JsonGrammar& g, std::string& out, std::set<std::string>& seen, int depth,
                    const std::string& alphabet = Alphabet()) {
  if (g.Complete()) return true;
  if (depth > 300 || seen.size() > 200000) return false;
  std::string key;
  g.AppendStateKey(key);
  if (!seen.insert(key).second) return false;
  for (char c : alphabet) {
    JsonGrammar next = g;
    if (!next.Feed(static_cast<uint8_t>(c))) continue;
    out.push_back(c);
    if (FindCompletion(next, out, seen, depth + 1, alphabet)) return true;
    out.pop_back();
  }
  return false;
}

// Every case of a golden file: counts of texts, wholly accepted ones and canonical ones.
struct GoldenCounts {
  int texts = 0, accepted = 0, canonical = 0;
};

void CheckGolden(const std::string& path, GoldenCounts& n) {
  std::ifstream f(path);
  ASSERT_TRUE(f.good()) << path;
  const ordered golden = ordered::parse(f);
  for (const ordered& c : golden["cases"]) {
    SCOPED_TRACE(c["name"].get<std::string>());
    absl::StatusOr<JsonSchema> schema = JsonSchema::Compile(c["schema"]);
    ASSERT_TRUE(schema.ok()) << schema.status();
    for (const ordered& t : c["texts"]) {
      const std::string text = t["text"];
      const bool valid = t["valid"], is_canonical = t["canonical"];
      JsonGrammar g(*schema);
      size_t taken = 0;
      while (taken < text.size() && g.Feed(static_cast<uint8_t>(text[taken]))) ++taken;
      const bool whole = taken == text.size() && g.Complete();
      ++n.texts;
      n.accepted += whole;
      n.canonical += is_canonical;
      if (whole) {
        EXPECT_TRUE(valid) << "the grammar took a text the reference refuses: " << text;
      }
      if (is_canonical) {
        EXPECT_TRUE(whole) << "a canonical instance refused at byte " << taken << ": " << text;
      }
      // What it took can still become a whole value.
      std::string completion;
      std::set<std::string> seen;
      ASSERT_TRUE(FindCompletion(g, completion, seen, 0)) << "dead state after " << text.substr(0, taken);
      EXPECT_TRUE(testing_ref::JsonSyntaxAccepts(text.substr(0, taken) + completion)) << text.substr(0, taken) << completion;
    }
  }
}

TEST(JsonSchemaTest, GrammarAgreesWithPythonsJsonschema) {
  GoldenCounts n;
  CheckGolden(kGolden, n);
  EXPECT_GT(n.texts, 4000);
  EXPECT_GT(n.canonical, 250);
  EXPECT_GT(n.accepted, n.canonical);  // mutations that stay valid in the schema's order too
}

// The schemas Pydantic writes for typical models (tests/data/json_schema/pydantic_golden.json, from
// make_pydantic_golden.py), judged by jsonschema and Pydantic: what users send.
TEST(JsonSchemaTest, PydanticSchemasAndInstances) {
  GoldenCounts n;
  CheckGolden(std::string(MOE_SOURCE_DIR) + "/tests/data/json_schema/pydantic_golden.json", n);
  EXPECT_GT(n.texts, 1000);
  EXPECT_GE(n.canonical, 150);
}

TEST(JsonSchemaTest, ObjectsFollowTheSchemasOrderAndItsRequiredProperties) {
  const ordered s = ordered::parse(R"({"type": "object", "properties": {"b": {"type": "integer"},
      "a": {"type": "string"}, "c": {"type": "boolean"}}, "required": ["a"]})");
  absl::StatusOr<JsonSchema> schema = JsonSchema::Compile(s);
  ASSERT_TRUE(schema.ok()) << schema.status();
  auto whole = [&](const std::string& text) {
    JsonGrammar g(*schema);
    return g.Feed(text) && g.Complete();
  };
  EXPECT_TRUE(whole(R"({"b": 1, "a": "x", "c": true})"));
  EXPECT_TRUE(whole(R"({"a": "x"})"));  // b is optional
  EXPECT_FALSE(whole(R"({"a": "x", "b": 1})"));  // out of the schema's order
  EXPECT_FALSE(whole(R"({"b": 1})"));  // a is required
  EXPECT_FALSE(whole(R"({"c": true})"));  // c cannot skip the required a
  EXPECT_FALSE(whole(R"({"b": 1.5, "a": "x"})"));  // an integer
  EXPECT_FALSE(whole(R"({"a": "x", "d": 1})"));  // no other keys
}

TEST(JsonSchemaTest, TopLevelNumbersAndEnumsStayOpenUntilTheyCannotGrow) {
  absl::StatusOr<JsonSchema> schema = JsonSchema::Compile(ordered::parse(R"({"enum": [1, 12, "x"]})"));
  ASSERT_TRUE(schema.ok()) << schema.status();
  JsonGrammar g(*schema);
  ASSERT_TRUE(g.Feed("1"));
  EXPECT_TRUE(g.Complete());
  EXPECT_FALSE(g.Closed()) << "12 may still come";
  ASSERT_TRUE(g.Feed("2"));
  EXPECT_TRUE(g.Complete());
  EXPECT_FALSE(g.Feed("3"));
  ASSERT_TRUE(g.Feed(" "));
  EXPECT_TRUE(g.Closed());
}

// guided_choice: exactly one of the texts, byte for byte, nothing around it; a choice that is the
// start of another stays open (complete, not closed) until it cannot grow.
TEST(JsonSchemaTest, ChoicesAreTheirTextsExactly) {
  absl::StatusOr<JsonSchema> schema = JsonSchema::Choice({"yes", "no", "no way", "{\"a\"}", "yes"});
  ASSERT_TRUE(schema.ok()) << schema.status();
  auto whole = [&](const std::string& text) {
    JsonGrammar g(*schema);
    return g.Feed(text) && g.Complete();
  };
  for (const char* ok : {"yes", "no", "no way", "{\"a\"}"}) EXPECT_TRUE(whole(ok)) << ok;
  for (const char* bad : {" yes", "yes ", "ye", "No", "no w", "maybe", "\"yes\"", ""}) EXPECT_FALSE(whole(bad)) << bad;
  JsonGrammar g(*schema);
  ASSERT_TRUE(g.Feed("no"));
  EXPECT_TRUE(g.Complete());
  EXPECT_FALSE(g.Closed());
  EXPECT_TRUE(g.Feed(" way")) << "the space continues \"no way\"";
  EXPECT_FALSE(g.Feed(" "));
  EXPECT_EQ(JsonSchema::Choice({}).status().message(), "choices: empty");
  EXPECT_EQ(JsonSchema::Choice({"a", ""}).status().message(), "choices[1]: empty");
  EXPECT_EQ(JsonSchema::Choice(std::vector<std::string>(65, "x")).status().message(), "choices: at most 64, got 65");
}

// Bounds are exact at their edges: a number at a bound takes only a zero fraction, no negative
// zero, no exponent, no leading zeros; a top-level bounded number stays open while it can grow.
TEST(JsonSchemaTest, NumericBoundsHoldAtTheirEdges) {
  auto whole = [](const JsonSchema& schema, const std::string& text) {
    JsonGrammar g(schema);
    return g.Feed(text) && g.Complete();
  };
  absl::StatusOr<JsonSchema> p = JsonSchema::Compile(ordered::parse(R"({"type": "number", "minimum": 0, "maximum": 1})"));
  ASSERT_TRUE(p.ok()) << p.status();
  for (const char* ok : {"0", "1", "1.0", "1.000", "0.5", "0.999999", "0.0"}) EXPECT_TRUE(whole(*p, ok)) << ok;
  for (const char* bad : {"1.5", "1.01", "-0", "-0.5", "2", "1e0", "01", "-1"}) EXPECT_FALSE(whole(*p, bad)) << bad;
  JsonGrammar g(*p);
  ASSERT_TRUE(g.Feed("1"));
  EXPECT_TRUE(g.Complete());
  EXPECT_FALSE(g.Closed()) << "1.0 may still come";
  EXPECT_FALSE(g.Feed("0")) << "10 is above the maximum";
  absl::StatusOr<JsonSchema> neg = JsonSchema::Compile(ordered::parse(R"({"type": "number", "minimum": -3, "maximum": -1})"));
  ASSERT_TRUE(neg.ok()) << neg.status();
  for (const char* ok : {"-1", "-3", "-2.75", "-1.0", "-3.00"}) EXPECT_TRUE(whole(*neg, ok)) << ok;
  for (const char* bad : {"-0.5", "-3.01", "0", "-4", "1"}) EXPECT_FALSE(whole(*neg, bad)) << bad;
  absl::StatusOr<JsonSchema> i = JsonSchema::Compile(
      ordered::parse(R"({"type": "integer", "exclusiveMinimum": -5, "exclusiveMaximum": 250})"));
  ASSERT_TRUE(i.ok()) << i.status();
  for (const char* ok : {"-4", "0", "249", "99", "100"}) EXPECT_TRUE(whole(*i, ok)) << ok;
  for (const char* bad : {"-5", "250", "-0", "007", "2.0", "1000"}) EXPECT_FALSE(whole(*i, bad)) << bad;
  absl::StatusOr<JsonSchema> frac = JsonSchema::Compile(ordered::parse(R"({"type": "integer", "minimum": 2.5, "maximum": 1e3})"));
  ASSERT_TRUE(frac.ok()) << frac.status();
  EXPECT_FALSE(whole(*frac, "2"));
  EXPECT_TRUE(whole(*frac, "3"));
  EXPECT_TRUE(whole(*frac, "1000"));
  EXPECT_FALSE(whole(*frac, "1001"));
}

// A pattern is searched for in the string's characters (re.search), escapes decoded first; a string
// under a pattern takes no \u escape, and the grammar never lets the output reach a state from which
// the pattern cannot be met.
TEST(JsonSchemaTest, PatternsSeeTheDecodedCharacters) {
  auto whole = [](const JsonSchema& schema, const std::string& text) {
    JsonGrammar g(schema);
    return g.Feed(text) && g.Complete();
  };
  absl::StatusOr<JsonSchema> path = JsonSchema::Compile(ordered::parse(R"({"type": "string", "pattern": "^/[a-z]+\"$"})"));
  ASSERT_TRUE(path.ok()) << path.status();
  EXPECT_TRUE(whole(*path, R"("/ab\"")"));
  EXPECT_TRUE(whole(*path, R"("\/ab\"")")) << "an escaped slash is a slash";
  EXPECT_FALSE(whole(*path, R"("/ab\u0022")")) << "no \\u escape under a pattern";
  EXPECT_FALSE(whole(*path, R"("/ab")"));
  absl::StatusOr<JsonSchema> x = JsonSchema::Compile(ordered::parse(R"({"type": "string", "pattern": "x", "maxLength": 3})"));
  ASSERT_TRUE(x.ok()) << x.status();
  EXPECT_TRUE(whole(*x, R"("axb")"));
  EXPECT_TRUE(whole(*x, R"("x")"));
  JsonGrammar g(*x);
  ASSERT_TRUE(g.Feed(R"("ab)"));
  EXPECT_FALSE(g.Feed('"')) << "no x yet";
  EXPECT_FALSE(g.Feed('c')) << "three characters without an x cannot reach one";
  EXPECT_TRUE(g.Feed("x\""));
  EXPECT_TRUE(g.Complete());
  absl::StatusOr<JsonSchema> day = JsonSchema::Compile(ordered::parse(R"({"type": "string", "format": "date"})"));
  ASSERT_TRUE(day.ok()) << day.status();
  for (const char* ok : {R"("2024-02-28")", R"("2023-04-30")", R"("1999-12-31")"}) EXPECT_TRUE(whole(*day, ok)) << ok;
  for (const char* bad : {R"("2023-04-31")", R"("2023-02-30")", R"("0000-01-01")", R"("2023-13-01")", R"("2023-1-01")"}) {
    EXPECT_FALSE(whole(*day, bad)) << bad;
  }
}

// A URL's maximum (Pydantic's 2,083) is too large to fold into the automaton: the grammar refuses a
// character after which no match fits, so the output never runs into the bound unfinished.
TEST(JsonSchemaTest, LargeMaximumLengthsLeaveRoomForAMatch) {
  absl::StatusOr<JsonSchema> url = JsonSchema::Compile(ordered::parse(R"({"type": "string", "format": "uri", "maxLength": 3000})"));
  ASSERT_TRUE(url.ok()) << url.status();
  auto whole = [&](const std::string& text) {
    JsonGrammar g(*url);
    return g.Feed(text) && g.Complete();
  };
  EXPECT_TRUE(whole(R"("https://example.com:8080/a/b%20c?q=1&r=/x#top")"));
  EXPECT_FALSE(whole(R"("http://a b")"));
  EXPECT_FALSE(whole(R"("example.com")"));
  EXPECT_FALSE(whole(R"("http://a/%zz")"));
  JsonGrammar g(*url);
  ASSERT_TRUE(g.Feed("\"" + std::string(2996, 'h')));
  EXPECT_FALSE(g.Feed('h')) << "2,997 scheme letters leave no room for \"://\" and a host";
  ASSERT_TRUE(g.Feed("://x"));
  EXPECT_FALSE(g.Feed('x')) << "3,001 characters";
  EXPECT_TRUE(g.Feed('"'));
  EXPECT_TRUE(g.Complete());
  absl::StatusOr<JsonSchema> tiny = JsonSchema::Compile(ordered::parse(R"({"type": "string", "format": "uri", "maxLength": 4})"));
  EXPECT_EQ(tiny.status().message(), "format: the pattern matches no text");
}

// vLLM's disable_any_whitespace: no whitespace between tokens at all; inside strings as ever.
TEST(JsonSchemaTest, CompactSchemasTakeNoWhitespaceBetweenTokens) {
  absl::StatusOr<JsonSchema> s = JsonSchema::Compile(ordered::parse(R"({"type": "object", "properties": {
      "a": {"type": "array", "items": {"type": "integer"}}, "b": {"type": "string"}}})"));
  ASSERT_TRUE(s.ok()) << s.status();
  s->set_compact(true);
  auto whole = [&](const std::string& text) {
    JsonGrammar g(*s);
    return g.Feed(text) && g.Complete();
  };
  EXPECT_TRUE(whole(R"({"a":[1,2],"b":"x y"})"));
  for (const char* spaced : {R"({"a": [1,2],"b":"x"})", R"({"a":[1, 2],"b":"x"})", R"( {"a":[1]})", "{\n\"a\":[1]}",
                             R"({"a":[1],"b":"x"} )"}) {
    EXPECT_FALSE(whole(spaced)) << spaced;
  }
}

// guided_regex: the whole output matches, nothing around it; a regex that admits the empty text is
// complete before anything is written.
TEST(JsonSchemaTest, RegexOutputsMatchWhole) {
  absl::StatusOr<JsonSchema> r = JsonSchema::Regex("(yes|no)( sir)?");
  ASSERT_TRUE(r.ok()) << r.status();
  auto whole = [](const JsonSchema& schema, const std::string& text) {
    JsonGrammar g(schema);
    return g.Feed(text) && g.Complete();
  };
  for (const char* ok : {"yes", "no sir", "yes sir"}) EXPECT_TRUE(whole(*r, ok)) << ok;
  for (const char* bad : {" yes", "yes ", "yesno", "no si", ""}) EXPECT_FALSE(whole(*r, bad)) << bad;
  absl::StatusOr<JsonSchema> spaces = JsonSchema::Regex(" {25}x");
  ASSERT_TRUE(spaces.ok()) << spaces.status();
  EXPECT_TRUE(whole(*spaces, std::string(25, ' ') + "x")) << "the whitespace bound is for JSON, not a regex";
  absl::StatusOr<JsonSchema> star = JsonSchema::Regex("a*");
  ASSERT_TRUE(star.ok()) << star.status();
  EXPECT_TRUE(JsonGrammar(*star).Complete());
  absl::StatusOr<JsonSchema> digits = JsonSchema::Regex("\\d{3}");
  ASSERT_TRUE(digits.ok()) << digits.status();
  JsonGrammar g(*digits);
  ASSERT_TRUE(g.Feed("123"));
  EXPECT_TRUE(g.Complete());
  EXPECT_FALSE(g.Feed('4'));
  EXPECT_EQ(JsonSchema::Regex("*a").status().message(), "regex: nothing to repeat at offset 0");
}

// Requests carry schemas: random ones (keywords with values of every type, nested) compile or are
// refused naming a path, never crash; what compiles reads random bytes without crashing and keeps
// every prefix it takes completable.
ordered RandomSchema(std::mt19937& rng, int depth) {
  static const char* const kKeys[] = {"type", "properties", "required", "additionalProperties", "items", "prefixItems",
                                      "minItems", "maxItems", "minLength", "maxLength", "pattern", "format", "minimum",
                                      "maximum", "exclusiveMinimum", "exclusiveMaximum", "enum", "const", "anyOf",
                                      "$ref", "$defs", "title"};
  static const char* const kTypes[] = {"object", "array", "string", "integer", "number", "boolean", "null", "nope"};
  ordered s = ordered::object();
  for (int k = static_cast<int>(rng() % 4); k > 0; --k) {
    const std::string key = kKeys[rng() % std::size(kKeys)];
    const int pick = static_cast<int>(rng() % 6);
    ordered v;
    if (pick == 0) v = kTypes[rng() % std::size(kTypes)];
    if (pick == 1) v = static_cast<int64_t>(rng() % 12) - 2;
    if (pick == 2) v = std::vector<std::string>{"a", "b"};
    if (pick == 3) v = depth < 3 ? RandomSchema(rng, depth + 1) : ordered::object();
    if (pick == 4) v = ordered::array({depth < 3 ? RandomSchema(rng, depth + 1) : ordered::object(), ordered{{"type", "null"}}});
    if (pick == 5) v = key == "pattern" ? ordered("^[a-c]{1,3}$") : key == "$ref" ? ordered("#/$defs/x") : ordered(true);
    if (key == "properties" && v.is_object()) v = ordered{{"a", v}, {"b", ordered::object()}};
    if (key == "$defs" && v.is_object()) v = ordered{{"x", v}};
    s[key] = v;
  }
  return s;
}

TEST(JsonSchemaTest, RandomSchemasCompileOrAreRefused) {
  std::mt19937 rng(5);
  int compiled = 0;
  for (int n = 0; n < 2000; ++n) {
    const ordered s = RandomSchema(rng, 0);
    absl::StatusOr<JsonSchema> schema = JsonSchema::Compile(s);
    if (!schema.ok()) {
      EXPECT_EQ(schema.status().code(), absl::StatusCode::kInvalidArgument) << s.dump();
      EXPECT_NE(schema.status().message().find(": "), std::string::npos) << schema.status();
      continue;
    }
    ++compiled;
    JsonGrammar g(*schema);
    std::string taken;
    for (int i = 0; i < 40; ++i) {
      const char c = Alphabet()[rng() % Alphabet().size()];
      if (g.Feed(static_cast<uint8_t>(c))) taken.push_back(c);
    }
    std::string key;
    g.AppendStateKey(key);
    std::string completion;
    std::set<std::string> seen;
    // The schema's own bytes too: enum and const texts may need letters the alphabet lacks.
    std::string alphabet = Alphabet();
    for (char c : s.dump()) {
      if (alphabet.find(c) == std::string::npos) alphabet.push_back(c);
    }
    EXPECT_TRUE(FindCompletion(g, completion, seen, 0, alphabet)) << s.dump() << " after " << taken;
  }
  EXPECT_GT(compiled, 300);
}

// An object of 7 objects of 64 string properties, each with the pattern pattern(i, j): the audit's
// schema (26 KB, 448 patterns) that took 10-20 s to compile, in the coordinator and then on every rank.
ordered ManyPatterns(const std::function<std::string(int, int)>& pattern) {
  ordered root = {{"type", "object"}, {"properties", ordered::object()}};
  for (int i = 0; i < 7; ++i) {
    ordered inner = {{"type", "object"}, {"properties", ordered::object()}};
    for (int j = 0; j < 64; ++j) inner["properties"]["p" + std::to_string(j)] = {{"type", "string"}, {"pattern", pattern(i, j)}};
    root["properties"]["o" + std::to_string(i)] = inner;
  }
  return root;
}

TEST(JsonSchemaTest, ExpensivePatternsShareOneBudget) {
  // 448 different patterns, each ~2,000 automaton states: refused where the schema's budget runs out,
  // naming that pattern's path and the limit.
  const ordered distinct = ManyPatterns([](int i, int j) {
    const std::string a(1, static_cast<char>('a' + i)), b(1, static_cast<char>('h' + j % 18));
    return "(" + a + "|" + b + ")*" + a + "(" + a + "|" + b + "){10}";
  });
  absl::StatusOr<JsonSchema> refused = JsonSchema::Compile(distinct);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(refused.status().message());
  EXPECT_EQ(message.rfind("properties.o", 0), 0u) << message;
  EXPECT_NE(message.find(".pattern: the schema's patterns, formats and bounds together take too long to compile (the "
                         "limit is 100 million steps"),
            std::string::npos)
      << message;
  // The same pattern 448 times is built once. Each property still reads its own string: the 11th
  // character from the end of a match is an "a", as a hand-written check says.
  const ordered same = ManyPatterns([](int, int) { return "(a|b)*a(a|b){10}"; });
  absl::StatusOr<JsonSchema> schema = JsonSchema::Compile(same);
  ASSERT_TRUE(schema.ok()) << schema.status();
  auto matches = [](const std::string& v) {  // re.search: some "a" with ten more a's and b's after it
    for (size_t k = 0; k + 11 <= v.size(); ++k) {
      if (v[k] == 'a' && v.substr(k + 1, 10).find_first_not_of("ab") == std::string::npos) return true;
    }
    return false;
  };
  std::mt19937 rng(7);
  for (int n = 0; n < 200; ++n) {
    std::string value;
    for (int k = static_cast<int>(rng() % 16); k > 0; --k) value.push_back("abc"[rng() % 3]);
    // The value in the last object's last property, after every other one holds a match.
    std::string text = "{";
    for (int i = 0; i < 7; ++i) {
      text += std::string(i ? "," : "") + "\"o" + std::to_string(i) + "\":{";
      for (int j = 0; j < 64; ++j) {
        text += std::string(j ? "," : "") + "\"p" + std::to_string(j) + "\":\"" +
                (i == 6 && j == 63 ? value : "a" + std::string(10, 'b')) + "\"";
      }
      text += "}";
    }
    text += "}";
    JsonGrammar g(*schema);
    EXPECT_EQ(g.Feed(text) && g.Complete(), matches(value)) << value;
  }
}

TEST(JsonSchemaTest, UnsupportedKeywordsAreRefusedNamingThem) {
  auto error = [](const std::string& text) {
    absl::StatusOr<JsonSchema> s = JsonSchema::Compile(ordered::parse(text));
    return s.ok() ? std::string("ok") : std::string(s.status().message());
  };
  EXPECT_EQ(error(R"({"type": "object", "properties": {"age": {"type": "integer", "multipleOf": 2}}})").rfind(
                "properties.age.multipleOf: not supported", 0),
            0u);
  EXPECT_EQ(error(R"x({"type": "string", "pattern": "(?=a)"})x"),
            "pattern: lookaround, inline flags and other (? groups are not supported at offset 2");
  EXPECT_EQ(error(R"({"type": "string", "pattern": "^abc$", "maxLength": 2})"), "pattern: the pattern matches no text");
  EXPECT_EQ(error(R"({"type": "string", "format": "hostname"})"),
            "format: \"hostname\" is not supported (supported: date, time, date-time, uuid, ipv4, email, uri)");
  EXPECT_EQ(error(R"({"type": "string", "format": "date", "pattern": "1"})"), "format: not supported beside pattern");
  EXPECT_EQ(error(R"({"type": "number", "exclusiveMinimum": 0})"),
            "exclusiveMinimum: for type number only minimum and maximum with integral values up to 2^53 are supported");
  EXPECT_EQ(error(R"({"type": "number", "maximum": 0.5})"),
            "maximum: for type number only minimum and maximum with integral values up to 2^53 are supported");
  EXPECT_EQ(error(R"({"type": "integer", "minimum": 1e19})"), "minimum: bounds beyond 1e18 are not supported");
  EXPECT_EQ(error(R"({"type": "integer", "minimum": 3, "exclusiveMaximum": 3})"),
            "minimum: admits no integer up to the maximum");
  EXPECT_EQ(error(R"({"type": "integer", "minimum": true})"), "minimum: expected a number");
  EXPECT_EQ(error(R"({"type": "string", "minimum": 1})"), "minimum: only for type number, not string");
  EXPECT_EQ(error(R"({"type": ["integer", "null"], "minimum": 0, "maximum": 9})"), "ok");
  EXPECT_EQ(error(R"({"type": "object", "additionalProperties": 3})"), "additionalProperties: expected a boolean or a schema");
  EXPECT_EQ(error(R"({"properties": {"a": {}}, "additionalProperties": {"type": "string"}})"),
            "additionalProperties: a schema is supported only for an object without properties");
  EXPECT_EQ(error(R"({"type": "object", "additionalProperties": {"type": "string"}})"), "ok");
  EXPECT_EQ(error(R"({"prefixItems": {"type": "string"}})"), "prefixItems: expected an array of schemas");
  EXPECT_EQ(error(R"({"anyOf": [{"type": "integer"}, {"type": "number"}]})").rfind("anyOf: alternatives", 0), 0u);
  // Objects in an anyOf need a first property, required in each, whose values tell them apart.
  EXPECT_EQ(error(R"({"anyOf": [{"type": "object"}, {"type": "object", "properties": {"a": {}}}]})")
                .rfind("anyOf: alternatives", 0),
            0u);
  EXPECT_EQ(error(R"({"anyOf": [{"properties": {"k": {"const": 1}}, "required": ["k"]},
                                {"properties": {"k": {"const": 2}}}]})")
                .rfind("anyOf: alternatives", 0),
            0u);
  EXPECT_EQ(error(R"({"anyOf": [{"properties": {"k": {"enum": [1, 2]}}, "required": ["k"]},
                                {"properties": {"k": {"const": 2}}, "required": ["k"]}]})"),
            "anyOf: objects told apart by \"k\" share its value 2");
  EXPECT_EQ(error(R"({"anyOf": [{"properties": {"k": {"const": 1}, "a": {}}, "required": ["k"]},
                                {"properties": {"k": {"const": 2}, "b": {}}, "required": ["k"]}, {"type": "null"}]})"),
            "ok");
  EXPECT_EQ(error(R"({"$ref": "#/$defs/missing"})").rfind("$ref: \"#/$defs/missing\" names no definition", 0), 0u);
  EXPECT_EQ(error(R"({"$ref": "http://example.com/s.json"})").rfind("$ref: only", 0), 0u);
  EXPECT_EQ(error(R"({"type": "object", "properties": {"a": {}}, "required": ["b"]})")
                .rfind("required: \"b\" is not among the properties", 0),
            0u);
  EXPECT_EQ(error(R"({"type": "strin"})").rfind("type: unknown type", 0), 0u);
  EXPECT_EQ(error(R"({"type": "string", "items": {}})").rfind("items: only for type array", 0), 0u);
  EXPECT_EQ(error(R"({"type": "array", "minItems": 3, "maxItems": 2})").rfind("minItems: exceeds maxItems", 0), 0u);
  EXPECT_EQ(error("false").rfind("schema: false admits no value", 0), 0u);
  EXPECT_EQ(error(R"({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"})").rfind("$ref: admits no value", 0), 0u);
  EXPECT_EQ(error(R"({"type": "object", "properties": {"a\"b": {}}})").rfind("properties.a\"b: property names", 0), 0u);
  std::string deep = R"({"type": "integer"})";
  for (int i = 0; i < 100; ++i) deep = R"({"type": "array", "items": )" + deep + "}";
  EXPECT_NE(error(deep).find("nested deeper than 64 schemas"), std::string::npos) << error(deep).substr(0, 80);
  EXPECT_EQ(error(R"({"type": ["string", "null"], "maxLength": 3})"), "ok");
  EXPECT_EQ(error("{}"), "ok");
}

// N objects each requiring the next in "a" (the innermost {}), or N arrays each requiring one item,
// the next (the innermost []): every instance opens N levels.
std::string NestedObjects(int n) {
  std::string s = R"({"type": "object"})";
  for (int i = 1; i < n; ++i) s = R"({"type": "object", "properties": {"a": )" + s + R"(}, "required": ["a"]})";
  return s;
}
std::string NestedArrays(int n) {
  std::string s = R"({"type": "array"})";
  for (int i = 1; i < n; ++i) s = R"({"type": "array", "prefixItems": [)" + s + R"(], "minItems": 1})";
  return s;
}

// Schemas no output can satisfy are refused when compiled (so by the coordinator's validation)
// rather than failing mid-generation when the recogniser finds no byte that continues the output:
// those every instance of which needs another level forever, or more than the recogniser's 32.
TEST(JsonSchemaTest, SchemasWithoutAnInstanceTheRecogniserCanFinishAreRefused) {
  auto error = [](const std::string& text) {
    absl::StatusOr<JsonSchema> s = JsonSchema::Compile(ordered::parse(text));
    if (s.ok()) return std::string("ok");
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << text;
    return std::string(s.status().message());
  };
  // A required property that refers back to its object: {"a": {"a": ...}} never ends.
  EXPECT_EQ(error(R"({"$defs": {"n": {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}, "required": ["a"]}},
                      "$ref": "#/$defs/n"})"),
            "$ref: admits no finite value: every instance needs $defs/n again (at $defs/n.properties.a, and so on "
            "forever)");
  // Through two definitions, from an inline root.
  EXPECT_EQ(error(R"({"type": "object", "properties": {"x": {"$ref": "#/$defs/p"}}, "required": ["x"],
                      "$defs": {"p": {"type": "object", "properties": {"q": {"$ref": "#/$defs/q"}}, "required": ["q"]},
                                "q": {"type": "object", "properties": {"p": {"$ref": "#/$defs/p"}}, "required": ["p"]}}})"),
            "schema: admits no finite value: every instance needs $defs/p again (at $defs/p.properties.q, and so on "
            "forever)");
  // Arrays: an item schema that refers to itself with minItems >= 1, and a chain of tuples.
  EXPECT_EQ(error(R"({"$defs": {"l": {"type": "array", "items": {"$ref": "#/$defs/l"}, "minItems": 1}}, "$ref": "#/$defs/l"})"),
            "$ref: admits no finite value: every instance needs $defs/l again (at $defs/l.items, and so on forever)");
  EXPECT_EQ(error(R"({"$defs": {"t": {"type": "array", "prefixItems": [{"type": "integer"}, {"$ref": "#/$defs/t"}],
                                      "minItems": 2}}, "$ref": "#/$defs/t"})"),
            "$ref: admits no finite value: every instance needs $defs/t again (at $defs/t.prefixItems[1], and so on "
            "forever)");
  // Every alternative of an anyOf recurses.
  EXPECT_EQ(error(R"({"$defs": {"n": {"type": "object", "properties": {"a": {"anyOf": [{"$ref": "#/$defs/n"},
                      {"type": "array", "items": {"$ref": "#/$defs/n"}, "minItems": 1}]}}, "required": ["a"]}},
                      "$ref": "#/$defs/n"})")
                .rfind("$ref: admits no finite value: every instance needs $defs/n again", 0),
            0u);
  // Such a part of a schema where an optional property leads to it compiles: the recogniser never
  // begins the property (its value could not finish), and the object's other values remain.
  {
    absl::StatusOr<JsonSchema> s = JsonSchema::Compile(ordered::parse(
        R"({"type": "object", "properties": {"o": {"$ref": "#/$defs/n"}, "k": {"type": "integer"}},
            "$defs": {"n": {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}, "required": ["a"]}}})"));
    ASSERT_TRUE(s.ok()) << s.status();
    JsonGrammar empty(*s), k(*s), o(*s);
    EXPECT_TRUE(empty.Feed("{}") && empty.Complete());
    EXPECT_TRUE(k.Feed(R"({"k": 7})") && k.Complete());
    EXPECT_FALSE(o.Feed(R"({"o)")) << "a property no value of which could finish is not begun";
  }
  // An empty list of types, said as such (it was "a $ref that leads only back to itself").
  EXPECT_EQ(error(R"({"type": []})"), "type: an empty list of types admits no value");
  EXPECT_EQ(error(R"({"type": "object", "properties": {"a": {"type": []}}})"),
            "properties.a.type: an empty list of types admits no value");

  // Recursion that can stop is fine: an optional property, Optional[Node] (anyOf with null), an
  // array with no minimum, minItems 1 of a tree whose leaves are strings.
  const std::vector<std::pair<std::string, std::string>> finite = {
      {R"({"$defs": {"n": {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"})", "{}"},
      {R"({"$defs": {"n": {"type": "object", "properties": {"v": {"type": "integer"}, "a": {"anyOf": [{"$ref": "#/$defs/n"},
           {"type": "null"}]}}, "required": ["v", "a"]}}, "$ref": "#/$defs/n"})",
       R"({"v": 1, "a": {"v": 2, "a": null}})"},
      {R"({"$defs": {"l": {"type": "array", "items": {"$ref": "#/$defs/l"}}}, "$ref": "#/$defs/l"})", "[[], [[]]]"},
      {R"({"$defs": {"t": {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/t"}, {"type": "string"}]},
           "minItems": 1}}, "$ref": "#/$defs/t"})",
       R"([["x"], "y"])"},
  };
  for (const auto& [text, instance] : finite) {
    absl::StatusOr<JsonSchema> schema = JsonSchema::Compile(ordered::parse(text));
    ASSERT_TRUE(schema.ok()) << text << ": " << schema.status();
    JsonGrammar g(*schema);
    EXPECT_TRUE(g.Feed(instance) && g.Complete()) << text << " " << instance;
  }

  // The recogniser opens at most 32 levels: 32 nested objects or arrays compile, and their
  // shallowest instance completes; 33 (and 40) are refused, naming where level 33 would open.
  ASSERT_EQ(JsonGrammar::kMaxDepth, 32);
  for (bool arrays : {false, true}) {
    SCOPED_TRACE(arrays ? "arrays" : "objects");
    auto nested = [&](int n) { return arrays ? NestedArrays(n) : NestedObjects(n); };
    absl::StatusOr<JsonSchema> deepest = JsonSchema::Compile(ordered::parse(nested(32)));
    ASSERT_TRUE(deepest.ok()) << deepest.status();
    std::string instance = arrays ? "[]" : "{}";
    for (int i = 1; i < 32; ++i) instance = arrays ? "[" + instance + "]" : R"({"a": )" + instance + "}";
    JsonGrammar g(*deepest);
    EXPECT_TRUE(g.Feed(instance) && g.Complete()) << instance;
    std::string level33;
    for (int i = 0; i < 32; ++i) level33 += arrays ? "prefixItems[0]." : "properties.a.";
    level33.pop_back();
    for (int n : {33, 40}) {
      EXPECT_EQ(error(nested(n)), "schema: every instance nests deeper than the 32 levels the recogniser follows (at least " +
                                      std::to_string(n) + "; level 33 opens at " + level33 + ")");
    }
  }
  // The same through a definition, and a part of a schema that only an optional property reaches.
  EXPECT_EQ(error(R"({"$defs": {"d": )" + NestedObjects(33) + R"(}, "$ref": "#/$defs/d"})").rfind(
                "$ref: every instance nests deeper than the 32 levels the recogniser follows (at least 33; level 33 "
                "opens at $defs/d.properties.a.",
                0),
            0u);
  {  // an optional property too deep to finish compiles and is never begun
    absl::StatusOr<JsonSchema> s =
        JsonSchema::Compile(ordered::parse(R"({"type": "object", "properties": {"o": )" + NestedArrays(33) + "}}"));
    ASSERT_TRUE(s.ok()) << s.status();
    JsonGrammar empty(*s), o(*s);
    EXPECT_TRUE(empty.Feed("{}") && empty.Complete());
    EXPECT_FALSE(o.Feed(R"({"o)"));
  }
  // Optional nesting beyond the limit is fine: its values can stop sooner.
  std::string optional = R"({"type": "object"})";
  for (int i = 0; i < 40; ++i) optional = R"({"type": "object", "properties": {"a": )" + optional + "}}";
  EXPECT_EQ(error(optional), "ok");
  // enum and const texts are read whole, at no level: a const nested 40 deep is fine.
  const std::string deep_const = std::string(40, '[') + std::string(40, ']');
  absl::StatusOr<JsonSchema> constant = JsonSchema::Compile(ordered::parse(R"({"const": )" + deep_const + "}"));
  ASSERT_TRUE(constant.ok()) << constant.status();
  JsonGrammar g(*constant);
  EXPECT_TRUE(g.Feed(deep_const) && g.Complete());
}

// Reads `chunk` again and again while the grammar takes it whole; the state after the last one taken.
JsonGrammar Repeat(const JsonSchema& schema, const std::string& head, const std::string& chunk, int& times) {
  JsonGrammar g(schema);
  EXPECT_TRUE(g.Feed(head)) << head;
  for (times = 0;; ++times) {
    JsonGrammar next = g;
    if (!next.Feed(chunk)) return g;
    g = next;
  }
}

// The recogniser opens no value that could not finish within its 32 levels where it stands: an
// optional property, a tuple's next item, a tagged union's tag whose values would need more are not
// begun (before, "a": was taken at level 32, and then no byte could follow: a dead end mid-generation).
TEST(JsonSchemaTest, ValuesTooDeepForWhereTheyStandAreNotBegun) {
  auto compile = [](const std::string& text) {
    absl::StatusOr<JsonSchema> s = JsonSchema::Compile(ordered::parse(text));
    EXPECT_TRUE(s.ok()) << text << ": " << s.status();
    return std::move(s).value();
  };
  auto completes = [](const JsonGrammar& g) {
    std::string completion;
    std::set<std::string> seen;
    return FindCompletion(g, completion, seen, 0);
  };
  int times = 0;
  {  // Recursion through an optional property: 32 objects, the innermost without "a".
    const JsonSchema s = compile(R"({"$defs": {"n": {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"}}}},
                                     "$ref": "#/$defs/n"})");
    JsonGrammar g = Repeat(s, "{", R"("a": {)", times);
    EXPECT_EQ(times, 31);
    EXPECT_TRUE(completes(g));
    EXPECT_FALSE(JsonGrammar(g).Feed('"'));
    EXPECT_TRUE(g.Feed(std::string(32, '}')) && g.Complete());
  }
  {  // ... and each object also requires 4 levels below it in "b": "a" stops 4 levels sooner.
    const JsonSchema s = compile(R"({"$defs": {"n": {"type": "object", "properties": {"a": {"$ref": "#/$defs/n"},
        "b": {"type": "array", "prefixItems": [{"type": "array", "prefixItems": [{"type": "array",
        "prefixItems": [{"type": "array"}], "minItems": 1}], "minItems": 1}], "minItems": 1}}, "required": ["b"]}},
        "$ref": "#/$defs/n"})");
    JsonGrammar g = Repeat(s, "{", R"("a": {)", times);
    EXPECT_EQ(times, 27);  // 28 objects, the last one's "b" at levels 29 to 32
    EXPECT_FALSE(JsonGrammar(g).Feed(R"("a")"));
    std::string rest = R"("b": [[[[]]]]})";  // (longer than FindCompletion looks)
    for (int i = 0; i < 27; ++i) rest += R"(, "b": [[[[]]]]})";
    EXPECT_TRUE(g.Feed(rest) && g.Complete());
  }
  {  // A tuple whose optional second item is another one: [1, [1, ... stops at level 32.
    const JsonSchema s = compile(R"({"$defs": {"t": {"type": "array", "prefixItems": [{"type": "integer"},
                                     {"$ref": "#/$defs/t"}], "minItems": 1}}, "$ref": "#/$defs/t"})");
    JsonGrammar g = Repeat(s, "[1", ", [1", times);
    EXPECT_EQ(times, 31);
    EXPECT_FALSE(JsonGrammar(g).Feed(','));
    EXPECT_TRUE(completes(g));
  }
  {  // A tagged union under n required objects: the tag whose object needs 4 levels (the object, 3
     // arrays) is written only where those fit, the other one anywhere.
    auto wrapped = [](int n) {
      std::string s = R"({"anyOf": [{"type": "object", "properties": {"k": {"const": "deep"}, "x": {"type": "array",
          "prefixItems": [{"type": "array", "prefixItems": [{"type": "array"}], "minItems": 1}], "minItems": 1}},
          "required": ["k", "x"]}, {"type": "object", "properties": {"k": {"const": "flat"}}, "required": ["k"]}]})";
      for (int i = 0; i < n; ++i) s = R"({"type": "object", "properties": {"a": )" + s + R"(}, "required": ["a"]})";
      return s;
    };
    auto head = [](int n) {
      std::string h;
      for (int i = 0; i < n; ++i) h += R"({"a": )";
      return h + R"({"k": ")";
    };
    const JsonSchema s = compile(wrapped(29));  // the union at level 30: "deep" would reach 33
    JsonGrammar g(s);
    ASSERT_TRUE(g.Feed(head(29)));
    EXPECT_FALSE(JsonGrammar(g).Feed('d'));
    EXPECT_TRUE(completes(g));
    EXPECT_TRUE(g.Feed(R"(flat"})" + std::string(29, '}')) && g.Complete());
    const JsonSchema up = compile(wrapped(28));  // at level 29 it reaches 32
    JsonGrammar h(up);
    EXPECT_TRUE(h.Feed(head(28) + R"(deep", "x": [[[]]]})" + std::string(28, '}')) && h.Complete());
  }
}

}  // namespace
}  // namespace moe
